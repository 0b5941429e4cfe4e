package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/profiles"
)

// ErrNeedRoot means a stage needs root privileges to be made (debootstrap).
var ErrNeedRoot = errors.New("needs root")

// stage is a resolved stage: its tree (or how to read it), a key naming
// its content for the segment cache, and the input the manifest records.
type stage struct {
	// tree is the stage's tree, or nil until load reads it.
	tree *fstree.Tree
	load func() (*fstree.Tree, error)
	// key names the content by its input (a tarball's sha256, an OCI
	// layout's digests, a debootstrap recipe, another profile's content
	// key): a bake whose segment is cached then never reads the tree.
	// It is "" when the tree is keyed by treeKey instead (busybox, dir).
	key   string
	input Input
}

// resolveStage reads spec's stage into a tree. A {profile: NAME} stage
// bakes NAME's tree first (through b).
func (b *baker) resolveStage(ctx context.Context, spec *profiles.ImageSpec) (*stage, error) {
	st := spec.Stage
	switch {
	case st.Busybox != nil:
		a := specArch(spec)
		bin, pkg, err := b.busyboxFor(ctx, a)
		if err != nil {
			return nil, fmt.Errorf("busybox stage: %w", err)
		}
		t, real, err := busyboxStage(ctx, bin, a)
		if err != nil {
			return nil, err
		}
		sum, err := b.sumFile(real)
		if err != nil {
			return nil, err
		}
		in := Input{Name: "stage", Kind: "busybox", Path: real, SHA256: sum}
		if pkg != nil {
			// Not the cache's path: the package names it.
			in.Path = "deb:" + pkg.Path + ":/bin/busybox"
		}
		return &stage{tree: t, input: in}, nil
	case st.Tarball != "":
		sum, err := b.sumFile(st.Tarball)
		if err != nil {
			return nil, fmt.Errorf("tarball stage: %w", err)
		}
		load := func() (*fstree.Tree, error) {
			t, err := fstree.OpenTar(st.Tarball)
			if err != nil {
				return nil, fmt.Errorf("tarball stage: %w", err)
			}
			return t, nil
		}
		return &stage{load: load, key: "tarball:" + sum, input: Input{Name: "stage", Kind: "tarball", Path: st.Tarball, SHA256: sum}}, nil
	case st.OCI != "":
		sum, err := ociDigest(st.OCI)
		if err != nil {
			return nil, fmt.Errorf("oci stage: %w", err)
		}
		load := func() (*fstree.Tree, error) {
			t, err := fstree.FromOCIArch(st.OCI, specArch(spec))
			if err != nil {
				return nil, fmt.Errorf("oci stage: %w", err)
			}
			return t, nil
		}
		return &stage{load: load, key: "oci:" + sum, input: Input{Name: "stage", Kind: "oci", Path: st.OCI, SHA256: sum}}, nil
	case st.Dir != "":
		t, err := fstree.FromDir(st.Dir)
		if err != nil {
			return nil, fmt.Errorf("dir stage: %w", err)
		}
		return &stage{tree: t, input: Input{Name: "stage", Kind: "dir", Path: st.Dir}}, nil
	case st.Debootstrap != nil:
		dir, key, err := b.debootstrap(ctx, st.Debootstrap, specArch(spec))
		if err != nil {
			return nil, err
		}
		// The root is the cache's own, made once from the recipe and never
		// changed: the recipe names it.
		load := func() (*fstree.Tree, error) {
			t, err := fstree.FromDir(dir)
			if err != nil {
				return nil, fmt.Errorf("debootstrap stage: %w", err)
			}
			return t, nil
		}
		d := st.Debootstrap
		desc := fmt.Sprintf("suite=%s variant=%s mirror=%s include=%s", d.Suite, d.Variant, d.Mirror, strings.Join(d.Include, ","))
		if a := specArch(spec); a != profiles.DefaultArch {
			desc += " arch=" + a
		}
		return &stage{load: load, key: "debootstrap:" + key, input: Input{Name: "stage", Kind: "debootstrap", Path: desc, Key: key}}, nil
	case st.Profile != "":
		if slices.Contains(b.depth, st.Profile) {
			return nil, fmt.Errorf("stage loop: %s → %s", strings.Join(b.depth, " → "), st.Profile)
		}
		if b.opts.Site == nil {
			return nil, fmt.Errorf("stage {profile: %s}: no site to find it in", st.Profile)
		}
		base, err := b.opts.Site.Image(st.Profile)
		if err != nil {
			return nil, fmt.Errorf("stage {profile: %s}: %w", st.Profile, err)
		}
		if got, want := specArch(base), specArch(spec); got != want {
			return nil, fmt.Errorf("stage {profile: %s} is arch: %s, but profile %s is arch: %s: %w", st.Profile, got, spec.Profile, want, ErrWrongArch)
		}
		inner, err := b.prepare(ctx, base)
		if err != nil {
			return nil, fmt.Errorf("stage {profile: %s}: %w", st.Profile, err)
		}
		load := func() (*fstree.Tree, error) { return inner.tree() }
		return &stage{load: load, key: "profile:" + inner.contentKey(), input: Input{Name: "stage", Kind: "profile", Path: st.Profile, Key: inner.contentKey()}}, nil
	}
	return nil, errors.New("the profile has no stage")
}

// debootstrap makes (or finds in the cache) a Debian root for d and
// architecture a: the cache is keyed by d's fields and a, so the same
// suite, variant, mirror and package list are bootstrapped once. A root of
// another architecture than the build host's is made with --arch, its
// second stage (the packages' maintainer scripts) running through
// qemu-user's binfmt_misc handler (checkBinfmt).
func (b *baker) debootstrap(ctx context.Context, d *profiles.Debootstrap, a string) (string, string, error) {
	inc := slices.Clone(d.Include)
	slices.Sort(inc)
	key := debootstrapKey(d, a)
	dir := filepath.Join(b.opts.CacheDir, "debootstrap", key)
	root := filepath.Join(dir, "root")
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return root, key, nil
	}
	if os.Geteuid() != 0 {
		return "", "", fmt.Errorf("debootstrap stage: %w (run as root, or bake once as root to fill the cache %s)", ErrNeedRoot, dir)
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", "", fmt.Errorf("debootstrap stage: %w (apt-get install debootstrap)", err)
	}
	if !native(a) {
		if err := checkBinfmt(a); err != nil {
			return "", "", fmt.Errorf("debootstrap stage for %s: %w", a, err)
		}
	}
	// One debootstrap per recipe at a time: a second bake waits for the
	// first and then finds its root.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", "", err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", "", err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", "", fmt.Errorf("debootstrap stage: lock %s: %w", lock.Name(), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return root, key, nil
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	args := debootstrapArgs(d, a, root)
	b.log.Info("debootstrap: running (cached afterwards)", "args", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("debootstrap %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 20))
	}
	if err := os.WriteFile(filepath.Join(dir, "done"), []byte(strings.Join(args, " ")+"\n"), 0o644); err != nil {
		return "", "", err
	}
	return root, key, nil
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// debootstrapKey names a debootstrap recipe for architecture a in the
// cache (the package list in any order is one recipe; amd64's key is the
// one recipes had before arch: existed).
func debootstrapKey(d *profiles.Debootstrap, a string) string {
	inc := slices.Clone(d.Include)
	slices.Sort(inc)
	if a != "" && a != profiles.DefaultArch {
		return keyOf("debootstrap-v1", d.Suite, d.Variant, d.Mirror, strings.Join(inc, ","), "arch="+a)
	}
	return keyOf("debootstrap-v1", d.Suite, d.Variant, d.Mirror, strings.Join(inc, ","))
}

// debootstrapArgs is debootstrap's command line for d, architecture a, into
// root.
func debootstrapArgs(d *profiles.Debootstrap, a, root string) []string {
	inc := slices.Clone(d.Include)
	slices.Sort(inc)
	var args []string
	if !native(a) {
		args = append(args, "--arch="+a)
	}
	if d.Variant != "" {
		args = append(args, "--variant="+d.Variant)
	}
	if len(inc) > 0 {
		args = append(args, "--include="+strings.Join(inc, ","))
	}
	args = append(args, d.Suite, root)
	if d.Mirror != "" {
		args = append(args, d.Mirror)
	}
	return args
}

// ociDigest names an OCI layout by its index.json and the digests of its
// blobs (which are content addresses), without reading the blobs.
func ociDigest(dir string) (string, error) {
	h := sha256.New()
	idx, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return "", err
	}
	writeStr(h, string(idx))
	blobs, _ := filepath.Glob(filepath.Join(dir, "blobs", "*", "*"))
	slices.Sort(blobs)
	for _, p := range blobs {
		rel, _ := filepath.Rel(dir, p)
		writeStr(h, rel)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sumFile returns a file's sha256, remembered in the cache under the file's
// identity (path, device, inode, size, mtime, ctime — what treeKey trusts
// too), so that an unchanged kernel, applier or tarball is not read again
// by the next bake.
func (b *baker) sumFile(file string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return "", &os.PathError{Op: "stat", Path: file, Err: err}
	}
	memo := filepath.Join(b.opts.CacheDir, "sums", keyOf(file, fmt.Sprint(st.Dev, st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano())))
	if data, err := os.ReadFile(memo); err == nil && len(data) == 64 {
		return string(data), nil
	}
	sum, err := fileSHA256(file)
	if err != nil {
		return "", err
	}
	// The memo is an optimisation: failing to write it is not an error.
	if err := os.MkdirAll(filepath.Dir(memo), 0o755); err == nil {
		if f, err := os.CreateTemp(filepath.Dir(memo), ".sum-*"); err == nil {
			_, werr := f.WriteString(sum)
			if cerr := f.Close(); werr == nil && cerr == nil {
				os.Rename(f.Name(), memo)
			}
			os.Remove(f.Name())
		}
	}
	return sum, nil
}

// fileSHA256 hashes a file's content.
func fileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sha256Hex hashes bytes.
func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// hexHash is a sha256 that prints itself in hex.
type hexHash struct{ hash.Hash }

func newSHA256() hexHash { return hexHash{sha256.New()} }

func (h hexHash) hex() string { return hex.EncodeToString(h.Sum(nil)) }
