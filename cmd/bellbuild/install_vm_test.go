package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// installVMProfile is a busybox image with a disk, installed by its nodes
// onto their largest disk; i1 may write over what its disk holds, i2 not.
const installVMProfile = `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0]
outputs: [raw]
install: {disk: largest, wipe: true}
`

const installVMNodes = `nodes:
- {name: i1, mac: "52:54:00:00:00:21", profile: inst}
- {name: i2, mac: "52:54:00:00:00:22", profile: inst, install: {disk: largest, wipe: false}}
`

// installTimeout bounds a PXE boot, an install and the disk's boot under
// TCG and OVMF on a shared machine.
const installTimeout = 6 * time.Minute

// ovmfIPv4Only turns off OVMF's IPv6 PXE and HTTP boot, which wait long
// for nothing on these IPv4 labs: after iPXE exits, the disk is the next
// boot that works.
var ovmfIPv4Only = []string{"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
	"-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=n"}

// waitInstall waits up to installTimeout for what wait (a VM's WaitFor or
// WaitForLine) looks for, and returns the match; a timeout fails t.
func waitInstall(t *testing.T, wait func(context.Context, *regexp.Regexp) ([]string, error), re string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	m, err := wait(ctx, regexp.MustCompile(re))
	if err != nil {
		t.Fatalf("VM: %v", err)
	}
	return m
}

// TestInstallVM installs a node over PXE in a namespace, under OVMF:
//
//  1. a VM with a blank disk boots the installer from serve (network
//     first, then the disk), which prints its progress, writes the disk,
//     tells serve, and reboots; the machine comes up from its disk
//     (slot a) with no kernel or initramfs fetched after the install,
//     and node list shows the install;
//  2. a second power-on boots from the disk again, no reinstall;
//  3. after node reinstall, the next power-on installs again;
//  4. a node with wipe: false and a disk that holds a filesystem is
//     refused: the installer says so and powers off, the disk unchanged.
func TestInstallVM(t *testing.T) {
	testtool.SkipVM(t)
	testtool.Stat(t, testvm.OVMF, "ovmf")
	ns := newNetns(t, 2)
	bin := testtool.Binary(t)
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "site.yaml"), "domain: example.org\n")
	writeTestFile(t, filepath.Join(site, "profiles/inst.yaml"), installVMProfile)
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), installVMNodes)
	out := t.TempDir()
	if b, err := exec.Command(bin, "image", "inst", "-C", site, "-o", out).CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image: %v\n%s", err, b)
	}
	state := t.TempDir()
	log := startServe(t, ns, bin, "-C", site, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out, "--state", state)
	qemu := ns.qemu(t)
	nodeCmd := func(args ...string) string {
		t.Helper()
		o, err := exec.Command(bin, append([]string{"node"}, append(args, "-C", site, "--state", state)...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, o)
		}
		return string(o)
	}
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 4<<30); err != nil {
		t.Fatal(err)
	}
	power := func(tap, mac, disk string) *testtool.VM {
		return testtool.NewVM(t, testvm.Config{Binary: qemu, Firmware: testvm.OVMF, Reboot: true,
			NICs:   []testvm.NIC{{Netdev: "tap", Ifname: tap, MAC: mac, BootIndex: 1}},
			Drives: []testvm.Drive{{Path: disk, BootIndex: 2}},
			Extra:  ovmfIPv4Only})
	}
	wait := func(vm *testtool.VM, re string) []string {
		t.Helper()
		return waitInstall(t, vm.WaitFor, re)
	}
	// serveLines is serve's log from mark on (serve flushes every 100 ms).
	serveLines := func(mark int) string {
		time.Sleep(300 * time.Millisecond)
		return log.String()[mark:]
	}
	const mac1 = "52:54:00:00:00:21"
	installed := `^bellbuild: node=i1 profile=inst slot=a image=([0-9a-f]{12}) changes=\d+ errors=0$`

	// 1. Install, then boot from the disk.
	vm := power("tap0", mac1, disk)
	wait(vm, `bellbuild: install: node i1: image [0-9a-f]{12} \(profile inst\) onto /dev/vda \(4\.0 GiB, empty\)`)
	// Progress: a line every 3 s, and the rate at the end (this copy
	// may take less than 3 s).
	wait(vm, `bellbuild: install: \d+ MB in [0-9.]+ s, [0-9.]+ MB/s`)
	wait(vm, `bellbuild: install: done: /dev/vda holds image [0-9a-f]{12}`)
	wait(vm, `bellbuild: install: rebooting from the disk`)
	mark := len(log.String())
	img := wait(vm, installed)[1]
	if l := serveLines(0); !regexpMatch(`msg=boot phase=install-done mac=`+mac1+` node=i1 from=192\.0\.2\.1\d\d disk=/dev/vda image=`+img, l) {
		t.Errorf("serve logged no install-done for i1:\n%s", l)
	}
	if l := serveLines(mark); regexpMatch(`phase=(kernel|initrd) mac=`+mac1, l) || !regexpMatch(`phase=ipxe-script mac=`+mac1+` .*boot=local-disk`, l) {
		t.Errorf("the boot after the install fetched a kernel, or was not told to boot its disk:\n%s", l)
	}
	if l := nodeCmd("list"); !regexpMatch(`(?m)^i1 +unknown +manual +- +- +- +/dev/vda +20\d\d-\d\d-\d\dT[0-9:]+Z +a:`+img, l) {
		t.Errorf("node list:\n%s", l)
	}
	vm.Close()

	// 2. Power on again: the disk, no install.
	mark = len(log.String())
	vm = power("tap0", mac1, disk)
	wait(vm, installed)
	if strings.Contains(vm.Console(), "bellbuild: install:") {
		t.Errorf("the second power-on installed again:\n%s", vm.Console())
	}
	if l := serveLines(mark); regexpMatch(`phase=(kernel|initrd|install-start) mac=`+mac1, l) {
		t.Errorf("the second power-on fetched a kernel or installed:\n%s", l)
	}
	vm.Close()

	// 3. Reinstall.
	if o := nodeCmd("reinstall", "i1"); !strings.Contains(o, "install cleared") {
		t.Fatalf("reinstall: %s", o)
	}
	vm = power("tap0", mac1, disk)
	wait(vm, `bellbuild: install: wiping /dev/vda \(it held a GPT\)`)
	wait(vm, `bellbuild: install: done: /dev/vda holds image`)
	wait(vm, `bellbuild: install: rebooting from the disk`)
	vm.Close()

	// 4. wipe: false, a disk with a filesystem: refused, unchanged.
	used := filepath.Join(t.TempDir(), "used.img")
	if o, err := exec.Command("truncate", "-s", "1G", used).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v\n%s", err, o)
	}
	if o, err := exec.Command("mkfs.ext4", "-q", "-F", used).CombinedOutput(); err != nil {
		testtool.Skipf(t, "mkfs.ext4: %v\n%s", err, o)
	}
	before := streamSum(t, used)
	vm = power("tap1", "52:54:00:00:00:22", used)
	wait(vm, `^bellbuild: the install is refused: install\.disk "largest": /dev/vda: refused: it holds an ext2/3/4 filesystem \(set install\.wipe: true to write over it\); disks found: /dev/vda \(1\.0 GiB, holds an ext2/3/4 filesystem\); powering off$`)
	select {
	case <-vm.Exited():
	case <-time.After(2 * time.Minute):
		t.Error("the refused installer did not power off")
	}
	if after := streamSum(t, used); after != before {
		t.Errorf("the refused disk changed: sha256 %s, was %s", after, before)
	}
	if l := serveLines(0); !regexpMatch(`phase=install-failed mac=52:54:00:00:00:22 node=i2 .*error="install\.disk`, l) {
		t.Errorf("serve logged no failed install for i2")
	}
}

// streamSum is a big file's SHA-256, read as a stream.
func streamSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
