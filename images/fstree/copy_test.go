package fstree_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
)

// readers returns c's content through each of the two ways writers read
// it: CopyContent into a writer, and OpenContent read block by block with
// io.ReadFull, then End.
var readers = []struct {
	name string
	read func(p string, c fstree.Content, size int64) ([]byte, error)
}{
	{"CopyContent", func(p string, c fstree.Content, size int64) ([]byte, error) {
		var out bytes.Buffer
		err := fstree.CopyContent(&out, p, c, size, nil)
		return out.Bytes(), err
	}},
	{"CopyContent through a buffer", func(p string, c fstree.Content, size int64) ([]byte, error) {
		var out bytes.Buffer
		err := fstree.CopyContent(struct{ io.Writer }{&out}, p, c, size, make([]byte, 7))
		return out.Bytes(), err
	}},
	{"ContentReader", func(p string, c fstree.Content, size int64) ([]byte, error) {
		r, err := fstree.OpenContent(p, c, size)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		out := make([]byte, size)
		for off := int64(0); off < size; off += 4 {
			if _, err := io.ReadFull(r, out[off:min(off+4, size)]); err != nil {
				return out[:off], err
			}
		}
		return out, r.End()
	}},
	{"ContentReader read to EOF", func(p string, c fstree.Content, size int64) ([]byte, error) {
		r, err := fstree.OpenContent(p, c, size)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return io.ReadAll(iotest.OneByteReader(r))
	}},
}

// TestCopyContent: exactly the declared size is copied; content that is
// shorter or longer is a *SizeError with the path and both sizes (the
// whole length of a longer one, counted or taken from the open file's
// size); other errors name the path.
func TestCopyContent(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		c       fstree.Content
		size    int64
		want    string // what is read (exactly, on success)
		sizeErr *fstree.SizeError
		msg     string // the error, if any
	}{
		{name: "exact", c: fstree.Bytes("0123456789"), size: 10, want: "0123456789"},
		{name: "exact file", c: fstree.File(file), size: 10, want: "0123456789"},
		{name: "empty", size: 0, want: ""},
		{name: "empty content", c: fstree.Bytes(nil), size: 0, want: ""},
		{name: "shorter", c: fstree.Bytes("0123"), size: 10,
			sizeErr: &fstree.SizeError{Path: "etc/f", Size: 10, Actual: 4},
			msg:     "etc/f: content is 4 bytes, not its declared 10 (changed after the tree was read)"},
		{name: "longer", c: fstree.Bytes("0123456789"), size: 4,
			sizeErr: &fstree.SizeError{Path: "etc/f", Size: 4, Actual: 10},
			msg:     "etc/f: content is 10 bytes, not its declared 4 (changed after the tree was read)"},
		{name: "longer file", c: fstree.File(file), size: 4,
			sizeErr: &fstree.SizeError{Path: "etc/f", Size: 4, Actual: 10}},
		{name: "empty but not", c: fstree.Bytes("x"), size: 0,
			sizeErr: &fstree.SizeError{Path: "etc/f", Size: 0, Actual: 1}},
		{name: "no content", size: 3, msg: "etc/f: 3 bytes but no content"},
		{name: "negative size", c: fstree.Bytes(""), size: -1, msg: "etc/f: negative size -1"},
		{name: "open fails", c: fstree.File(missing), size: 3, msg: "etc/f: open " + missing + ": no such file or directory"},
	}
	for _, r := range readers {
		for _, tc := range tests {
			t.Run(r.name+"/"+tc.name, func(t *testing.T) {
				got, err := r.read("etc/f", tc.c, tc.size)
				if tc.sizeErr == nil && tc.msg == "" {
					if err != nil {
						t.Fatal(err)
					}
					if string(got) != tc.want {
						t.Errorf("read %q, want %q", got, tc.want)
					}
					return
				}
				if err == nil {
					t.Fatalf("read %q without an error", got)
				}
				var se *fstree.SizeError
				if errors.As(err, &se) != (tc.sizeErr != nil) {
					t.Fatalf("error %q: errors.As(*SizeError) = %t", err, tc.sizeErr == nil)
				}
				if tc.sizeErr != nil && *se != *tc.sizeErr {
					t.Errorf("SizeError %+v, want %+v", *se, *tc.sizeErr)
				}
				if tc.msg != "" && err.Error() != tc.msg {
					t.Errorf("error:\n got %s\nwant %s", err, tc.msg)
				}
				if int64(len(got)) > max(tc.size, 0) {
					t.Errorf("read %d bytes, more than the declared %d", len(got), tc.size)
				}
			})
		}
	}
}

// TestCopyContentReadError: a read error is not a size error, and names
// the path.
func TestCopyContentReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	c := failing{boom}
	for _, r := range readers {
		t.Run(r.name, func(t *testing.T) {
			_, err := r.read("etc/f", c, 10)
			var se *fstree.SizeError
			if !errors.Is(err, boom) || errors.As(err, &se) {
				t.Fatalf("error %v, want %v and no SizeError", err, boom)
			}
			if want := "etc/f: disk on fire"; err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
		})
	}
}

type failing struct{ err error }

func (f failing) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(f.err))), nil
}

// TestWriteTarChangedFile: the stage tarball fails, naming the file and
// both sizes, when a file grew or shrank after the tree was read.
func TestWriteTarChangedFile(t *testing.T) {
	const p = "usr/lib/libchanged.so"
	for _, c := range fixture.Changes {
		t.Run(c.Name, func(t *testing.T) {
			err := fstree.WriteTar(io.Discard, c.Tree(t, p), 0)
			c.Check(t, err, p)
			if !strings.HasPrefix(err.Error(), "tar: ") {
				t.Errorf("error %q does not say which writer failed", err)
			}
		})
	}
}
