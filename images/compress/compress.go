// Package compress wraps the compressors bellbuild's images use with pinned
// settings, so that the same input always compresses to the same bytes on
// any machine, and detects and opens compressed inputs.
package compress

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"fmt"
	"io"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Gzip returns a writer that compresses to w as gzip at the default level,
// with an empty header (no name, no modification time), so the output
// depends only on the input. Close flushes it; it does not close w.
func Gzip(w io.Writer) (io.WriteCloser, error) {
	return gzip.NewWriterLevel(w, gzip.DefaultCompression)
}

// Format names a compression format.
type Format string

// Formats Detect recognises.
const (
	None  Format = ""
	Gz    Format = "gzip"
	Xz    Format = "xz"
	Zst   Format = "zstd"
	Bzip2 Format = "bzip2"
)

var magics = []struct {
	f     Format
	magic []byte
}{
	{Gz, []byte{0x1f, 0x8b}},
	{Xz, []byte{0xfd, '7', 'z', 'X', 'Z', 0}},
	{Zst, []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{Bzip2, []byte("BZh")},
}

// Detect names the compression of the stream br starts with, by its magic
// number, without consuming anything. None means not compressed (or not a
// format this package knows).
func Detect(br *bufio.Reader) Format {
	head, _ := br.Peek(6)
	return Sniff(head)
}

// Sniff names the compression of data that starts with head (6 bytes are
// enough).
func Sniff(head []byte) Format {
	for _, m := range magics {
		if bytes.HasPrefix(head, m.magic) {
			return m.f
		}
	}
	return None
}

// NewReader returns r decompressed according to its magic number (gzip,
// xz, zstd, bzip2), or r itself when it is not compressed. Close releases
// the decompressor; it does not close r. Concatenated gzip members and
// zstd frames are read as one stream.
func NewReader(r io.Reader) (io.ReadCloser, Format, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	f := Detect(br)
	var (
		rc  io.ReadCloser
		err error
	)
	switch f {
	case None:
		rc = io.NopCloser(br)
	case Gz:
		rc, err = kgzip.NewReader(br)
	case Xz:
		var xr *xz.Reader
		xr, err = xz.NewReader(br)
		rc = io.NopCloser(xr)
	case Zst:
		var d *zstd.Decoder
		d, err = zstd.NewReader(br, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxWindow(1<<31))
		if err == nil {
			rc = d.IOReadCloser()
		}
	case Bzip2:
		rc = io.NopCloser(bzip2.NewReader(br))
	}
	if err != nil {
		return nil, f, fmt.Errorf("%s: %w", f, err)
	}
	return rc, f, nil
}
