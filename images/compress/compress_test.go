package compress

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"runtime"
	"slices"
	"testing"

	"github.com/bellbuild/bellbuild/testvm/testtool"
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

// compressWith writes data in chunks of the given size.
func compressWith(t *testing.T, data []byte, chunk int) []byte {
	t.Helper()
	return compressVia(t, data, chunk, false, false)
}

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// compressVia writes data in chunks of the given size; with readFrom,
// every other chunk goes through ReadFrom (from a reader returning odd
// sizes) instead of Write, the way cpio.Write passes file data; with hint,
// the writer is told the data's size first (as cpio.Write does).
func compressVia(t *testing.T, data []byte, chunk int, readFrom, hint bool) []byte {
	t.Helper()
	var out bytes.Buffer
	z, err := NewZstd(&out)
	if err != nil {
		t.Fatal(err)
	}
	if hint {
		z.SizeHint(int64(len(data)))
	}
	for i, n := 0, 0; i < len(data); i, n = i+chunk, n+1 {
		p := data[i:min(len(data), i+chunk)]
		if readFrom && n%2 == 1 {
			m, err := z.ReadFrom(chunkReader{bytes.NewReader(p), 65537 + n})
			if err != nil || m != int64(len(p)) {
				t.Fatalf("ReadFrom: %d of %d bytes, %v", m, len(p), err)
			}
			continue
		}
		if _, err := z.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// newc builds a newc archive of files of the given sizes (contents from
// sample), ending with a trailer, and returns it with the offsets where
// its entries end.
func newc(sizes ...int) ([]byte, map[int64]bool) {
	var b bytes.Buffer
	ends := map[int64]bool{}
	body := sample(slices.Max(append(sizes, 1)))
	entry := func(name string, mode, size int) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", 1, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name)
		b.WriteByte(0)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.Write(body[:size])
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		ends[int64(b.Len())] = true
	}
	for i, size := range sizes {
		entry(fmt.Sprintf("f%d", i), 0o100644, size)
	}
	entry("TRAILER!!!", 0, 0)
	return b.Bytes(), ends
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

// TestZstdDeterministic: the output depends on the data only — not on
// write sizes, nor GOMAXPROCS, nor whether it came through Write or
// ReadFrom — for a newc stream and for any other.
func TestZstdDeterministic(t *testing.T) {
	// With a big entry (a frame of its own, compressed on two
	// goroutines) that starts after a frame is under way.
	archive, _ := newc(5<<20, 7<<20+1, 9<<20+2, 3<<20+3, 20<<20+1, 11<<20, 2)
	inputs := map[string][]byte{"newc": archive, "other": sample(34 << 20)}
	for _, hint := range []bool{false, true} {
		for name, data := range inputs {
			if hint {
				name += ", size hint"
			}
			want := compressVia(t, data, 1<<20, false, hint)
			if !bytes.Equal(decode(t, want), data) {
				t.Fatalf("%s: round trip differs", name)
			}
			for _, tc := range []struct {
				name     string
				chunk    int
				procs    int
				readFrom bool
			}{
				{"small writes", 4093, 0, false},
				{"huge writes", 7 << 20, 0, false},
				{"one cpu", 1 << 20, 1, false},
				{"eight cpus", 65536, 8, false},
				{"ReadFrom, small", 4093, 0, true},
				{"ReadFrom, large", 3<<20 + 5, 0, true},
			} {
				t.Run(name+"/"+tc.name, func(t *testing.T) {
					if tc.procs > 0 {
						defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(tc.procs))
					}
					if got := compressVia(t, data, tc.chunk, tc.readFrom, hint); !bytes.Equal(got, want) {
						t.Fatalf("output differs (%d vs %d bytes)", len(got), len(want))
					}
				})
			}
		}
	}
}

// frameSizes decodes each frame on its own and returns the decompressed
// sizes, checking window and checksum on the way.
func frameSizes(t *testing.T, b []byte) []int64 {
	t.Helper()
	frames, err := Frames(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int64
	for _, f := range frames {
		// Small frames get a smaller window; none a larger one.
		if f.Window <= 0 || f.Window > ZstdWindow {
			t.Errorf("frame at %d: window %d, want at most %d", f.Offset, f.Window, ZstdWindow)
		}
		if !f.Checksum {
			t.Errorf("frame at %d: no checksum", f.Offset)
		}
		sizes = append(sizes, int64(len(decode(t, b[f.Offset:f.Offset+f.Size]))))
	}
	return sizes
}

// tailFrames lists the frames of a stream of n bytes that is not newc: the
// given ones, then a quarter of what is left each, at least 1 MiB.
func tailFrames(n int64, first ...int64) []int64 {
	out := first
	for _, f := range first {
		n -= f
	}
	for n > 0 {
		f := min(n, max(n/4, 1<<20))
		out = append(out, f)
		n -= f
	}
	return out
}

// TestZstdFrames: in a newc stream frames end at the first entry end after
// ZstdFrameSize bytes (less near the end of a stream of known size), never
// inside an entry however big; any other stream is cut every
// ZstdFrameSize bytes.
func TestZstdFrames(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name  string
		sizes []int // newc file sizes; nil for a non-newc stream of 40 MiB
		hint  bool  // tell the writer the size first
		// want is the frames' decompressed sizes, in entries (newc: each
		// frame must end on an entry) or bytes.
		want []int64
	}{
		{"non-newc", nil, false, []int64{16 * mib, 16 * mib, 8 * mib}},
		// Under two frames before the end, frames hold a quarter of
		// what is left (at least 1 MiB), so that the workers finish
		// together.
		{"non-newc, size hint", nil, true, tailFrames(40*mib, 16*mib, 6*mib, 4.5*mib)},
		// Entries of 5 MiB: a frame ends after the 4th (20 MiB ≥ 16).
		{"newc 5 MiB files", []int{5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib}, false, nil},
		// With the size: 4 files (20 MiB ≥ 16), then 2, 1, 1, 1, as
		// a quarter of what is left goes under 5 MiB, then the
		// trailer.
		{"newc 5 MiB files, size hint", []int{5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib}, true, nil},
		// A 40 MiB file is not cut: the first frame ends after it
		// (what comes before it, under a block, goes with it).
		{"newc one big file", []int{3, 40 * mib, 3}, false, nil},
		// A big file near the end of a stream of known size goes with
		// the files before it, as anywhere else: a frame never ends
		// before an entry it has not reached its target without.
		{"newc big file at the end, size hint", []int{3 * mib, 2 * mib, 20 * mib, 100}, true, nil},
		{"newc big file at the end", []int{3 * mib, 2 * mib, 20 * mib, 100}, false, nil},
		{"newc two big files at the end, size hint", []int{3 * mib, 20 * mib, 20 * mib, 100}, true, nil},
		{"newc big file early, size hint", []int{3 * mib, 2 * mib, 20 * mib, 5 * mib, 5 * mib, 5 * mib, 5 * mib, 1}, true, nil},
		{"newc small files only", []int{100, 200, 300}, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var data []byte
			var ends map[int64]bool
			if tc.sizes == nil {
				data = sample(40 * mib)
			} else {
				data, ends = newc(tc.sizes...)
			}
			b := compressVia(t, data, 1<<20, false, tc.hint)
			sizes := frameSizes(t, b)
			if !bytes.Equal(decode(t, b), data) {
				t.Error("round trip differs")
			}
			if tc.sizes == nil {
				if d := cmp.Diff(tc.want, sizes); d != "" {
					t.Errorf("frame sizes (-want +got):\n%s", d)
				}
				return
			}
			// Every frame ends on an entry end, holds ≥ its target
			// (ZstdFrameSize, or less near the end of a stream of known
			// size) unless it is the last, and ends at the first entry
			// end after that.
			var pos int64
			for i, n := range sizes {
				start := pos
				pos += n
				if !ends[pos] {
					t.Errorf("frame %d ends at %d, inside an entry", i, pos)
				}
				target := int64(ZstdFrameSize)
				if left := int64(len(data)) - start; tc.hint && left < 2*ZstdFrameSize {
					target = max(left/4, tailFrame)
				}
				if i < len(sizes)-1 && n < target {
					t.Errorf("frame %d holds %d bytes, less than %d, and is not the last", i, n, target)
				}
				for e := range ends {
					if e >= start+target && e < pos {
						t.Errorf("frame %d runs past the entry end at %d", i, e)
					}
				}
			}
			if tc.name == "newc one big file" && (len(sizes) != 2 || sizes[0] < 40<<20) {
				t.Errorf("frames %v, want the first to hold the big file whole, then one more", sizes)
			}
			switch tc.name {
			case "newc big file at the end", "newc big file at the end, size hint", "newc big file early, size hint":
				if sizes[0] < 25*mib {
					t.Errorf("frames %v, want the big file in the first frame with the files before it", sizes)
				}
			case "newc 5 MiB files, size hint":
				if len(sizes) != 6 {
					t.Errorf("%d frames (%v), want 6", len(sizes), sizes)
				}
			}
			if tc.name == "newc 5 MiB files" && len(sizes) != 3 {
				t.Errorf("%d frames (%v), want 3", len(sizes), sizes)
			}
		})
	}
}

// TestZstdNotNewcAfterAll: a stream that starts like newc and then stops
// being it is cut at fixed sizes from there, and still round trips.
func TestZstdNotNewcAfterAll(t *testing.T) {
	archive, _ := newc(100)
	data := append(append([]byte(nil), archive[:len(archive)-120]...), sample(40<<20)...)
	b := compressWith(t, data, 1<<20)
	if !bytes.Equal(decode(t, b), data) {
		t.Fatal("round trip differs")
	}
	if n := len(frameSizes(t, b)); n < 2 {
		t.Errorf("%d frames, want the rest cut in pieces", n)
	}
}

// TestZstdCLI: GNU zstd reads the multi-frame stream as one.
func TestZstdCLI(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		testtool.Skipf(t, "zstd not installed (apt-get install zstd): cannot check against it")
	}
	data := sample(40 << 20)
	b := compressWith(t, data, 1<<20)
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
	b := compressWith(t, nil, 1)
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

// TestZstdWriteError: a failing destination surfaces from Write (or
// ReadFrom) or Close, without hanging.
func TestZstdWriteError(t *testing.T) {
	data := sample(48 << 20)
	for _, readFrom := range []bool{false, true} {
		name := map[bool]string{false: "Write", true: "ReadFrom"}[readFrom]
		t.Run(name, func(t *testing.T) {
			z, err := NewZstd(&failWriter{after: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			var werr error
			if readFrom {
				_, werr = z.ReadFrom(chunkReader{bytes.NewReader(data), 100_000})
			} else {
				for i := 0; i < len(data) && werr == nil; i += 1 << 20 {
					_, werr = z.Write(data[i : i+1<<20])
				}
			}
			cerr := z.Close()
			if !errors.Is(werr, errDisk) && !errors.Is(cerr, errDisk) {
				t.Fatalf("write error %v, close error %v; want %v", werr, cerr, errDisk)
			}
			if _, err := z.Write([]byte("x")); err == nil {
				t.Error("write after close succeeded")
			}
			if _, err := z.ReadFrom(bytes.NewReader([]byte("x"))); err == nil {
				t.Error("ReadFrom after close succeeded")
			}
		})
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
		{"zstd", compressWith(t, data, 1<<16), Zst},
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

// FuzzZstd compresses arbitrary input — and newc archives with arbitrary
// sizes — with tiny frames: it must round trip, and in a newc archive
// every frame must end where an entry ends.
func FuzzZstd(f *testing.F) {
	f.Add([]byte("070701"), uint16(0), uint16(0), uint16(0), uint8(16))
	f.Add([]byte{}, uint16(5), uint16(300), uint16(7), uint8(40))
	f.Fuzz(func(t *testing.T, junk []byte, a, b, c uint16, frame uint8) {
		archive, ends := newc(int(a), int(b), int(c))
		for _, data := range [][]byte{junk, archive, append(append([]byte(nil), archive...), junk...)} {
			var out bytes.Buffer
			z, err := NewZstd(&out)
			if err != nil {
				t.Fatal(err)
			}
			z.frameSize = int64(frame) + 1
			for i := 0; i < len(data); i += 7 {
				z.Write(data[i:min(len(data), i+7)])
			}
			if err := z.Close(); err != nil {
				t.Fatal(err)
			}
			if got := decode(t, out.Bytes()); !bytes.Equal(got, data) {
				t.Fatalf("round trip differs: %d bytes in, %d out", len(data), len(got))
			}
			if len(data) != len(archive) {
				continue
			}
			frames, err := Frames(bytes.NewReader(out.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			var pos int64
			for i, fr := range frames {
				pos += int64(len(decode(t, out.Bytes()[fr.Offset:fr.Offset+fr.Size])))
				if !ends[pos] && pos != 0 {
					t.Fatalf("frame %d ends at %d, inside an entry", i, pos)
				}
			}
		}
	})
}
