package build

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/bellbuild/bellbuild/testvm/testtool"
	"golang.org/x/sys/unix"
)

// nobody is the unprivileged user the tarball bake runs as.
const nobody = 65534

// TestTarballStageUnprivileged makes a stage tarball (GNU tar) from a
// directory with symlinks, a hardlink pair, a setuid file, a device node, a
// FIFO and files owned by another uid; bakes it with `bellbuild image` run
// as nobody (so the bake cannot rely on root: no chown, no mknod, nothing
// extracted); then unpacks each initramfs segment with GNU cpio as root and
// compares every entry's type, mode, owner and links with the source.
func TestTarballStageUnprivileged(t *testing.T) {
	needHost(t)
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "needs root to make files owned by another uid and to run the bake as nobody")
	}
	for _, tool := range []string{"tar", "cpio", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(t, "%s not installed (apt-get install %s)", tool, tool)
		}
	}
	work := t.TempDir()
	// nobody must reach the work directory.
	for _, d := range []string{filepath.Dir(work), work} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// 1. The source tree.
	src := filepath.Join(work, "src")
	type item struct {
		path     string
		kind     string // dir, file, link, hardlink, char, fifo
		mode     uint32
		uid, gid int
		target   string
	}
	items := []item{
		{"etc", "dir", 0o755, 0, 0, ""},
		{"etc/hello", "file", 0o644, 0, 0, "hello\n"},
		{"usr", "dir", 0o755, 0, 0, ""},
		{"usr/bin", "dir", 0o755, 0, 0, ""},
		{"usr/bin/suid", "file", 0o4755, 0, 0, "#!/bin/sh\n"},
		{"usr/bin/sgid", "file", 0o2711, 0, 42, "#!/bin/sh\n"},
		{"home", "dir", 0o755, 0, 0, ""},
		{"home/u", "dir", 0o700, 1234, 1234, ""},
		{"home/u/notes", "file", 0o640, 1234, 100, "mine\n"},
		{"data", "dir", 0o1777, 0, 0, ""},
		{"data/a", "file", 0o600, 1234, 1234, "shared inode\n"},
		{"data/b", "hardlink", 0, 0, 0, "data/a"},
		{"link-rel", "link", 0, 0, 0, "etc/hello"},
		{"link-abs", "link", 0, 0, 0, "/usr/bin/suid"},
		{"dev", "dir", 0o755, 0, 0, ""},
		{"dev/mynull", "char", 0o666, 0, 0, ""},
		{"run", "dir", 0o755, 0, 0, ""},
		{"run/pipe", "fifo", 0o620, 0, 5, ""},
	}
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		p := filepath.Join(src, it.path)
		var err error
		switch it.kind {
		case "dir":
			err = os.Mkdir(p, 0o700)
		case "file":
			err = os.WriteFile(p, []byte(it.target), 0o600)
		case "hardlink":
			err = os.Link(filepath.Join(src, it.target), p)
		case "link":
			err = os.Symlink(it.target, p)
		case "char":
			err = unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3)))
		case "fifo":
			err = unix.Mkfifo(p, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
		if it.kind == "link" || it.kind == "hardlink" {
			continue
		}
		if err := os.Lchown(p, it.uid, it.gid); err != nil {
			t.Fatal(err)
		}
		// chmod after chown: chown clears setuid and setgid.
		if err := unix.Chmod(p, it.mode); err != nil {
			t.Fatal(err)
		}
	}
	stageTar := filepath.Join(work, "stage.tar")
	if out, err := exec.Command("tar", "--numeric-owner", "-cf", stageTar, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}

	// 2. A site whose profile starts from the tarball.
	site := filepath.Join(work, "site")
	if err := os.MkdirAll(filepath.Join(site, "profiles"), 0o755); err != nil {
		t.Fatal(err)
	}
	profile := fmt.Sprintf("stage: {tarball: %s}\nkernel: {path: %s}\ncmdline: [console=ttyS0]\nconf:\n  sysctl:\n    vm.swappiness: 5\n", stageTar, testKernel)
	if err := os.WriteFile(filepath.Join(site, "profiles", "tarstage.yaml"), []byte(profile), 0o644); err != nil {
		t.Fatal(err)
	}

	// 3. Bake as nobody, with a copy of bellbuild nobody can run.
	bin := filepath.Join(work, "bellbuild")
	copyFile(t, testtool.Binary(t), bin, 0o755)
	out := filepath.Join(work, "out")
	cache := filepath.Join(work, "cache")
	for _, d := range []string{out, cache} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "image", "tarstage", "-C", site, "-o", out, "--cache", cache, "--applier", bin)
	cmd.Env = []string{"HOME=/nonexistent", "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image as nobody: %v\n%s", err, b)
	}
	dir := filepath.Join(out, "tarstage")
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, InitramfsFile), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != nobody {
		t.Fatalf("initramfs owned by %d: the bake did not run as nobody", st.Uid)
	}

	// 4. Unpack each segment with GNU cpio, as root, in order.
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(work, "unpacked")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, InitramfsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, s := range m.Segments {
		zstd := exec.Command("zstd", "-dc")
		zstd.Stdin = io.LimitReader(f, s.Size)
		cpio := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
		cpio.Dir = dest
		pipe, err := zstd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cpio.Stdin = pipe
		if err := zstd.Start(); err != nil {
			t.Fatal(err)
		}
		if b, err := cpio.CombinedOutput(); err != nil {
			t.Fatalf("cpio -i of the %s segment: %v\n%s", s.Name, err, b)
		}
		if err := zstd.Wait(); err != nil {
			t.Fatalf("zstd -d of the %s segment: %v", s.Name, err)
		}
	}

	// 5. Every entry as in the source.
	for _, it := range items {
		t.Run(it.path, func(t *testing.T) {
			var want, got unix.Stat_t
			if err := unix.Lstat(filepath.Join(src, it.path), &want); err != nil {
				t.Fatal(err)
			}
			if err := unix.Lstat(filepath.Join(dest, it.path), &got); err != nil {
				t.Fatal(err)
			}
			if got.Mode != want.Mode || got.Uid != want.Uid || got.Gid != want.Gid {
				t.Errorf("mode %o uid %d gid %d, want mode %o uid %d gid %d", got.Mode, got.Uid, got.Gid, want.Mode, want.Uid, want.Gid)
			}
			// GNU cpio cannot set a symlink's time, and a directory's
			// changes as entries are created in it.
			if it.kind != "dir" && it.kind != "link" && got.Mtim.Sec != DefaultSourceDateEpoch {
				t.Errorf("mtime %d, want the source date %d", got.Mtim.Sec, DefaultSourceDateEpoch)
			}
			switch it.kind {
			case "file", "hardlink":
				w, _ := os.ReadFile(filepath.Join(src, it.path))
				g, _ := os.ReadFile(filepath.Join(dest, it.path))
				if string(g) != string(w) {
					t.Errorf("content %q, want %q", g, w)
				}
				if got.Nlink != want.Nlink {
					t.Errorf("nlink %d, want %d", got.Nlink, want.Nlink)
				}
			case "link":
				target, err := os.Readlink(filepath.Join(dest, it.path))
				if err != nil || target != it.target {
					t.Errorf("symlink -> %q (%v), want %q", target, err, it.target)
				}
			case "char":
				if got.Rdev != want.Rdev {
					t.Errorf("device %d:%d, want %d:%d", unix.Major(got.Rdev), unix.Minor(got.Rdev), unix.Major(want.Rdev), unix.Minor(want.Rdev))
				}
			}
			if it.kind == "hardlink" {
				var a unix.Stat_t
				if err := unix.Lstat(filepath.Join(dest, it.target), &a); err != nil {
					t.Fatal(err)
				}
				if a.Ino != got.Ino {
					t.Errorf("not a hardlink of %s after unpacking (inodes %d, %d)", it.target, a.Ino, got.Ino)
				}
			}
		})
	}
}

func copyFile(t testing.TB, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
