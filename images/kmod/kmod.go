// Package kmod reads a Linux kernel's modules directory
// (/lib/modules/RELEASE): which module files a set of module names needs,
// dependencies first, as modprobe would load them, and which names the
// kernel has built in. It also finds this machine's Debian kernel and
// reads an x86 bzImage's release from its boot header.
package kmod

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ErrUnknown is wrapped by Closure's error for a name that is neither a
// module in modules.dep nor built into the kernel.
var ErrUnknown = errors.New("no such module")

// ErrNoKernel is wrapped by Host's error when this machine has no
// installed kernel with a modules directory.
var ErrNoKernel = errors.New("no host kernel")

// Dir is a kernel's parsed modules directory.
type Dir struct {
	// Path is the directory, e.g. "/lib/modules/6.1.0-56-amd64".
	Path string

	deps    map[string][]string // module file (relative to Path) → its dependencies
	byName  map[string]string   // Name(file) → file
	builtin map[string]bool     // Name of each built-in module
}

// Open reads dir/modules.dep and, when present, dir/modules.builtin.
func Open(dir string) (*Dir, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	defer f.Close()
	data, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	return Parse(dir, f, data)
}

// Parse reads a modules.dep from dep and the module list of a
// modules.builtin (nil when there is none); dir names the modules
// directory, in messages and as Dir.Path.
func Parse(dir string, dep io.Reader, builtin []byte) (*Dir, error) {
	d := &Dir{Path: dir, deps: map[string][]string{}, byName: map[string]string{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok || mod == "" {
			return nil, fmt.Errorf("kmod: %s/modules.dep:%d: want \"module: dependencies...\", got %q", dir, line, text)
		}
		d.deps[mod] = strings.Fields(rest)
		d.byName[Name(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("kmod: %s/modules.dep: %w", dir, err)
	}
	for _, l := range strings.Fields(string(builtin)) {
		d.builtin[Name(l)] = true
	}
	return d, nil
}

// Deps returns the direct dependencies modules.dep lists for file (a path
// relative to d.Path), in its order.
func (d *Dir) Deps(file string) []string { return d.deps[file] }

// Builtin reports whether the kernel has the module name built in
// (according to modules.builtin).
func (d *Dir) Builtin(name string) bool { return d.builtin[Name(name)] }

// Closure returns the module files (relative to d.Path) that load names,
// each once, in an order insmod can load them: every module after the
// modules it depends on. Names match module files as modprobe matches
// them ('-' and '_' are the same). A built-in name needs no file and is
// skipped; a name that is neither a module nor built in is an error
// wrapping ErrUnknown.
func (d *Dir) Closure(names ...string) ([]string, error) {
	order, unknown := d.Plan(names...)
	if len(unknown) > 0 {
		return nil, fmt.Errorf("kmod: %s: %w: %s", d.Path, ErrUnknown, strings.Join(unknown, ", "))
	}
	return order, nil
}

// Plan is Closure for a loader that loads what it can: the load order of
// the names that are modules, and the names that are neither modules nor
// built in.
func (d *Dir) Plan(names ...string) (order, unknown []string) {
	seen := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		// modules.dep lists dependencies so that loading them last to
		// first works; visiting each one's own dependencies first keeps
		// the order right whatever the listing's order.
		ds := d.deps[p]
		for i := len(ds) - 1; i >= 0; i-- {
			visit(ds[i])
		}
		order = append(order, p)
	}
	for _, n := range names {
		if p, ok := d.byName[Name(n)]; ok {
			visit(p)
		} else if !d.builtin[Name(n)] {
			unknown = append(unknown, n)
		}
	}
	return order, unknown
}

// Name is the name a module file is known by: its base name without .ko
// (and a compression suffix), with '-' read as '_' as modprobe does.
func Name(file string) string {
	b := path.Base(file)
	for _, s := range []string{".xz", ".zst", ".gz"} {
		b = strings.TrimSuffix(b, s)
	}
	return strings.ReplaceAll(strings.TrimSuffix(b, ".ko"), "-", "_")
}

// KernelVersion reads the release of an x86 bzImage ("6.1.0-56-amd64")
// from its boot header (the "HdrS" header's kernel_version pointer), as
// file(1) does.
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

// hostRoot is where Host looks; tests point it at a fixture.
var hostRoot = "/"

// Host finds this machine's Debian kernel (package linux-image-amd64):
// the file /vmlinuz points to, or else the newest /boot/vmlinuz-*, and its
// modules directory /lib/modules/RELEASE, the release read from the
// kernel's boot header (or, failing that, its file name). The error wraps
// ErrNoKernel when there is no such kernel or directory.
func Host() (kernel, modDir string, err error) {
	kernel, err = filepath.EvalSymlinks(filepath.Join(hostRoot, "vmlinuz"))
	if err != nil {
		cands, _ := filepath.Glob(filepath.Join(hostRoot, "boot/vmlinuz-*"))
		if len(cands) == 0 {
			return "", "", fmt.Errorf("kmod: %w: neither %s nor %s exists", ErrNoKernel,
				filepath.Join(hostRoot, "vmlinuz"), filepath.Join(hostRoot, "boot/vmlinuz-*"))
		}
		kernel = cands[0]
		for _, c := range cands[1:] {
			if VersionLess(kernel, c) {
				kernel = c
			}
		}
	}
	release := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	if f, err := os.Open(kernel); err == nil {
		if v, err := KernelVersion(f); err == nil {
			release = v
		}
		f.Close()
	}
	modDir = filepath.Join(hostRoot, "lib/modules", release)
	if _, err := os.Stat(filepath.Join(modDir, "modules.dep")); err != nil {
		return "", "", fmt.Errorf("kmod: %w: kernel %s has no modules: %w", ErrNoKernel, kernel, err)
	}
	return kernel, modDir, nil
}

// VersionLess orders "vmlinuz-6.1.0-9" before "vmlinuz-6.1.0-10":
// runs of digits compare as numbers.
func VersionLess(a, b string) bool {
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
