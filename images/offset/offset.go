// Package offset holds the byte counters the image writers share: a
// Writer that knows how far into an image it has written, so that a
// writer can place the next structure at a planned offset, pad up to it
// or leave free space as a hole, and check what it wrote against its plan; and a
// Reader that knows how far into a stream it has read.
package offset

import (
	"fmt"
	"io"
)

// Writer counts the bytes written through it to W: N is the offset
// reached.
type Writer struct {
	W io.Writer
	N int64
}

// NewWriter counts what is written to w, from 0.
func NewWriter(w io.Writer) *Writer { return &Writer{W: w} }

// Write implements io.Writer.
func (c *Writer) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	c.N += int64(n)
	return n, err
}

// zeros is what Zeros writes from: 64 KiB at a time.
var zeros = make([]byte, 64<<10)

// Zeros writes n zero bytes (none when n ≤ 0).
func (c *Writer) Zeros(n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := c.Write(zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// PadTo writes zeros up to offset off; it fails if the writer is already
// past off (what was written outgrew its plan).
func (c *Writer) PadTo(off int64) error {
	if c.N > off {
		return fmt.Errorf("at byte %d, past %d", c.N, off)
	}
	return c.Zeros(off - c.N)
}

// Hole leaves n bytes that read as zeros: it seeks over them when W is an
// io.Seeker (the caller knows that W already reads as zeros there, e.g. a
// freshly truncated file), and writes n zeros otherwise.
func (c *Writer) Hole(n int64) error {
	if n <= 0 {
		return nil
	}
	s, ok := c.W.(io.Seeker)
	if !ok {
		return c.Zeros(n)
	}
	if _, err := s.Seek(n, io.SeekCurrent); err != nil {
		return err
	}
	c.N += n
	return nil
}

// Reader counts the bytes read through it from R. N is the offset
// reached.
type Reader struct {
	R io.Reader
	N int64
}

// Read implements io.Reader.
func (c *Reader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}
