package compress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/bellbuild/bellbuild/images/offset"
)

// ErrZstdFormat reports bytes that are not a well-formed zstd stream.
var ErrZstdFormat = errors.New("malformed zstd stream")

// FrameInfo describes one zstd frame of a stream.
type FrameInfo struct {
	// Offset and Size locate the frame in the stream.
	Offset, Size int64
	// Window is the frame's window size: what a decompressor must hold.
	// The kernel refuses more than 128 MiB.
	Window int64
	// ContentSize is the decompressed size, or -1 when the header omits it.
	ContentSize int64
	// Checksum reports whether the frame ends with a content checksum.
	Checksum bool
}

// Frames walks a zstd stream's frame and block headers without
// decompressing, and lists its frames (skippable frames are left out).
func Frames(r io.Reader) ([]FrameInfo, error) {
	cr := &offset.Reader{R: r}
	var out []FrameInfo
	for {
		var magic [4]byte
		if _, err := io.ReadFull(cr, magic[:]); err == io.EOF {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("%w: truncated frame at %d", ErrZstdFormat, cr.N)
		}
		start := cr.N - 4
		m := binary.LittleEndian.Uint32(magic[:])
		if m&0xfffffff0 == 0x184d2a50 { // skippable frame
			var size [4]byte
			if _, err := io.ReadFull(cr, size[:]); err != nil {
				return nil, fmt.Errorf("%w: truncated skippable frame at %d", ErrZstdFormat, start)
			}
			if _, err := io.CopyN(io.Discard, cr, int64(binary.LittleEndian.Uint32(size[:]))); err != nil {
				return nil, fmt.Errorf("%w: truncated skippable frame at %d", ErrZstdFormat, start)
			}
			continue
		}
		if m != 0xfd2fb528 {
			return nil, fmt.Errorf("%w: bad magic %#x at %d", ErrZstdFormat, m, start)
		}
		f, err := readFrame(cr)
		if err != nil {
			return nil, fmt.Errorf("%w: frame at %d: %v", ErrZstdFormat, start, err)
		}
		f.Offset, f.Size = start, cr.N-start
		out = append(out, f)
	}
}

// readFrame reads one frame after its magic number (RFC 8878 section 3.1.1).
func readFrame(r io.Reader) (FrameInfo, error) {
	var b [14]byte
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return FrameInfo{}, err
	}
	fhd := b[0]
	fcsFlag := fhd >> 6
	single := fhd&0x20 != 0
	checksum := fhd&0x04 != 0
	dictLen := [4]int{0, 1, 2, 4}[fhd&3]
	fcsLen := [4]int{0, 2, 4, 8}[fcsFlag]
	if fcsFlag == 0 && single {
		fcsLen = 1
	}
	winLen := 1
	if single {
		winLen = 0
	}
	n := winLen + dictLen + fcsLen
	if _, err := io.ReadFull(r, b[:n]); err != nil {
		return FrameInfo{}, err
	}
	f := FrameInfo{ContentSize: -1, Checksum: checksum}
	if !single {
		wd := b[0]
		exp := int64(wd>>3) + 10
		base := int64(1) << exp
		f.Window = base + base/8*int64(wd&7)
	}
	fcs := b[winLen+dictLen : n]
	switch len(fcs) {
	case 1:
		f.ContentSize = int64(fcs[0])
	case 2:
		f.ContentSize = int64(binary.LittleEndian.Uint16(fcs)) + 256
	case 4:
		f.ContentSize = int64(binary.LittleEndian.Uint32(fcs))
	case 8:
		f.ContentSize = int64(binary.LittleEndian.Uint64(fcs))
	}
	if single {
		f.Window = f.ContentSize
	}
	for {
		var bh [3]byte
		if _, err := io.ReadFull(r, bh[:]); err != nil {
			return FrameInfo{}, err
		}
		h := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		last, typ, size := h&1 != 0, (h>>1)&3, int64(h>>3)
		switch typ {
		case 1: // RLE: one byte stored
			size = 1
		case 3:
			return FrameInfo{}, errors.New("reserved block type")
		}
		if _, err := io.CopyN(io.Discard, r, size); err != nil {
			return FrameInfo{}, err
		}
		if last {
			break
		}
	}
	if checksum {
		if _, err := io.CopyN(io.Discard, r, 4); err != nil {
			return FrameInfo{}, err
		}
	}
	return f, nil
}
