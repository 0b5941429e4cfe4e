// Package cpio writes and reads the "newc" cpio format (magic 070701), the
// format the Linux kernel unpacks as an initramfs.
//
// Write streams an fstree.Tree: entries in Walk order, inode numbers
// numbered from that order (so two writes of the same tree are
// byte-identical), hardlinks as one inode with its data on the last name
// (GNU cpio's convention, which the kernel also accepts), device numbers in
// the rdevmajor/rdevminor fields, symlink targets as bodies, and a closing
// TRAILER!!! entry. File contents are opened one at a time through
// Entry.Data and copied, never held whole in memory.
//
// The format stores sizes in 32 bits: a file of 4 GiB or more is an error
// naming it (ErrTooLarge), never a truncated archive. Extended attributes
// are not written: newc has no place for them and the kernel's unpacker
// would not set them (file capabilities must be set at boot instead).
//
// Through compress.Zstd, the archive is compressed as independent frames,
// each ending on a whole entry (the compressor follows the headers): the
// kernel unpacks a compressed member that ends between entries (its
// unpacker is back in its reset state there) and rejects one that ends
// inside an entry ("junk at the end of compressed archive"). GNU cpio and
// zstd -d see one ordinary archive. Write tells the compressor the
// archive's length first (SizeHinter), by which it frames the end of the
// stream so that both its workers finish together.
package cpio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"

	"github.com/bellbuild/bellbuild/images/fstree"
)

// Magic is the newc header magic (no checksums).
const Magic = "070701"

// Trailer is the name of the entry that ends an archive.
const Trailer = "TRAILER!!!"

const (
	headerLen = 110
	// maxSize is the first size newc's 8 hex digits cannot hold.
	maxSize = 1 << 32
)

// ErrTooLarge reports a file whose size does not fit newc's 32-bit field.
var ErrTooLarge = errors.New("file too large for cpio newc (4 GiB limit)")

// Options adjust Write. The zero value writes every entry's own MTime.
type Options struct {
	// MTime, when set, replaces every entry's modification time (the
	// source date: SOURCE_DATE_EPOCH).
	MTime *int64
	// FirstInode is the inode number given to the first entry (the root);
	// 0 means 1. Later entries count up from it in Walk order.
	FirstInode uint32
}

// SizeHinter is a destination that frames its output better when told
// the archive's length before the first byte (compress.ZstdWriter).
type SizeHinter interface {
	SizeHint(n int64)
}

// Write streams t to w as a newc archive ending with a trailer. Nothing is
// buffered beyond a fixed-size write buffer; w is not closed. When w is a
// SizeHinter, Write first tells it the archive's length.
func Write(w io.Writer, t *fstree.Tree, opts Options) error {
	cw := &writer{bw: bufio.NewWriterSize(w, 1<<20)}
	cw.hint, _ = w.(SizeHinter)
	if _, ok := w.(io.ReaderFrom); ok {
		cw.direct = w
	}
	if err := cw.tree(t, opts); err != nil {
		return err
	}
	return cw.bw.Flush()
}

type writer struct {
	bw *bufio.Writer
	// direct is the destination when it can read file data in itself
	// (an io.ReaderFrom: compress.ZstdWriter into its blocks, os.File by
	// copy_file_range): file data then skips bw's buffer.
	direct io.Writer
	hint   SizeHinter
	hdr    [headerLen]byte
	pad    [4]byte
}

func (cw *writer) tree(t *fstree.Tree, opts Options) error {
	entries := t.Walk()
	links := t.Links()
	subdirs := map[string]uint32{}
	for _, e := range entries {
		if e.Type == fstree.Dir && e.Path != "." {
			subdirs[path.Dir(e.Path)]++
		}
	}
	ino := opts.FirstInode
	if ino == 0 {
		ino = 1
	}
	groupIno := map[*fstree.LinkGroup]uint32{}
	// Plan every header first, so that a bad entry (a file over 4 GiB)
	// fails before anything is written.
	type item struct {
		h      header
		body   fstree.Content
		target string
	}
	items := make([]item, 0, len(entries))
	var total int64 // the archive's length, trailer aside
	for _, e := range entries {
		h := header{
			name:  e.Path,
			mode:  e.UnixMode(),
			uid:   e.UID,
			gid:   e.GID,
			nlink: 1,
			mtime: e.MTime,
		}
		if opts.MTime != nil {
			h.mtime = *opts.MTime
		}
		var body fstree.Content
		var target string
		switch e.Type {
		case fstree.Dir:
			h.nlink = 2 + subdirs[e.Path]
		case fstree.Regular:
			src := e
			if g := links[e.Path]; g != nil {
				// One inode: the group's metadata on every name, the
				// data on the last one.
				src = g.Head
				h.mode, h.uid, h.gid = src.UnixMode(), src.UID, src.GID
				h.nlink = uint32(len(g.Members))
				if n, ok := groupIno[g]; ok {
					h.ino = n
				} else {
					groupIno[g] = ino
				}
				if g.Members[len(g.Members)-1] != e {
					break
				}
			}
			if src.Size >= maxSize {
				return fmt.Errorf("cpio: %s: %d bytes: %w", e.Path, src.Size, ErrTooLarge)
			}
			if src.Size < 0 {
				return fmt.Errorf("cpio: %s: negative size %d", e.Path, src.Size)
			}
			if src.Size > 0 && src.Data == nil {
				return fmt.Errorf("cpio: %s: %d bytes but no content", e.Path, src.Size)
			}
			h.size = uint32(src.Size)
			body = src.Data
		case fstree.Symlink:
			target = e.Target
			if len(target) >= maxSize {
				return fmt.Errorf("cpio: %s: symlink target: %w", e.Path, ErrTooLarge)
			}
			h.size = uint32(len(target))
		case fstree.CharDev, fstree.BlockDev:
			h.rmajor, h.rminor = e.Major, e.Minor
		}
		if h.ino == 0 {
			h.ino = ino
			ino++
		}
		items = append(items, item{h, body, target})
		total += entryLen(h)
	}
	if cw.hint != nil {
		cw.hint.SizeHint(total + entryLen(header{name: Trailer}))
	}
	for _, it := range items {
		h, body, target := it.h, it.body, it.target
		if err := cw.header(h); err != nil {
			return err
		}
		switch {
		case target != "":
			if _, err := cw.bw.WriteString(target); err != nil {
				return err
			}
			if err := cw.padTo(int64(len(target))); err != nil {
				return err
			}
		case h.size > 0:
			if err := cw.body(h.name, body, int64(h.size)); err != nil {
				return err
			}
		}
	}
	return cw.header(header{name: Trailer, nlink: 1})
}

// entryLen is the length of h's entry in the archive: header, name, NUL,
// data and the padding after each.
func entryLen(h header) int64 {
	n := int64(headerLen + len(h.name) + 1)
	return n + int64(pad4(int(n%4))) + int64(h.size) + int64(pad4(int(h.size%4)))
}

// header is the part of a newc header that varies; devmajor/devminor (the
// device holding the file) and the checksum are always 0.
type header struct {
	name           string
	ino, mode      uint32
	uid, gid       uint32
	nlink          uint32
	mtime          int64
	size           uint32
	rmajor, rminor uint32
}

func (cw *writer) header(h header) error {
	b := cw.hdr[:]
	copy(b, Magic)
	mtime := uint32(h.mtime)
	if h.mtime < 0 || h.mtime >= maxSize {
		mtime = 0
	}
	for i, v := range [...]uint32{
		h.ino, h.mode, h.uid, h.gid, h.nlink, mtime, h.size,
		0, 0, h.rmajor, h.rminor, uint32(len(h.name) + 1), 0,
	} {
		putHex(b[6+8*i:14+8*i], v)
	}
	if _, err := cw.bw.Write(b); err != nil {
		return err
	}
	if _, err := cw.bw.WriteString(h.name); err != nil {
		return err
	}
	// The name's NUL and the padding that aligns header+name to 4 bytes.
	n := headerLen + len(h.name)
	_, err := cw.bw.Write(cw.pad[:1+pad4(n+1)])
	return err
}

// body copies exactly size bytes of c, then the padding. A content that
// turns out shorter or longer than its header says is an
// *fstree.SizeError.
func (cw *writer) body(name string, c fstree.Content, size int64) error {
	var w io.Writer = cw.bw
	if cw.direct != nil {
		if err := cw.bw.Flush(); err != nil {
			return err
		}
		w = cw.direct
	}
	if err := fstree.CopyContent(w, name, c, size, nil); err != nil {
		return fmt.Errorf("cpio: %w", err)
	}
	return cw.padTo(size)
}

func (cw *writer) padTo(n int64) error {
	_, err := cw.bw.Write(cw.pad[:pad4(int(n%4))])
	return err
}

// pad4 is the number of bytes that bring n up to a multiple of 4.
func pad4(n int) int { return (4 - n%4) % 4 }

const hexDigits = "0123456789ABCDEF"

func putHex(b []byte, v uint32) {
	for i := 7; i >= 0; i-- {
		b[i] = hexDigits[v&0xf]
		v >>= 4
	}
}
