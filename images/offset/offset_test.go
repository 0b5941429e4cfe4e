package offset

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriter: the count follows what reaches W, whether written, padded
// with zeros or skipped by seeking.
func TestWriter(t *testing.T) {
	tests := []struct {
		name string
		do   func(w *Writer) error
		want string // what W holds, zeros shown as '.'
		n    int64
		err  string
	}{
		{"write", func(w *Writer) error { _, err := w.Write([]byte("abc")); return err }, "abc", 3, ""},
		{"zeros", func(w *Writer) error { return w.Zeros(3) }, "...", 3, ""},
		{"no zeros", func(w *Writer) error { return w.Zeros(-2) }, "", 0, ""},
		{"many zeros", func(w *Writer) error { return w.Zeros(200000) }, strings.Repeat(".", 200000), 200000, ""},
		{"pad to", func(w *Writer) error {
			w.Write([]byte("ab"))
			return w.PadTo(5)
		}, "ab...", 5, ""},
		{"pad to here", func(w *Writer) error {
			w.Write([]byte("ab"))
			return w.PadTo(2)
		}, "ab", 2, ""},
		{"past", func(w *Writer) error {
			w.Write([]byte("abcd"))
			return w.PadTo(2)
		}, "abcd", 4, "at byte 4, past 2"},
		{"hole without seeking", func(w *Writer) error {
			w.Write([]byte("a"))
			return w.Hole(2)
		}, "a..", 3, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			w := NewWriter(&b)
			err := tc.do(w)
			if (err != nil) != (tc.err != "") || err != nil && err.Error() != tc.err {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
			if got := strings.ReplaceAll(b.String(), "\x00", "."); got != tc.want {
				t.Errorf("W holds %q, want %q", got, tc.want)
			}
			if w.N != tc.n || int64(b.Len()) != w.N {
				t.Errorf("N = %d, W holds %d bytes, want %d", w.N, b.Len(), tc.n)
			}
		})
	}
}

// TestHoleSeeks: on a file, Hole seeks, and the count and the file's
// offset agree.
func TestHoleSeeks(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := NewWriter(f)
	if _, err := w.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := w.Hole(1 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("z")); err != nil {
		t.Fatal(err)
	}
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		t.Fatal(err)
	}
	if w.N != 1<<20+2 || pos != w.N {
		t.Errorf("N = %d, file offset %d, want %d", w.N, pos, 1<<20+2)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != w.N {
		t.Errorf("file is %d bytes, want %d", st.Size(), w.N)
	}
}

// TestReader: N is what has been read.
func TestReader(t *testing.T) {
	r := &Reader{R: strings.NewReader("hello, world")}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(r, buf); err != nil || r.N != 5 {
		t.Fatalf("N = %d after reading 5 (%v)", r.N, err)
	}
	if n, err := io.Copy(io.Discard, r); err != nil || r.N != 12 || n != 7 {
		t.Fatalf("N = %d after reading the rest (%d, %v), want 12", r.N, n, err)
	}
}
