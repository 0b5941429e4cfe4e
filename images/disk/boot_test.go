package disk

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/cpio"
	"github.com/bellbuild/bellbuild/images/fstree"
	sample "github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// TestUEFIBoot boots the disk under OVMF: systemd-boot from the ESP loads
// the kernel and initramfs with the entry's command line, and the
// initramfs finds the partitions by name and label, reads the root image
// back and mounts both FAT volumes with Linux's own vfat driver.
func TestUEFIBoot(t *testing.T) {
	testtool.SkipVM(t)
	need(t, "sgdisk")
	if _, err := os.Stat(testvm.OVMF); err != nil {
		testtool.Skipf(t, "%s missing (Debian package ovmf): %v", testvm.OVMF, err)
	}
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		testtool.Skipf(t, "%s missing (Debian package busybox-static): %v", busybox, err)
	}
	kernel, modDir, mods := sample.HostModules(t, "virtio_pci", "virtio_blk", "fat", "vfat", "nls_cp437", "nls_ascii", "nls_utf8")

	fx := newFixture("booted-node")
	// A long, non-ASCII name: Linux must read the long-name entries.
	fx.config.AddFile("bellbuild/Long name, ünïcödé – 2.json", []byte("lfn"), 0o644, 0, 0)
	fx.config.Reproducible(epoch)
	rootSum := sha256.Sum256(fx.root)

	// The initramfs: busybox, the modules to read the disk, and an init
	// that reports what it sees on the console, then powers off.
	init := fmt.Sprintf(`#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /esp /conf
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in %s; do insmod /mods/$m; done
echo "BELLTEST cmdline=$(cat /proc/cmdline) END"
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda3 ] && break; sleep 1; done
echo "BELLTEST parts=$(cd /sys/class/block && echo vda*) END"
echo "BELLTEST root=$(head -c %d /dev/vda2 | sha256sum | cut -d' ' -f1) END"
conf=$(findfs LABEL=BELLCONF)
mount -t vfat -o ro,utf8 "$conf" /conf && echo "BELLTEST conf=$conf $(cat /conf/bellbuild/node.json) END"
echo "BELLTEST lfn=$(cat "/conf/bellbuild/Long name, ünïcödé – 2.json") $(cd /conf/bellbuild && for f in *; do printf '%%s|' "$f"; done) END"
mount -t vfat -o ro /dev/vda1 /esp && echo "BELLTEST esp=$(cat /esp/loader/entries/bellbuild.conf | grep ^options) END"
echo BELLTEST done
poweroff -f
`, strings.Join(func() []string {
		var b []string
		for _, m := range mods {
			b = append(b, filepath.Base(m))
		}
		return b
	}(), " "), len(fx.root))
	initrd := fstree.New()
	initrd.AddFile("init", []byte(init), 0o755, 0, 0)
	initrd.Add(fstree.Entry{Path: "bin/busybox", Type: fstree.Regular, Mode: 0o755, Size: fileSize(t, busybox), Data: fstree.File(busybox)})
	for _, m := range mods {
		p := filepath.Join(modDir, m)
		initrd.Add(fstree.Entry{Path: "mods/" + filepath.Base(m), Type: fstree.Regular, Mode: 0o644, Size: fileSize(t, p), Data: fstree.File(p)})
	}
	initrd.Reproducible(epoch)
	var cpioBuf bytes.Buffer
	if err := cpio.Write(&cpioBuf, initrd, cpio.Options{}); err != nil {
		t.Fatal(err)
	}

	const cmdline = "console=ttyS0 root=PARTLABEL=bellroot ro panic=-1"
	esp, err := ESP(Boot{
		Kernel: fstree.File(kernel), KernelSize: fileSize(t, kernel),
		Initrd: fstree.Bytes(cpioBuf.Bytes()), InitrdSize: int64(cpioBuf.Len()),
		Cmdline: cmdline, Epoch: epoch,
	})
	if err != nil {
		t.Fatal(err)
	}
	img, _ := build(t, Spec{ESP: esp, Root: bytes.NewReader(fx.root), RootSize: int64(len(fx.root)), Config: fx.config})

	vm := testtool.NewVM(t, testvm.Config{
		Firmware: testvm.OVMF,
		Drives:   []testvm.Drive{{Path: img}},
	})
	if got := vm.Wait(`BELLTEST cmdline=(.*) END$`)[1]; !strings.Contains(got, cmdline) {
		t.Errorf("kernel command line %q lacks the loader entry's %q", got, cmdline)
	}
	if got := vm.Wait(`BELLTEST parts=(.*) END$`)[1]; got != "vda vda1 vda2 vda3" {
		t.Errorf("block devices %q, want vda vda1 vda2 vda3", got)
	}
	if got := vm.Wait(`BELLTEST root=(\w+) END$`)[1]; got != fmt.Sprintf("%x", rootSum) {
		t.Errorf("root partition hash %s, want %x", got, rootSum)
	}
	if got := vm.Wait(`BELLTEST conf=(.*) END$`)[1]; got != `/dev/vda3 {"node":"booted-node"}` {
		t.Errorf("config volume: %q", got)
	}
	if got := vm.Wait(`BELLTEST lfn=(.*) END$`)[1]; got != "lfn Long name, ünïcödé – 2.json|node.json|" {
		t.Errorf("long names as Linux lists them: %q", got)
	}
	if got := vm.Wait(`BELLTEST esp=(.*) END$`)[1]; got != "options "+cmdline {
		t.Errorf("ESP entry: %q", got)
	}
	vm.Wait(`BELLTEST done`)
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
