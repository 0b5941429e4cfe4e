package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// installInterruptNodes are two nodes of installVMProfile: i1 is
// interrupted, i3 boots from what i1's disk held when it was.
const installInterruptNodes = `nodes:
- {name: i1, mac: "52:54:00:00:00:21", profile: inst}
- {name: i3, mac: "52:54:00:00:00:23", profile: inst}
`

// TestInstallInterruptedVM kills serve (SIGKILL) while the installer
// streams disk.raw onto a blank disk, under OVMF in a namespace:
//
//  1. the half-written disk holds no partition table (no protective MBR,
//     no GPT header at either end);
//  2. serve started again on the same state: the installer resumes,
//     completes, and the machine comes up from its disk in slot a;
//  3. a machine started from a copy of the half-written disk, the disk
//     first in its boot order, does not boot it: the firmware goes on to
//     the network, and serve boots it into the installer.
//
// The tap's egress (serve to the VM) is held to 8 Mbit/s by a token
// bucket inside the namespace while the disk streams, so that the kill
// lands mid-stream.
func TestInstallInterruptedVM(t *testing.T) {
	testtool.SkipVM(t)
	testtool.Stat(t, testvm.OVMF, "ovmf")
	tc := testtool.LookPath(t, "tc", "iproute2")
	ns := newNetns(t, 2)
	bin := testtool.Binary(t)
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "site.yaml"), "domain: example.org\n")
	writeTestFile(t, filepath.Join(site, "profiles/inst.yaml"), installVMProfile)
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), installInterruptNodes)
	out := t.TempDir()
	if b, err := exec.Command(bin, "image", "inst", "-C", site, "-o", out).CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image: %v\n%s", err, b)
	}
	state := t.TempDir()
	serveArgs := []string{"-C", site, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out, "--state", state}
	serve := startServeProcess(t, ns, bin, serveArgs...)
	qemu := ns.qemu(t)
	blank := func(p string) {
		t.Helper()
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 4<<30); err != nil {
			t.Fatal(err)
		}
	}
	disk := filepath.Join(t.TempDir(), "disk.img")
	blank(disk)
	power := func(tap, mac, disk string, netBoot, diskBoot int) *testtool.VM {
		return testtool.NewVM(t, testvm.Config{Binary: qemu, Firmware: testvm.OVMF, Reboot: true,
			NICs:   []testvm.NIC{{Netdev: "tap", Ifname: tap, MAC: mac, BootIndex: netBoot}},
			Drives: []testvm.Drive{{Path: disk, BootIndex: diskBoot}},
			Extra:  ovmfIPv4Only})
	}
	// The patterns are not anchored (as TestInstallVM's): the kernel's
	// own messages (a driver probing, a link coming up) may land on the
	// serial console's line just before the installer's. A CI run once
	// waited here for the first line until its timeout, while the
	// console showed the install done.
	wait := func(vm *testtool.VM, re string) []string {
		t.Helper()
		return waitInstall(t, vm.WaitForLine, re)
	}
	shape := func(args ...string) {
		t.Helper()
		if o, err := ns.command(tc, append([]string{"qdisc"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("tc qdisc %v: %v\n%s", args, err, o)
		}
	}

	// 1. The install starts; serve is killed mid-stream.
	vm := power("tap0", "52:54:00:00:00:21", disk, 1, 2)
	wait(vm, `bellbuild: install: node i1: image [0-9a-f]{12} \(profile inst\) onto /dev/vda \(4\.0 GiB, empty\)`)
	shape("add", "dev", "tap0", "root", "tbf", "rate", "8mbit", "burst", "32k", "latency", "400ms")
	// Kill once 2 MB are written, well before the end.
	var m []string
	for {
		m = wait(vm, `bellbuild: install: (\d+)% (\d+)/(\d+) MB `)
		if pct, _ := strconv.Atoi(m[1]); pct > 80 {
			t.Fatalf("a progress line says %s%%: the stream is not slow enough to interrupt", m[1])
		}
		if mb, _ := strconv.Atoi(m[2]); mb >= 2 {
			break
		}
	}
	serve.kill()
	wait(vm, `bellbuild: install: [a-z-]+: (connection lost at \d+ MB .*; resuming|.*; retrying from \d+ MB)`)
	half := filepath.Join(t.TempDir(), "half.img")
	if o, err := exec.Command("cp", "--sparse=always", disk, half).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, o)
	}
	noPartitionTable(t, half)
	held := allocated(t, half)
	if held < 1<<20 {
		t.Fatalf("the disk held %d bytes when serve was killed: nothing was interrupted", held)
	}
	t.Logf("serve killed at %s%% (%s of %s MB); the half-written disk held %d MB", m[1], m[2], m[3], held>>20)

	// 2. serve again, same state: the install resumes and completes.
	shape("del", "dev", "tap0", "root")
	serve = startServeProcess(t, ns, bin, serveArgs...)
	wait(vm, `bellbuild: install: done: /dev/vda holds image [0-9a-f]{12}`)
	wait(vm, `bellbuild: install: rebooting from the disk`)
	img := wait(vm, `bellbuild: node=i1 profile=inst slot=a image=([0-9a-f]{12}) changes=\d+ errors=0`)[1]
	if l := serve.log.String(); !regexpMatch(`msg=boot phase=install-done mac=52:54:00:00:00:21 node=i1 .*image=`+img, l) {
		t.Errorf("the second serve logged no install-done for i1:\n%s", l)
	}
	vm.Close()

	// 3. The half-written disk, first in the boot order, is not booted:
	// the firmware goes on to the network and serve's installer.
	// OVMF says "starting" only for a loader it found on the disk.
	vm = power("tap1", "52:54:00:00:00:23", half, 2, 1)
	if m := wait(vm, `bellbuild: install: node i3: image [0-9a-f]{12} \(profile inst\) onto /dev/vda|BdsDxe: starting (Boot\d+ "UEFI Misc Device".*)`); m[1] != "" {
		t.Errorf("the firmware booted the half-written disk: %s", m[1])
	}
	vm.Close()
	if l := serve.log.String(); !regexpMatch(`phase=kernel mac=52:54:00:00:00:23`, l) {
		t.Errorf("serve logged no kernel for i3:\n%s", l)
	}
}

// allocated is how many bytes of the sparse file at p hold data.
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// noPartitionTable fails unless the disk image at p holds neither a
// protective MBR's signature nor a GPT header at its start or its end.
func noPartitionTable(t *testing.T, p string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 1024)
	last := make([]byte, 512)
	if _, err := f.ReadAt(first, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(last, fi.Size()-512); err != nil {
		t.Fatal(err)
	}
	if first[510] == 0x55 && first[511] == 0xaa {
		t.Errorf("%s: the half-written disk holds an MBR signature", p)
	}
	if bytes.HasPrefix(first[512:], []byte("EFI PART")) {
		t.Errorf("%s: the half-written disk holds a primary GPT header", p)
	}
	if bytes.HasPrefix(last, []byte("EFI PART")) {
		t.Errorf("%s: the half-written disk holds a backup GPT header", p)
	}
}
