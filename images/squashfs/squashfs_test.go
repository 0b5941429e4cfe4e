package squashfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

// everyType is a tree with one of each entry type and attribute.
func everyType() *fstree.Tree {
	tr := fstree.New()
	tr.Add(fstree.Entry{Path: ".", Type: fstree.Dir, Mode: 0o755, MTime: 1700000000})
	tr.Add(fstree.Entry{Path: "bin", Type: fstree.Dir, Mode: 0o755, MTime: 1700000001})
	tr.Add(fstree.Entry{Path: "bin/su", Type: fstree.Regular, Mode: 0o755 | os.ModeSetuid, Size: 5, Data: fstree.Bytes("#!su\n"), MTime: 1700000002})
	tr.Add(fstree.Entry{Path: "bin/ping", Type: fstree.Regular, Mode: 0o755, Size: 4, Data: fstree.Bytes("ping"),
		Xattrs: map[string][]byte{"security.capability": capNetRaw}, MTime: 1700000003})
	tr.Add(fstree.Entry{Path: "bin/wall", Type: fstree.Regular, Mode: 0o755 | os.ModeSetgid, GID: 5, Size: 4, Data: fstree.Bytes("wall")})
	tr.Add(fstree.Entry{Path: "tmp", Type: fstree.Dir, Mode: 0o777 | os.ModeSticky})
	tr.Add(fstree.Entry{Path: "home/user", Type: fstree.Dir, Mode: 0o700, UID: 1000, GID: 1000,
		Xattrs: map[string][]byte{"user.comment": []byte("home"), "trusted.overlay.opaque": []byte("y")}})
	tr.Add(fstree.Entry{Path: "home/user/notes", Type: fstree.Regular, Mode: 0o600, UID: 1000, GID: 1000, Size: 6, Data: fstree.Bytes("notes\n"),
		Xattrs: map[string][]byte{"user.mime_type": []byte("text/plain")}})
	tr.Add(fstree.Entry{Path: "home/user/empty", Type: fstree.Regular, Mode: 0o644, UID: 4294967294, GID: 65534})
	tr.Add(fstree.Entry{Path: "usr/lib/os-release", Type: fstree.Regular, Mode: 0o644, Size: 12, Data: fstree.Bytes("ID=bellbuild")})
	tr.Add(fstree.Entry{Path: "etc/os-release", Type: fstree.Symlink, Mode: 0o777, Target: "../usr/lib/os-release"})
	tr.Add(fstree.Entry{Path: "etc/dangling", Type: fstree.Symlink, Mode: 0o777, Target: "/nowhere/" + strings.Repeat("x", 300)})
	tr.Add(fstree.Entry{Path: "etc/labelled", Type: fstree.Symlink, Mode: 0o777, Target: "os-release",
		Xattrs: map[string][]byte{"security.selinux_test": []byte("system_u:object_r:etc_t:s0")}})
	tr.Add(fstree.Entry{Path: "dev/null", Type: fstree.CharDev, Mode: 0o666, Major: 1, Minor: 3})
	tr.Add(fstree.Entry{Path: "dev/vda", Type: fstree.BlockDev, Mode: 0o660, GID: 6, Major: 254, Minor: 0})
	tr.Add(fstree.Entry{Path: "dev/nvme0n1p300", Type: fstree.BlockDev, Mode: 0o660, Major: 4095, Minor: 1048575})
	tr.Add(fstree.Entry{Path: "dev/initctl", Type: fstree.FIFO, Mode: 0o600})
	tr.Add(fstree.Entry{Path: "run/sock", Type: fstree.Socket, Mode: 0o755 | os.ModeSetuid})
	tr.Add(fstree.Entry{Path: "usr/bin/python3", Type: fstree.Regular, Mode: 0o755, Size: 7, Data: fstree.Bytes("python\n")})
	tr.Add(fstree.Entry{Path: "usr/bin/python3.11", Type: fstree.Regular, LinkTo: "usr/bin/python3"})
	tr.Add(fstree.Entry{Path: "usr/sbin/python", Type: fstree.Regular, LinkTo: "usr/bin/python3"})
	tr.Add(fstree.Entry{Path: strings.Repeat("n", 255), Type: fstree.Regular, Mode: 0o644, Size: 3, Data: fstree.Bytes("max")})
	tr.Add(fstree.Entry{Path: "odd names/with space and ünïcödé", Type: fstree.Regular, Mode: 0o644, Size: 1, Data: fstree.Bytes("u")})
	return tr
}

// bigDir is one directory of n files, the shape that spans many metadata
// blocks of the directory table.
func bigDir(n int) *fstree.Tree {
	tr := fstree.New()
	for i := range n {
		name := fmt.Sprintf("usr/share/doc/package-%05d-%s", i, strings.Repeat("d", i%40))
		switch i % 5 {
		case 0:
			tr.Add(fstree.Entry{Path: name, Type: fstree.Dir, Mode: 0o755})
			tr.AddFile(name+"/copyright", []byte("copyright "+name), 0o644, 0, 0)
		case 1:
			tr.Add(fstree.Entry{Path: name, Type: fstree.Symlink, Mode: 0o777, Target: "package-00000"})
		default:
			tr.AddFile(name, []byte(name), 0o644, uint32(i%7), uint32(i%3))
		}
	}
	return tr
}

// blocks is files of many blocks: incompressible, compressible, zero,
// holes, exact block multiples, tails, and duplicates.
func blocks() *fstree.Tree {
	tr := fstree.New()
	addGen(tr, "random-5m", gen{"random", 5*mib + 12345, 1}, 0o644, 0, 0)
	addGen(tr, "text-6m", gen{"text", 6 * mib, 2}, 0o644, 0, 0)
	addGen(tr, "zeros-3m", gen{"zeros", 3*mib + 1, 3}, 0o644, 0, 0)
	addGen(tr, "holes-2m", gen{"holes", 2*mib + 100, 4}, 0o644, 0, 0)
	addGen(tr, "one-block", gen{"random", 128 << 10, 5}, 0o644, 0, 0)
	addGen(tr, "one-block-dup", gen{"random", 128 << 10, 5}, 0o600, 7, 7)
	addGen(tr, "block-plus-one", gen{"text", 128<<10 + 1, 6}, 0o644, 0, 0)
	addGen(tr, "random-5m-dup", gen{"random", 5*mib + 12345, 1}, 0o755, 1, 1)
	addGen(tr, "tail-dup-a", gen{"random", 1000, 9}, 0o644, 0, 0)
	addGen(tr, "tail-dup-b", gen{"random", 1000, 9}, 0o644, 0, 0)
	tr.Add(fstree.Entry{Path: "empty", Type: fstree.Regular, Mode: 0o644})
	addGen(tr, "hard/a", gen{"text", 3 * mib, 10}, 0o640, 3, 4)
	tr.Add(fstree.Entry{Path: "hard/b", Type: fstree.Regular, LinkTo: "hard/a"})
	return tr
}

// farLinks has hardlinks whose inode numbers are more than 32767 apart
// from their neighbours', which a directory header's 16-bit deltas cannot
// reach.
func farLinks() *fstree.Tree {
	tr := fstree.New()
	tr.AddFile("a-first", []byte("shared"), 0o644, 0, 0)
	for i := range 33000 {
		tr.Add(fstree.Entry{Path: fmt.Sprintf("m/%05d", i), Type: fstree.FIFO, Mode: 0o600})
	}
	tr.Add(fstree.Entry{Path: "z/0", Type: fstree.FIFO, Mode: 0o600})
	tr.Add(fstree.Entry{Path: "z/1-link", Type: fstree.Regular, LinkTo: "a-first"})
	tr.Add(fstree.Entry{Path: "z/2", Type: fstree.FIFO, Mode: 0o600})
	tr.Add(fstree.Entry{Path: "z/3-link", Type: fstree.Regular, LinkTo: "a-first"})
	return tr
}

// TestFarHardlinks lists the whole image and extracts the linked names
// only: they must come out as one file with three names.
func TestFarHardlinks(t *testing.T) {
	unsquashfs := needTool(t, "unsquashfs")
	tr := farLinks()
	img := writeImage(t, tr, Options{})
	if diff := cmp.Diff(wantListing(tr), listImage(t, img)); diff != "" {
		t.Errorf("unsquashfs -lln (-want +got):\n%s", diff)
	}
	dir := filepath.Join(t.TempDir(), "x")
	if out, err := exec.Command(unsquashfs, "-q", "-n", "-d", dir, img, "a-first", "z").CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}
	var inos []uint64
	for _, p := range []string{"a-first", "z/1-link", "z/3-link"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, p), &st); err != nil {
			t.Fatal(err)
		}
		if st.Nlink != 3 || st.Size != 6 {
			t.Errorf("%s: %d links, %d bytes; want 3 links, 6 bytes", p, st.Nlink, st.Size)
		}
		inos = append(inos, st.Ino)
	}
	if inos[0] != inos[1] || inos[1] != inos[2] {
		t.Errorf("inodes %v: want one inode", inos)
	}
}

func TestUnsquashfs(t *testing.T) {
	needTool(t, "unsquashfs")
	tests := []struct {
		name string
		tree func() *fstree.Tree
		opts Options
	}{
		{"every type zstd", everyType, Options{}},
		{"every type gzip", everyType, Options{Compression: Gzip}},
		{"every type exportable", everyType, Options{Exportable: true}},
		{"empty root", fstree.New, Options{}},
		{"5000 entries in one directory", func() *fstree.Tree { return bigDir(5000) }, Options{}},
		{"many blocks zstd", blocks, Options{}},
		{"many blocks gzip 4k blocks", blocks, Options{Compression: Gzip, Level: 1, BlockSize: 4096}},
		{"many blocks 1m blocks", blocks, Options{BlockSize: 1 << 20, Workers: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := tt.tree()
			checkImage(t, tr, writeImage(t, tr, tt.opts))
		})
	}
}

// TestDeduplication proves identical files are stored once: an image with
// a second copy of 2 MiB of random bytes is barely larger than one without.
func TestDeduplication(t *testing.T) {
	one := fstree.New()
	addGen(one, "a", gen{"random", 2 * mib, 1}, 0o644, 0, 0)
	addGen(one, "small", gen{"random", 5000, 2}, 0o644, 0, 0)
	two := fstree.New()
	addGen(two, "a", gen{"random", 2 * mib, 1}, 0o644, 0, 0)
	addGen(two, "b", gen{"random", 2 * mib, 1}, 0o644, 0, 0)
	addGen(two, "small", gen{"random", 5000, 2}, 0o644, 0, 0)
	addGen(two, "small2", gen{"random", 5000, 2}, 0o644, 0, 0)
	a, b := fileSize(t, writeImage(t, one, Options{})), fileSize(t, writeImage(t, two, Options{}))
	if b-a > 4096 {
		t.Errorf("image with duplicates is %d bytes, without %d: duplicates were stored again", b, a)
	}
	checkImage(t, two, writeImage(t, two, Options{}))
}

func fileSize(t *testing.T, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestReproducible writes the same trees twice, with different numbers of
// workers, and wants the same bytes.
func TestReproducible(t *testing.T) {
	for name, tree := range map[string]func() *fstree.Tree{"every type": everyType, "blocks": blocks, "big dir": func() *fstree.Tree { return bigDir(3000) }} {
		t.Run(name, func(t *testing.T) {
			a := imageBytes(t, writeImage(t, tree(), Options{MkfsTime: 1700000000, Workers: 1}))
			b := imageBytes(t, writeImage(t, tree(), Options{MkfsTime: 1700000000, Workers: 5}))
			if !bytes.Equal(a, b) {
				t.Errorf("two writes differ (%d and %d bytes)", len(a), len(b))
			}
		})
	}
}

// TestOffset writes the image into the middle of a larger file, as into a
// partition of a disk image, and reads it back at that offset.
func TestOffset(t *testing.T) {
	needTool(t, "unsquashfs")
	tr := everyType()
	disk := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	const off = 1 << 20
	if _, err := f.Write(bytes.Repeat([]byte{0xee}, 3*off)); err != nil {
		t.Fatal(err)
	}
	n, err := Write(io.NewOffsetWriter(f, off), tr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	raw := imageBytes(t, disk)
	if !bytes.Equal(raw[:off], bytes.Repeat([]byte{0xee}, off)) || !bytes.Equal(raw[off+n:], bytes.Repeat([]byte{0xee}, len(raw)-off-int(n))) {
		t.Error("Write touched bytes outside its region")
	}
	alone := imageBytes(t, writeImage(t, tr, Options{}))
	if !bytes.Equal(raw[off:off+n], alone) {
		t.Error("image written at an offset differs from the image written alone")
	}
	out, err := exec.Command("unsquashfs", "-o", fmt.Sprint(off), "-lln", disk).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "squashfs-root/bin/su") {
		t.Errorf("unsquashfs -o %d: %v\n%s", off, err, out)
	}
}

// errReader fails after some bytes.
type failingContent struct{ err error }

func (f failingContent) Open() (io.ReadCloser, error) { return nil, f.err }

func TestErrors(t *testing.T) {
	errOpen := errors.New("disk on fire")
	manyIDs := func() *fstree.Tree {
		tr := fstree.New()
		for i := range 65536 {
			tr.Add(fstree.Entry{Path: fmt.Sprintf("f%d", i), Type: fstree.FIFO, UID: uint32(i)})
		}
		return tr
	}
	tests := []struct {
		name    string
		entry   fstree.Entry
		tree    func() *fstree.Tree
		opts    Options
		is      error
		message string
	}{
		{name: "long name", entry: fstree.Entry{Path: strings.Repeat("x", 256), Type: fstree.FIFO}, is: ErrLimit,
			message: "squashfs: " + strings.Repeat("x", 256) + ": name is 256 bytes, more than 255: beyond squashfs's limits"},
		{name: "long symlink", entry: fstree.Entry{Path: "l", Type: fstree.Symlink, Target: strings.Repeat("t", 4097)}, is: ErrLimit,
			message: "squashfs: l: symlink target is 4097 bytes, want 1 to 4096: beyond squashfs's limits"},
		{name: "empty symlink", entry: fstree.Entry{Path: "l", Type: fstree.Symlink}, is: ErrLimit,
			message: "squashfs: l: symlink target is 0 bytes, want 1 to 4096: beyond squashfs's limits"},
		{name: "device major", entry: fstree.Entry{Path: "d", Type: fstree.CharDev, Major: 4096}, is: ErrLimit,
			message: "squashfs: d: device 4096,0: major must be at most 4095 and minor at most 1048575: beyond squashfs's limits"},
		{name: "device minor", entry: fstree.Entry{Path: "d", Type: fstree.BlockDev, Minor: 1 << 20}, is: ErrLimit,
			message: "squashfs: d: device 0,1048576: major must be at most 4095 and minor at most 1048575: beyond squashfs's limits"},
		{name: "mtime", entry: fstree.Entry{Path: "f", Type: fstree.FIFO, MTime: -1}, is: ErrLimit,
			message: "squashfs: f: mtime -1 is outside 1970-2106: beyond squashfs's limits"},
		{name: "xattr namespace", entry: fstree.Entry{Path: "f", Type: fstree.FIFO, Xattrs: map[string][]byte{"system.posix_acl_access": {2}}}, is: ErrLimit,
			message: `squashfs: f: xattr "system.posix_acl_access": squashfs stores only the user., trusted. and security. namespaces: beyond squashfs's limits`},
		{name: "too many owners", tree: manyIDs, is: ErrLimit,
			message: "squashfs: f9999: owner 9999: more than 65535 distinct uids and gids: beyond squashfs's limits"},
		{name: "no data", entry: fstree.Entry{Path: "f", Type: fstree.Regular, Size: 3}, is: ErrContent,
			message: "squashfs: f: 3 bytes but no Data: file content does not match the tree"},
		{name: "short content", entry: fstree.Entry{Path: "f", Type: fstree.Regular, Size: 300000, Data: fstree.Bytes("abc")}, is: ErrContent,
			message: "squashfs: f: content is 3 bytes, not its declared 300000 (changed after the tree was read): file content does not match the tree"},
		{name: "long content", entry: fstree.Entry{Path: "f", Type: fstree.Regular, Size: 2, Data: fstree.Bytes("abc")}, is: ErrContent,
			message: "squashfs: f: content is 3 bytes, not its declared 2 (changed after the tree was read): file content does not match the tree"},
		{name: "open fails", entry: fstree.Entry{Path: "f", Type: fstree.Regular, Size: 2, Data: failingContent{errOpen}}, is: errOpen,
			message: "squashfs: f: disk on fire"},
		{name: "block size", entry: fstree.Entry{Path: "f", Type: fstree.FIFO}, opts: Options{BlockSize: 3000},
			message: "squashfs: block size 3000: want a power of two from 4096 to 1048576"},
		{name: "zstd level", entry: fstree.Entry{Path: "f", Type: fstree.FIFO}, opts: Options{Level: 23},
			message: "squashfs: zstd level 23: want 1 to 22"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr *fstree.Tree
			if tt.tree != nil {
				tr = tt.tree()
			} else {
				tr = fstree.New()
				tr.Add(tt.entry)
			}
			var buf seekBuffer
			_, err := Write(&buf, tr, tt.opts)
			if err == nil {
				t.Fatal("Write succeeded")
			}
			if err.Error() != tt.message {
				t.Errorf("error:\n got %s\nwant %s", err, tt.message)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
		})
	}
}

// seekBuffer is an in-memory io.WriteSeeker for small test images.
type seekBuffer struct {
	b   []byte
	pos int64
}

func (s *seekBuffer) Write(p []byte) (int, error) {
	if need := int(s.pos) + len(p); need > len(s.b) {
		s.b = append(s.b, make([]byte, need-len(s.b))...)
	}
	copy(s.b[s.pos:], p)
	s.pos += int64(len(p))
	return len(p), nil
}

func (s *seekBuffer) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += int64(len(s.b))
	}
	s.pos = off
	return off, nil
}

// zeros is Content of n zero bytes, read quickly.
type zeros int64

func (z zeros) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.LimitReader(zeroReader{}, int64(z))), nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestHugeSparseFile writes a file over 4 GiB (more than a basic inode
// can describe) made of holes and a tail in a fragment, and reads it back
// sparse: unsquashfs lists its size, and extracts it as a hole with only
// zero bytes where it wrote data.
func TestHugeSparseFile(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 4.5 GiB file: skipped under -short")
	}
	needTool(t, "unsquashfs")
	const size = 4<<30 + 512<<20 + 77
	tr := fstree.New()
	tr.Add(fstree.Entry{Path: "disk.img", Type: fstree.Regular, Mode: 0o600, Size: size, Data: zeros(size)})
	img := writeImage(t, tr, Options{})
	if n := fileSize(t, img); n > 1<<20 {
		t.Errorf("image of a file of holes is %d bytes", n)
	}
	if diff := cmp.Diff(wantListing(tr), listImage(t, img)); diff != "" {
		t.Errorf("unsquashfs -lln (-want +got):\n%s", diff)
	}
	f, err := os.Open(filepath.Join(extract(t, img), "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 > 64<<20 {
		t.Fatalf("extracted: %d bytes in %d blocks, want %d bytes, sparse", st.Size, st.Blocks, int64(size))
	}
	// Every data region between the holes holds zeros.
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		for p := data; p < hole; p += int64(len(buf)) {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-p)], p)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !allZero(buf[:n]) {
				t.Fatalf("non-zero bytes at %d", p)
			}
		}
		off = hole
	}
}

// TestChangedFile: a file that grew or shrank on disk after the tree was
// read fails the write with an error naming it and both sizes (and
// ErrContent), whether it is read block by block (a size no other file
// has) or first hashed for deduplication (a size another file shares).
func TestChangedFile(t *testing.T) {
	const p = "usr/lib/libchanged.so"
	tests := []struct {
		name   string
		others []string
	}{
		{"unique size", nil},
		{"shared size", []string{"usr/lib/libsame.so"}},
	}
	for _, tc := range tests {
		for _, c := range fixture.Changes {
			t.Run(tc.name+"/"+c.Name, func(t *testing.T) {
				var out seekBuffer
				_, err := Write(&out, c.Tree(t, p, tc.others...), Options{})
				c.Check(t, err, p)
				if !errors.Is(err, ErrContent) {
					t.Errorf("error %v is not ErrContent", err)
				}
				if !strings.HasPrefix(err.Error(), "squashfs: ") {
					t.Errorf("error %q does not say which writer failed", err)
				}
			})
		}
	}
}
