package compress

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// ZstdWindow is the largest back-reference distance Zstd uses. The kernel
// refuses initramfs frames whose window exceeds 128 MiB; 8 MiB keeps the
// decompressor's memory small at boot.
const ZstdWindow = 8 << 20

// ZstdFrameSize is the least input a frame holds before it may end. Each
// frame is compressed on its own, so frames are compressed in parallel;
// the cost is that a frame cannot refer back into the previous one (about
// 0.3% of size at 16 MiB).
const ZstdFrameSize = 16 << 20

// zstdWorkers is how many frames are compressed at once. It is fixed, not
// taken from the machine, though the output would not change with it.
const zstdWorkers = 2

// tailFrame is the least a frame near the end of the stream holds before
// it may end (see SizeHint).
const tailFrame = 1 << 20

const (
	// blockSize is the size of the blocks input is handed to the
	// workers in.
	blockSize = 1 << 20
	// inputBudget is how many input blocks may be queued or being
	// compressed, over all frames, before Write waits: 64 MiB. It is
	// several frames' worth, so that a frame made long by one big entry
	// (an apt package list of 50 MB, say) does not hold up the frames
	// after it: Write moves on while that frame's worker is still busy,
	// and the other worker takes the next frame.
	inputBudget = 64
	// framesAhead is how many frames may wait for a worker, or for the
	// frames before them to be written, before Write waits: enough that
	// the small frames at the end of a stream (SizeHint) go on being
	// filled and compressed while one worker is on a long frame.
	framesAhead = 8
	// outSize is the size of the pieces compressed output is passed on
	// and written in (one write system call each).
	outSize = 256 << 10
	// outAhead is how many compressed pieces a frame queues (32 MiB)
	// before its worker waits for the frames before it to be written.
	outAhead = 128
)

// ZstdWriter compresses to a stream of independent zstd frames: standard
// zstd that any decompressor reads as one stream. Frames are compressed by
// two goroutines in parallel and written in order, at the default level
// (about zstd -3), with a window of ZstdWindow and a checksum each.
//
// Where a frame ends: when the stream is a newc cpio archive (it starts
// with 070701), the writer follows the entry headers as the bytes go by and
// ends a frame at the first entry end after ZstdFrameSize bytes — the
// kernel unpacks an initramfs made of compressed members only if each ends
// between entries. Any other stream is cut every ZstdFrameSize bytes.
// Told the stream's size first (SizeHint, which cpio.Write calls), the
// writer also makes the last frames smaller, so that both workers finish
// together. So the output depends only on the input and the hint,
// never on write sizes, timing or the number of CPUs.
//
// A frame holds an entry whole however big it is, on one worker: one
// 50 MB file near the end leaves the other core idle for its last part.
// Splitting such a frame into jobs on both cores (klauspost's concurrent
// blocks) cost more than that idle core saved: its job buffers added ~80
// MB of fresh memory a bake (docs/benchmarks.md).
//
// Memory stays bounded: at most 64 MiB of input is queued, in 1 MiB
// blocks, and a frame's output streams out as soon as the frames before it
// are written (at most 8 frames wait for that). ReadFrom reads straight
// into those blocks.
type ZstdWriter struct {
	w      io.Writer
	buf    []byte // current input block
	cur    *frame // frame being filled; nil between frames
	curLen int64  // input bytes in the current frame, buf included
	// frameSize is ZstdFrameSize; tests lower it to see many frames.
	frameSize int64
	// target is the least input the current frame holds before it may
	// end: frameSize, less near the end of a stream of known size.
	target int64
	pos    int64 // input bytes taken (fed, or held as a header)
	hint   int64 // the whole input's size (SizeHint); 0 if not known
	frames int   // frames started
	scan   cpioScanner
	jobs   chan *frame
	order  chan *frame
	wg     sync.WaitGroup
	done   chan error    // the ordered writer's result
	budget chan struct{} // one token per input block not yet compressed
	closed bool
	err    error
}

type frame struct {
	in  chan []byte
	out chan []byte
	err error // set by the worker before it closes out
}

var (
	blockPool = sync.Pool{New: func() any { b := make([]byte, 0, blockSize); return &b }}
	outPool   = sync.Pool{New: func() any { b := make([]byte, 0, outSize); return &b }}
)

// Zstd returns a ZstdWriter compressing to w. Close flushes the last frame
// (and must be called: it also stops the writer's goroutines); it does not
// close w.
func Zstd(w io.Writer) (io.WriteCloser, error) {
	return NewZstd(w)
}

// NewZstd is Zstd returning the concrete type.
func NewZstd(w io.Writer) (*ZstdWriter, error) {
	// Fail early on bad options rather than inside a worker.
	if _, err := newEncoder(); err != nil {
		return nil, err
	}
	z := &ZstdWriter{
		w:         w,
		frameSize: ZstdFrameSize,
		target:    ZstdFrameSize,
		jobs:      make(chan *frame, framesAhead),
		order:     make(chan *frame, framesAhead),
		done:      make(chan error, 1),
		budget:    make(chan struct{}, inputBudget),
	}
	for range zstdWorkers {
		z.wg.Add(1)
		go z.worker()
	}
	go z.writeOut()
	return z, nil
}

func newEncoder() (*zstd.Encoder, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(ZstdWindow),
		zstd.WithEncoderCRC(true),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return enc, nil
}

// Write implements io.Writer.
func (z *ZstdWriter) Write(p []byte) (int, error) {
	if z.closed {
		return 0, errors.New("zstd: write after close")
	}
	if z.err != nil {
		return 0, z.err
	}
	n := len(p)
	for len(p) > 0 {
		// Up to the next place a frame may end, or all of p.
		m, canEnd, inHeader := z.scan.next(p, z.target-z.curLen)
		if inHeader {
			p = p[m:]
			z.pos += int64(m)
			if err := z.header(); err != nil {
				return n - len(p), err
			}
			continue
		}
		if err := z.feed(p[:m]); err != nil {
			return n - len(p), err
		}
		p = p[m:]
		if canEnd && z.curLen >= z.target {
			if err := z.endFrame(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// header passes on an entry header once the scanner holds all of it.
func (z *ZstdWriter) header() error {
	h, whole := z.scan.header()
	if !whole {
		return nil
	}
	// The header's bytes are counted in pos already; feed counts them
	// again.
	z.pos -= int64(len(h))
	return z.feed(h)
}

// SizeHint tells the writer how many bytes it will be given in all, before
// the first Write. Near the end of the stream frames then get smaller (a
// quarter of what is left, down to tailFrame), so that the two workers
// finish together. The output depends on the hint (and stays correct, only
// framed differently, if the hint is wrong); a hint given after the first
// Write is ignored.
func (z *ZstdWriter) SizeHint(n int64) {
	if z.pos > 0 || n <= 0 {
		return
	}
	z.hint = n
	z.target = z.nextTarget()
}

// nextTarget is the target of a frame starting at pos.
func (z *ZstdWriter) nextTarget() int64 {
	left := z.hint - z.pos
	if z.hint <= 0 || left >= 2*z.frameSize {
		return z.frameSize
	}
	return min(z.frameSize, max(left/4, tailFrame))
}

// ReadFrom implements io.ReaderFrom: it reads r until EOF straight into
// the input blocks, saving the copy a Write makes. The output is the same
// as writing the same bytes.
func (z *ZstdWriter) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		if z.closed {
			return total, errors.New("zstd: write after close")
		}
		if z.err != nil {
			return total, z.err
		}
		if z.buf == nil {
			z.buf = (*blockPool.Get().(*[]byte))[:0]
		}
		free := z.buf[len(z.buf):blockSize]
		n, err := r.Read(free)
		if n > 0 {
			total += int64(n)
			p := free[:n]
			// Inside an entry's data (as an archive's file data always
			// is), what was read stays in place up to the entry's end;
			// the rest, and anything between entries, goes through
			// Write.
			m := 0
			canEnd := false
			if z.scan.inData() {
				m, canEnd, _ = z.scan.next(p, z.target-z.curLen)
			}
			var rest []byte
			if m < n {
				rest = bytes.Clone(p[m:])
			}
			if werr := z.feed(p[:m]); werr != nil {
				return total, werr
			}
			if canEnd && z.curLen >= z.target {
				if werr := z.endFrame(); werr != nil {
					return total, werr
				}
			}
			if _, werr := z.Write(rest); werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// feed appends p to the current frame's input. p may be the free space
// just after the current block's bytes (ReadFrom reads there): then it is
// already in place.
func (z *ZstdWriter) feed(p []byte) error {
	for len(p) > 0 {
		if z.buf == nil {
			z.buf = (*blockPool.Get().(*[]byte))[:0]
		}
		m := min(len(p), blockSize-len(z.buf))
		if l := len(z.buf); &z.buf[:l+1][l] == &p[0] {
			z.buf = z.buf[:l+m]
		} else {
			z.buf = append(z.buf, p[:m]...)
		}
		z.curLen += int64(m)
		z.pos += int64(m)
		p = p[m:]
		if len(z.buf) == blockSize {
			if err := z.send(); err != nil {
				return err
			}
		}
	}
	return nil
}

// send hands the current block to the current frame, starting one if
// needed.
func (z *ZstdWriter) send() error {
	if z.cur == nil {
		z.cur = &frame{in: make(chan []byte, inputBudget), out: make(chan []byte, outAhead)}
		z.frames++
		select {
		case z.order <- z.cur:
		case err := <-z.done:
			z.err = writeErr(err)
			return z.err
		}
		z.jobs <- z.cur
	}
	select {
	case z.budget <- struct{}{}:
	case err := <-z.done:
		z.err = writeErr(err)
		return z.err
	}
	z.cur.in <- z.buf // never blocks: the budget is the channel's capacity
	z.buf = nil
	return nil
}

func writeErr(err error) error {
	if err == nil {
		return errors.New("zstd: writer stopped")
	}
	return err
}

// endFrame sends what is buffered and closes the current frame.
func (z *ZstdWriter) endFrame() error {
	if len(z.buf) > 0 || z.cur == nil {
		if z.buf == nil {
			z.buf = (*blockPool.Get().(*[]byte))[:0]
		}
		if err := z.send(); err != nil {
			return err
		}
	}
	close(z.cur.in)
	z.target = z.nextTarget()
	z.cur = nil
	z.curLen = 0
	return nil
}

// Close ends the last frame, waits for every frame to be written and
// reports the first error. It does not close the underlying writer.
func (z *ZstdWriter) Close() error {
	if z.closed {
		return z.err
	}
	z.closed = true
	if h := z.scan.held(); z.err == nil && len(h) > 0 {
		// A stream that ends inside a header.
		z.pos -= int64(len(h))
		z.feed(h)
	}
	if z.err == nil && (z.cur != nil || len(z.buf) > 0 || z.frames == 0) {
		z.endFrame()
	}
	if z.cur != nil {
		close(z.cur.in)
		z.cur = nil
	}
	close(z.jobs)
	close(z.order)
	err := <-z.done
	z.wg.Wait()
	if z.err == nil {
		z.err = err
	}
	return z.err
}

// worker compresses whole frames, each with a fresh encoder state.
func (z *ZstdWriter) worker() {
	defer z.wg.Done()
	enc, _ := newEncoder()
	for f := range z.jobs {
		out := &chanWriter{ch: f.out}
		enc.Reset(out)
		var err error
		for b := range f.in {
			if err == nil {
				_, err = enc.Write(b)
			}
			b = b[:0]
			blockPool.Put(&b)
			<-z.budget
		}
		if cerr := enc.Close(); err == nil {
			err = cerr
		}
		out.flush()
		f.err = err
		close(f.out)
	}
}

// chanWriter collects what the encoder writes (it reuses its buffers) into
// pieces of outSize and passes full ones to a channel.
type chanWriter struct {
	ch  chan []byte
	buf []byte
}

func (c *chanWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if c.buf == nil {
			c.buf = (*outPool.Get().(*[]byte))[:0]
		}
		m := copy(c.buf[len(c.buf):cap(c.buf)], p)
		c.buf = c.buf[:len(c.buf)+m]
		p = p[m:]
		if len(c.buf) == cap(c.buf) {
			c.ch <- c.buf
			c.buf = nil
		}
	}
	return n, nil
}

// flush passes on the last, partly filled piece.
func (c *chanWriter) flush() {
	if len(c.buf) > 0 {
		c.ch <- c.buf
	}
	c.buf = nil
}

// writeOut writes the frames' output in order. After a write error it
// keeps draining, so that no worker blocks forever.
func (z *ZstdWriter) writeOut() {
	var err error
	for f := range z.order {
		for b := range f.out {
			if err == nil {
				_, err = z.w.Write(b)
			}
			b = b[:0]
			outPool.Put(&b)
		}
		if err == nil && f.err != nil {
			err = fmt.Errorf("zstd: %w", f.err)
		}
		if err != nil {
			// Tell a blocked Write, then keep draining.
			select {
			case z.done <- err:
			default:
			}
		}
	}
	select {
	case z.done <- err:
	default:
	}
}

// cpioScanner follows newc headers through a stream to find where entries
// end. It needs no buffering beyond one header.
type cpioScanner struct {
	opaque bool // not (or no longer) a newc stream
	hdr    [110]byte
	nhdr   int   // header bytes collected
	rest   int64 // bytes of the current entry still to come after its header
}

// next returns how many bytes of p to take next, and what they are: the
// bytes of an entry header (inHeader), which the scanner keeps until
// header returns the whole header; or data up to the next place a frame
// may end (canEnd) — an entry end in a newc stream, or, in any other
// stream, the point where want more bytes have gone by — or all of p when
// it holds none.
func (s *cpioScanner) next(p []byte, want int64) (n int, canEnd, inHeader bool) {
	switch {
	case s.opaque:
		if want <= 0 {
			return 0, true, false
		}
		if int64(len(p)) >= want {
			return int(want), true, false
		}
		return len(p), false, false
	case s.rest > 0:
		m := min(int64(len(p)), s.rest)
		s.rest -= m
		return int(m), s.rest == 0, false
	case s.nhdr == 0 && p[0] == 0:
		// NUL padding between concatenated archives: no cut inside it
		// (the kernel checks the alignment of what follows).
		for n < len(p) && p[n] == 0 {
			n++
		}
		return n, false, false
	}
	m := copy(s.hdr[s.nhdr:], p)
	s.nhdr += m
	return m, false, true
}

// held returns the header bytes collected so far.
func (s *cpioScanner) held() []byte { return s.hdr[:s.nhdr] }

// inData reports whether the next byte is part of an entry's name or data
// (or of a stream that is not newc), not of a header or padding between
// archives.
func (s *cpioScanner) inData() bool { return s.opaque || s.rest > 0 }

// header returns the header next has collected once it is whole (whole
// is false while more of it is to come), and from there follows its entry
// (name, data and padding). A header that is not newc makes the scanner
// cut at fixed sizes from there on.
func (s *cpioScanner) header() (h []byte, whole bool) {
	if s.nhdr < len(s.hdr) {
		return nil, false
	}
	s.nhdr = 0
	size, ok := s.entrySize()
	if !ok {
		s.opaque = true
		return s.hdr[:], true
	}
	s.rest = size - int64(len(s.hdr))
	return s.hdr[:], true
}

// entrySize parses the collected header: the whole entry's length,
// header, name, data and padding included.
func (s *cpioScanner) entrySize() (int64, bool) {
	if m := string(s.hdr[:6]); m != "070701" && m != "070702" {
		return 0, false
	}
	field := func(i int) (int64, bool) {
		var v int64
		for _, c := range s.hdr[6+8*i : 14+8*i] {
			switch {
			case c >= '0' && c <= '9':
				v = v<<4 | int64(c-'0')
			case c >= 'a' && c <= 'f':
				v = v<<4 | int64(c-'a'+10)
			case c >= 'A' && c <= 'F':
				v = v<<4 | int64(c-'A'+10)
			default:
				return 0, false
			}
		}
		return v, true
	}
	size, ok1 := field(6)
	namesize, ok2 := field(11)
	if !ok1 || !ok2 {
		return 0, false
	}
	align := func(n int64) int64 { return (n + 3) &^ 3 }
	return align(int64(len(s.hdr))+namesize) + align(size), true
}
