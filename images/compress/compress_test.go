package compress

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os/exec"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
)

// sample is compressible, non-trivial data: runs of random words.
func sample(n int) []byte {
	r := rand.New(rand.NewPCG(3, 4))
	words := []string{"alpha ", "beta ", "gamma ", "/usr/lib/x86_64-linux-gnu/", "\x00\x00\x00\x00", "070701000000"}
	var b bytes.Buffer
	for b.Len() < n {
		if r.IntN(10) == 0 {
			var x [64]byte
			for i := range x {
				x[i] = byte(r.Uint32())
			}
			b.Write(x[:])
			continue
		}
		b.WriteString(words[r.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

// compressWith writes data in chunks of the given size, calling Boundary
// after every boundary-sized piece (0: never).
func compressWith(t *testing.T, data []byte, chunk, boundaryEvery int) []byte {
	t.Helper()
	var out bytes.Buffer
	z, err := NewZstd(&out)
	if err != nil {
		t.Fatal(err)
	}
	since := 0
	for i := 0; i < len(data); i += chunk {
		piece := data[i:min(len(data), i+chunk)]
		if _, err := z.Write(piece); err != nil {
			t.Fatal(err)
		}
		since += len(piece)
		if boundaryEvery > 0 && since >= boundaryEvery {
			if err := z.Boundary(); err != nil {
				t.Fatal(err)
			}
			since = 0
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func decode(t *testing.T, b []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestZstdDeterministic: the output depends on the data and the
// boundaries only — not on write sizes, nor GOMAXPROCS.
func TestZstdDeterministic(t *testing.T) {
	data := sample(50 << 20)
	want := compressWith(t, data, 1<<20, 1<<20)
	for _, tc := range []struct {
		name  string
		chunk int
		procs int
	}{
		{"small writes", 4093, 0},
		{"huge writes", 1 << 20, 0},
		{"one cpu", 1 << 20, 1},
		{"eight cpus", 65536, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.procs > 0 {
				defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(tc.procs))
			}
			// Boundaries at the same data offsets (every MiB), whatever
			// the write size.
			var out bytes.Buffer
			z, _ := NewZstd(&out)
			for off := 0; off < len(data); off += 1 << 20 {
				mb := data[off:min(len(data), off+1<<20)]
				for i := 0; i < len(mb); i += tc.chunk {
					z.Write(mb[i:min(len(mb), i+tc.chunk)])
				}
				z.Boundary()
			}
			if err := z.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("output differs (%d vs %d bytes)", out.Len(), len(want))
			}
		})
	}
	if !bytes.Equal(decode(t, want), data) {
		t.Fatal("round trip differs")
	}
}

// TestZstdFrames: frames end only at boundaries, hold at least
// ZstdFrameSize bytes (except the last), use an 8 MiB window and carry
// checksums; without boundaries the stream is one frame.
func TestZstdFrames(t *testing.T) {
	data := sample(60 << 20)
	tests := []struct {
		name     string
		boundary int
		want     []int64 // decompressed frame sizes
	}{
		// Boundaries every 5 MiB: frames end at the first one ≥ 16 MiB.
		{"boundaries every 5 MiB", 5 << 20, []int64{20 << 20, 20 << 20, 20 << 20}},
		{"boundaries every 16 MiB", 16 << 20, []int64{16 << 20, 16 << 20, 16 << 20, 12 << 20}},
		{"no boundaries", 0, []int64{60 << 20}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := compressWith(t, data, 1<<20, tc.boundary)
			frames, err := Frames(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			var sizes []int64
			for _, f := range frames {
				if f.Window != ZstdWindow {
					t.Errorf("frame at %d: window %d, want %d", f.Offset, f.Window, ZstdWindow)
				}
				if !f.Checksum {
					t.Errorf("frame at %d: no checksum", f.Offset)
				}
				d := decode(t, b[f.Offset:f.Offset+f.Size])
				sizes = append(sizes, int64(len(d)))
			}
			if d := cmp.Diff(tc.want, sizes); d != "" {
				t.Errorf("frame sizes (-want +got):\n%s", d)
			}
			if !bytes.Equal(decode(t, b), data) {
				t.Error("round trip differs")
			}
		})
	}
}

// TestZstdCLI: GNU zstd reads the multi-frame stream as one.
func TestZstdCLI(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip("zstd not installed (apt-get install zstd): cannot check against it")
	}
	data := sample(40 << 20)
	b := compressWith(t, data, 1<<20, 1<<20)
	cmd := exec.Command("zstd", "-d", "-c")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd -d: %v", err)
	}
	if !bytes.Equal(out, data) {
		t.Fatal("zstd -d output differs")
	}
}

func TestZstdEmpty(t *testing.T) {
	b := compressWith(t, nil, 1, 0)
	frames, err := Frames(bytes.NewReader(b))
	if err != nil || len(frames) != 1 {
		t.Fatalf("frames %v, %v; want one empty frame", frames, err)
	}
	if got := decode(t, b); len(got) != 0 {
		t.Fatalf("decoded %d bytes", len(got))
	}
}

type failWriter struct{ after int }

var errDisk = errors.New("disk full")

func (f *failWriter) Write(b []byte) (int, error) {
	if f.after -= len(b); f.after < 0 {
		return 0, errDisk
	}
	return len(b), nil
}

// TestZstdWriteError: a failing destination surfaces from Write or Close,
// without hanging.
func TestZstdWriteError(t *testing.T) {
	data := sample(80 << 20)
	z, err := NewZstd(&failWriter{after: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	for i := 0; i < len(data) && werr == nil; i += 1 << 20 {
		_, werr = z.Write(data[i : i+1<<20])
		if werr == nil {
			werr = z.Boundary()
		}
	}
	cerr := z.Close()
	if !errors.Is(werr, errDisk) && !errors.Is(cerr, errDisk) {
		t.Fatalf("write error %v, close error %v; want %v", werr, cerr, errDisk)
	}
	if _, err := z.Write([]byte("x")); err == nil {
		t.Error("write after close succeeded")
	}
	if err := z.Boundary(); err == nil {
		t.Error("boundary after close succeeded")
	}
}

func TestDetectAndNewReader(t *testing.T) {
	data := sample(1 << 20)
	var gz bytes.Buffer
	w, _ := Gzip(&gz)
	w.Write(data)
	w.Close()
	tests := []struct {
		name string
		in   []byte
		want Format
	}{
		{"plain", data, None},
		{"gzip", gz.Bytes(), Gz},
		{"zstd", compressWith(t, data, 1<<16, 0), Zst},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, f, err := NewReader(bytes.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if f != tc.want {
				t.Errorf("format %q, want %q", f, tc.want)
			}
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("read %d bytes, %v", len(got), err)
			}
		})
	}
}
