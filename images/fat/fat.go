// Package fat writes FAT32 filesystem images from an fstree, in one
// sequential pass: boot sectors, both FATs, then every directory and file
// in cluster order. Files are allocated contiguously in the tree's walk
// order, so the FAT is computed rather than stored and a file's content is
// opened only when its clusters are written.
//
// The output is reproducible by construction: timestamps come from the
// entries' MTime (see fstree.Tree.Reproducible), short names are derived
// deterministically, and the volume serial number is derived from the
// tree's names, metadata and content unless Options.VolumeID sets it.
//
// go-diskfs can also write FAT32, but its output needs three patches
// (a zero volume serial, wrong ".." clusters that fsck.vfat rejects, a
// read-modify-write per file); this writer streams instead.
package fat

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/offset"
)

const (
	sectorSize = 512
	reserved   = 32 // reserved sectors before the first FAT
	numFATs    = 2
	rootClus   = 2
	dirEntSize = 32

	// minClusters is the smallest cluster count of a FAT32 volume; below
	// it, drivers (and fsck.vfat) take the volume for FAT16.
	minClusters = 65525
	// maxClusters keeps cluster numbers below the reserved/bad/EOC range.
	maxClusters = 0x0FFFFFF5 - 2

	eoc = 0x0FFFFFFF

	attrReadOnly = 0x01
	attrVolumeID = 0x08
	attrDir      = 0x10
	attrArchive  = 0x20
	attrLFN      = 0x0F
)

// MinSize is the smallest FAT32 image this package writes: with 512-byte
// clusters, the 65,525 clusters FAT32 requires need a little over 32 MiB.
const MinSize = 33 << 20

// ErrTooSmall is returned (wrapped) when the tree does not fit in the
// requested size.
var ErrTooSmall = errors.New("filesystem too small for its content")

// ErrUnsupported is returned (wrapped) for a tree entry FAT cannot hold:
// a symlink, a device node, a FIFO or a socket, or a name FAT forbids.
var ErrUnsupported = errors.New("not representable on FAT")

// Options configure an image. The zero value makes the smallest volume
// that holds the tree, labelled "NO NAME", with a derived serial number.
type Options struct {
	// Label is the volume label: at most 11 characters, stored upper case.
	Label string
	// Size of the image in bytes, a multiple of 512; 0 picks the smallest
	// size (at least MinSize, rounded up to a MiB) that holds the tree.
	Size int64
	// VolumeID is the volume serial number; 0 derives it from the tree.
	VolumeID uint32
	// HiddenSectors is the LBA of the partition the volume starts at (the
	// BPB records it; firmware that boots from the volume may read it).
	HiddenSectors uint32
	// Sparse says that w already reads as zeros where nothing is written
	// (a freshly truncated file) and is an io.Seeker: the writer seeks
	// over free clusters instead of writing zeros.
	Sparse bool
}

// node is one directory or file of the image with its allocation.
type node struct {
	e        *fstree.Entry
	name     string // last path component
	data     fstree.Content
	size     int64
	isDir    bool
	children []*node
	parent   *node
	short    [11]byte
	lfn      bool
	cluster  uint32 // first cluster, 0 for an empty file
	clusters uint32
	dirBytes int64 // for a directory: bytes of its entries
}

// layout is the geometry of a volume and the allocation of its tree.
type layout struct {
	totalSectors uint32
	spc          uint32 // sectors per cluster
	fatSectors   uint32
	clusters     uint32 // data clusters
	used         uint32 // clusters allocated (from cluster 2)
	order        []*node
	root         *node
}

func (l *layout) clusterSize() int64 { return int64(l.spc) * sectorSize }
func (l *layout) dataStart() int64 {
	return int64(reserved+numFATs*l.fatSectors) * sectorSize
}

// Size returns the image size Write would use for t with opts (opts.Size
// itself when it is set and large enough).
func Size(t *fstree.Tree, opts Options) (int64, error) {
	root, err := buildTree(t, opts.Label)
	if err != nil {
		return 0, err
	}
	l, err := plan(root, opts.Size)
	if err != nil {
		return 0, err
	}
	return int64(l.totalSectors) * sectorSize, nil
}

// Write writes a FAT32 image of t to w: every directory and regular file
// of t (hardlinks become copies; owners and modes are not representable
// and are dropped). It fails with ErrUnsupported on symlinks and special
// files, with ErrTooSmall when opts.Size cannot hold the tree, and with an
// *fstree.SizeError when a file's content is not its Size (it changed
// after the tree was read). With a derived VolumeID every file is read
// before the first byte is written, so a file that changed before Write
// was called fails it before w is touched.
func Write(w io.Writer, t *fstree.Tree, opts Options) error {
	label, err := volumeLabel(opts.Label)
	if err != nil {
		return err
	}
	root, err := buildTree(t, opts.Label)
	if err != nil {
		return err
	}
	l, err := plan(root, opts.Size)
	if err != nil {
		return err
	}
	id := opts.VolumeID
	if id == 0 {
		if id, err = deriveID(l, label); err != nil {
			return err
		}
	}
	cw := offset.NewWriter(w)
	if err := writeHeader(cw, l, label, id, opts.HiddenSectors); err != nil {
		return err
	}
	for range numFATs {
		if err := writeFAT(cw, l); err != nil {
			return err
		}
	}
	if err := writeData(cw, l, label); err != nil {
		return err
	}
	free := int64(l.totalSectors)*sectorSize - cw.N
	if opts.Sparse {
		if err := cw.Hole(free); err != nil {
			return fmt.Errorf("fat: skip free space: %w", err)
		}
		return nil
	}
	return cw.Zeros(free)
}

// buildTree turns the fstree into nodes with FAT names, checking that
// every entry is representable.
func buildTree(t *fstree.Tree, label string) (*node, error) {
	if _, err := volumeLabel(label); err != nil {
		return nil, err
	}
	nodes := map[string]*node{}
	var root *node
	for _, e := range t.Walk() {
		n := &node{e: e, name: lastElem(e.Path)}
		switch e.Type {
		case fstree.Dir:
			n.isDir = true
		case fstree.Regular:
			n.size, n.data = e.Size, e.Data
			if e.LinkTo != "" {
				target := t.Get(e.LinkTo)
				if target == nil || target.Type != fstree.Regular {
					return nil, fmt.Errorf("fat: %s: hardlink to missing file %s", e.Path, e.LinkTo)
				}
				n.size, n.data = target.Size, target.Data
			}
			if n.size > 0xFFFFFFFF {
				return nil, fmt.Errorf("fat: %s: %d bytes exceeds FAT's 4 GiB file limit: %w", e.Path, n.size, ErrUnsupported)
			}
		default:
			return nil, fmt.Errorf("fat: %s: a %s: %w", e.Path, e.Type, ErrUnsupported)
		}
		if e.Path == "." {
			root = n
			nodes["."] = n
			continue
		}
		if err := checkName(n.name); err != nil {
			return nil, fmt.Errorf("fat: %s: %w", e.Path, err)
		}
		parent := nodes[parentPath(e.Path)]
		if parent == nil || !parent.isDir {
			return nil, fmt.Errorf("fat: %s: parent is not a directory", e.Path)
		}
		n.parent = parent
		parent.children = append(parent.children, n)
		nodes[e.Path] = n
	}
	var walk func(d *node) error
	walk = func(d *node) error {
		if err := assignShortNames(d); err != nil {
			return err
		}
		entries := int64(0)
		if d != root {
			entries += 2 // "." and ".."
		} else if label != "" {
			entries++ // the volume label entry
		}
		for _, c := range d.children {
			entries += 1 + int64(lfnCount(c))
			if c.isDir {
				if err := walk(c); err != nil {
					return err
				}
			}
		}
		d.dirBytes = entries * dirEntSize
		return nil
	}
	if err := walk(root); err != nil {
		return nil, err
	}
	return root, nil
}

func lastElem(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

func parentPath(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return "."
}

// plan picks the geometry for size (0: the smallest that fits) and
// allocates clusters in walk order, the root directory first.
func plan(root *node, size int64) (*layout, error) {
	fixed := size != 0
	if !fixed {
		size = MinSize
	}
	for {
		if size%sectorSize != 0 {
			return nil, fmt.Errorf("fat: size %d is not a multiple of %d", size, sectorSize)
		}
		if size < MinSize {
			return nil, fmt.Errorf("fat: size %d is below the FAT32 minimum %d: %w", size, MinSize, ErrTooSmall)
		}
		l, ok := geometry(size)
		if ok {
			if err := allocate(l, root); err == nil {
				return l, nil
			} else if fixed {
				return nil, err
			}
		} else if fixed {
			return nil, fmt.Errorf("fat: size %d gives no valid FAT32 geometry: %w", size, ErrTooSmall)
		}
		// Grow by an eighth, in whole MiB, until the tree fits.
		size = (size + size/8 + 1<<20 - 1) &^ (1<<20 - 1)
	}
}

// geometry picks the largest cluster (up to 4 KiB) that still leaves the
// 65,525 clusters FAT32 needs, and sizes the FATs for it.
func geometry(size int64) (*layout, bool) {
	sectors := size / sectorSize
	if sectors > 0xFFFFFFFF {
		return nil, false
	}
	for spc := uint32(8); spc >= 1; spc /= 2 {
		l := &layout{totalSectors: uint32(sectors), spc: spc}
		fat := uint32(1)
		for {
			data := int64(sectors) - reserved - numFATs*int64(fat)
			if data <= 0 {
				break
			}
			clusters := uint32(data / int64(spc))
			need := uint32((int64(clusters)+2)*4+sectorSize-1) / sectorSize
			if need <= fat {
				l.fatSectors, l.clusters = fat, clusters
				break
			}
			fat = need
		}
		if l.clusters >= minClusters && l.clusters <= maxClusters {
			return l, true
		}
	}
	return nil, false
}

// allocate gives every directory and non-empty file a contiguous run of
// clusters, in walk order.
func allocate(l *layout, root *node) error {
	l.order = l.order[:0]
	l.root = root
	next := uint32(rootClus)
	cs := l.clusterSize()
	var walk func(n *node) error
	walk = func(n *node) error {
		bytes := n.size
		if n.isDir {
			bytes = max(n.dirBytes, 1)
		}
		n.clusters = uint32((bytes + cs - 1) / cs)
		n.cluster = 0
		if n.clusters > 0 {
			if uint64(next-rootClus)+uint64(n.clusters) > uint64(l.clusters) {
				return fmt.Errorf("fat: %s does not fit in %d clusters of %d bytes: %w", n.e.Path, l.clusters, cs, ErrTooSmall)
			}
			n.cluster = next
			next += n.clusters
			l.order = append(l.order, n)
		}
		for _, c := range n.children {
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root); err != nil {
		return err
	}
	l.used = next - rootClus
	return nil
}

// deriveID hashes the label, every path with its size and time, and every
// file's content into a serial number: the same tree gives the same ID.
func deriveID(l *layout, label [11]byte) (uint32, error) {
	h := sha256.New()
	h.Write(label[:])
	buf := make([]byte, 32<<10)
	for _, n := range l.order {
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%t\x00", n.e.Path, n.size, n.e.MTime, n.isDir)
		if n.isDir || n.size == 0 {
			continue
		}
		if err := fstree.CopyContent(h, n.e.Path, n.data, n.size, buf); err != nil {
			return 0, fmt.Errorf("fat: %w", err)
		}
	}
	fmt.Fprintf(h, "%d", l.totalSectors)
	return binary.LittleEndian.Uint32(h.Sum(nil)), nil
}

// writeHeader writes the reserved region: boot sector, FSInfo, their
// backups at sectors 6 and 7, and zeros up to the first FAT.
func writeHeader(w io.Writer, l *layout, label [11]byte, id, hidden uint32) error {
	bs := make([]byte, sectorSize)
	copy(bs[0:], []byte{0xEB, 0x58, 0x90})
	copy(bs[3:11], "MSWIN4.1")
	le := binary.LittleEndian
	le.PutUint16(bs[11:], sectorSize)
	bs[13] = byte(l.spc)
	le.PutUint16(bs[14:], reserved)
	bs[16] = numFATs
	bs[21] = 0xF8 // fixed media
	le.PutUint16(bs[24:], 63)
	le.PutUint16(bs[26:], 255)
	le.PutUint32(bs[28:], hidden)
	le.PutUint32(bs[32:], l.totalSectors)
	le.PutUint32(bs[36:], l.fatSectors)
	le.PutUint32(bs[44:], rootClus)
	le.PutUint16(bs[48:], 1) // FSInfo sector
	le.PutUint16(bs[50:], 6) // backup boot sector
	bs[64] = 0x80
	bs[66] = 0x29
	le.PutUint32(bs[67:], id)
	copy(bs[71:82], label[:])
	copy(bs[82:90], "FAT32   ")
	// Boot code: print nothing and halt, for a BIOS that tries it.
	copy(bs[90:], []byte{0xFA, 0xF4, 0xEB, 0xFD}) // cli; hlt; jmp $-1
	bs[510], bs[511] = 0x55, 0xAA

	fsi := make([]byte, sectorSize)
	le.PutUint32(fsi[0:], 0x41615252)
	le.PutUint32(fsi[484:], 0x61417272)
	le.PutUint32(fsi[488:], l.clusters-l.used)
	le.PutUint32(fsi[492:], rootClus+l.used)
	le.PutUint32(fsi[508:], 0xAA550000)

	region := make([]byte, reserved*sectorSize)
	copy(region[0:], bs)
	copy(region[1*sectorSize:], fsi)
	copy(region[6*sectorSize:], bs)
	copy(region[7*sectorSize:], fsi)
	_, err := w.Write(region)
	return err
}

// writeFAT writes one FAT: the two reserved entries, a contiguous chain
// for every allocated node, and zeros (free) for the rest.
func writeFAT(w *offset.Writer, l *layout) error {
	const chunk = 16 << 10
	buf := make([]byte, 0, chunk)
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	put := func(v uint32) error {
		buf = binary.LittleEndian.AppendUint32(buf, v)
		if len(buf) == chunk {
			return flush()
		}
		return nil
	}
	if err := put(0x0FFFFF00 | 0xF8); err != nil {
		return err
	}
	if err := put(eoc); err != nil {
		return err
	}
	for _, n := range l.order {
		for i := uint32(0); i < n.clusters; i++ {
			v := n.cluster + i + 1
			if i == n.clusters-1 {
				v = eoc
			}
			if err := put(v); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	written := int64(2+l.used) * 4
	return w.Zeros(int64(l.fatSectors)*sectorSize - written)
}

// writeData writes every allocated node's clusters in order.
func writeData(w *offset.Writer, l *layout, label [11]byte) error {
	cs := l.clusterSize()
	buf := make([]byte, 256<<10)
	for _, n := range l.order {
		start := w.N
		if n.isDir {
			if _, err := w.Write(dirBytes(n, n == l.root, label)); err != nil {
				return err
			}
		} else if err := fstree.CopyContent(w, n.e.Path, n.data, n.size, buf); err != nil {
			return fmt.Errorf("fat: %w", err)
		}
		if err := w.PadTo(start + int64(n.clusters)*cs); err != nil {
			return fmt.Errorf("fat: %s: %w", n.e.Path, err)
		}
	}
	return nil
}

// dirBytes renders a directory's entries: "." and ".." (or the volume
// label in the root), then each child's long-name entries and short entry.
func dirBytes(d *node, isRoot bool, label [11]byte) []byte {
	out := make([]byte, 0, d.dirBytes)
	if isRoot {
		if label != noLabel {
			out = appendShort(out, label, attrVolumeID, 0, 0, d.e.MTime)
		}
	} else {
		dot := [11]byte{'.', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '}
		out = appendShort(out, dot, attrDir, d.cluster, 0, d.e.MTime)
		dotdot := dot
		dotdot[1] = '.'
		// ".." of a directory in the root points at cluster 0, not at the
		// root's cluster: that is what fsck.vfat checks.
		pc := d.parent.cluster
		if d.parent.parent == nil {
			pc = 0
		}
		out = appendShort(out, dotdot, attrDir, pc, 0, d.parent.e.MTime)
	}
	for _, c := range d.children {
		if c.lfn {
			out = appendLFN(out, c.name, checksum(c.short))
		}
		attr := byte(attrArchive)
		if c.isDir {
			attr = attrDir
		}
		out = appendShort(out, c.short, attr, c.cluster, uint32(c.size), c.e.MTime)
	}
	return out
}

func appendShort(out []byte, name [11]byte, attr byte, cluster, size uint32, mtime int64) []byte {
	var e [dirEntSize]byte
	copy(e[0:11], name[:])
	e[11] = attr
	t, d := dosTime(mtime)
	le := binary.LittleEndian
	if attr != attrVolumeID {
		le.PutUint16(e[14:], t)
		le.PutUint16(e[16:], d)
		le.PutUint16(e[18:], d)
		le.PutUint16(e[20:], uint16(cluster>>16))
	}
	le.PutUint16(e[22:], t)
	le.PutUint16(e[24:], d)
	le.PutUint16(e[26:], uint16(cluster))
	le.PutUint32(e[28:], size)
	return append(out, e[:]...)
}

// appendLFN appends the long-name entries of name, last part first.
func appendLFN(out []byte, name string, sum byte) []byte {
	u := utf16.Encode([]rune(name))
	n := (len(u) + 12) / 13
	padded := make([]uint16, n*13)
	for i := range padded {
		switch {
		case i < len(u):
			padded[i] = u[i]
		case i == len(u):
			padded[i] = 0
		default:
			padded[i] = 0xFFFF
		}
	}
	le := binary.LittleEndian
	for seq := n; seq >= 1; seq-- {
		var e [dirEntSize]byte
		e[0] = byte(seq)
		if seq == n {
			e[0] |= 0x40
		}
		e[11] = attrLFN
		e[13] = sum
		part := padded[(seq-1)*13 : seq*13]
		for i := 0; i < 5; i++ {
			le.PutUint16(e[1+2*i:], part[i])
		}
		for i := 0; i < 6; i++ {
			le.PutUint16(e[14+2*i:], part[5+i])
		}
		for i := 0; i < 2; i++ {
			le.PutUint16(e[28+2*i:], part[11+i])
		}
		out = append(out, e[:]...)
	}
	return out
}

func lfnCount(n *node) int {
	if !n.lfn {
		return 0
	}
	return (len(utf16.Encode([]rune(n.name))) + 12) / 13
}

func checksum(name [11]byte) byte {
	var sum byte
	for _, c := range name {
		sum = (sum&1)<<7 + sum>>1 + c
	}
	return sum
}

// dosTime converts seconds since the epoch (UTC) to FAT's time and date,
// clamped to FAT's range 1980–2107.
func dosTime(sec int64) (uint16, uint16) {
	t := time.Unix(sec, 0).UTC()
	if t.Year() < 1980 {
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if t.Year() > 2107 {
		t = time.Date(2107, 12, 31, 23, 59, 58, 0, time.UTC)
	}
	tm := uint16(t.Hour()<<11 | t.Minute()<<5 | t.Second()/2)
	dt := uint16((t.Year()-1980)<<9 | int(t.Month())<<5 | t.Day())
	return tm, dt
}
