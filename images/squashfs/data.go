package squashfs

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/offset"
)

// A block job travels from the reader (which fills raw) through a worker
// (which compresses it into out) to the emitter (which writes it in order).
type job struct {
	raw  []byte
	out  []byte // what goes on disk: compressed, raw, or nothing for a hole
	word uint32 // on-disk size word: length, | dataRawFlag if stored raw; 0 for a hole
	// pooled is set when out is a buffer of the output pool.
	pooled bool
	err    error
	done   chan struct{}

	file  *fileData // a file's block: its index is block
	block int
	frag  int  // a fragment block: index into frags, or -1
	holes bool // an all-zero block may become a hole
}

// writeData streams every regular file's content to out: full blocks
// compressed in parallel and written in order, tails packed into fragment
// blocks, duplicates stored once.
func (b *builder) writeData(out *offset.Writer) error {
	bs := b.opts.BlockSize
	// The reader runs up to 16 blocks per worker ahead of the writer, so
	// that the workers keep busy while it opens small files or waits for
	// a core; that bounds the blocks in memory.
	work := make(chan *job, 4*b.opts.Workers)
	order := make(chan *job, 16*b.opts.Workers)
	inFlight := cap(work) + cap(order) + b.opts.Workers + 2
	pool := newBufPool(bs, inFlight)
	// Compressed blocks rarely exceed the input; when they do, the block
	// is stored raw.
	outPool := newBufPool(bs+bs/8+64, inFlight)
	quit := make(chan struct{})

	comps := make([]compressor, b.opts.Workers)
	for i := range comps {
		var err error
		if comps[i], err = newCompressor(b.opts); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	for _, c := range comps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				j.compress(c, outPool)
				close(j.done)
			}
		}()
	}

	var readErr error
	go func() {
		defer func() {
			close(work)
			close(order)
		}()
		// A job goes to the workers first, then in line for the
		// emitter: one given up on after quit is never waited for.
		send := func(j *job) bool {
			j.done = make(chan struct{})
			select {
			case work <- j:
			case <-quit:
				return false
			}
			select {
			case order <- j:
			case <-quit:
				return false
			}
			return true
		}
		readErr = b.readFiles(pool, send)
	}()

	var writeErr error
	for j := range order {
		<-j.done
		if writeErr != nil {
			continue
		}
		if j.err != nil {
			writeErr = j.err
			close(quit)
			continue
		}
		pos := uint64(out.N)
		if _, err := out.Write(j.out); err != nil {
			writeErr = err
			close(quit)
			continue
		}
		switch {
		case j.frag >= 0:
			b.frags = append(b.frags, fragEntry{start: pos, size: j.word})
		default:
			if j.block == 0 {
				j.file.start = pos
			}
			j.file.blocks[j.block] = j.word
			if j.word == 0 {
				j.file.sparse += uint64(len(j.raw))
			}
		}
		if j.pooled {
			outPool.put(j.out)
		}
		pool.put(j.raw)
	}
	wg.Wait()
	if writeErr != nil {
		return writeErr
	}
	return readErr
}

func (j *job) compress(c compressor, outPool *bufPool) {
	if j.holes && allZero(j.raw) {
		j.out, j.word = nil, 0
		return
	}
	buf := outPool.get()
	out, err := c.compress(buf[:0], j.raw)
	if err != nil {
		j.err = fmt.Errorf("compress: %w", err)
		return
	}
	if len(out) >= len(j.raw) {
		outPool.put(buf)
		j.out = j.raw
		j.word = uint32(len(j.raw)) | dataRawFlag
		return
	}
	j.out, j.pooled = out, true
	j.word = uint32(len(out))
}

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

var errStopped = errors.New("stopped")

// readFiles reads every file in order and hands its blocks to send, packing
// tails into fragment blocks. Files whose size another file shares are
// hashed first, so that a duplicate is recognised before any of it is
// written and then shares the first copy's blocks and fragment.
func (b *builder) readFiles(pool *bufPool, send func(*job) bool) error {
	bs := uint64(b.opts.BlockSize)
	sizes := map[uint64]int{}
	for _, f := range b.files {
		sizes[f.size]++
	}
	seen := map[[sha256.Size]byte]*fileData{}
	frag := make([]byte, 0, bs)
	nfrag := 0
	flushFrag := func() bool {
		if len(frag) == 0 {
			return true
		}
		raw := pool.get()[:0]
		raw = append(raw, frag...)
		frag = frag[:0]
		nfrag++
		return send(&job{raw: raw, frag: nfrag - 1})
	}
	for _, f := range b.files {
		if f.size == 0 {
			continue
		}
		var small []byte // whole content of a duplicate candidate that fits a block
		if sizes[f.size] > 1 {
			var sum [sha256.Size]byte
			var err error
			if f.size <= bs {
				small, err = readSmall(f, pool)
				sum = sha256.Sum256(small)
			} else {
				sum, err = hashFile(f)
			}
			if err != nil {
				return err
			}
			if orig := seen[sum]; orig != nil {
				f.dup = orig
				if small != nil {
					pool.put(small)
				}
				continue
			}
			seen[sum] = f
		}
		full := int(f.size / bs)
		tail := int(f.size % bs)
		f.blocks = make([]uint32, full)
		if small != nil && full == 0 {
			// The whole file is a tail.
			if len(frag)+tail > int(bs) && !flushFrag() {
				return errStopped
			}
			f.frag, f.offset = uint32(nfrag), uint32(len(frag))
			frag = append(frag, small...)
			pool.put(small)
			continue
		}
		if small != nil {
			// Exactly one full block, already read.
			if !send(&job{raw: small, file: f, frag: -1, holes: true}) {
				return errStopped
			}
			continue
		}
		r, err := openContent(f)
		if err != nil {
			return err
		}
		for i := range full {
			raw := pool.get()[:bs]
			if _, err := io.ReadFull(r, raw); err != nil {
				r.Close()
				return contentErr(err)
			}
			if !send(&job{raw: raw, file: f, block: i, frag: -1, holes: true}) {
				r.Close()
				return errStopped
			}
		}
		if tail > 0 {
			if len(frag)+tail > int(bs) && !flushFrag() {
				r.Close()
				return errStopped
			}
			f.frag, f.offset = uint32(nfrag), uint32(len(frag))
			frag = frag[:len(frag)+tail]
			if _, err := io.ReadFull(r, frag[len(frag)-tail:]); err != nil {
				r.Close()
				return contentErr(err)
			}
		}
		err = r.End()
		if cerr := r.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return contentErr(err)
		}
	}
	if !flushFrag() {
		return errStopped
	}
	return nil
}

// openContent opens f's content to be read as exactly its size.
func openContent(f *fileData) (*fstree.ContentReader, error) {
	return fstree.OpenContent(f.e.Path, f.e.Data, int64(f.size))
}

// contentErr marks a content that is not its declared size with
// ErrContent too; other errors (they name the file) pass unchanged.
func contentErr(err error) error {
	if _, ok := errors.AsType[*fstree.SizeError](err); ok {
		return fmt.Errorf("%w: %w", err, ErrContent)
	}
	return err
}

// readSmall reads a file of at most one block into a pooled buffer.
func readSmall(f *fileData, pool *bufPool) ([]byte, error) {
	r, err := openContent(f)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	buf := pool.get()[:f.size]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, contentErr(err)
	}
	if err := r.End(); err != nil {
		return nil, contentErr(err)
	}
	return buf, nil
}

func hashFile(f *fileData) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	r, err := openContent(f)
	if err != nil {
		return sum, err
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return sum, contentErr(err)
	}
	h.Sum(sum[:0])
	return sum, nil
}

// bufPool is a free list of block buffers. Unlike a sync.Pool it survives
// garbage collections, which would otherwise make every block a fresh
// allocation (and more collections).
type bufPool struct {
	free chan []byte
	size int
}

func newBufPool(size, n int) *bufPool {
	return &bufPool{free: make(chan []byte, n), size: size}
}

func (p *bufPool) get() []byte {
	select {
	case b := <-p.free:
		return b[:0]
	default:
		return make([]byte, 0, p.size)
	}
}

func (p *bufPool) put(b []byte) {
	if cap(b) < p.size {
		return
	}
	select {
	case p.free <- b[:0]:
	default:
	}
}
