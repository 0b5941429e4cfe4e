package fstree_test

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

var update = flag.Bool("update", false, "rewrite testdata/bad")

func summary(t *testing.T, tr *fstree.Tree) []string {
	t.Helper()
	s, err := tr.Summary()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		testtool.Skipf(t, "%s not installed: cannot check against it", name)
	}
}

func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
}

// TestFromDir reads the on-disk sample: every type, mode, owner, link,
// device number, hardlink group and xattr as written.
func TestFromDir(t *testing.T) {
	tr, err := fstree.FromDir(fixture.MakeDir(t))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(fixture.Summary(true), summary(t, tr)); d != "" {
		t.Errorf("tree (-want +got):\n%s", d)
	}
	if e := tr.Get("etc/passwd"); e.MTime != 1_600_000_000+8*3600 {
		t.Errorf("etc/passwd mtime %d", e.MTime)
	}
}

// TestGNUTarballs reads tarballs GNU tar made of the sample, plain and
// compressed every way FromTar detects.
func TestGNUTarballs(t *testing.T) {
	needTool(t, "tar")
	src := fixture.MakeDir(t)
	dir := t.TempDir()
	run(t, dir, "tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", src, "-cf", "stage.tar", ".")
	files := []string{"stage.tar"}
	for _, c := range []struct{ tool, ext string }{{"gzip", ".gz"}, {"xz", ".xz"}, {"zstd", ".zst"}, {"bzip2", ".bz2"}} {
		testtool.LookPath(t, c.tool, c.tool)
		run(t, dir, c.tool, "-k", "-q", "stage.tar")
		files = append(files, "stage.tar"+c.ext)
	}
	for _, name := range files {
		p := filepath.Join(dir, name)
		t.Run("OpenTar/"+name, func(t *testing.T) {
			tr, err := fstree.OpenTar(p)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(fixture.Summary(true), summary(t, tr)); d != "" {
				t.Errorf("tree (-want +got):\n%s", d)
			}
		})
		t.Run("FromTar/"+name, func(t *testing.T) {
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			tr, err := fstree.FromTar(f)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(fixture.Summary(true), summary(t, tr)); d != "" {
				t.Errorf("tree (-want +got):\n%s", d)
			}
		})
	}
}

// craftedTar is a tarball that declares what only root could make on
// disk — devices, foreign owners, setuid files, capabilities — plus the
// path forms real tarballs use ("./x", "/x", "../x").
func craftedTar(t testing.TB) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	when := time.Unix(1_500_000_000, 0)
	add := func(h *tar.Header, body string) {
		h.ModTime = when
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	add(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "./bin/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "./bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, "BUSYBOX")
	add(&tar.Header{Name: "./bin/sh", Typeflag: tar.TypeLink, Linkname: "./bin/busybox"}, "")
	add(&tar.Header{Name: "bin/ping", Typeflag: tar.TypeReg, Mode: 0o755, PAXRecords: map[string]string{
		"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00",
	}}, "ping")
	add(&tar.Header{Name: "./usr/bin/passwd", Typeflag: tar.TypeReg, Mode: 0o4755}, "passwd")
	add(&tar.Header{Name: "./usr/bin/crontab", Typeflag: tar.TypeReg, Mode: 0o2755, Gid: 101}, "crontab")
	add(&tar.Header{Name: "./home/bob/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 4242, Gid: 4243}, "")
	add(&tar.Header{Name: "./home/bob/notes", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 4242, Gid: 4243, PAXRecords: map[string]string{
		"LIBARCHIVE.xattr.user.tag%20x": base64.StdEncoding.EncodeToString([]byte("blue")),
	}}, "notes")
	add(&tar.Header{Name: "./dev/console", Typeflag: tar.TypeChar, Mode: 0o600, Devmajor: 5, Devminor: 1}, "")
	add(&tar.Header{Name: "./dev/loop0", Typeflag: tar.TypeBlock, Mode: 0o660, Gid: 6, Devmajor: 7, Devminor: 0}, "")
	add(&tar.Header{Name: "./run/initctl", Typeflag: tar.TypeFifo, Mode: 0o600}, "")
	add(&tar.Header{Name: "./lib", Typeflag: tar.TypeSymlink, Linkname: "usr/lib", Mode: 0o777}, "")
	add(&tar.Header{Name: "/abs/file", Typeflag: tar.TypeReg, Mode: 0o644}, "abs")
	add(&tar.Header{Name: "../../escape", Typeflag: tar.TypeReg, Mode: 0o644}, "esc")
	add(&tar.Header{Name: "./tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, "")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var craftedSummary = []string{
	". dir 0755 0:0",
	"abs dir 0755 0:0",
	"abs/file file 0644 0:0 size=3 sha256=78da4a596a88bc51",
	"bin dir 0755 0:0",
	"bin/busybox file 0755 0:0 size=7 sha256=b557097434689733 links=bin/busybox,bin/sh",
	"bin/ping file 0755 0:0 size=4 sha256=758d61f26a444483 xattr=security.capability:0100000200200000",
	"bin/sh file 0755 0:0 size=7 sha256=b557097434689733 links=bin/busybox,bin/sh",
	"dev dir 0755 0:0",
	"dev/console chardev 0600 0:0 dev=5,1",
	"dev/loop0 blockdev 0660 0:6 dev=7,0",
	"escape file 0644 0:0 size=3 sha256=177b7cb0686749af",
	"home dir 0755 0:0",
	"home/bob dir 0700 4242:4243",
	"home/bob/notes file 0640 4242:4243 size=5 sha256=ab5aa97074c454a0 xattr=user.tag x:626c7565",
	"lib symlink 0777 0:0 -> usr/lib",
	"run dir 0755 0:0",
	"run/initctl fifo 0600 0:0",
	"tmp dir 1777 0:0",
	"usr dir 0755 0:0",
	"usr/bin dir 0755 0:0",
	"usr/bin/crontab file 2755 0:101 size=7 sha256=a67a6ade2e900a46",
	"usr/bin/passwd file 4755 0:0 size=6 sha256=0d6be69b264717f2",
}

// TestCraftedTarAsNobody reads a tarball declaring devices, owners and
// setuid files. As root, it re-runs itself as nobody: reading a stage needs
// no privileges.
func TestCraftedTarAsNobody(t *testing.T) {
	if os.Geteuid() == 0 && os.Getenv("FSTREE_TEST_CHILD") == "" {
		asNobody(t, "TestCraftedTarAsNobody")
		return
	}
	tr, err := fstree.FromTar(bytes.NewReader(craftedTar(t)))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(craftedSummary, summary(t, tr)); d != "" {
		t.Errorf("tree (-want +got):\n%s", d)
	}
	if e := tr.Get("bin/busybox"); e.MTime != 1_500_000_000 {
		t.Errorf("mtime %d", e.MTime)
	}
}

// asNobody runs the named test of this binary as uid/gid 65534.
func asNobody(t *testing.T, name string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "fstree-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "fstree.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+name+"$", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "FSTREE_TEST_CHILD=1", "TMPDIR=/tmp", "HOME=/")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+name) {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "uid=65534") {
		t.Fatalf("child did not report running as nobody:\n%s", out)
	}
}

func init() {
	if os.Getenv("FSTREE_TEST_CHILD") != "" {
		println("child running as uid=" + itoa(os.Geteuid()))
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// TestWriteTar: a tree written as a stage tarball reads back the same,
// unpacks with GNU tar the same, and is byte-identical across writes.
func TestWriteTar(t *testing.T) {
	src := fixture.MakeDir(t)
	tr, err := fstree.FromDir(src)
	if err != nil {
		t.Fatal(err)
	}
	var a bytes.Buffer
	if err := fstree.WriteTar(&a, tr, 1_700_000_000); err != nil {
		t.Fatal(err)
	}
	back, err := fstree.FromTar(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(fixture.Summary(true), summary(t, back)); d != "" {
		t.Errorf("read back (-want +got):\n%s", d)
	}
	for _, e := range back.Walk() {
		if e.MTime != 1_700_000_000 {
			t.Errorf("%s: mtime %d", e.Path, e.MTime)
		}
	}

	// Re-read after touching everything: same bytes.
	if err := exec.Command("find", src, "-exec", "touch", "-h", "-d", "2031-02-03", "{}", "+").Run(); err != nil {
		t.Fatal(err)
	}
	tr2, err := fstree.FromDir(src)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := fstree.WriteTar(&b, tr2, 1_700_000_000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two writes of the same tree differ")
	}

	needTool(t, "tar")
	dir := t.TempDir()
	archive := filepath.Join(dir, "stage.tar")
	if err := os.WriteFile(archive, a.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "root")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, out, "tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", archive)
	unpacked, err := fstree.FromDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(fixture.Summary(true), summary(t, unpacked)); d != "" {
		t.Errorf("GNU tar unpacked (-want +got):\n%s", d)
	}
}

// TestBadTarballs reads each testdata/bad/*.tar* and expects the message
// in the .err file of the same base name.
func TestBadTarballs(t *testing.T) {
	if *update {
		writeBad(t)
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "bad", "*.tar*"))
	if len(files) == 0 {
		t.Fatal("no testdata/bad tarballs")
	}
	for _, p := range files {
		t.Run(filepath.Base(p), func(t *testing.T) {
			base, _, _ := strings.Cut(filepath.Base(p), ".")
			want, err := os.ReadFile(filepath.Join(filepath.Dir(p), base+".err"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = fstree.OpenTar(p)
			if err == nil || err.Error() != strings.TrimSpace(string(want)) {
				t.Fatalf("error:\n got %v\nwant %s", err, want)
			}
		})
	}
}

// writeBad regenerates testdata/bad (run with -update).
func writeBad(t *testing.T) {
	dir := filepath.Join("testdata", "bad")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mk := func(hs ...*tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range hs {
			h.ModTime = time.Unix(0, 0)
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if h.Size > 0 {
				tw.Write(bytes.Repeat([]byte{'x'}, int(h.Size)))
			}
		}
		tw.Close()
		return buf.Bytes()
	}
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		w, _ := compress.Gzip(&buf)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}
	full := mk(&tar.Header{Name: "a", Typeflag: tar.TypeReg, Size: 3000, Mode: 0o644})
	cases := map[string][]byte{
		"hardlink-to-missing.tar": mk(&tar.Header{Name: "bin/sh", Typeflag: tar.TypeLink, Linkname: "bin/busybox"}),
		"unknown-type.tar":        mk(&tar.Header{Name: "weird", Typeflag: 'Z', Mode: 0o644}),
		"root-is-a-file.tar":      mk(&tar.Header{Name: ".", Typeflag: tar.TypeReg, Mode: 0o644}),
		"truncated.tar":           full[:1024],
		"truncated-gzip.tar.gz":   gz(full)[:30],
	}
	for name, b := range cases {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFromTarErrorsWrap(t *testing.T) {
	_, err := fstree.OpenTar(filepath.Join("testdata", "bad", "unknown-type.tar"))
	if !errors.Is(err, fstree.ErrTar) {
		t.Fatalf("errors.Is(%v, ErrTar) = false", err)
	}
	_, err = fstree.OpenTar(filepath.Join("testdata", "bad", "missing.tar"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("errors.Is(%v, ErrNotExist) = false", err)
	}
}

func FuzzFromTar(f *testing.F) {
	f.Add(craftedTar(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Leave out archives that declare big files (sparse ones expand
		// to their full size of zeros): they test the disk, not the code.
		tr0 := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := tr0.Next()
			if err != nil {
				break
			}
			if h.Size > 1<<20 {
				return
			}
		}
		tr, err := fstree.FromTar(bytes.NewReader(b))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := fstree.WriteTar(&out, tr, 0); err != nil {
			t.Fatalf("write of a read tree: %v", err)
		}
		again, err := fstree.FromTar(&out)
		if err != nil {
			t.Fatalf("re-read: %v", err)
		}
		s1, err1 := tr.Summary()
		s2, err2 := again.Summary()
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if d := cmp.Diff(s1, s2); d != "" {
			t.Fatalf("round trip (-first +second):\n%s", d)
		}
	})
}

func TestFromDirRoot(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.MkdirAll(filepath.Join(real, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(real, "etc", "hostname"), []byte("n1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	tr, err := fstree.FromDir(link)
	if err != nil {
		t.Fatal(err)
	}
	if e := tr.Get("etc/hostname"); e == nil || e.Size != 3 {
		t.Fatalf("through a symlinked root: etc/hostname = %+v", e)
	}
	if e := tr.Get("."); e.Type != fstree.Dir {
		t.Fatalf("root is a %s", e.Type)
	}
	file := filepath.Join(real, "etc", "hostname")
	if _, err := fstree.FromDir(file); err == nil || err.Error() != "read dir "+file+": not a directory" {
		t.Errorf("a file as root: %v", err)
	}
	if _, err := fstree.FromDir(filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing root: %v", err)
	}
}
