package compress

import (
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

// ZstdFrameSize is the least input a frame holds before a Boundary may end
// it. Each frame is compressed on its own, so frames are compressed in
// parallel; the cost is that a frame cannot refer back into the previous
// one (about 0.3% of size at 16 MiB).
const ZstdFrameSize = 16 << 20

// zstdWorkers is how many frames are compressed at once. It is fixed, not
// taken from the machine, though the output would not change with it.
const zstdWorkers = 2

const (
	blockSize   = 1 << 20 // input is handed to the workers in blocks of this size
	blocksAhead = 16      // blocks queued per frame before Write waits
	outAhead    = 1024    // compressed pieces queued per frame before its worker waits
)

// Boundarier is implemented by writers that can end a compressed frame at
// a place the caller chooses. The cpio writer calls Boundary after every
// entry when its writer has it: the kernel accepts an initramfs split into
// compressed pieces only where each piece ends on a whole entry.
type Boundarier interface {
	Boundary() error
}

// ZstdWriter compresses to a stream of zstd frames, standard zstd that
// any decompressor reads as one stream. A frame ends at the first Boundary
// call after it holds ZstdFrameSize bytes of input (or at Close); without
// Boundary calls the whole stream is one frame. Frames are compressed by
// two goroutines in parallel and written in order, at the default level
// (about zstd -3) with a window of ZstdWindow and a checksum per frame. The
// output depends only on the input and the Boundary calls, never on timing
// or the number of CPUs. Memory stays bounded: input is queued in 1 MiB
// blocks and a frame's output streams out once the frames before it are
// written.
type ZstdWriter struct {
	w      io.Writer
	buf    []byte // current input block
	cur    *frame // frame being filled; nil between frames
	curLen int64
	frames int // frames started
	jobs   chan *frame
	order  chan *frame
	wg     sync.WaitGroup
	done   chan error // the ordered writer's result
	closed bool
	err    error
}

type frame struct {
	in  chan []byte
	out chan []byte
	err error // set by the worker before it closes out
}

var blockPool = sync.Pool{New: func() any { b := make([]byte, 0, blockSize); return &b }}

// Zstd returns a ZstdWriter compressing to w. Close flushes the last frame
// (and must be called: it also stops the writer's goroutines); it does not
// close w.
func Zstd(w io.Writer) (io.WriteCloser, error) {
	return NewZstd(w)
}

// NewZstd is Zstd returning the concrete type, for callers that want its
// Boundary method.
func NewZstd(w io.Writer) (*ZstdWriter, error) {
	// Fail early on bad options rather than inside a worker.
	if _, err := newEncoder(); err != nil {
		return nil, err
	}
	z := &ZstdWriter{
		w:     w,
		jobs:  make(chan *frame, zstdWorkers),
		order: make(chan *frame, zstdWorkers),
		done:  make(chan error, 1),
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
		if z.buf == nil {
			z.buf = (*blockPool.Get().(*[]byte))[:0]
		}
		m := min(len(p), blockSize-len(z.buf))
		z.buf = append(z.buf, p[:m]...)
		p = p[m:]
		if len(z.buf) == blockSize {
			if err := z.send(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// send hands the current block to the current frame, starting one if
// needed.
func (z *ZstdWriter) send() error {
	if z.cur == nil {
		z.cur = &frame{in: make(chan []byte, blocksAhead), out: make(chan []byte, outAhead)}
		z.curLen = 0
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
	case z.cur.in <- z.buf:
	case err := <-z.done:
		z.err = writeErr(err)
		return z.err
	}
	z.curLen += int64(len(z.buf))
	z.buf = nil
	return nil
}

func writeErr(err error) error {
	if err == nil {
		return errors.New("zstd: writer stopped")
	}
	return err
}

// Boundary marks the end of a unit of input (a cpio entry): if the current
// frame holds at least ZstdFrameSize bytes, it ends here.
func (z *ZstdWriter) Boundary() error {
	if z.closed {
		return errors.New("zstd: boundary after close")
	}
	if z.err != nil {
		return z.err
	}
	if z.curLen+int64(len(z.buf)) < ZstdFrameSize {
		return nil
	}
	return z.endFrame()
}

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
		}
		if cerr := enc.Close(); err == nil {
			err = cerr
		}
		f.err = err
		close(f.out)
	}
}

// chanWriter passes copies of what the encoder writes to a channel.
type chanWriter struct{ ch chan []byte }

func (c *chanWriter) Write(p []byte) (int, error) {
	c.ch <- append([]byte(nil), p...)
	return len(p), nil
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
