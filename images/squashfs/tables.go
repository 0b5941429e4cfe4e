package squashfs

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/offset"
)

// Inode types; a directory entry always names the basic type.
const (
	typeDir = 1 + iota
	typeFile
	typeSymlink
	typeBlockDev
	typeCharDev
	typeFIFO
	typeSocket
	extended = 7 // added to a basic type
)

func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func basicType(t fstree.Type) uint16 {
	switch t {
	case fstree.Dir:
		return typeDir
	case fstree.Regular:
		return typeFile
	case fstree.Symlink:
		return typeSymlink
	case fstree.BlockDev:
		return typeBlockDev
	case fstree.CharDev:
		return typeCharDev
	case fstree.FIFO:
		return typeFIFO
	}
	return typeSocket
}

// tables holds the metadata being built after the data is written.
type tables struct {
	b      *builder
	inodes *metaWriter
	dirs   *metaWriter
	buf    []byte
}

// writeTables writes the inode, directory, fragment, export, id and xattr
// tables after the data, in the order the kernel's sanity checks expect
// (each table ends where the next begins), and returns the superblock.
func (b *builder) writeTables(out *offset.Writer) (*superblock, error) {
	c, err := newCompressor(b.opts)
	if err != nil {
		return nil, err
	}
	t := &tables{b: b, inodes: newMetaWriter(c), dirs: newMetaWriter(c)}
	if err := t.writeDir(b.root); err != nil {
		return nil, err
	}
	sb := &superblock{
		inodes:      uint32(len(b.inodes)),
		mkfsTime:    uint32(b.opts.MkfsTime),
		blockSize:   uint32(b.opts.BlockSize),
		fragments:   uint32(len(b.frags)),
		compression: uint16(b.opts.Compression),
		blockLog:    uint16(bits.TrailingZeros(uint(b.opts.BlockSize))),
		flags:       flagDuplicates | flagAlwaysFragments,
		ids:         uint16(len(b.ids)),
		rootInode:   b.root.ref,
		xattrTable:  invalid64,
		exportTable: invalid64,
	}
	inodeTable, err := t.inodes.finish()
	if err != nil {
		return nil, err
	}
	dirTable, err := t.dirs.finish()
	if err != nil {
		return nil, err
	}
	sb.inodeTable = uint64(out.N)
	if _, err := out.Write(inodeTable); err != nil {
		return nil, err
	}
	sb.dirTable = uint64(out.N)
	if _, err := out.Write(dirTable); err != nil {
		return nil, err
	}

	frags := make([]byte, 0, 16*len(b.frags))
	for _, f := range b.frags {
		frags = binary.LittleEndian.AppendUint64(frags, f.start)
		frags = binary.LittleEndian.AppendUint32(frags, f.size)
		frags = binary.LittleEndian.AppendUint32(frags, 0)
	}
	if sb.fragmentTable, err = writeLookupTable(out, c, frags); err != nil {
		return nil, err
	}

	if b.opts.Exportable {
		refs := make([]byte, 0, 8*len(b.inodes))
		for _, in := range b.inodes {
			refs = binary.LittleEndian.AppendUint64(refs, in.ref)
		}
		if sb.exportTable, err = writeLookupTable(out, c, refs); err != nil {
			return nil, err
		}
		sb.flags |= flagExportable
	}

	ids := make([]byte, 0, 4*len(b.ids))
	for _, id := range b.ids {
		ids = binary.LittleEndian.AppendUint32(ids, id)
	}
	if sb.idTable, err = writeLookupTable(out, c, ids); err != nil {
		return nil, err
	}

	if len(b.xsets) == 0 {
		sb.flags |= flagNoXattrs
		return sb, nil
	}
	sb.xattrTable, err = b.writeXattrs(out, c)
	return sb, err
}

// writeXattrs writes the key/value metadata blocks, then the lookup table
// of (reference, count, size) per set, then the header the superblock
// points to, which ends the image.
func (b *builder) writeXattrs(out *offset.Writer, c compressor) (uint64, error) {
	kv := newMetaWriter(c)
	ids := make([]byte, 0, 16*len(b.xsets))
	for _, s := range b.xsets {
		ids = binary.LittleEndian.AppendUint64(ids, kv.ref())
		ids = binary.LittleEndian.AppendUint32(ids, s.count)
		ids = binary.LittleEndian.AppendUint32(ids, uint32(len(s.kv)))
		if _, err := kv.Write(s.kv); err != nil {
			return 0, err
		}
	}
	kvBlocks, err := kv.finish()
	if err != nil {
		return 0, err
	}
	kvStart := uint64(out.N)
	if _, err := out.Write(kvBlocks); err != nil {
		return 0, err
	}
	idm := newMetaWriter(c)
	if _, err := idm.Write(ids); err != nil {
		return 0, err
	}
	idBlocks, err := idm.finish()
	if err != nil {
		return 0, err
	}
	idStart := uint64(out.N)
	if _, err := out.Write(idBlocks); err != nil {
		return 0, err
	}
	hdr := binary.LittleEndian.AppendUint64(nil, kvStart)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(b.xsets)))
	hdr = binary.LittleEndian.AppendUint32(hdr, 0)
	for _, s := range idm.starts[:len(idm.starts)-1] {
		hdr = binary.LittleEndian.AppendUint64(hdr, idStart+s)
	}
	at := uint64(out.N)
	_, err = out.Write(hdr)
	return at, err
}

// writeDir writes, depth first, the inodes of d's children, d's listing
// and then d's own inode: a listing needs its children's references, and a
// directory inode needs its listing's position.
func (t *tables) writeDir(d *inode) error {
	for _, c := range d.dir.children {
		if c.in.placed {
			continue
		}
		if c.in.dir != nil {
			if err := t.writeDir(c.in); err != nil {
				return err
			}
			continue
		}
		if err := t.writeInode(c.in, nil); err != nil {
			return err
		}
	}
	listing, index := t.listing(d)
	l := &dirListing{ref: t.dirs.ref(), size: uint64(len(listing)) + 3}
	start := t.dirs.pos()
	if _, err := t.dirs.Write(listing); err != nil {
		return err
	}
	for _, ix := range index {
		ix.start = t.dirs.blockAt(start + uint64(ix.index))
		l.index = append(l.index, ix)
	}
	return t.writeInode(d, l)
}

type dirListing struct {
	ref   uint64 // where the listing starts in the directory table
	size  uint64 // listing bytes + 3, as the kernel counts them
	index []dirIndex
}

type dirIndex struct {
	index uint32 // offset of a header in the listing
	start uint64 // directory table block holding that header
	name  string // the first name after that header
}

// listing encodes d's entries as runs behind headers: a new header when
// the run reaches 256 entries, when the inode block changes, when an inode
// number is too far from the header's, and when the listing crosses a
// metadata block boundary since the last index point; each such crossing
// is recorded in the index that lookups jump through.
func (t *tables) listing(d *inode) ([]byte, []dirIndex) {
	le := binary.LittleEndian
	buf := t.buf[:0]
	var index []dirIndex
	countAt := -1
	count := 0
	var hdrBlock uint64
	var hdrNum uint32
	lastIndex := 0
	for _, c := range d.dir.children {
		blk, off := c.in.ref>>16, uint16(c.in.ref&0xffff)
		delta := int64(c.in.num) - int64(hdrNum)
		entrySize := 8 + len(c.name)
		if countAt < 0 || count == maxDirEntries || blk != hdrBlock ||
			delta < -32768 || delta > 32767 || len(buf)+entrySize-lastIndex > metaSize {
			if countAt >= 0 {
				le.PutUint32(buf[countAt:], uint32(count-1))
				if len(buf)+12+entrySize-lastIndex > metaSize {
					index = append(index, dirIndex{index: uint32(len(buf)), name: c.name})
					lastIndex = len(buf)
				}
			}
			countAt = len(buf)
			count = 0
			hdrBlock, hdrNum = blk, c.in.num
			delta = 0
			buf = le.AppendUint32(buf, 0)
			buf = le.AppendUint32(buf, uint32(blk))
			buf = le.AppendUint32(buf, hdrNum)
		}
		buf = le.AppendUint16(buf, off)
		buf = le.AppendUint16(buf, uint16(int16(delta)))
		buf = le.AppendUint16(buf, basicType(c.in.e.Type))
		buf = le.AppendUint16(buf, uint16(len(c.name)-1))
		buf = append(buf, c.name...)
		count++
	}
	if countAt >= 0 {
		le.PutUint32(buf[countAt:], uint32(count-1))
	}
	t.buf = buf
	return buf, index
}

// writeInode appends in's inode to the inode table and records its
// reference. l is the listing of a directory.
func (t *tables) writeInode(in *inode, l *dirListing) error {
	le := binary.LittleEndian
	e := in.e
	typ := basicType(e.Type)
	hasX := in.xattr != noXattr
	b := make([]byte, 0, 64)
	var body []byte
	switch e.Type {
	case fstree.Dir:
		blk, off := l.ref>>16, uint16(l.ref&0xffff)
		if blk > 1<<32-1 {
			return fmt.Errorf("directory table over 4 GiB: %w", ErrLimit)
		}
		if len(l.index) > 0xffff || l.size > 1<<32-1 {
			return fmt.Errorf("%s: directory listing of %d bytes: %w", e.Path, l.size, ErrLimit)
		}
		if !hasX && len(l.index) == 0 && l.size <= 0xffff {
			body = le.AppendUint32(body, uint32(blk))
			body = le.AppendUint32(body, in.nlink)
			body = le.AppendUint16(body, uint16(l.size))
			body = le.AppendUint16(body, off)
			body = le.AppendUint32(body, in.dir.parent)
			break
		}
		typ += extended
		body = le.AppendUint32(body, in.nlink)
		body = le.AppendUint32(body, uint32(l.size))
		body = le.AppendUint32(body, uint32(blk))
		body = le.AppendUint32(body, in.dir.parent)
		body = le.AppendUint16(body, uint16(len(l.index)))
		body = le.AppendUint16(body, off)
		body = le.AppendUint32(body, in.xattr)
		for _, ix := range l.index {
			if ix.start > 1<<32-1 {
				return fmt.Errorf("directory table over 4 GiB: %w", ErrLimit)
			}
			body = le.AppendUint32(body, ix.index)
			body = le.AppendUint32(body, uint32(ix.start))
			body = le.AppendUint32(body, uint32(len(ix.name)-1))
			body = append(body, ix.name...)
		}
	case fstree.Regular:
		f := in.file
		if f.dup != nil {
			f = f.dup
		}
		if !hasX && in.nlink == 1 && f.sparse == 0 && f.start <= 1<<32-1 && f.size <= 1<<32-1 {
			body = le.AppendUint32(body, uint32(f.start))
			body = le.AppendUint32(body, f.frag)
			body = le.AppendUint32(body, f.offset)
			body = le.AppendUint32(body, uint32(f.size))
		} else {
			typ += extended
			body = le.AppendUint64(body, f.start)
			body = le.AppendUint64(body, f.size)
			body = le.AppendUint64(body, f.sparse)
			body = le.AppendUint32(body, in.nlink)
			body = le.AppendUint32(body, f.frag)
			body = le.AppendUint32(body, f.offset)
			body = le.AppendUint32(body, in.xattr)
		}
		for _, w := range f.blocks {
			body = le.AppendUint32(body, w)
		}
	case fstree.Symlink:
		body = le.AppendUint32(body, in.nlink)
		body = le.AppendUint32(body, uint32(len(e.Target)))
		body = append(body, e.Target...)
		if hasX {
			typ += extended
			body = le.AppendUint32(body, in.xattr)
		}
	case fstree.CharDev, fstree.BlockDev:
		dev := e.Minor&0xff | e.Major<<8 | (e.Minor&^0xff)<<12
		body = le.AppendUint32(body, in.nlink)
		body = le.AppendUint32(body, dev)
		if hasX {
			typ += extended
			body = le.AppendUint32(body, in.xattr)
		}
	default: // FIFO, socket
		body = le.AppendUint32(body, in.nlink)
		if hasX {
			typ += extended
			body = le.AppendUint32(body, in.xattr)
		}
	}
	b = le.AppendUint16(b, typ)
	b = le.AppendUint16(b, uint16(fstree.PermBits(e.Mode)))
	b = le.AppendUint16(b, in.uid)
	b = le.AppendUint16(b, in.gid)
	b = le.AppendUint32(b, uint32(e.MTime))
	b = le.AppendUint32(b, in.num)
	b = append(b, body...)
	in.ref = t.inodes.ref()
	in.placed = true
	_, err := t.inodes.Write(b)
	return err
}
