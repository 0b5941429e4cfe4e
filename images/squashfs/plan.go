package squashfs

import (
	"bytes"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/images/fstree"
)

// inode is one squashfs inode: an entry, or a hardlink group sharing one.
type inode struct {
	e      *fstree.Entry // metadata (and content) source
	num    uint32        // inode number, from 1, in Walk order
	nlink  uint32
	uid    uint16 // index into the id table
	gid    uint16
	xattr  uint32 // index into the xattr id table, or noXattr
	file   *fileData
	dir    *dirData
	ref    uint64 // inode reference, once written
	placed bool
}

// dirent is one name in a directory.
type dirent struct {
	name string
	in   *inode
}

// dirData is a directory's names, sorted as the tree sorts them (byte
// order, which the kernel's lookup relies on), and its parent's number.
type dirData struct {
	children []dirent
	parent   uint32
}

// fileData is where a regular file's bytes ended up. Duplicates share one.
type fileData struct {
	e      *fstree.Entry
	size   uint64
	start  uint64    // absolute offset of the first block, relative to the image
	blocks []uint32  // on-disk size words of the full-size blocks; the tail is in a fragment
	frag   uint32    // fragment block index, or noFragment
	offset uint32    // offset of the tail in the fragment block
	sparse uint64    // bytes saved by all-zero blocks
	dup    *fileData // an earlier file with the same content, stored instead
}

// xattrSet is one distinct set of extended attributes; inodes with equal
// sets share it.
type xattrSet struct {
	kv    []byte // key/value entries, encoded
	count uint32
}

// builder holds what one Write learns about the tree: inodes in number
// order, files in data order, the id table, the xattr sets and, once the
// data is written, the fragment blocks.
type builder struct {
	opts   Options
	root   *inode
	inodes []*inode // by number - 1
	files  []*fileData
	ids    []uint32
	xsets  []xattrSet
	frags  []fragEntry
}

// fragEntry is a fragment block's position and on-disk size word.
type fragEntry struct {
	start uint64
	size  uint32
}

// plan turns the tree into inodes, directory listings, the id table and the
// xattr sets, checking every entry against the format's limits.
func plan(t *fstree.Tree, o Options) (*builder, error) {
	b := &builder{opts: o}
	idIndex := map[uint32]uint16{}
	id := func(v uint32, p string) (uint16, error) {
		if i, ok := idIndex[v]; ok {
			return i, nil
		}
		if len(b.ids) == maxIDs {
			return 0, fmt.Errorf("%s: owner %d: more than %d distinct uids and gids: %w", p, v, maxIDs, ErrLimit)
		}
		i := uint16(len(b.ids))
		idIndex[v] = i
		b.ids = append(b.ids, v)
		return i, nil
	}
	xIndex := map[string]uint32{}
	links := t.Links()
	groups := map[*fstree.LinkGroup]*inode{}
	dirs := map[string]*inode{}
	for _, e := range t.Walk() {
		if e.Path != "." {
			if err := checkName(e.Path); err != nil {
				return nil, err
			}
		}
		var in *inode
		g := links[e.Path]
		if g != nil {
			in = groups[g]
		}
		if in == nil {
			src := e
			if g != nil {
				src = g.Head
			}
			var err error
			in, err = b.newInode(src, id, xIndex)
			if err != nil {
				return nil, err
			}
			if g != nil {
				groups[g] = in
				in.nlink = uint32(len(g.Members))
			}
		}
		if e.Path == "." {
			if e.Type != fstree.Dir {
				return nil, fmt.Errorf("root is a %v, not a directory: %w", e.Type, ErrLimit)
			}
			b.root = in
			dirs["."] = in
			continue
		}
		if in.dir != nil {
			dirs[e.Path] = in
		}
		parent := dirs[path.Dir(e.Path)]
		if parent == nil {
			return nil, fmt.Errorf("%s: parent is not a directory: %w", e.Path, ErrLimit)
		}
		parent.dir.children = append(parent.dir.children, dirent{name: path.Base(e.Path), in: in})
		if in.dir != nil {
			parent.nlink++
			in.dir.parent = parent.num
		}
	}
	if len(b.inodes) > 1<<32-2 {
		return nil, fmt.Errorf("%d inodes: %w", len(b.inodes), ErrLimit)
	}
	b.root.dir.parent = uint32(len(b.inodes)) + 1
	return b, nil
}

func checkName(p string) error {
	name := path.Base(p)
	if len(name) > maxNameLen {
		return fmt.Errorf("%s: name is %d bytes, more than %d: %w", p, len(name), maxNameLen, ErrLimit)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("%q: name holds a NUL byte: %w", p, ErrLimit)
	}
	return nil
}

func (b *builder) newInode(e *fstree.Entry, id func(uint32, string) (uint16, error), xIndex map[string]uint32) (*inode, error) {
	in := &inode{e: e, num: uint32(len(b.inodes) + 1), nlink: 1, xattr: noXattr}
	var err error
	if in.uid, err = id(e.UID, e.Path); err != nil {
		return nil, err
	}
	if in.gid, err = id(e.GID, e.Path); err != nil {
		return nil, err
	}
	if e.MTime < 0 || e.MTime > 1<<32-1 {
		return nil, fmt.Errorf("%s: mtime %d is outside 1970-2106: %w", e.Path, e.MTime, ErrLimit)
	}
	switch e.Type {
	case fstree.Dir:
		in.dir = &dirData{}
		in.nlink = 2
	case fstree.Regular:
		if e.Size < 0 {
			return nil, fmt.Errorf("%s: negative size %d: %w", e.Path, e.Size, ErrContent)
		}
		if e.Size > 0 && e.Data == nil {
			return nil, fmt.Errorf("%s: %d bytes but no Data: %w", e.Path, e.Size, ErrContent)
		}
		in.file = &fileData{e: e, size: uint64(e.Size), frag: noFragment}
		b.files = append(b.files, in.file)
	case fstree.Symlink:
		if len(e.Target) == 0 || len(e.Target) > maxTargetLen {
			return nil, fmt.Errorf("%s: symlink target is %d bytes, want 1 to %d: %w", e.Path, len(e.Target), maxTargetLen, ErrLimit)
		}
	case fstree.CharDev, fstree.BlockDev:
		if e.Major > 0xfff || e.Minor > 0xfffff {
			return nil, fmt.Errorf("%s: device %d,%d: major must be at most 4095 and minor at most 1048575: %w", e.Path, e.Major, e.Minor, ErrLimit)
		}
	case fstree.FIFO, fstree.Socket:
	default:
		return nil, fmt.Errorf("%s: unknown entry type %v: %w", e.Path, e.Type, ErrLimit)
	}
	if len(e.Xattrs) > 0 {
		set, err := encodeXattrs(e)
		if err != nil {
			return nil, err
		}
		key := string(set.kv)
		idx, ok := xIndex[key]
		if !ok {
			idx = uint32(len(b.xsets))
			xIndex[key] = idx
			b.xsets = append(b.xsets, set)
		}
		in.xattr = idx
	}
	b.inodes = append(b.inodes, in)
	return in, nil
}

var xattrPrefixes = []string{"user.", "trusted.", "security."}

// encodeXattrs encodes e's attributes, sorted by name, as squashfs
// key/value entries: a prefix id, the name without its prefix, the value.
func encodeXattrs(e *fstree.Entry) (xattrSet, error) {
	names := make([]string, 0, len(e.Xattrs))
	for n := range e.Xattrs {
		names = append(names, n)
	}
	sort.Strings(names)
	var kv bytes.Buffer
	for _, n := range names {
		typ := -1
		for i, p := range xattrPrefixes {
			if strings.HasPrefix(n, p) && len(n) > len(p) {
				typ = i
				break
			}
		}
		if typ < 0 {
			return xattrSet{}, fmt.Errorf("%s: xattr %q: squashfs stores only the user., trusted. and security. namespaces: %w", e.Path, n, ErrLimit)
		}
		short := n[len(xattrPrefixes[typ]):]
		v := e.Xattrs[n]
		if len(short) > 255 || len(v) > 65536 {
			return xattrSet{}, fmt.Errorf("%s: xattr %q: name of %d bytes or value of %d bytes is beyond the kernel's 255 and 65536: %w", e.Path, n, len(n), len(v), ErrLimit)
		}
		kv.Write(le16(uint16(typ)))
		kv.Write(le16(uint16(len(short))))
		kv.WriteString(short)
		kv.Write(le32(uint32(len(v))))
		kv.Write(v)
	}
	return xattrSet{kv: kv.Bytes(), count: uint32(len(names))}, nil
}
