package disk

import (
	"fmt"
	"os"
	"strings"

	"github.com/bellbuild/bellbuild/images/fstree"
	imagelayout "github.com/bellbuild/bellbuild/images/layout"
)

// SystemdBoot is where Debian's systemd-boot-efi package installs the
// x86-64 UEFI boot loader.
const SystemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// Paths of the boot files on the ESP (and in the ISO's EFI image).
const (
	BootLoaderPath = "EFI/BOOT/BOOTX64.EFI"
	LoaderConfPath = "loader/loader.conf"
	EntryPath      = "loader/entries/bellbuild.conf"
	KernelPath     = "bellbuild/vmlinuz"
	InitrdPath     = "bellbuild/initrd.img"
)

// Boot is what the EFI System Partition boots.
type Boot struct {
	// Kernel and Initrd are the files to boot, with their sizes.
	Kernel     fstree.Content
	KernelSize int64
	Initrd     fstree.Content
	InitrdSize int64
	// Cmdline is the kernel command line, e.g.
	// "root=PARTLABEL=bellroot ro console=ttyS0".
	Cmdline string
	// Title is the boot menu title; "" means "bellbuild".
	Title string
	// Loader is the UEFI boot loader to install as the removable-media
	// default (EFI/BOOT/BOOTX64.EFI, BOOTAA64.EFI on arm64); "" means
	// SystemdBoot on amd64, and is an error on another architecture.
	Loader string
	// Arch is the architecture booted ("" is AMD64).
	Arch string
	// Epoch is every file's modification time (SOURCE_DATE_EPOCH).
	Epoch int64
	// Slot, when set (a or b), makes the ESP of a disk with two root
	// slots: the kernel and initramfs under bellbuild/SLOT/, one entry
	// bellbuild-1-SLOT+TRIES.conf (systemd's boot counting, see
	// layout.Entry) and a loader.conf that boots the newest entry.
	Slot string
	// Tries is the slot entry's boot counter (0: none, a good entry).
	Tries int
}

// ESP returns the tree of an EFI System Partition that boots b with
// systemd-boot: the boot loader as the removable-media default, a
// loader.conf that boots the one entry at once, and the entry with the
// kernel, the initramfs and the command line.
func ESP(b Boot) (*fstree.Tree, error) {
	info, err := lookupArch(b.Arch)
	if err != nil {
		return nil, err
	}
	loader := b.Loader
	if loader == "" && info.loaderPath == BootLoaderPath {
		loader = SystemdBoot
	}
	if loader == "" {
		return nil, fmt.Errorf("disk: no boot loader for %s", b.Arch)
	}
	st, err := os.Stat(loader)
	if err != nil {
		return nil, fmt.Errorf("disk: boot loader (Debian package systemd-boot-efi): %w", err)
	}
	if b.Kernel == nil || b.KernelSize <= 0 {
		return nil, fmt.Errorf("disk: ESP without a kernel")
	}
	title := b.Title
	if title == "" {
		title = "bellbuild"
	}
	if strings.ContainsAny(title+b.Cmdline, "\n") {
		return nil, fmt.Errorf("disk: title and command line must be one line each")
	}
	t := fstree.New()
	t.Add(fstree.Entry{Path: info.loaderPath, Type: fstree.Regular, Mode: 0o644, Size: st.Size(), Data: fstree.File(loader)})
	if b.Slot != "" {
		if b.Slot != imagelayout.SlotA && b.Slot != imagelayout.SlotB || b.Initrd == nil {
			return nil, fmt.Errorf("disk: slot %q: want a or b, with an initramfs", b.Slot)
		}
		t.AddFile(LoaderConfPath, []byte(imagelayout.LoaderConfText), 0o644, 0, 0)
		t.Add(fstree.Entry{Path: imagelayout.SlotKernel(b.Slot), Type: fstree.Regular, Mode: 0o644, Size: b.KernelSize, Data: b.Kernel})
		t.Add(fstree.Entry{Path: imagelayout.SlotInitrd(b.Slot), Type: fstree.Regular, Mode: 0o644, Size: b.InitrdSize, Data: b.Initrd})
		e := imagelayout.Entry{Gen: 1, Slot: b.Slot, Counting: b.Tries > 0, Left: b.Tries}
		t.AddFile(e.Path(), []byte(imagelayout.EntryText(title, b.Slot, b.Cmdline)), 0o644, 0, 0)
		t.Reproducible(b.Epoch)
		return t, nil
	}
	t.AddFile(LoaderConfPath, []byte("timeout 0\ndefault bellbuild.conf\neditor no\nconsole-mode keep\n"), 0o644, 0, 0)
	entry := "title " + title + "\nlinux /" + KernelPath + "\n"
	t.Add(fstree.Entry{Path: KernelPath, Type: fstree.Regular, Mode: 0o644, Size: b.KernelSize, Data: b.Kernel})
	if b.Initrd != nil {
		t.Add(fstree.Entry{Path: InitrdPath, Type: fstree.Regular, Mode: 0o644, Size: b.InitrdSize, Data: b.Initrd})
		entry += "initrd /" + InitrdPath + "\n"
	}
	if b.Cmdline != "" {
		entry += "options " + b.Cmdline + "\n"
	}
	t.AddFile(EntryPath, []byte(entry), 0o644, 0, 0)
	t.Reproducible(b.Epoch)
	return t, nil
}
