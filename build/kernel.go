package build

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/kmod"
	"github.com/bellbuild/bellbuild/images/layout"
)

// BootModules are the kernel modules every image carries and its init
// loads: the Debian kernel builds these as modules, and without them a VM
// or a server sees no disk, no NIC, and cannot mount a squashfs, overlay,
// FAT or ISO 9660 filesystem. A name the kernel has built in is skipped.
var BootModules = []string{
	"virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "e1000",
	"sd_mod", "sr_mod", "ata_piix",
	"loop", "squashfs", "overlay", "vfat", "nls_cp437", "nls_ascii", "isofs",
	"crc32c_generic", "ext4", // a disk's data partition (persist: true); ext4 needs crc32c
}

// ErrNoKernel means neither kernel.path nor the stage's /boot has a kernel.
var ErrNoKernel = errors.New("no kernel")

// kernel is the kernel an image boots and where its modules come from.
type kernel struct {
	// file is the kernel image on the build host, symlinks resolved (when
	// it comes from the stage tree, content is set instead).
	file    string
	sum     string // its sha256, once known
	content fstree.Content
	size    int64
	// version is its release ("6.1.0-56-amd64").
	version string
	// modules is the directory of its modules on the host ("" when the
	// stage carries them).
	modules string
	// display names it in the manifest instead of file (a kernel from a
	// Debian package: "deb:NAME=VERSION:ARCH:/boot/vmlinuz-...").
	display string
}

// hostKernel resolves kernel.path on the build host.
func hostKernel(p string) (*kernel, error) {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	f, err := os.Open(real)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	v, err := kmod.KernelVersion(f)
	if err != nil {
		// Fall back on Debian's file name: vmlinuz-VERSION.
		if base := filepath.Base(real); strings.HasPrefix(base, "vmlinuz-") {
			v = strings.TrimPrefix(base, "vmlinuz-")
		} else {
			return nil, fmt.Errorf("kernel %s: %w", real, err)
		}
	}
	k := &kernel{file: real, size: st.Size(), version: v}
	// The modules of a kernel in /boot are in /lib/modules/VERSION, next
	// to the /boot it sits in (a kernel in another root keeps its own).
	root := filepath.Dir(filepath.Dir(real))
	for _, dir := range []string{filepath.Join(root, "lib/modules", v), filepath.Join("/lib/modules", v)} {
		if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err == nil {
			k.modules = dir
			break
		}
	}
	return k, nil
}

// stageKernel finds the newest /boot/vmlinuz-* in the stage tree.
func stageKernel(t *fstree.Tree) (*kernel, error) {
	var cands []*fstree.Entry
	for _, e := range t.Children("boot") {
		if strings.HasPrefix(path.Base(e.Path), "vmlinuz-") && e.Type == fstree.Regular {
			cands = append(cands, e)
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("%w: the stage has no /boot/vmlinuz-*", ErrNoKernel)
	}
	sort.Slice(cands, func(i, j int) bool { return kmod.VersionLess(cands[i].Path, cands[j].Path) })
	e := cands[len(cands)-1]
	if e.Data == nil {
		return nil, fmt.Errorf("%w: /%s is empty", ErrNoKernel, e.Path)
	}
	v := strings.TrimPrefix(path.Base(e.Path), "vmlinuz-")
	if rc, err := e.Data.Open(); err == nil {
		if rs, ok := rc.(io.ReaderAt); ok {
			if hv, err := kmod.KernelVersion(rs); err == nil {
				v = hv
			}
		}
		rc.Close()
	}
	return &kernel{content: e.Data, size: e.Size, version: v}, nil
}

// moduleTree is the part of /lib/modules/VERSION an image needs: the
// module files for names (with dependencies), a modules.dep listing just
// them, modules.builtin, and /etc/bellbuild/modules naming what the init
// loads. The modules come from dir on the host.
func moduleTree(dir, version string, names []string) (*fstree.Tree, error) {
	return modulesFrom(dir, version, names, func(rel string) (fstree.Content, int64, error) {
		st, err := os.Stat(filepath.Join(dir, rel))
		if err != nil {
			return nil, 0, err
		}
		return fstree.File(filepath.Join(dir, rel)), st.Size(), nil
	})
}

// stageModuleTree is moduleTree for a kernel the stage carries: its
// modules come from the stage tree's /lib/modules/VERSION (through a
// merged-/usr /lib link). The media's small initramfs needs them, not the
// whole stage.
func stageModuleTree(stage *fstree.Tree, version string, names []string) (*fstree.Tree, error) {
	dir := resolveParents(stage, path.Join(layout.ModulesDir(version), "modules.dep"))
	dir = path.Dir(dir)
	return modulesFrom("stage:/"+dir, version, names, func(rel string) (fstree.Content, int64, error) {
		p := path.Join(dir, rel)
		e := stage.Get(p)
		if e != nil && e.LinkTo != "" {
			e = stage.Get(e.LinkTo)
		}
		if e == nil || e.Type != fstree.Regular || (e.Data == nil && e.Size > 0) {
			return nil, 0, fmt.Errorf("/%s: %w", p, fs.ErrNotExist)
		}
		if e.Data == nil {
			return fstree.Bytes(nil), 0, nil
		}
		return e.Data, e.Size, nil
	})
}

// modulesFrom builds moduleTree's tree, reading the modules directory
// (named dir in messages) through open, which returns a file's content and
// size by its path relative to the directory.
func modulesFrom(dir, version string, names []string, open func(rel string) (fstree.Content, int64, error)) (*fstree.Tree, error) {
	read := func(rel string) ([]byte, error) {
		c, _, err := open(rel)
		if err != nil {
			return nil, err
		}
		r, err := c.Open()
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return io.ReadAll(r)
	}
	dep, err := read("modules.dep")
	if err != nil {
		return nil, fmt.Errorf("kernel %s: modules: %w", version, err)
	}
	builtin, err := read("modules.builtin")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel %s: modules: %w", version, err)
	}
	mods, err := kmod.Parse(dir, bytes.NewReader(dep), builtin)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", version, err)
	}
	files, err := mods.Closure(names...)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", version, err)
	}
	sort.Strings(files)
	t := fstree.New()
	base := layout.ModulesDir(version)
	var deps strings.Builder
	for _, f := range files {
		c, size, err := open(f)
		if err != nil {
			return nil, fmt.Errorf("kernel modules: %w", err)
		}
		t.Add(fstree.Entry{Path: path.Join(base, f), Type: fstree.Regular, Mode: 0o644, Size: size, Data: c})
		fmt.Fprintf(&deps, "%s:", f)
		for _, d := range mods.Deps(f) {
			fmt.Fprintf(&deps, " %s", d)
		}
		deps.WriteString("\n")
	}
	t.AddFile(path.Join(base, "modules.dep"), []byte(deps.String()), 0o644, 0, 0)
	if builtin != nil {
		t.AddFile(path.Join(base, "modules.builtin"), builtin, 0o644, 0, 0)
	}
	t.AddFile(layout.Modules, []byte("# kernel modules bellbuild's init loads (with modules.dep)\n"+strings.Join(names, "\n")+"\n"), 0o644, 0, 0)
	return t, nil
}

// elfInterp returns the program interpreter of an ELF executable ("" for a
// static one).
func elfInterp(file string) (string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return "", err
			}
			return strings.TrimRight(string(b), "\x00"), nil
		}
	}
	return "", nil
}
