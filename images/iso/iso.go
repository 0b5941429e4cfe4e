// Package iso writes a bootable ISO 9660 image in one sequential pass:
// volume descriptors, an El Torito boot catalog, path tables, directories,
// then file data, with an EFI system image (a FAT32 volume built on the fly
// by images/fat from an ESP tree) as the El Torito no-emulation boot entry
// for UEFI and, optionally, a BIOS boot loader (ISOLINUX's isolinux.bin,
// patched with its boot information table) as the entry for BIOS. The
// system area holds an MBR whose one partition (type 0xEF) is that same
// EFI image, so the file also boots when written to a USB stick under UEFI
// ("isohybrid" for UEFI; BIOS boots it as a CD only).
//
// Names follow ISO 9660 level 2 without Rock Ridge or Joliet: upper case
// d-characters ("ROOT.SQUASHFS;1"), which Linux's isofs shows in lower case
// ("root.squashfs"). Owners, modes, symlinks and devices have no place on
// the medium: the root filesystem travels inside as a squashfs file.
//
// The image is reproducible: every date is Options.Epoch, entries are
// sorted, and nothing depends on the build host. go-diskfs's ISO writer
// was not used: it copies every file into a workspace first, stamps the
// volume with time.Now(), records host ctimes in Rock Ridge and ignores
// write errors.
package iso

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/images/fat"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/offset"
)

const (
	sector       = 2048
	firstDataLBA = 16
	pvdLBA       = 16
	bootLBA      = 17
	termLBA      = 18
	catalogLBA   = 19
	pathLLBA     = 20
	maxDepth     = 8
	// maxExtents bounds the directory records of one file (4 TiB).
	maxExtents = 1024
)

// maxExtent is the most one directory record describes: a file larger than
// this is stored as several records of contiguous extents, all but the
// last flagged multi-extent (ECMA-119 9.1.6), as Linux's isofs and xorriso
// read them. A variable so that tests can make small files multi-extent.
var maxExtent int64 = 0xFFFFF800 // 4 GiB less one sector

// extents is the number of directory records of a file of size bytes.
func extents(size int64) int {
	if size <= maxExtent {
		return 1
	}
	return int((size + maxExtent - 1) / maxExtent)
}

// EFIImagePath is where the EFI system image appears in the ISO's tree
// (as /efi/efiboot.img on Linux).
const EFIImagePath = "EFI/EFIBOOT.IMG"

// ErrUnsupported is returned (wrapped) for a tree the format cannot hold:
// a symlink or special file, a file over 4 TiB, a name that collides
// with another once mapped to ISO 9660, a path deeper than 8 levels.
var ErrUnsupported = errors.New("not representable in ISO 9660")

// Options configure an image.
type Options struct {
	// VolumeID is the volume label (blkid's LABEL): at most 32 characters
	// of A–Z, 0–9 and '_'; "" means "BELLBUILD".
	VolumeID string
	// Epoch is every date in the image (SOURCE_DATE_EPOCH).
	Epoch int64
	// ESP is the content of the EFI system image the firmware boots
	// (EFI/BOOT/BOOTX64.EFI and whatever it loads); nil makes a
	// non-bootable ISO.
	ESP *fstree.Tree
	// BIOS, when set, is the path in the tree of a no-emulation boot
	// image for BIOS firmware (e.g. "isolinux/isolinux.bin"). It becomes
	// the catalog's default entry, ahead of the EFI one, and its bytes 8
	// to 63 are overwritten with the El Torito boot information table
	// (where the volume descriptor and the file are, and a checksum), as
	// ISOLINUX expects. Its content is read into memory: at most 1 MiB.
	BIOS string
}

// maxBIOSImage bounds Options.BIOS's file (isolinux.bin is 38 KiB).
const maxBIOSImage = 1 << 20

// node is a directory or a file of the ISO.
type node struct {
	path     string // fstree path, for messages
	id       string // ISO identifier ("NAME.EXT;1" or "DIR")
	isDir    bool
	size     int64
	data     fstree.Content
	efi      bool // the EFI system image, written by fat.Write
	bios     bool // the BIOS boot image, patched with the boot info table
	lba      uint32
	children []*node
	parent   *node
	num      int // directory number in the path table (1 = root)
	dirSize  int64
}

// layout is the whole image, planned before the first byte is written.
type layout struct {
	root      *node
	dirs      []*node // path-table order
	files     []*node // data order
	pathSize  int     // bytes of one path table
	pathSecs  uint32
	total     uint32 // sectors
	efi       *node
	bios      *node
	volumeID  string
	espOpts   fat.Options
	espTree   *fstree.Tree
	epochTime time.Time
}

// Write writes an ISO 9660 image of files (directories and regular files)
// plus, when opts.ESP is set, the EFI system image at EFIImagePath, to w.
// A file whose content is not its Size (it changed after the tree was
// read) fails the write with an *fstree.SizeError.
func Write(w io.Writer, files *fstree.Tree, opts Options) error {
	l, err := plan(files, opts)
	if err != nil {
		return err
	}
	cw := offset.NewWriter(w)
	steps := []func(*offset.Writer, *layout) error{
		writeSystemArea, writeVolumeDescriptors, writeCatalog, writePathTables, writeDirs, writeFiles,
	}
	for _, step := range steps {
		if err := step(cw, l); err != nil {
			return err
		}
	}
	if cw.N != int64(l.total)*sector {
		return fmt.Errorf("iso: wrote %d bytes, planned %d", cw.N, int64(l.total)*sector)
	}
	return nil
}

// Size returns the size in bytes of the image Write would write.
func Size(files *fstree.Tree, opts Options) (int64, error) {
	l, err := plan(files, opts)
	if err != nil {
		return 0, err
	}
	return int64(l.total) * sector, nil
}

func plan(files *fstree.Tree, opts Options) (*layout, error) {
	vol := opts.VolumeID
	if vol == "" {
		vol = "BELLBUILD"
	}
	if len(vol) > 32 || strings.TrimFunc(vol, dChar) != "" {
		return nil, fmt.Errorf("iso: volume ID %q: want at most 32 of A-Z 0-9 _: %w", vol, ErrUnsupported)
	}
	l := &layout{volumeID: vol, epochTime: time.Unix(opts.Epoch, 0).UTC()}
	if files == nil {
		files = fstree.New()
	}
	tree := files
	if opts.ESP != nil {
		l.espTree = opts.ESP
		l.espOpts = fat.Options{Label: "EFIBOOT"}
		size, err := fat.Size(opts.ESP, l.espOpts)
		if err != nil {
			return nil, fmt.Errorf("iso: EFI image: %w", err)
		}
		l.espOpts.Size = size
		// Copy the tree's entries into a new tree with the EFI image added.
		tree = fstree.New()
		tree.Merge(files)
		if tree.Get(EFIImagePath) != nil {
			return nil, fmt.Errorf("iso: %s is reserved for the EFI image: %w", EFIImagePath, ErrUnsupported)
		}
		tree.Add(fstree.Entry{Path: EFIImagePath, Type: fstree.Regular, Mode: 0o444, Size: size})
	}
	nodes := map[string]*node{}
	for _, e := range tree.Walk() {
		n := &node{path: e.Path}
		switch e.Type {
		case fstree.Dir:
			n.isDir = true
		case fstree.Regular:
			n.size, n.data = e.Size, e.Data
			if e.LinkTo != "" {
				target := tree.Get(e.LinkTo)
				if target == nil || target.Type != fstree.Regular {
					return nil, fmt.Errorf("iso: %s: hardlink to missing file %s", e.Path, e.LinkTo)
				}
				n.size, n.data = target.Size, target.Data
			}
			if extents(n.size) > maxExtents {
				return nil, fmt.Errorf("iso: %s: %d bytes is more than %d extents hold: %w", e.Path, n.size, maxExtents, ErrUnsupported)
			}
			n.efi = opts.ESP != nil && e.Path == EFIImagePath
		default:
			return nil, fmt.Errorf("iso: %s: a %s: %w", e.Path, e.Type, ErrUnsupported)
		}
		if e.Path == "." {
			l.root, nodes["."], n.num = n, n, 1
			continue
		}
		if n.isDir && strings.Count(e.Path, "/")+2 > maxDepth {
			return nil, fmt.Errorf("iso: %s: deeper than %d directories: %w", e.Path, maxDepth, ErrUnsupported)
		}
		id, err := identifier(e.Path[strings.LastIndexByte(e.Path, '/')+1:], n.isDir)
		if err != nil {
			return nil, fmt.Errorf("iso: %s: %w", e.Path, err)
		}
		n.id = id
		parent := nodes[parentPath(e.Path)]
		n.parent = parent
		parent.children = append(parent.children, n)
		nodes[e.Path] = n
		if n.efi {
			l.efi = n
		}
		if opts.BIOS != "" && e.Path == fstree.Clean(opts.BIOS) {
			n.bios, l.bios = true, n
		}
	}
	if opts.BIOS != "" {
		switch {
		case l.bios == nil:
			return nil, fmt.Errorf("iso: BIOS boot image %s: not a file of the tree: %w", opts.BIOS, ErrUnsupported)
		case l.efi == nil:
			return nil, fmt.Errorf("iso: BIOS boot image %s: needs the EFI image too (Options.ESP): %w", opts.BIOS, ErrUnsupported)
		case l.bios.size < 64 || l.bios.size > maxBIOSImage:
			return nil, fmt.Errorf("iso: BIOS boot image %s: %d bytes, want 64 to %d: %w", opts.BIOS, l.bios.size, maxBIOSImage, ErrUnsupported)
		}
	}

	// Directories in path-table order: level by level, each level by
	// parent number, then by identifier.
	level := []*node{l.root}
	for len(level) > 0 {
		var next []*node
		for _, d := range level {
			sort.Slice(d.children, func(i, j int) bool { return lessID(d.children[i].id, d.children[j].id) })
			for i := 1; i < len(d.children); i++ {
				if d.children[i].id == d.children[i-1].id {
					return nil, fmt.Errorf("iso: %s and %s are both %s in ISO 9660: %w", d.children[i-1].path, d.children[i].path, d.children[i].id, ErrUnsupported)
				}
			}
			l.dirs = append(l.dirs, d)
			d.num = len(l.dirs)
			for _, c := range d.children {
				if c.isDir {
					next = append(next, c)
				}
			}
		}
		level = next
	}
	for _, d := range l.dirs {
		l.pathSize += pathEntryLen(d)
	}
	l.pathSecs = uint32((l.pathSize + sector - 1) / sector)

	// Extents: directories after the two path tables, then file data in
	// directory order.
	lba := pathLLBA + 2*l.pathSecs
	for _, d := range l.dirs {
		d.dirSize = dirExtentSize(d)
		d.lba = lba
		lba += uint32(d.dirSize / sector)
	}
	for _, d := range l.dirs {
		for _, c := range d.children {
			if c.isDir || c.size == 0 {
				continue
			}
			c.lba = lba
			lba += uint32((c.size + sector - 1) / sector)
			l.files = append(l.files, c)
		}
	}
	l.total = lba
	return l, nil
}

func parentPath(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return "."
}

func dChar(r rune) bool { return r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' }

// identifier maps a name to its ISO 9660 level 2 identifier: upper case,
// characters outside A–Z 0–9 _ replaced by '_'; a file keeps its last dot
// and gets the version ";1".
func identifier(name string, isDir bool) (string, error) {
	mapChars := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' {
				r -= 'a' - 'A'
			}
			if !dChar(r) {
				return '_'
			}
			return r
		}, s)
	}
	if isDir {
		id := mapChars(name)
		if len(id) > 31 {
			return "", fmt.Errorf("directory name longer than 31 characters: %w", ErrUnsupported)
		}
		return id, nil
	}
	base, ext := name, ""
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		base, ext = name[:i], name[i+1:]
	}
	base, ext = mapChars(base), mapChars(ext)
	if len(base)+len(ext) > 30 {
		return "", fmt.Errorf("file name longer than 30 characters: %w", ErrUnsupported)
	}
	return base + "." + ext + ";1", nil
}

// lessID orders identifiers as ECMA-119 9.3 asks: by name, then by
// extension, each padded with spaces.
func lessID(a, b string) bool {
	an, ae, _ := strings.Cut(strings.TrimSuffix(a, ";1"), ".")
	bn, be, _ := strings.Cut(strings.TrimSuffix(b, ";1"), ".")
	if c := comparePadded(an, bn); c != 0 {
		return c < 0
	}
	return comparePadded(ae, be) < 0
}

func comparePadded(a, b string) int {
	n := max(len(a), len(b))
	a += strings.Repeat(" ", n-len(a))
	b += strings.Repeat(" ", n-len(b))
	return strings.Compare(a, b)
}

func recordLen(idLen int) int { return 33 + idLen + (idLen+1)%2 }

func pathEntryLen(d *node) int {
	idLen := max(len(d.id), 1)
	return 8 + idLen + idLen%2
}

// dirExtentSize is the sectors a directory's records take (a record never
// crosses a sector boundary), in bytes.
func dirExtentSize(d *node) int64 {
	sectors, used := int64(1), 0
	add := func(n int) {
		if used+n > sector {
			sectors++
			used = 0
		}
		used += n
	}
	add(recordLen(1)) // "."
	add(recordLen(1)) // ".."
	for _, c := range d.children {
		for range extents(c.size) {
			add(recordLen(len(c.id)))
		}
	}
	return sectors * sector
}

// Both-endian fields (ECMA-119 7.2.3, 7.3.3).
func both16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

func both32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func padded(b []byte, s string) {
	n := copy(b, s)
	for i := n; i < len(b); i++ {
		b[i] = ' '
	}
}
