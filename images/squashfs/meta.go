package squashfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"

	"github.com/bellbuild/bellbuild/images/offset"
)

// compressor compresses one block at a time. Each block is a frame of its
// own, so blocks compress independently, in any order, to the same bytes.
type compressor interface {
	// compress appends src's compressed form to dst.
	compress(dst, src []byte) ([]byte, error)
}

func newCompressor(o Options) (compressor, error) {
	switch o.Compression {
	case Zstd:
		// The kernel decompresses with a window of max(block size, 8 KiB):
		// a single-segment frame's window is its content size, never more.
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(o.Level)),
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false),
			zstd.WithSingleSegment(true),
			zstd.WithWindowSize(max(o.BlockSize, metaSize)),
		)
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zstdCompressor{enc}, nil
	case Gzip:
		zw, err := zlib.NewWriterLevel(io.Discard, o.Level)
		if err != nil {
			return nil, fmt.Errorf("zlib: %w", err)
		}
		return &zlibCompressor{w: zw}, nil
	}
	return nil, fmt.Errorf("unsupported compression %v", o.Compression)
}

type zstdCompressor struct{ enc *zstd.Encoder }

func (z zstdCompressor) compress(dst, src []byte) ([]byte, error) {
	return z.enc.EncodeAll(src, dst), nil
}

type zlibCompressor struct {
	w   *zlib.Writer
	buf bytes.Buffer
}

func (z *zlibCompressor) compress(dst, src []byte) ([]byte, error) {
	z.buf.Reset()
	z.w.Reset(&z.buf)
	if _, err := z.w.Write(src); err != nil {
		return nil, err
	}
	if err := z.w.Close(); err != nil {
		return nil, err
	}
	return append(dst, z.buf.Bytes()...), nil
}

// metaWriter builds a table of metadata blocks in memory: 8 KiB of
// uncompressed bytes per block, each stored behind a 16-bit header (its
// size, with bit 15 set when stored uncompressed). References into the table
// are the compressed offset of a block (relative to the table's start) and
// an offset into that block's uncompressed bytes.
type metaWriter struct {
	comp compressor
	out  []byte // finished blocks, headers included
	cur  []byte // uncompressed bytes of the block being filled
	// starts[k] is the offset in out of uncompressed block k.
	starts []uint64
	tmp    []byte
}

func newMetaWriter(c compressor) *metaWriter {
	return &metaWriter{comp: c, starts: []uint64{0}}
}

// ref returns the reference of the next byte written: block start << 16 |
// offset.
func (m *metaWriter) ref() uint64 {
	return uint64(len(m.out))<<16 | uint64(len(m.cur))
}

// pos is the number of uncompressed bytes written so far.
func (m *metaWriter) pos() uint64 {
	return uint64(len(m.starts)-1)*metaSize + uint64(len(m.cur))
}

// blockAt returns the start (relative to the table) of the block holding
// uncompressed position p, which must have been reached already.
func (m *metaWriter) blockAt(p uint64) uint64 { return m.starts[p/metaSize] }

func (m *metaWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(metaSize-len(m.cur), len(p))
		m.cur = append(m.cur, p[:k]...)
		p = p[k:]
		if len(m.cur) == metaSize {
			if err := m.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (m *metaWriter) flush() error {
	if len(m.cur) == 0 {
		return nil
	}
	var err error
	m.tmp, err = m.comp.compress(m.tmp[:0], m.cur)
	if err != nil {
		return err
	}
	if len(m.tmp) < len(m.cur) {
		m.out = binary.LittleEndian.AppendUint16(m.out, uint16(len(m.tmp)))
		m.out = append(m.out, m.tmp...)
	} else {
		m.out = binary.LittleEndian.AppendUint16(m.out, uint16(len(m.cur))|metaRawFlag)
		m.out = append(m.out, m.cur...)
	}
	m.cur = m.cur[:0]
	m.starts = append(m.starts, uint64(len(m.out)))
	return nil
}

// finish flushes the last, partial block and returns the table.
func (m *metaWriter) finish() ([]byte, error) {
	if err := m.flush(); err != nil {
		return nil, err
	}
	return m.out, nil
}

// writeLookupTable writes entries (fixed-size records) as metadata blocks to
// out, followed by the uncompressed array of the blocks' absolute
// positions, and returns the array's position: the layout of the fragment,
// export and id tables.
func writeLookupTable(out *offset.Writer, c compressor, entries []byte) (uint64, error) {
	m := newMetaWriter(c)
	if _, err := m.Write(entries); err != nil {
		return 0, err
	}
	blocks, err := m.finish()
	if err != nil {
		return 0, err
	}
	start := uint64(out.N)
	if _, err := out.Write(blocks); err != nil {
		return 0, err
	}
	index := make([]byte, 0, 8*len(m.starts))
	for _, s := range m.starts[:len(m.starts)-1] {
		index = binary.LittleEndian.AppendUint64(index, start+s)
	}
	at := uint64(out.N)
	if _, err := out.Write(index); err != nil {
		return 0, err
	}
	return at, nil
}
