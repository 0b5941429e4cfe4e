// Package squashfs writes an fstree.Tree as a squashfs 4.0 image, the
// read-only filesystem the Linux kernel mounts as a machine's root.
//
// The writer streams: file contents are opened one at a time as their data
// is written, compressed in parallel in fixed-size blocks, and only the
// metadata tables (inodes, directories, ids, xattrs) are held in memory
// until the end. It keeps what a root filesystem needs: owners (a uid/gid id
// table), full modes with setuid, setgid and sticky bits, symlinks,
// hardlinks (one inode, the real link count), device nodes, FIFOs, sockets
// and extended attributes in the user., trusted. and security. namespaces.
// Small files and the tails of large ones are packed into fragment blocks,
// identical files are stored once, all-zero blocks are stored as holes, and
// large directories carry an index so lookups skip straight to the right
// metadata block.
//
// The output depends only on the tree and the Options: inode numbers follow
// the tree's Walk order, every block is compressed on its own, and the
// superblock's time comes from Options.MkfsTime. The same tree written twice,
// with any number of workers, gives the same bytes.
package squashfs

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/offset"
)

// Compression names a squashfs compressor.
type Compression uint16

// Compressors the writer supports, with squashfs's numeric ids.
const (
	// Zstd (id 6) is the default: fast, and read by every kernel since 4.14.
	Zstd Compression = 6
	// Gzip (id 1) is zlib-wrapped deflate, readable by any kernel.
	Gzip Compression = 1
)

func (c Compression) String() string {
	switch c {
	case Zstd:
		return "zstd"
	case Gzip:
		return "gzip"
	}
	return fmt.Sprintf("compression(%d)", uint16(c))
}

// Defaults filled in by Options' zero values.
const (
	DefaultBlockSize = 128 << 10
	DefaultZstdLevel = 3
	DefaultGzipLevel = 9
)

// Options tune the image. The zero value writes zstd level 3 with 128 KiB
// blocks, fragments and de-duplication, no export table, and a superblock
// time of 0 (the epoch).
type Options struct {
	// Compression defaults to Zstd.
	Compression Compression
	// Level is the compressor's level: zstd 1-22 (default 3, mapped onto
	// klauspost/compress's nearest speed), gzip 1-9 (default 9, as mksquashfs).
	// On a Debian root, zstd level 1 takes about two thirds of level 3's
	// CPU time for about 3% more output (see docs/benchmarks.md).
	Level int
	// BlockSize is the data block size, a power of two from 4 KiB to 1 MiB
	// (default 128 KiB).
	BlockSize int
	// MkfsTime is the superblock's creation time in seconds since the
	// epoch. Entry mtimes come from the tree (see fstree.Tree.Reproducible).
	MkfsTime int64
	// Exportable adds the export table (inode number to inode), which NFS
	// needs to export the filesystem.
	Exportable bool
	// Workers compress blocks in parallel; default GOMAXPROCS. The output
	// does not depend on it.
	Workers int
}

// ErrLimit is wrapped by errors about entries or trees that do not fit the
// format (a name over 256 bytes, a device major over 4095, more than 65535
// distinct owners, ...).
var ErrLimit = errors.New("beyond squashfs's limits")

// ErrContent is wrapped by errors about a regular file whose content does
// not match the tree (no Data, or a different size than Entry.Size: then
// the error also holds an *fstree.SizeError).
var ErrContent = errors.New("file content does not match the tree")

const (
	magic         = 0x73717368
	superSize     = 96
	metaSize      = 8192
	invalid64     = ^uint64(0)
	noFragment    = ^uint32(0)
	noXattr       = ^uint32(0)
	dataRawFlag   = 1 << 24
	metaRawFlag   = 0x8000
	maxNameLen    = 255  // the format allows 256, Linux's NAME_MAX is 255
	maxTargetLen  = 4096 // the kernel refuses longer symlinks (PAGE_SIZE)
	maxIDs        = 65535
	maxDirEntries = 256 // per directory header
	imagePadding  = 4096

	flagDuplicates      = 0x0040
	flagAlwaysFragments = 0x0020
	flagExportable      = 0x0080
	flagNoXattrs        = 0x0200
)

func (o Options) withDefaults() (Options, error) {
	if o.Compression == 0 {
		o.Compression = Zstd
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	switch o.Compression {
	case Zstd:
		if o.Level == 0 {
			o.Level = DefaultZstdLevel
		}
		if o.Level < 1 || o.Level > 22 {
			return o, fmt.Errorf("zstd level %d: want 1 to 22", o.Level)
		}
	case Gzip:
		if o.Level == 0 {
			o.Level = DefaultGzipLevel
		}
		if o.Level < 1 || o.Level > 9 {
			return o, fmt.Errorf("gzip level %d: want 1 to 9", o.Level)
		}
	default:
		return o, fmt.Errorf("unsupported compression %v", o.Compression)
	}
	if o.BlockSize < 4096 || o.BlockSize > 1<<20 || o.BlockSize&(o.BlockSize-1) != 0 {
		return o, fmt.Errorf("block size %d: want a power of two from 4096 to 1048576", o.BlockSize)
	}
	if o.MkfsTime < 0 || o.MkfsTime > 1<<32-1 {
		return o, fmt.Errorf("mkfs time %d: %w (an unsigned 32-bit time)", o.MkfsTime, ErrLimit)
	}
	return o, nil
}

// Write writes t as a squashfs image to w, starting at w's current
// position, and returns the image's size: the filesystem padded to a
// multiple of 4 KiB, as block devices want. It seeks back once at the end
// to fill in the superblock, then leaves w's position at the image's end.
// To write into a partition of a larger disk image, pass an
// io.NewOffsetWriter of the disk file.
//
// Entries are checked before anything is written: an entry beyond the
// format's limits fails with an error wrapping ErrLimit. A file whose
// content turns out to differ from its Size fails with ErrContent and an
// *fstree.SizeError, and an
// error while reading or writing leaves a partial image behind: write to a
// temporary file and rename it, or discard the partition, on error.
func Write(w io.WriteSeeker, t *fstree.Tree, opts Options) (int64, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	base, err := w.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	b, err := plan(t, opts)
	if err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	out := offset.NewWriter(bw)
	if _, err := out.Write(make([]byte, superSize)); err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	if err := b.writeData(out); err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	sb, err := b.writeTables(out)
	if err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	sb.bytesUsed = uint64(out.N)
	if err := out.Zeros((imagePadding - out.N%imagePadding) % imagePadding); err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	if _, err := w.Seek(base, io.SeekStart); err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	if _, err := w.Write(sb.marshal()); err != nil {
		return 0, fmt.Errorf("squashfs: superblock: %w", err)
	}
	if _, err := w.Seek(base+out.N, io.SeekStart); err != nil {
		return 0, fmt.Errorf("squashfs: %w", err)
	}
	return out.N, nil
}

type superblock struct {
	inodes, mkfsTime, blockSize, fragments uint32
	compression, blockLog, flags, ids      uint16
	rootInode, bytesUsed                   uint64
	idTable, xattrTable, inodeTable        uint64
	dirTable, fragmentTable, exportTable   uint64
}

func (s *superblock) marshal() []byte {
	b := make([]byte, 0, superSize)
	le := binary.LittleEndian
	b = le.AppendUint32(b, magic)
	b = le.AppendUint32(b, s.inodes)
	b = le.AppendUint32(b, s.mkfsTime)
	b = le.AppendUint32(b, s.blockSize)
	b = le.AppendUint32(b, s.fragments)
	b = le.AppendUint16(b, s.compression)
	b = le.AppendUint16(b, s.blockLog)
	b = le.AppendUint16(b, s.flags)
	b = le.AppendUint16(b, s.ids)
	b = le.AppendUint16(b, 4) // major
	b = le.AppendUint16(b, 0) // minor
	for _, v := range []uint64{s.rootInode, s.bytesUsed, s.idTable, s.xattrTable,
		s.inodeTable, s.dirTable, s.fragmentTable, s.exportTable} {
		b = le.AppendUint64(b, v)
	}
	return b
}
