package cpio

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/bellbuild/bellbuild/images/fstree"
)

// ErrFormat reports input that is not a well-formed newc archive.
var ErrFormat = errors.New("cpio: malformed newc archive")

// maxName bounds a header's name size, as PATH_MAX does for the kernel.
const maxName = 4096

// Read parses newc archives from r into a tree: every archive up to the
// end of r, as the kernel unpacks concatenated initramfs segments, later
// entries replacing earlier ones. Hardlinks (a shared inode number with
// nlink > 1 within one archive) become LinkTo entries. File contents are
// held in memory, so Read is meant for tests, checks and small archives.
func Read(r io.Reader) (*fstree.Tree, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	t := fstree.New()
	rd := &reader{br: br, t: t}
	for {
		// Archives may be separated by NUL padding.
		for {
			b, err := br.Peek(1)
			if err == io.EOF {
				return t, nil
			}
			if err != nil {
				return nil, err
			}
			if b[0] != 0 {
				break
			}
			br.Discard(1)
		}
		if err := rd.archive(); err != nil {
			return nil, err
		}
	}
}

type reader struct {
	br  *bufio.Reader
	t   *fstree.Tree
	off int64
	// heads maps an inode to the first name seen with it in the current
	// archive (for hardlinks).
	heads map[uint32]string
}

func (rd *reader) archive() error {
	rd.heads = map[uint32]string{}
	for {
		done, err := rd.entry()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

func (rd *reader) read(b []byte) error {
	n, err := io.ReadFull(rd.br, b)
	rd.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: truncated at byte %d", ErrFormat, rd.off)
	}
	return err
}

func (rd *reader) skip(n int) error {
	m, err := rd.br.Discard(n)
	rd.off += int64(m)
	if err != nil {
		return fmt.Errorf("%w: truncated at byte %d", ErrFormat, rd.off)
	}
	return nil
}

func (rd *reader) entry() (done bool, err error) {
	start := rd.off
	var hdr [headerLen]byte
	if err := rd.read(hdr[:]); err != nil {
		return false, err
	}
	if m := string(hdr[:6]); m != Magic && m != "070702" {
		return false, fmt.Errorf("%w: bad magic %q at byte %d", ErrFormat, m, start)
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return false, fmt.Errorf("%w: bad header field %d at byte %d", ErrFormat, i, start)
		}
		f[i] = uint32(v)
	}
	ino, mode, uid, gid, nlink, mtime, size := f[0], f[1], f[2], f[3], f[4], f[5], f[6]
	rmajor, rminor, namesize := f[9], f[10], f[11]
	if namesize == 0 || namesize > maxName {
		return false, fmt.Errorf("%w: name size %d at byte %d", ErrFormat, namesize, start)
	}
	name := make([]byte, namesize)
	if err := rd.read(name); err != nil {
		return false, err
	}
	if name[namesize-1] != 0 || bytes.IndexByte(name[:namesize-1], 0) >= 0 {
		return false, fmt.Errorf("%w: name not NUL-terminated at byte %d", ErrFormat, start)
	}
	if err := rd.skip(pad4(headerLen + int(namesize))); err != nil {
		return false, err
	}
	p := string(name[:namesize-1])
	if p == Trailer {
		return true, rd.skip(pad4(int(size)) + int(size))
	}
	var body []byte
	if size > 0 {
		var buf bytes.Buffer
		n, err := io.CopyN(&buf, rd.br, int64(size))
		rd.off += n
		if err != nil {
			return false, fmt.Errorf("%w: %s: truncated body", ErrFormat, p)
		}
		body = buf.Bytes()
		if err := rd.skip(pad4(int(size))); err != nil {
			return false, err
		}
	}
	typ, perm, err := fstree.FromUnixMode(mode)
	if err != nil {
		return false, fmt.Errorf("%w: %s: %v", ErrFormat, p, err)
	}
	e := fstree.Entry{Path: p, Type: typ, Mode: perm, UID: uid, GID: gid, MTime: int64(mtime)}
	switch typ {
	case fstree.Regular:
		e.Size = int64(size)
		if size > 0 {
			e.Data = fstree.Bytes(body)
		}
		if nlink > 1 {
			if head, ok := rd.heads[ino]; ok {
				e.LinkTo = head
				// The data comes with one of the names (GNU cpio: the
				// last); share it with the whole group.
				if h := rd.t.Get(head); h != nil {
					if size > 0 {
						h.Size, h.Data = e.Size, e.Data
					} else {
						e.Size, e.Data = h.Size, h.Data
					}
				}
			} else {
				rd.heads[ino] = fstree.Clean(p)
			}
		}
	case fstree.Symlink:
		e.Target = string(body)
	case fstree.CharDev, fstree.BlockDev:
		e.Major, e.Minor = rmajor, rminor
	}
	rd.t.Add(e)
	return false, nil
}
