package cpio

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func epoch(n int64) *int64 { return &n }

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		testtool.Skipf(t, "%s not installed (apt-get install %s): cannot check against it", name, name)
	}
}

func write(t *testing.T, tr *fstree.Tree, opts Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, tr, opts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func summary(t *testing.T, tr *fstree.Tree) []string {
	t.Helper()
	s, err := tr.Summary()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestGNUCpioUnpacks writes the sample tree (read from disk), unpacks it
// with GNU cpio as root, and reads the result back: every entry's type,
// mode, owner, link target, device numbers, hardlink group and content
// must have survived.
func TestGNUCpioUnpacks(t *testing.T) {
	needTool(t, "cpio")
	tr, err := fstree.FromDir(fixture.MakeDir(t))
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "root.cpio")
	if err := os.WriteFile(archive, write(t, tr, Options{MTime: epoch(1_700_000_000)}), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--no-absolute-filenames", "-F", archive)
	cmd.Dir = out
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, b)
	}
	got, err := fstree.FromDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(fixture.Summary(false), summary(t, got)); d != "" {
		t.Errorf("unpacked tree (-want +got):\n%s", d)
	}
	// -m restores file mtimes: all are the source date.
	for _, p := range []string{"bin/busybox", "etc/passwd", "dev/null"} {
		if e := got.Get(p); e.MTime != 1_700_000_000 {
			t.Errorf("%s: mtime %d, want 1700000000", p, e.MTime)
		}
	}

	// cpio -t lists the names in Walk order, the trailer excluded.
	b, err := exec.Command("cpio", "-t", "-F", archive).Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	if d := cmp.Diff(fixture.Names(), strings.Split(strings.TrimSpace(string(b)), "\n")); d != "" {
		t.Errorf("cpio -t (-want +got):\n%s", d)
	}
}

// TestGNUCpioListsDevicesAndOwners checks cpio -tv's own view of the
// header fields that GNU cpio shows: device numbers, numeric owners,
// setuid bits, link counts.
func TestGNUCpioListsDevicesAndOwners(t *testing.T) {
	needTool(t, "cpio")
	tr := fstree.New()
	tr.Add(fstree.Entry{Path: "dev/sda", Type: fstree.BlockDev, Mode: 0o660, GID: 6, Major: 8, Minor: 1})
	tr.Add(fstree.Entry{Path: "dev/ttyS0", Type: fstree.CharDev, Mode: 0o620, Major: 4, Minor: 64})
	tr.AddFile("su", []byte("x"), 0o755|os.ModeSetuid, 4000, 4001)
	tr.AddFile("a", []byte("abc"), 0o644, 0, 0)
	tr.Add(fstree.Entry{Path: "b", Type: fstree.Regular, Mode: 0o644, LinkTo: "a", Size: 3, Data: fstree.Bytes("abc")})
	cmd := exec.Command("cpio", "-tv", "--numeric-uid-gid")
	cmd.Stdin = bytes.NewReader(write(t, tr, Options{MTime: epoch(0)}))
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -tv: %v", err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		// mode nlink uid gid size-or-dev... name (date fields dropped)
		if len(f) < 9 {
			t.Fatalf("odd line %q", l)
		}
		n := 5 // mode, nlink, uid, gid, size; a device shows "major, minor"
		if strings.HasSuffix(f[4], ",") {
			n = 6
		}
		got = append(got, strings.Join(append(f[:n:n], f[len(f)-1]), " "))
	}
	want := []string{
		"drwxr-xr-x 3 0 0 0 .",
		"-rw-r--r-- 2 0 0 0 a",
		"-rw-r--r-- 2 0 0 3 b",
		"drwxr-xr-x 2 0 0 0 dev",
		"brw-rw---- 1 0 6 8, 1 dev/sda",
		"crw--w---- 1 0 0 4, 64 dev/ttyS0",
		"-rwsr-xr-x 1 4000 4001 1 su",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("cpio -tv (-want +got):\n%s", d)
	}
}

// TestReproducible: the same tree written twice, at different times, from
// entries with differing mtimes, gives the same bytes; a golden file pins
// the format itself.
func TestReproducible(t *testing.T) {
	build := func(mtime int64) *fstree.Tree {
		tr := fstree.New()
		tr.AddFile("etc/hostname", []byte("node1\n"), 0o644, 0, 0)
		tr.Add(fstree.Entry{Path: "bin/sh", Type: fstree.Symlink, Target: "busybox", Mode: 0o777})
		tr.AddFile("bin/busybox", []byte("#!busybox"), 0o755, 0, 0)
		tr.Add(fstree.Entry{Path: "bin/ls", Type: fstree.Regular, LinkTo: "bin/busybox", Mode: 0o755, Size: 9, Data: fstree.Bytes("#!busybox")})
		tr.Add(fstree.Entry{Path: "dev/console", Type: fstree.CharDev, Mode: 0o600, Major: 5, Minor: 1})
		for _, e := range tr.Walk() {
			e.MTime = mtime
		}
		return tr
	}
	a := write(t, build(1), Options{MTime: epoch(1_234_567_890)})
	b := write(t, build(999), Options{MTime: epoch(1_234_567_890)})
	if !bytes.Equal(a, b) {
		t.Fatal("two writes of the same tree differ")
	}
	// Without MTime the entries' own times are written (and differ).
	if bytes.Equal(write(t, build(1), Options{}), write(t, build(2), Options{})) {
		t.Fatal("entry mtimes are not written")
	}
	golden := filepath.Join("testdata", "small.cpio.golden")
	if *update {
		if err := os.WriteFile(golden, a, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, want) {
		t.Errorf("output differs from %s (rerun with -update if the change is meant):\n got %q\nwant %q", golden, a, want)
	}
}

// TestSampleReproducible writes the on-disk sample twice, touching every
// file in between: the archives (and their zstd) must be byte-identical.
func TestSampleReproducible(t *testing.T) {
	dir := fixture.MakeDir(t)
	bake := func() []byte {
		tr, err := fstree.FromDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		z, err := compress.Zstd(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := Write(z, tr, Options{MTime: epoch(1_700_000_000)}); err != nil {
			t.Fatal(err)
		}
		if err := z.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	a := bake()
	if err := exec.Command("find", dir, "-exec", "touch", "-h", "-d", "2030-01-01", "{}", "+").Run(); err != nil {
		t.Fatal(err)
	}
	if b := bake(); !bytes.Equal(a, b) {
		t.Fatal("two bakes of the same directory differ")
	}
}

// TestHardlinkLayout checks the newc hardlink convention byte by byte: all
// names share one inode and nlink, and only the last carries the data.
func TestHardlinkLayout(t *testing.T) {
	tr := fstree.New()
	tr.AddFile("m/head", []byte("payload"), 0o755, 0, 0)
	for _, p := range []string{"a/first", "z/last"} {
		tr.Add(fstree.Entry{Path: p, Type: fstree.Regular, LinkTo: "m/head", Mode: 0o755, Size: 7, Data: fstree.Bytes("payload")})
	}
	hdrs := parseHeaders(t, write(t, tr, Options{}))
	var got []string
	for _, h := range hdrs {
		if h.name == "a/first" || h.name == "m/head" || h.name == "z/last" {
			got = append(got, fmt.Sprintf("%s ino=%d nlink=%d size=%d", h.name, h.ino, h.nlink, h.size))
		}
	}
	ino := hdrs[2].ino // ., a, a/first
	want := []string{
		fmt.Sprintf("a/first ino=%d nlink=3 size=0", ino),
		fmt.Sprintf("m/head ino=%d nlink=3 size=0", ino),
		fmt.Sprintf("z/last ino=%d nlink=3 size=7", ino),
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("hardlink headers (-want +got):\n%s", d)
	}
	if last := hdrs[len(hdrs)-1]; last.name != Trailer {
		t.Errorf("last entry %q, want %s", last.name, Trailer)
	}
	// Inode numbers are unique apart from the group and count from 1.
	seen := map[uint32]string{}
	for _, h := range hdrs[:len(hdrs)-1] {
		if h.ino == ino {
			continue
		}
		if other, ok := seen[h.ino]; ok {
			t.Errorf("%s and %s share inode %d", h.name, other, h.ino)
		}
		seen[h.ino] = h.name
	}
	if hdrs[0].ino != 1 {
		t.Errorf("root inode %d, want 1", hdrs[0].ino)
	}
}

type rawHeader struct {
	name                     string
	ino, mode, nlink, size   uint32
	rmajor, rminor, namesize uint32
}

// parseHeaders walks an archive's headers independently of Read.
func parseHeaders(t *testing.T, b []byte) []rawHeader {
	t.Helper()
	var out []rawHeader
	for off := 0; off < len(b); {
		if string(b[off:off+6]) != Magic {
			t.Fatalf("no magic at %d", off)
		}
		var f [13]uint32
		for i := range f {
			fmt.Sscanf(string(b[off+6+8*i:off+14+8*i]), "%08x", &f[i])
		}
		h := rawHeader{ino: f[0], mode: f[1], nlink: f[4], size: f[6], rmajor: f[9], rminor: f[10], namesize: f[11]}
		h.name = string(b[off+110 : off+110+int(h.namesize)-1])
		out = append(out, h)
		off += 110 + int(h.namesize)
		off += pad4(off)
		off += int(h.size)
		off += pad4(off)
		if h.name == Trailer {
			break
		}
	}
	return out
}

// bigContent claims a size without holding the bytes.
type bigContent struct{ opened bool }

func (b *bigContent) Open() (io.ReadCloser, error) {
	b.opened = true
	return io.NopCloser(strings.NewReader("")), nil
}

func TestErrors(t *testing.T) {
	// Files on disk take the read-ahead path; in-memory contents do not.
	dir := t.TempDir()
	abc := filepath.Join(dir, "abc")
	if err := os.WriteFile(abc, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name  string
		entry fstree.Entry
		want  string
		is    error
	}{
		{
			name:  "4 GiB",
			entry: fstree.Entry{Path: "var/huge.img", Type: fstree.Regular, Size: 1 << 32, Data: &bigContent{}},
			want:  "cpio: var/huge.img: 4294967296 bytes: file too large for cpio newc (4 GiB limit)",
			is:    ErrTooLarge,
		},
		{
			name:  "5 GiB",
			entry: fstree.Entry{Path: "var/huge.img", Type: fstree.Regular, Size: 5 << 30, Data: &bigContent{}},
			want:  "cpio: var/huge.img: 5368709120 bytes: file too large for cpio newc (4 GiB limit)",
			is:    ErrTooLarge,
		},
		{
			name:  "shorter than its size",
			entry: fstree.Entry{Path: "etc/short", Type: fstree.Regular, Size: 10, Data: fstree.Bytes("abc")},
			want:  "cpio: etc/short: content is 3 bytes, not its declared 10 (changed after the tree was read)",
		},
		{
			name:  "longer than its size",
			entry: fstree.Entry{Path: "etc/long", Type: fstree.Regular, Size: 2, Data: fstree.Bytes("abc")},
			want:  "cpio: etc/long: content is 3 bytes, not its declared 2 (changed after the tree was read)",
		},
		{
			name:  "file shorter than its size",
			entry: fstree.Entry{Path: "etc/short", Type: fstree.Regular, Size: 10, Data: fstree.File(abc)},
			want:  "cpio: etc/short: content is 3 bytes, not its declared 10 (changed after the tree was read)",
		},
		{
			name:  "file longer than its size",
			entry: fstree.Entry{Path: "etc/long", Type: fstree.Regular, Size: 2, Data: fstree.File(abc)},
			want:  "cpio: etc/long: content is 3 bytes, not its declared 2 (changed after the tree was read)",
		},
		{
			name:  "file gone",
			entry: fstree.Entry{Path: "etc/gone", Type: fstree.Regular, Size: 2, Data: fstree.File(missing)},
			want:  "cpio: etc/gone: open " + missing + ": no such file or directory",
		},
		{
			name:  "no content",
			entry: fstree.Entry{Path: "etc/none", Type: fstree.Regular, Size: 2},
			want:  "cpio: etc/none: 2 bytes but no content",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := fstree.New()
			tr.Add(tc.entry)
			var out bytes.Buffer
			err := Write(&out, tr, Options{})
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if tc.is == ErrTooLarge && out.Len() > 0 {
				t.Errorf("%d bytes written before the size check failed", out.Len())
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.is)
			}
			if b, ok := tc.entry.Data.(*bigContent); ok && b.opened {
				t.Error("content of an oversized file was opened")
			}
		})
	}
}

// TestHardlinkTooLarge: a hardlink group whose content is ≥ 4 GiB fails on
// the name that would carry the data.
func TestHardlinkTooLarge(t *testing.T) {
	tr := fstree.New()
	tr.Add(fstree.Entry{Path: "a", Type: fstree.Regular, Size: 1 << 32, Data: &bigContent{}})
	tr.Add(fstree.Entry{Path: "b", Type: fstree.Regular, LinkTo: "a"})
	err := Write(io.Discard, tr, Options{})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "cpio: b:") {
		t.Fatalf("error %v, want ErrTooLarge naming b", err)
	}
}

// TestReadRoundTrip: Read gives back what Write wrote, also across
// concatenated archives (later segments override earlier ones).
func TestReadRoundTrip(t *testing.T) {
	tr := fstree.New()
	tr.AddFile("etc/hostname", []byte("node1\n"), 0o644, 0, 0)
	tr.AddFile("bin/busybox", fixture.Busybox, 0o755, 0, 0)
	tr.Add(fstree.Entry{Path: "bin/sh", Type: fstree.Regular, LinkTo: "bin/busybox"})
	tr.Add(fstree.Entry{Path: "sbin", Type: fstree.Symlink, Target: "bin", Mode: 0o777})
	tr.Add(fstree.Entry{Path: "dev/null", Type: fstree.CharDev, Mode: 0o666, Major: 1, Minor: 3})
	tr.Add(fstree.Entry{Path: "run/fifo", Type: fstree.FIFO, Mode: 0o600, UID: 7, GID: 8})
	tr.Add(fstree.Entry{Path: "run/sock", Type: fstree.Socket, Mode: 0o600})
	tr.Add(fstree.Entry{Path: "tmp", Type: fstree.Dir, Mode: 0o777 | os.ModeSticky})
	first := write(t, tr, Options{MTime: epoch(5)})

	upper := fstree.New()
	upper.AddFile("etc/hostname", []byte("node2\n"), 0o600, 0, 0)
	upper.AddFile("etc/bellbuild/node.json", []byte("{}"), 0o600, 0, 0)
	second := write(t, upper, Options{MTime: epoch(5), FirstInode: 1000})

	got, err := Read(io.MultiReader(bytes.NewReader(first), bytes.NewReader(second)))
	if err != nil {
		t.Fatal(err)
	}
	want := fstree.New()
	want.Merge(tr)
	want.Merge(upper)
	if d := cmp.Diff(summary(t, want), summary(t, got)); d != "" {
		t.Errorf("read back (-want +got):\n%s", d)
	}
	if e := got.Get("etc/hostname"); e.MTime != 5 {
		t.Errorf("mtime %d, want 5", e.MTime)
	}
}

func TestReadErrors(t *testing.T) {
	good := write(t, func() *fstree.Tree {
		tr := fstree.New()
		tr.AddFile("a", []byte("hello"), 0o644, 0, 0)
		return tr
	}(), Options{})
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"bad magic", append([]byte("070707"), good[6:]...), `cpio: malformed newc archive: bad magic "070707" at byte 0`},
		{"truncated header", good[:50], "cpio: malformed newc archive: truncated at byte 50"},
		{"truncated body", good[:112+112+2], "cpio: malformed newc archive: a: truncated body"},
		{"bad hex", append(append([]byte(nil), good[:6]...), append([]byte("zzzzzzzz"), good[14:]...)...), "cpio: malformed newc archive: bad header field 0 at byte 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tc.in))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("not ErrFormat: %v", err)
			}
		})
	}
}

func FuzzRead(f *testing.F) {
	tr := fstree.New()
	tr.AddFile("a/b", []byte("hello"), 0o644, 1, 2)
	tr.Add(fstree.Entry{Path: "l", Type: fstree.Symlink, Target: "a/b"})
	tr.Add(fstree.Entry{Path: "h", Type: fstree.Regular, LinkTo: "a/b"})
	var buf bytes.Buffer
	if err := Write(&buf, tr, Options{}); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := Read(bytes.NewReader(b))
		if err != nil {
			return
		}
		// Whatever reads must write and read back the same.
		var out bytes.Buffer
		if err := Write(&out, tr, Options{}); err != nil {
			t.Fatalf("write of a read tree: %v", err)
		}
		again, err := Read(&out)
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

// TestFramesEndOnEntries: through compress.Zstd, every zstd frame ends
// exactly where a cpio entry ends (the kernel rejects a compressed member
// that stops inside an entry: "junk at the end of compressed archive").
func TestFramesEndOnEntries(t *testing.T) {
	tr := fstree.New()
	for i := range 12 {
		tr.AddFile(fmt.Sprintf("f/%02d", i), bytes.Repeat([]byte{byte(i)}, 3<<20+i), 0o644, 0, 0)
	}
	var z bytes.Buffer
	zw, err := compress.Zstd(&z)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(zw, tr, Options{}); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	raw := write(t, tr, Options{})
	// Where each entry ends in the uncompressed archive.
	ends := map[int64]bool{}
	off := int64(0)
	for _, h := range parseHeaders(t, raw) {
		off += 110 + int64(h.namesize)
		off += int64(pad4(int(off)))
		off += int64(h.size)
		off += int64(pad4(int(off)))
		ends[off] = true
	}
	frames, err := compress.Frames(bytes.NewReader(z.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) < 2 {
		t.Fatalf("%d frames, want several", len(frames))
	}
	var pos int64
	var unpacked []byte
	for _, f := range frames {
		d, err := zstd.NewReader(bytes.NewReader(z.Bytes()[f.Offset : f.Offset+f.Size]))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(d)
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		pos += int64(len(b))
		unpacked = append(unpacked, b...)
		if !ends[pos] {
			t.Errorf("frame at %d ends at archive byte %d, inside an entry", f.Offset, pos)
		}
	}
	if !bytes.Equal(unpacked, raw) {
		t.Error("frames do not decompress to the archive")
	}
}

// TestReadGNUCpio reads what GNU cpio writes of the sample (hardlink data
// on the last name, "./" names): the same tree.
func TestReadGNUCpio(t *testing.T) {
	needTool(t, "cpio")
	dir := fixture.MakeDir(t)
	cmd := exec.Command("sh", "-c", "find . | sort | cpio -o -H newc --quiet")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -o: %v", err)
	}
	tr, err := Read(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(fixture.Summary(false), summary(t, tr)); d != "" {
		t.Errorf("read (-want +got):\n%s", d)
	}
}

// hintRecorder is a destination that records the size hints it is given
// and when (after how many bytes).
type hintRecorder struct {
	bytes.Buffer
	hints []int64
	at    []int
}

func (h *hintRecorder) SizeHint(n int64) {
	h.hints = append(h.hints, n)
	h.at = append(h.at, h.Len())
}

// TestSizeHint: a destination that takes a size hint (compress.ZstdWriter
// frames the end of its stream by it) is told the archive's exact length,
// once, before the first byte.
func TestSizeHint(t *testing.T) {
	odd := fstree.New()
	odd.AddFile("a", []byte("x"), 0o644, 0, 0)
	odd.AddFile("bb/ccc", bytes.Repeat([]byte("y"), 4099), 0o644, 0, 0)
	odd.AddFile("empty", nil, 0o644, 0, 0)
	odd.Add(fstree.Entry{Path: "bb/link", Type: fstree.Symlink, Target: "ccc", Mode: 0o777})
	odd.Add(fstree.Entry{Path: "hard", Type: fstree.Regular, LinkTo: "bb/ccc"})
	odd.Add(fstree.Entry{Path: "dev/null", Type: fstree.CharDev, Mode: 0o666, Major: 1, Minor: 3})
	sample, err := fstree.FromDir(fixture.MakeDir(t))
	if err != nil {
		t.Fatal(err)
	}
	for name, tr := range map[string]*fstree.Tree{"odd sizes": odd, "sample": sample, "empty": fstree.New()} {
		t.Run(name, func(t *testing.T) {
			var h hintRecorder
			if err := Write(&h, tr, Options{}); err != nil {
				t.Fatal(err)
			}
			want := []int64{int64(h.Len())}
			if d := cmp.Diff(want, h.hints); d != "" || h.at[0] != 0 {
				t.Errorf("hints (-archive length +hinted):\n%s(given after %v bytes)", d, h.at)
			}
		})
	}
}

// TestChangedFile: a file that grew or shrank on disk after the tree was
// read fails the write with an error naming it and both sizes, whichever
// way the data goes: through the write buffer, into a file
// (copy_file_range) or into the zstd compressor's blocks (ReadFrom).
func TestChangedFile(t *testing.T) {
	const p = "usr/lib/libchanged.so"
	tests := []struct {
		name string
		dest func(t *testing.T) io.Writer
	}{
		{"buffered", func(t *testing.T) io.Writer { return struct{ io.Writer }{io.Discard} }},
		{"file", func(t *testing.T) io.Writer {
			f, err := os.Create(filepath.Join(t.TempDir(), "out.cpio"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		}},
		{"zstd", func(t *testing.T) io.Writer {
			zw, err := compress.Zstd(io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { zw.Close() })
			return zw
		}},
	}
	for _, tc := range tests {
		for _, c := range fixture.Changes {
			t.Run(tc.name+"/"+c.Name, func(t *testing.T) {
				err := Write(tc.dest(t), c.Tree(t, p), Options{})
				c.Check(t, err, p)
				if !strings.HasPrefix(err.Error(), "cpio: ") {
					t.Errorf("error %q does not say which writer failed", err)
				}
			})
		}
	}
}
