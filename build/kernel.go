package build

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/images/fstree"
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
	v, err := KernelVersion(f)
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
	sort.Slice(cands, func(i, j int) bool { return versionLess(cands[i].Path, cands[j].Path) })
	e := cands[len(cands)-1]
	if e.Data == nil {
		return nil, fmt.Errorf("%w: /%s is empty", ErrNoKernel, e.Path)
	}
	v := strings.TrimPrefix(path.Base(e.Path), "vmlinuz-")
	if rc, err := e.Data.Open(); err == nil {
		if rs, ok := rc.(io.ReaderAt); ok {
			if hv, err := KernelVersion(rs); err == nil {
				v = hv
			}
		}
		rc.Close()
	}
	return &kernel{content: e.Data, size: e.Size, version: v}, nil
}

// versionLess orders "vmlinuz-6.1.0-9" before "vmlinuz-6.1.0-10".
func versionLess(a, b string) bool {
	as, bs := splitDigits(a), splitDigits(b)
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		if isDigits(as[i]) && isDigits(bs[i]) && len(as[i]) != len(bs[i]) {
			return len(as[i]) < len(bs[i])
		}
		return as[i] < bs[i]
	}
	return len(as) < len(bs)
}

func splitDigits(s string) []string {
	var out []string
	start := 0
	for i := 1; i <= len(s); i++ {
		if i == len(s) || isDigit(s[i]) != isDigit(s[i-1]) {
			out = append(out, strings.TrimLeft(s[start:i], "0"))
			start = i
		}
	}
	return out
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return s != ""
}

// KernelVersion reads the release of an x86 bzImage from its boot header
// (the "HdrS" header's kernel_version pointer), as file(1) does.
func KernelVersion(r io.ReaderAt) (string, error) {
	var hdr [0x210]byte
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return "", fmt.Errorf("reading boot header: %w", err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return "", errors.New("not an x86 bzImage (no HdrS boot header)")
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20e:0x210])) + 0x200
	var v [256]byte
	n, err := r.ReadAt(v[:], off)
	if n == 0 {
		return "", fmt.Errorf("reading kernel version: %w", err)
	}
	s := string(v[:n])
	if i := strings.IndexAny(s, " \x00"); i >= 0 {
		s = s[:i]
	}
	if s == "" {
		return "", errors.New("empty kernel version in boot header")
	}
	return s, nil
}

// moduleFiles returns the module files (relative to the modules directory)
// needed for names, dependencies included, sorted, and the names the
// kernel has neither as a module nor built in.
func moduleFiles(dir string, names []string) (files []string, missing []string, err error) {
	deps, err := readModulesDep(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, nil, err
	}
	builtin := map[string]bool{}
	if data, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(data)) {
			builtin[moduleName(l)] = true
		}
	}
	byName := map[string]string{}
	for p := range deps {
		byName[moduleName(p)] = p
	}
	seen := map[string]bool{}
	var add func(p string)
	add = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		files = append(files, p)
		for _, d := range deps[p] {
			add(d)
		}
	}
	for _, n := range names {
		p, ok := byName[moduleName(n)]
		switch {
		case ok:
			add(p)
		case builtin[moduleName(n)]:
		default:
			missing = append(missing, n)
		}
	}
	sort.Strings(files)
	return files, missing, nil
}

func readModulesDep(file string) (map[string][]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	defer f.Close()
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if ok {
			deps[mod] = strings.Fields(rest)
		}
	}
	return deps, sc.Err()
}

// moduleName is modprobe's name for a module file: base name without .ko
// (and compression), '-' as '_'.
func moduleName(p string) string {
	b := path.Base(p)
	for _, s := range []string{".xz", ".zst", ".gz"} {
		b = strings.TrimSuffix(b, s)
	}
	return strings.ReplaceAll(strings.TrimSuffix(b, ".ko"), "-", "_")
}

// moduleTree is the part of /lib/modules/VERSION an image needs: the
// module files for names (with dependencies), a modules.dep listing just
// them, modules.builtin, and /etc/bellbuild/modules naming what the init
// loads.
func moduleTree(dir, version string, names []string) (*fstree.Tree, error) {
	files, missing, err := moduleFiles(dir, names)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("kernel %s: modules not found in %s: %s", version, dir, strings.Join(missing, ", "))
	}
	deps, _ := readModulesDep(filepath.Join(dir, "modules.dep"))
	t := fstree.New()
	base := path.Join("lib/modules", version)
	var dep strings.Builder
	for _, f := range files {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			return nil, fmt.Errorf("kernel modules: %w", err)
		}
		t.Add(fstree.Entry{Path: path.Join(base, f), Type: fstree.Regular, Mode: 0o644, Size: st.Size(), Data: fstree.File(filepath.Join(dir, f))})
		fmt.Fprintf(&dep, "%s:", f)
		for _, d := range deps[f] {
			fmt.Fprintf(&dep, " %s", d)
		}
		dep.WriteString("\n")
	}
	t.AddFile(path.Join(base, "modules.dep"), []byte(dep.String()), 0o644, 0, 0)
	if data, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		t.AddFile(path.Join(base, "modules.builtin"), data, 0o644, 0, 0)
	}
	t.AddFile("etc/bellbuild/modules", []byte("# kernel modules bellbuild's init loads (with modules.dep)\n"+strings.Join(names, "\n")+"\n"), 0o644, 0, 0)
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
