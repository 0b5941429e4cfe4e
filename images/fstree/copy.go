package fstree

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// SizeError reports a regular file whose content is not the size the tree
// declares for it: shorter or longer, most often because the file changed
// on the host between reading the tree (FromDir records the size) and
// writing the image. Writers fail with it (wrapped) rather than cut a file
// short or write more than its header says; find it with errors.As.
type SizeError struct {
	// Path is the entry's path in the tree ("usr/bin/env").
	Path string
	// Size is the size the tree declares.
	Size int64
	// Actual is the content's length when it was read.
	Actual int64
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("%s: content is %d bytes, not its declared %d (changed after the tree was read)", e.Path, e.Actual, e.Size)
}

// CopyContent copies exactly size bytes of c, opened now, to w: the one
// copy of a regular file's content that every image writer makes. It
// fails with a *SizeError naming p (the entry's path) when the content is
// shorter or longer than size, and wraps any other error with p; a nil c
// is an error unless size is 0.
//
// It streams, and keeps the fast paths of io.CopyBuffer: when w is an
// io.ReaderFrom (compress.ZstdWriter reads into its blocks; an *os.File
// copies a host file with copy_file_range, which it recognises behind the
// io.LimitedReader used here), w copies by itself; otherwise the bytes go
// through buf (nil allocates one). Of a content that ends at size, one
// byte more is asked for, to tell that it ends there.
func CopyContent(w io.Writer, p string, c Content, size int64, buf []byte) error {
	rc, err := open(p, c, size)
	if err != nil {
		return err
	}
	n, err := io.CopyBuffer(w, io.LimitReader(rc, size), buf)
	if err == nil {
		if n < size {
			err = &SizeError{Path: p, Size: size, Actual: n}
		} else {
			err = checkEnd(p, rc, size)
		}
	} else {
		err = fmt.Errorf("%s: %w", p, err)
	}
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("%s: %w", p, cerr)
	}
	return err
}

// ContentReader reads exactly a declared size of a regular file's
// content, for writers that read a file in blocks rather than copy it
// (squashfs). Read returns a *SizeError at the point the content turns
// out shorter or longer than the size; a caller that reads exactly the
// size with io.ReadFull calls End to check that nothing follows.
type ContentReader struct {
	path    string
	rc      io.ReadCloser
	size, n int64
	ended   bool
	endErr  error
}

// OpenContent opens c, the content of the entry at path p, to be read as
// exactly size bytes (see ContentReader). Errors name p.
func OpenContent(p string, c Content, size int64) (*ContentReader, error) {
	rc, err := open(p, c, size)
	if err != nil {
		return nil, err
	}
	return &ContentReader{path: p, rc: rc, size: size}, nil
}

// Read implements io.Reader: at most the bytes left of the declared size,
// then io.EOF if the content ends there, or a *SizeError.
func (r *ContentReader) Read(b []byte) (int, error) {
	left := r.size - r.n
	if left <= 0 {
		if err := r.End(); err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	if int64(len(b)) > left {
		b = b[:left]
	}
	n, err := r.rc.Read(b)
	r.n += int64(n)
	switch {
	case err == io.EOF && r.n < r.size:
		err = &SizeError{Path: r.path, Size: r.size, Actual: r.n}
	case err == io.EOF:
		err = nil // the next Read checks the end
	case err != nil:
		err = fmt.Errorf("%s: %w", r.path, err)
	}
	return n, err
}

// End reports, once all size bytes have been read, whether the content
// goes on: a *SizeError if it does. Before that it reports the content as
// shorter than its size.
func (r *ContentReader) End() error {
	if r.n < r.size {
		return &SizeError{Path: r.path, Size: r.size, Actual: r.n}
	}
	if !r.ended {
		r.ended, r.endErr = true, checkEnd(r.path, r.rc, r.size)
	}
	return r.endErr
}

// Close closes the content.
func (r *ContentReader) Close() error {
	if err := r.rc.Close(); err != nil {
		return fmt.Errorf("%s: %w", r.path, err)
	}
	return nil
}

// open opens c for the entry at p; a nil c is an empty file's.
func open(p string, c Content, size int64) (io.ReadCloser, error) {
	if size < 0 {
		return nil, fmt.Errorf("%s: negative size %d", p, size)
	}
	if c == nil {
		if size > 0 {
			return nil, fmt.Errorf("%s: %d bytes but no content", p, size)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	rc, err := c.Open()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return rc, nil
}

// checkEnd reads one byte of r, which has given size bytes: there must be
// none. When there is, the SizeError carries the content's whole length:
// the file's own size when r can tell it (an *os.File, as every host
// file's content is), else counted by reading the rest.
func checkEnd(p string, r io.Reader, size int64) error {
	var one [1]byte
	n, err := io.ReadFull(r, one[:])
	if n == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("%s: %w", p, err)
	}
	actual := size + 1
	if s, ok := r.(interface{ Stat() (fs.FileInfo, error) }); ok {
		if fi, err := s.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() >= actual {
			return &SizeError{Path: p, Size: size, Actual: fi.Size()}
		}
	}
	rest, _ := io.Copy(io.Discard, r)
	return &SizeError{Path: p, Size: size, Actual: actual + rest}
}
