// Package debpkg fetches Debian packages of any architecture the build
// host's apt knows and unpacks them into a cache, never installing them:
// the version is the candidate `apt-cache show` names, the file comes from
// `apt-get download NAME:ARCH=VERSION` and is checked against the SHA256
// of apt's package list, and `dpkg-deb -x` unpacks it. An arm64 busybox,
// kernel or boot loader for an image baked on an x86-64 host comes from
// here (after `dpkg --add-architecture arm64 && apt-get update`, which
// `make deps` does).
//
// The cache holds, under its directory:
//
//	debs/FILE.deb          each package file, as the archive names it
//	debs/FILE.deb.verified the file's identity when its SHA256 was checked
//	unpacked/SHA256/       its content (dpkg-deb -x), one directory per file
//	resolved/NAME_ARCH     what apt-cache show said of NAME:ARCH, and the
//	                       state of apt's lists and settings it said it for
//
// apt-cache takes a second or more per call on a host that keeps no
// package cache (Dir::Cache::pkgcache "", as container images set it): an
// answer is reused for as long as apt's lists and settings (aptState) are
// unchanged, and a package file's hash for as long as the file is.
//
// Both are written through a temporary name and renamed into place, under
// an exclusive lock, so a fetch killed half-way leaves nothing that a later
// one would take for complete.
package debpkg

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"golang.org/x/sys/unix"
)

// ErrNotFound is wrapped by Fetch's error when apt knows no such package
// for the architecture (it was never added with dpkg --add-architecture,
// or apt-get update has not run since).
var ErrNotFound = errors.New("no such package in apt's lists")

// Cache fetches into Dir.
type Cache struct {
	// Dir is the cache's directory (e.g. $BELLBUILD_CACHE/debs).
	Dir string
	// Log receives one line per download (default slog.Default()).
	Log *slog.Logger
}

// Package is a fetched, unpacked package.
type Package struct {
	Name, Version, Arch string
	// Deb is the package file in the cache; SHA256 its hash.
	Deb    string
	SHA256 string
	// Root is the directory it is unpacked in (read-only by convention:
	// it is shared by every bake).
	Root string
	// Depends is the control file's Depends field, as written.
	Depends string
}

// ID names the package for manifests: "NAME=VERSION:ARCH".
func (p *Package) ID() string { return p.Name + "=" + p.Version + ":" + p.Arch }

// nameRE is what a package name may be (Debian policy 5.6.1).
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)

// Fetch returns package name for arch, downloading and unpacking it the
// first time.
func (c *Cache) Fetch(ctx context.Context, name, arch string) (*Package, error) {
	if !nameRE.MatchString(name) || !nameRE.MatchString(arch) {
		return nil, fmt.Errorf("debpkg: %q for %q: not a package or architecture name", name, arch)
	}
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	for _, d := range []string{"debs", "unpacked", "resolved"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("debpkg: %w", err)
		}
	}
	// 1. What apt's lists say of the candidate version.
	rec, err := c.resolve(ctx, name, arch)
	if err != nil {
		return nil, err
	}
	p := &Package{Name: name, Version: rec["Version"], Arch: rec["Architecture"], SHA256: strings.ToLower(rec["SHA256"]), Depends: rec["Depends"]}
	file := filepath.Base(rec["Filename"])
	if p.Version == "" || p.SHA256 == "" || file == "." || file == "/" || !strings.HasSuffix(file, ".deb") {
		return nil, fmt.Errorf("debpkg: apt-cache show %s:%s: no Version, SHA256 or Filename", name, arch)
	}
	lock, err := os.OpenFile(filepath.Join(c.Dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("debpkg: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("debpkg: lock %s: %w", lock.Name(), err)
	}

	// 2. The file, unless the cache has it with the right hash.
	p.Deb = filepath.Join(c.Dir, "debs", file)
	if !verified(p.Deb, p.SHA256) {
		log.Info("debpkg: downloading", "package", p.ID())
		if err := download(ctx, c.Dir, name, arch, p.Version, p.SHA256, p.Deb); err != nil {
			return nil, err
		}
		markVerified(p.Deb, p.SHA256)
	}

	// 3. Its content, unpacked once per file.
	p.Root = filepath.Join(c.Dir, "unpacked", p.SHA256)
	if _, err := os.Stat(p.Root); err != nil {
		if err := unpack(ctx, p.Deb, p.Root); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// aptState names the state apt answers from: its package lists and the
// settings that choose a candidate (sources, preferences, configuration,
// dpkg's architectures), by name, size and modification time. Variables
// for tests.
var aptState = []string{
	"/var/lib/apt/lists/*", "/var/lib/dpkg/arch",
	"/etc/apt/sources.list", "/etc/apt/sources.list.d/*",
	"/etc/apt/preferences", "/etc/apt/preferences.d/*", "/etc/apt/apt.conf.d/*",
}

func aptStateKey() string {
	h := sha256.New()
	for _, g := range aptState {
		files, _ := filepath.Glob(g)
		for _, f := range files {
			if st, err := os.Stat(f); err == nil {
				fmt.Fprintf(h, "%s %d %d\n", f, st.Size(), st.ModTime().UnixNano())
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// resolve is show, through the resolved/ memo.
func (c *Cache) resolve(ctx context.Context, name, arch string) (map[string]string, error) {
	memo := filepath.Join(c.Dir, "resolved", name+"_"+arch)
	key := aptStateKey()
	if data, err := os.ReadFile(memo); err == nil {
		if k, stanza, ok := strings.Cut(string(data), "\n"); ok && k == key {
			if rec := parseStanza([]byte(stanza)); rec["Package"] != "" {
				return rec, nil
			}
		}
	}
	rec, err := show(ctx, name, arch)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString(key + "\n")
	for _, k := range []string{"Package", "Version", "Architecture", "Filename", "SHA256", "Depends"} {
		if v := rec[k]; v != "" {
			b.WriteString(k + ": " + strings.ReplaceAll(v, "\n", "\n ") + "\n")
		}
	}
	// A memo is an optimisation: failing to write it is not an error.
	atomicfile.Write(memo, []byte(b.String()), 0o644)
	return rec, nil
}

// verified reports whether deb is there with the hash sum, trusting the
// .verified record of its last check while the file's identity (inode,
// size, modification time) is the one recorded.
func verified(deb, sum string) bool {
	st, err := os.Stat(deb)
	if err != nil {
		return false
	}
	if rec, err := os.ReadFile(deb + ".verified"); err == nil && string(rec) == identity(st, sum) {
		return true
	}
	got, err := fileSHA256(deb)
	if err != nil || got != sum {
		return false
	}
	markVerified(deb, sum)
	return true
}

func markVerified(deb, sum string) {
	if st, err := os.Stat(deb); err == nil {
		atomicfile.Write(deb+".verified", []byte(identity(st, sum)), 0o644)
	}
}

func identity(st os.FileInfo, sum string) string {
	var ino uint64
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = s.Ino
	}
	return fmt.Sprintf("%s %d %d %d\n", sum, ino, st.Size(), st.ModTime().UnixNano())
}

// show runs apt-cache show for the candidate of name:arch and returns its
// fields.
func show(ctx context.Context, name, arch string) (map[string]string, error) {
	cmd := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", name+":"+arch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("debpkg: %w (a Debian build host is needed to fetch %s:%s)", err, name, arch)
	}
	rec := parseStanza(out)
	if err != nil || rec["Package"] == "" {
		hint := fmt.Sprintf("dpkg --add-architecture %s && apt-get update; make deps does it", arch)
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, fmt.Errorf("debpkg: %s:%s: %w (%s): %s", name, arch, ErrNotFound, hint, firstLine(msg))
		}
		return nil, fmt.Errorf("debpkg: %s:%s: %w (%s)", name, arch, ErrNotFound, hint)
	}
	return rec, nil
}

// parseStanza reads the first stanza of a deb822 document (continuation
// lines are joined to their field).
func parseStanza(data []byte) map[string]string {
	rec := map[string]string{}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if len(rec) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				rec[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		rec[k] = strings.TrimSpace(v)
	}
	return rec
}

// download fetches name:arch=version into a temporary directory of dir,
// checks its hash, and renames it to dst.
func download(ctx context.Context, dir, name, arch, version, sum, dst string) error {
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return fmt.Errorf("debpkg: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt drops to the _apt user for downloads where it can write.
	os.Chmod(tmp, 0o777)
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", name+":"+arch+"="+version)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("debpkg: apt-get download %s:%s=%s: %w\n%s", name, arch, version, err, strings.TrimSpace(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("debpkg: apt-get download %s:%s=%s left %d files", name, arch, version, len(debs))
	}
	got, err := fileSHA256(debs[0])
	if err != nil {
		return fmt.Errorf("debpkg: %w", err)
	}
	if got != sum {
		return fmt.Errorf("debpkg: %s: sha256 %s, apt's lists say %s", filepath.Base(debs[0]), got, sum)
	}
	if err := syncFile(debs[0]); err != nil {
		return fmt.Errorf("debpkg: %w", err)
	}
	if err := os.Rename(debs[0], dst); err != nil {
		return fmt.Errorf("debpkg: %w", err)
	}
	return nil
}

// unpack extracts deb into a temporary directory beside root and renames
// it to root.
func unpack(ctx context.Context, deb, root string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(root), ".unpack-")
	if err != nil {
		return fmt.Errorf("debpkg: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("debpkg: %w", err)
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("debpkg: dpkg-deb -x %s: %w\n%s", deb, err, strings.TrimSpace(string(out)))
	}
	if err := exec.CommandContext(ctx, "sync", "-f", tmp).Run(); err != nil {
		return fmt.Errorf("debpkg: sync %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, root); err != nil {
		return fmt.Errorf("debpkg: %w", err)
	}
	return nil
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// DependsOn returns the names in a Depends field that start with prefix,
// in order (alternatives included, versions dropped).
func DependsOn(depends, prefix string) []string {
	var out []string
	for _, alt := range strings.FieldsFunc(depends, func(r rune) bool { return r == ',' || r == '|' }) {
		n := strings.TrimSpace(alt)
		if i := strings.IndexAny(n, " (:"); i >= 0 {
			n = n[:i]
		}
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}
