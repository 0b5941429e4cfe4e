package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/iso"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/images/squashfs"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
)

// Boot media artifacts inside OUT/PROFILE (outputs: [raw, iso]).
const (
	DiskFile = "disk.raw"
	ISOFile  = "image.iso"
	// DiskInitrdFile is the initramfs disk.raw's ESP boots (the applier
	// as /init, the boot modules, the bundle; not the stage): what an
	// upgrade fetches with the kernel and the root image.
	DiskInitrdFile = "disk-initrd.cpio.zst"
)

// DiskInfo is the manifest's description of disk.raw: what an installer
// copies (each partition's extent, the rest being zeros) and what an
// upgrader fetches (the root image, the kernel and DiskInitrdFile). Its
// types are the install protocol's (package wire), which the installer,
// the upgrader and serve read: the manifest's disk section is defined
// once.
type DiskInfo = wire.ManifestDisk

// DiskRoot is where the root image is in disk.raw: a squashfs at the
// start of slot root-a, whose SHA-256 names the image (a slot's
// bellbuild.image=, a node's image.root).
type DiskRoot = wire.ManifestRoot

// DiskPartition is one partition of disk.raw: its place, and its extent
// (Used bytes from its start, with their SHA256; the rest are zeros).
type DiskPartition = wire.DiskPartition

// ESPMinSize is the smallest ESP of a disk with slots: it holds two
// slots' kernels and initramfs, and an upgrade's may be larger.
const ESPMinSize = 256 << 20

// Where the media keep the root image and the configuration
// (images/layout, where the init looks). The config volume (LABEL=BELLCONF,
// mounted by the init at /run/bellbuild/config) holds the bake's bundle as
// bellbuild/bundle.json; `bellbuild config write` adds a single node as
// bellbuild/node.json (images/confvol), which the init prefers.
const (
	ConfigBundlePath = layout.ConfigBundle
	ISORootPath      = layout.ISORoot
	ISOConfigPath    = layout.ISOBundle
)

// Kernel command line arguments the media add, telling the init where its
// root and its configuration are.
const (
	DiskRootArg = layout.DiskRootArg
	ISORootArg  = layout.ISORootArg
	ConfigArg   = layout.ConfigArg
)

// DataPartitionSize is the size of a disk's data partition (persist: true).
// The partition is not written at bake time, so disk.raw stays sparse; the
// init formats it (ext2, busybox mke2fs, carried in the ESP's initramfs as
// /bellbuild/mke2fs) on the first boot.
const DataPartitionSize = 256 << 20

// mke2fsPath is where the media initramfs carries busybox for formatting
// the data partition (busybox runs the applet its name says).
const mke2fsPath = layout.Mke2fs

// wantsMedia reports whether the profile asks for a disk or an ISO: both
// need the kernel and the initramfs.
func wantsMedia(outputs []string) bool {
	return slices.Contains(outputs, "raw") || slices.Contains(outputs, "iso")
}

// writeMedia writes disk.raw and/or image.iso into dir, where the kernel
// and the initramfs already are:
//
//  1. the ESP tree: systemd-boot, the kernel, the initramfs and a loader
//     entry with the image's command line plus where the root is;
//  2. disk.raw: the ESP, the whole image tree as a squashfs written
//     straight into the root partition, and the config volume;
//  3. image.iso: the same ESP as the El Torito EFI image, the squashfs and
//     the bundle as files, and (amd64 only) ISOLINUX for BIOS (see
//     addISOLINUX).
//
// systemd-boot is the architecture's (BOOTX64.EFI, BOOTAA64.EFI): the
// build host's, or Debian's systemd-boot-efi for arm64, fetched.
func (b *baker) writeMedia(ctx context.Context, im *image, dir string, m *Manifest) error {
	epoch := b.epoch()
	loader, loaderIn, err := b.systemdBootFor(ctx, im.arch)
	if err != nil {
		return fmt.Errorf("media: boot loader: %w", err)
	}
	if loaderIn != nil {
		m.Inputs = append(m.Inputs, *loaderIn)
	}
	kernel := filepath.Join(dir, KernelFile)
	initrd, err := b.mediaInitrd(ctx, im, dir)
	if err != nil {
		return fmt.Errorf("media initramfs: %w", err)
	}
	if initrd != filepath.Join(dir, InitramfsFile) {
		defer os.Remove(initrd)
	}
	cmdline := func(arg string) string { return strings.TrimSpace(m.Cmdline + " " + arg + " " + ConfigArg) }
	esp := func(arg string) (*fstree.Tree, error) {
		kst, err := os.Stat(kernel)
		if err != nil {
			return nil, err
		}
		ist, err := os.Stat(initrd)
		if err != nil {
			return nil, err
		}
		return disk.ESP(disk.Boot{
			Kernel: fstree.File(kernel), KernelSize: kst.Size(),
			Initrd: fstree.File(initrd), InitrdSize: ist.Size(),
			Cmdline: cmdline(arg),
			Title:   "bellbuild " + im.spec.Profile,
			Epoch:   epoch,
			Loader:  loader,
			Arch:    im.arch,
		})
	}
	root := im.fullTree()
	root.Reproducible(epoch)
	if n, first := dropACLs(root); n > 0 {
		b.log.Warn("squashfs root: POSIX ACLs dropped (squashfs and the kernel's squashfs driver have none)", "entries", n, "first", first)
	}
	bundle, err := readBundleFile(im)
	if err != nil {
		return err
	}
	// zstd level 1: on a ~300 MB root it is faster than mksquashfs at its
	// level 3 for 3% more bytes, where our level 3 is ~1.3x slower
	// (docs/benchmarks.md, "Squashfs").
	sqOpts := squashfs.Options{MkfsTime: epoch, Level: 1}

	if slices.Contains(im.spec.Outputs, "raw") {
		b.p.begin("disk " + DiskFile)
		// The ESP boots slot a, whose entry names the root image by its
		// hash: it is made once the root is written.
		kst, err := os.Stat(kernel)
		if err != nil {
			return fmt.Errorf("disk: %w", err)
		}
		ist, err := os.Stat(initrd)
		if err != nil {
			return fmt.Errorf("disk: %w", err)
		}
		conf := fstree.New()
		conf.AddFile(ConfigBundlePath, bundle, 0o600, 0, 0)
		conf.Reproducible(epoch)
		l, err := disk.WriteFile(filepath.Join(dir, DiskFile), disk.Spec{
			ESPFunc: func(sum string) (*fstree.Tree, error) {
				return disk.ESP(disk.Boot{
					Kernel: fstree.File(kernel), KernelSize: kst.Size(),
					Initrd: fstree.File(initrd), InitrdSize: ist.Size(),
					Cmdline: layout.SlotCmdline(m.Cmdline, layout.SlotA, sum),
					Title:   "bellbuild " + im.spec.Profile + " (slot a)",
					Epoch:   epoch,
					Loader:  loader,
					Arch:    im.arch,
					Slot:    layout.SlotA, Tries: layout.DefaultTries,
				})
			},
			ESPSize: max(ESPMinSize, 4*(kst.Size()+ist.Size())),
			RootFunc: func(w io.WriteSeeker) (int64, error) {
				return squashfs.Write(w, root, sqOpts)
			},
			Slots:    true,
			SlotSize: im.spec.SlotSize,
			Config:   conf,
			Arch:     im.arch,
			DataSize: dataSize(im),
		})
		if err != nil {
			return err
		}
		a, err := fileArtifact(dir, DiskFile)
		if err != nil {
			return err
		}
		m.Artifacts = append(m.Artifacts, a)
		// The ESP's initramfs, for upgrades.
		if err := copyFileSync(initrd, filepath.Join(dir, DiskInitrdFile)); err != nil {
			return fmt.Errorf("disk: %w", err)
		}
		a, err = fileArtifact(dir, DiskInitrdFile)
		if err != nil {
			return err
		}
		m.Artifacts = append(m.Artifacts, a)
		m.Disk = diskInfo(l, im.arch)
		b.log.Debug("disk written", "size", l.Size, "guid", l.GUID)
	}

	if slices.Contains(im.spec.Outputs, "iso") {
		b.p.begin("ISO " + ISOFile)
		t, err := esp(ISORootArg)
		if err != nil {
			return fmt.Errorf("iso: %w", err)
		}
		// The squashfs is staged once: ISO 9660 needs every file's size
		// before its directories are written.
		sq, err := os.CreateTemp(dir, ".root.squashfs.")
		if err != nil {
			return err
		}
		defer os.Remove(sq.Name())
		defer sq.Close()
		n, err := squashfs.Write(sq, root, sqOpts)
		if err != nil {
			return fmt.Errorf("iso: %w", err)
		}
		files := fstree.New()
		files.Add(fstree.Entry{Path: ISORootPath, Type: fstree.Regular, Mode: 0o444, Size: n, Data: fstree.File(sq.Name())})
		files.AddFile(ISOConfigPath, bundle, 0o444, 0, 0)
		bios := ""
		if im.arch == "amd64" {
			if err := addISOLINUX(files, kernel, initrd, cmdline(ISORootArg), im.spec.Profile); err != nil {
				return fmt.Errorf("iso: BIOS boot: %w", err)
			}
			bios = isolinuxPath
		}
		files.Reproducible(epoch)
		out, err := os.OpenFile(filepath.Join(dir, ISOFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, artifactMode)
		if err != nil {
			return err
		}
		err = iso.Write(out, files, iso.Options{VolumeID: layout.ISOLabel, Epoch: epoch, ESP: t, BIOS: bios})
		if err == nil {
			err = out.Sync()
		}
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		a, err := fileArtifact(dir, ISOFile)
		if err != nil {
			return err
		}
		m.Artifacts = append(m.Artifacts, a)
	}
	return ctx.Err()
}

// ISOLINUX, from Debian's isolinux and syslinux-common packages, boots the
// ISO under BIOS: El Torito's default entry loads isolinux.bin, which reads
// isolinux.cfg and starts the same kernel and initramfs as systemd-boot
// does under UEFI (from the ISO 9660 tree rather than the EFI image).
const (
	ISOLINUXBin = "/usr/lib/ISOLINUX/isolinux.bin"
	LDLINUXC32  = "/usr/lib/syslinux/modules/bios/ldlinux.c32"

	isolinuxPath = "isolinux/isolinux.bin"
	isoKernel    = "bellbuild/vmlinuz"
	isoInitrd    = "bellbuild/initrd.img"
)

// addISOLINUX adds ISOLINUX, its configuration, the kernel and the initrd
// to an ISO's files.
func addISOLINUX(files *fstree.Tree, kernel, initrd, cmdline, profile string) error {
	for _, f := range []struct{ path, src string }{
		{isolinuxPath, ISOLINUXBin},
		{"isolinux/ldlinux.c32", LDLINUXC32},
		{isoKernel, kernel},
		{isoInitrd, initrd},
	} {
		st, err := os.Stat(f.src)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && (f.src == ISOLINUXBin || f.src == LDLINUXC32) {
				return fmt.Errorf("%w (apt-get install isolinux syslinux-common)", err)
			}
			return err
		}
		files.Add(fstree.Entry{Path: f.path, Type: fstree.Regular, Mode: 0o444, Size: st.Size(), Data: fstree.File(f.src)})
	}
	cfg := "# bellbuild " + profile + ": BIOS boot (UEFI boots systemd-boot from the EFI image)\n" +
		"SERIAL 0 115200\nDEFAULT bellbuild\nPROMPT 0\nTIMEOUT 0\n" +
		"LABEL bellbuild\n  KERNEL /" + isoKernel + "\n  INITRD /" + isoInitrd + "\n  APPEND " + cmdline + "\n"
	files.AddFile("isolinux/isolinux.cfg", []byte(cfg), 0o444, 0, 0)
	return nil
}

// diskInfo is the manifest's description of a written disk.
func diskInfo(l *disk.Layout, arch string) *DiskInfo {
	d := &DiskInfo{Arch: arch, Size: l.Size}
	for _, p := range l.Partitions {
		d.Partitions = append(d.Partitions, DiskPartition{Name: p.Name, Offset: p.Offset, Size: p.Size, GUID: p.GUID, Used: p.Used, SHA256: p.Extent})
		if p.Name == disk.SlotA {
			d.Root = DiskRoot{SHA256: p.SHA256, Size: p.Used, Offset: p.Offset}
			d.SlotSize = p.Size
		}
	}
	return d
}

// copyFileSync copies src to dst (mode artifactMode), synced.
func copyFileSync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, artifactMode)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

func dataSize(im *image) int64 {
	if im.spec.Persist {
		return DataPartitionSize
	}
	return 0
}

// mediaInitrd writes the initramfs the media's ESP carries, in dir, and
// returns its path. Its only job is to find and mount the root (the whole
// image is the squashfs), so it holds the kernel modules, the applier as
// /init and the bundle, not the stage: a few MiB instead of the whole
// image in memory. A kernel taken from the stage brings the modules from
// the stage's /lib/modules.
func (b *baker) mediaInitrd(ctx context.Context, im *image, dir string) (string, error) {
	t := fstree.New()
	if im.kernel.modules != "" {
		t.Merge(im.added)
	} else {
		// A kernel from the stage: its modules are copied out of the
		// stage's /lib/modules.
		stage, err := im.stageTree()
		if err != nil {
			return "", err
		}
		mods, err := stageModuleTree(stage, im.kernel.version, b.modules(im.arch))
		if err != nil {
			return "", err
		}
		t.Merge(mods)
	}
	t.Merge(im.applier)
	t.Merge(im.config)
	if im.spec.Persist {
		bin, _, err := b.busyboxFor(ctx, im.arch)
		if err != nil {
			return "", fmt.Errorf("persist: busybox to format the data partition: %w", err)
		}
		real, err := filepath.EvalSymlinks(bin)
		if err != nil {
			return "", fmt.Errorf("persist: %w", err)
		}
		if err := checkStatic(real); err != nil {
			return "", fmt.Errorf("persist: %w", err)
		}
		st, err := os.Stat(real)
		if err != nil {
			return "", fmt.Errorf("persist: %w", err)
		}
		t.Add(fstree.Entry{Path: mke2fsPath, Type: fstree.Regular, Mode: 0o755, Size: st.Size(), Data: fstree.File(real)})
	}
	file := filepath.Join(dir, ".media-initrd.cpio.zst")
	if _, err := writeSegment(ctx, t, file, b.epoch(), stageInode, false, b.p); err != nil {
		return "", err
	}
	return file, nil
}

// readBundleFile returns the bundle bytes the bake put in the image.
func readBundleFile(im *image) ([]byte, error) {
	e := im.config.Get(bundlePath)
	if e == nil || e.Data == nil {
		return nil, fmt.Errorf("media: no %s in the image", bundlePath)
	}
	r, err := e.Data.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// fileArtifact hashes a written artifact.
func fileArtifact(dir, name string) (Artifact, error) {
	sum, err := fileSHA256(filepath.Join(dir, name))
	if err != nil {
		return Artifact{}, err
	}
	st, err := os.Stat(filepath.Join(dir, name))
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Name: name, Size: st.Size(), SHA256: sum}, nil
}

// dropACLs removes the POSIX ACL attributes (system.posix_acl_access and
// system.posix_acl_default, which systemd sets on /var/log/journal) from
// t's entries: squashfs has no namespace to hold them and the kernel's
// driver no ACL support, so mksquashfs drops them too. Any other system.
// attribute still stops the squashfs writer. It returns how many entries
// lost one and the first of them. t's entries get new maps: the stage's
// tree, which may share them, is left as it was.
func dropACLs(t *fstree.Tree) (int, string) {
	n, first := 0, ""
	for _, e := range t.Walk() {
		_, a := e.Xattrs["system.posix_acl_access"]
		_, d := e.Xattrs["system.posix_acl_default"]
		if !a && !d {
			continue
		}
		x := maps.Clone(e.Xattrs)
		delete(x, "system.posix_acl_access")
		delete(x, "system.posix_acl_default")
		e.Xattrs = x
		if n == 0 {
			first = e.Path
		}
		n++
	}
	return n, first
}
