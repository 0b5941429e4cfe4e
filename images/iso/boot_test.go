package iso

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/cpio"
	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func fileEntry(t *testing.T, path, src string, mode os.FileMode) fstree.Entry {
	t.Helper()
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	return fstree.Entry{Path: path, Type: fstree.Regular, Mode: mode, Size: st.Size(), Data: fstree.File(src)}
}

// Where Debian's isolinux and syslinux-common packages put ISOLINUX.
const (
	isolinuxBin = "/usr/lib/ISOLINUX/isolinux.bin"
	ldlinuxC32  = "/usr/lib/syslinux/modules/bios/ldlinux.c32"
)

// TestBoot boots the ISO three times: under OVMF as a CD-ROM (El Torito's
// EFI section) and as a disk (the hybrid MBR's EFI partition, as from a USB
// stick), each time systemd-boot in the EFI image starting the kernel; and
// under SeaBIOS as a CD-ROM, El Torito's default entry starting ISOLINUX.
// Every time the initramfs mounts the medium with Linux's isofs and reads
// the files back, multi-extent ones included.
func TestBoot(t *testing.T) {
	testtool.SkipVM(t)
	for _, p := range []string{testvm.OVMF, disk.SystemdBoot, "/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			testtool.Skipf(t, "%v (Debian packages ovmf, systemd-boot-efi, busybox-static)", err)
		}
	}
	kernel, modDir, mods := fixture.HostModules(t, "ata_piix", "sr_mod", "virtio_pci", "virtio_blk", "isofs")
	var names []string
	for _, m := range mods {
		names = append(names, filepath.Base(m))
	}
	init := `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /iso
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ` + strings.Join(names, " ") + `; do insmod /mods/$m; done
echo "BELLISO cmdline=$(cat /proc/cmdline) END"
for i in 1 2 3 4 5 6 7 8 9 10; do
  for dev in /dev/sr0 /dev/vda; do
    [ -b $dev ] && mount -t iso9660 -o ro $dev /iso 2>/dev/null && break 2
  done
  sleep 1
done
echo "BELLISO dev=$dev label=$(findfs LABEL=BELLBUILD) END"
echo "BELLISO node=$(cat /iso/bellbuild/node.json) END"
echo "BELLISO root=$(sha256sum /iso/bellbuild/root.squashfs | cut -d' ' -f1) END"
echo BELLISO done
poweroff -f
`
	initrd := fstree.New()
	initrd.AddFile("init", []byte(init), 0o755, 0, 0)
	initrd.Add(fileEntry(t, "bin/busybox", "/bin/busybox", 0o755))
	for _, m := range mods {
		initrd.Add(fileEntry(t, "mods/"+filepath.Base(m), filepath.Join(modDir, m), 0o644))
	}
	initrd.Reproducible(epoch)
	var cpioBuf bytes.Buffer
	if err := cpio.Write(&cpioBuf, initrd, cpio.Options{}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(kernel)
	if err != nil {
		t.Fatal(err)
	}
	const cmdline = "console=ttyS0 bellbuild.medium=iso panic=-1"
	esp, err := disk.ESP(disk.Boot{
		Kernel: fstree.File(kernel), KernelSize: st.Size(),
		Initrd: fstree.Bytes(cpioBuf.Bytes()), InitrdSize: int64(cpioBuf.Len()),
		Cmdline: cmdline, Epoch: epoch,
	})
	if err != nil {
		t.Fatal(err)
	}
	root := randomBytes(7, 2<<20+1)
	files := fstree.New()
	files.AddFile("bellbuild/root.squashfs", root, 0o644, 0, 0)
	files.AddFile("bellbuild/node.json", []byte(`{"node":"from-iso"}`), 0o644, 0, 0)
	files.Reproducible(epoch)
	// BIOS: ISOLINUX, with the same kernel, initramfs and command line as
	// ISO files, in an image of its own: ISOLINUX reads only the first
	// extent of a file, and the image below splits files into small ones.
	biosImg := ""
	_, noISOLINUX := os.Stat(isolinuxBin)
	if noISOLINUX == nil {
		bios := fstree.New()
		bios.Merge(files)
		bios.Add(fileEntry(t, "isolinux/isolinux.bin", isolinuxBin, 0o444))
		bios.Add(fileEntry(t, "isolinux/ldlinux.c32", ldlinuxC32, 0o444))
		bios.AddFile("isolinux/isolinux.cfg", []byte("SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nLABEL linux\n  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd.img\n  APPEND "+cmdline+"\n"), 0o444, 0, 0)
		bios.Add(fileEntry(t, "boot/vmlinuz", kernel, 0o444))
		bios.AddFile("boot/initrd.img", cpioBuf.Bytes(), 0o444, 0, 0)
		bios.Reproducible(epoch)
		biosImg = writeISO(t, bios, Options{Epoch: epoch, ESP: esp, BIOS: "isolinux/isolinux.bin"})
	}
	// Small extents: root.squashfs becomes nine multi-extent records that
	// Linux must join, and the firmware must still find the EFI image.
	setMaxExtent(t, 256<<10)
	img := writeISO(t, files, Options{Epoch: epoch, ESP: esp})

	for _, tc := range []struct {
		name     string
		firmware string
		drive    testvm.Drive
		dev      string
	}{
		{"cdrom", testvm.OVMF, testvm.Drive{Path: img, Interface: "ide", Media: "cdrom", ReadOnly: true}, "/dev/sr0"},
		{"usb-like disk", testvm.OVMF, testvm.Drive{Path: img, ReadOnly: true}, "/dev/vda"},
		{"BIOS cdrom", "", testvm.Drive{Path: biosImg, Interface: "ide", Media: "cdrom", ReadOnly: true}, "/dev/sr0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.firmware == "" && noISOLINUX != nil {
				testtool.Skipf(t, "%v (Debian packages isolinux, syslinux-common)", noISOLINUX)
			}
			t.Parallel() // the VMs at once: the boots are mostly waiting
			vm := testtool.NewVM(t, testvm.Config{Firmware: tc.firmware, Drives: []testvm.Drive{tc.drive}})
			if got := vm.Wait(`BELLISO cmdline=(.*) END$`)[1]; !strings.Contains(got, cmdline) {
				t.Errorf("kernel command line %q lacks %q", got, cmdline)
			}
			if got := vm.Wait(`BELLISO dev=(.*) END$`)[1]; got != tc.dev+" label="+tc.dev {
				t.Errorf("medium %q, want %s found by LABEL=BELLBUILD", got, tc.dev)
			}
			if got := vm.Wait(`BELLISO node=(.*) END$`)[1]; got != `{"node":"from-iso"}` {
				t.Errorf("node.json = %q", got)
			}
			if got := vm.Wait(`BELLISO root=(\w+) END$`)[1]; got != fmt.Sprintf("%x", sha256.Sum256(root)) {
				t.Errorf("root.squashfs hash %s", got)
			}
			vm.Wait(`BELLISO done`)
		})
	}
}
