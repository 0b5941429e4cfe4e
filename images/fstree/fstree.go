// Package fstree holds a root filesystem as an in-memory tree of entries:
// paths, types, modes, owners, link targets, device numbers and extended
// attributes, with file contents opened lazily. Stage readers fill a Tree;
// image writers (cpio, squashfs, fat, iso) stream it out. Nothing here
// needs root or extracts anything onto the build host.
//
// Readers: FromDir (a directory on the host, read with lstat), FromTar and
// OpenTar (a tarball: plain, gzip, xz, zstd or bzip2), FromOCI (an OCI
// image layout, layers and whiteouts applied). Writer: WriteTar, a
// reproducible stage tarball. Summary describes a tree line by line for
// comparing trees in tests.
//
// Content: every writer (here and in the image formats) copies a file's
// content with CopyContent, or reads it with OpenContent, which take
// exactly the entry's Size and fail with a *SizeError when the content is
// shorter or longer (a host file that changed after FromDir read it):
// no image holds a file cut short.
//
// Order: Walk sorts paths component by component, parents first; writers
// number inodes in that order, and Reproducible fixes every mtime, so the
// same tree always makes the same bytes.
//
// Hardlinks: an entry with LinkTo shares the inode of the entry it names
// (in any order). Readers also give every name of a group the same Data
// and Size, so a group whose first name is removed stays whole (Remove
// and Add re-point the others); Links lists the groups for writers.
package fstree

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// Type is the kind of an entry.
type Type uint8

// The entry types.
const (
	Regular Type = iota
	Dir
	Symlink
	CharDev
	BlockDev
	FIFO
	Socket
)

// String names the type as Summary shows it ("file", "dir", "symlink"...).
func (t Type) String() string {
	switch t {
	case Regular:
		return "file"
	case Dir:
		return "dir"
	case Symlink:
		return "symlink"
	case CharDev:
		return "chardev"
	case BlockDev:
		return "blockdev"
	case FIFO:
		return "fifo"
	case Socket:
		return "socket"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Content opens a regular file's bytes. It is called lazily, possibly more
// than once, so that a tree of gigabytes never sits in memory.
type Content interface {
	Open() (io.ReadCloser, error)
}

// Entry is one node of the tree.
type Entry struct {
	// Path is clean, relative to the root, without a leading slash ("etc/passwd").
	// The root itself is ".".
	Path string
	Type Type
	// Mode holds the permission bits, including setuid, setgid and sticky
	// (fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky); never type bits.
	Mode fs.FileMode
	UID  uint32
	GID  uint32
	// MTime in seconds since the epoch; writers normally replace it with the
	// source date (see Reproducible).
	MTime int64
	// Size of a regular file's content: writers copy exactly this many
	// bytes (see CopyContent).
	Size int64
	// Data opens a regular file's content (nil for an empty file).
	Data Content
	// Target of a symlink.
	Target string
	// LinkTo names the regular-file entry this one is a hardlink of (see
	// Links); such an entry's Type is Regular. Its own Mode, owners, Size
	// and Data are ignored by writers in favour of the group's.
	LinkTo string
	// Major and Minor device numbers of a device node.
	Major, Minor uint32
	// Xattrs are extended attributes ("security.capability" -> raw value).
	Xattrs map[string][]byte

	// implicit marks a parent directory that Add made up because a deeper
	// path needed it; Merge never lets one override a real directory.
	implicit bool
}

// Tree is a root filesystem. The zero value is an empty tree (with an
// implicit root directory).
type Tree struct {
	entries map[string]*Entry
	// linkers counts, per path, the entries added with a LinkTo naming
	// it, so that replacing or removing a file scans for its hardlinks
	// only when it has some.
	linkers map[string]int
}

// New returns an empty tree whose root is a 0755 directory owned by root.
func New() *Tree {
	t := &Tree{entries: map[string]*Entry{}, linkers: map[string]int{}}
	t.entries["."] = &Entry{Path: ".", Type: Dir, Mode: 0o755}
	return t
}

// Clean turns p into the tree's path form: slash separated, relative, no
// "..", "." for the root.
func Clean(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return strings.TrimPrefix(p, "/")
}

func (t *Tree) init() {
	if t.entries == nil {
		*t = *New()
	}
}

// Add inserts or replaces e (its Path is cleaned). Missing parent
// directories are created as 0755 root-owned directories. Replacing a
// directory with a non-directory removes everything below it. Replacing a
// file that other entries are hardlinked to detaches them first (as a
// rename over a linked file does): they keep the old content.
func (t *Tree) Add(e Entry) {
	t.init()
	e.Path = Clean(e.Path)
	if e.LinkTo != "" {
		e.LinkTo = Clean(e.LinkTo)
		if e.LinkTo == e.Path {
			e.LinkTo = ""
		}
	}
	target := t.entries[e.LinkTo]
	if old, ok := t.entries[e.Path]; ok {
		if old.Type == Dir && e.Type != Dir {
			t.Remove(e.Path)
		} else {
			t.drop(old)
		}
	}
	t.mkParents(e.Path)
	if target != nil && t.entries[e.LinkTo] != target {
		// Making room for e removed what it links to (a file inside the
		// directory it replaces, or a file where its parent goes): it
		// stands alone with its own content.
		e.LinkTo = ""
	}
	ne := e
	ne.implicit = false
	t.entries[e.Path] = &ne
	t.ref(ne.LinkTo, 1)
}

// drop deletes one entry (not what is below a directory), keeping the
// hardlinks to it whole.
func (t *Tree) drop(old *Entry) {
	delete(t.entries, old.Path)
	t.ref(old.LinkTo, -1)
	if old.Type == Regular {
		t.detachLinks(old)
	}
}

// ref adjusts the count of entries linking to target.
func (t *Tree) ref(target string, d int) {
	if target == "" {
		return
	}
	if t.linkers == nil {
		t.linkers = map[string]int{}
	}
	if n := t.linkers[target] + d; n > 0 {
		t.linkers[target] = n
	} else {
		delete(t.linkers, target)
	}
}

// detachLinks re-points the entries hardlinked to old (just removed or
// replaced) at the first of them, which inherits old's content and
// metadata, so the rest of the group stays a group.
func (t *Tree) detachLinks(old *Entry) {
	if t.linkers[old.Path] == 0 {
		return
	}
	delete(t.linkers, old.Path)
	var linked []*Entry
	for _, e := range t.entries {
		if e.LinkTo == old.Path {
			linked = append(linked, e)
		}
	}
	if len(linked) == 0 {
		return
	}
	sortEntries(linked)
	head := linked[0]
	p := head.Path
	*head = *old
	head.Path = p
	head.LinkTo = old.LinkTo
	t.ref(head.LinkTo, 1)
	for _, e := range linked[1:] {
		e.LinkTo = p
	}
	t.ref(p, len(linked)-1)
}

func (t *Tree) mkParents(p string) {
	for dir := path.Dir(p); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if old, ok := t.entries[dir]; ok {
			if old.Type == Dir {
				return
			}
			t.drop(old)
		}
		t.entries[dir] = &Entry{Path: dir, Type: Dir, Mode: 0o755, implicit: true}
	}
}

// Get returns the entry at p, or nil.
func (t *Tree) Get(p string) *Entry {
	t.init()
	return t.entries[Clean(p)]
}

// Remove deletes p and, for a directory, everything below it. Files
// elsewhere that were hardlinks of removed files stay, with the content.
func (t *Tree) Remove(p string) {
	t.init()
	p = Clean(p)
	if p == "." {
		*t = *New()
		return
	}
	old, ok := t.entries[p]
	if !ok {
		return
	}
	if old.Type != Dir {
		t.drop(old)
		return
	}
	delete(t.entries, p)
	prefix := p + "/"
	var removed []*Entry
	for k, e := range t.entries {
		if strings.HasPrefix(k, prefix) {
			delete(t.entries, k)
			t.ref(e.LinkTo, -1)
			if e.Type == Regular {
				removed = append(removed, e)
			}
		}
	}
	// Files outside the directory may be hardlinks of files inside it.
	sortEntries(removed)
	for _, e := range removed {
		t.detachLinks(e)
	}
}

// Len is the number of entries, the root included.
func (t *Tree) Len() int {
	t.init()
	return len(t.entries)
}

// Walk returns every entry in a deterministic order: sorted by path
// components, so a directory comes before its children and the root first.
// A hardlink may come before or after the entry it names.
func (t *Tree) Walk() []*Entry {
	t.init()
	out := make([]*Entry, 0, len(t.entries))
	for _, e := range t.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return Less(out[i].Path, out[j].Path) })
	return out
}

// Less orders paths component by component ("a/b" < "a-c"), the root first.
// It compares bytes with '/' ranking below every other byte, which is the
// same order without splitting the paths.
func Less(a, b string) bool {
	if a == "." {
		return b != "."
	}
	if b == "." {
		return false
	}
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if ca == '/' {
			return true
		}
		if cb == '/' {
			return false
		}
		return ca < cb
	}
	return len(a) < len(b)
}

// Children returns the direct children of directory p, sorted by name.
func (t *Tree) Children(p string) []*Entry {
	t.init()
	p = Clean(p)
	var out []*Entry
	for k, e := range t.entries {
		if k == "." {
			continue
		}
		if path.Dir(k) == p {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// Reproducible is the one transform that makes a tree's output stable: every
// mtime becomes epoch. Entry order is already fixed by Walk; writers derive
// inode numbers from that order.
func (t *Tree) Reproducible(epoch int64) {
	t.init()
	for _, e := range t.entries {
		e.MTime = epoch
	}
}

// Bytes is in-memory Content, for small generated files (configs, scripts).
type Bytes []byte

// Open implements Content.
func (b Bytes) Open() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b)), nil
}

// AddFile is a shorthand for adding a small regular file held in memory.
func (t *Tree) AddFile(p string, data []byte, mode fs.FileMode, uid, gid uint32) {
	t.Add(Entry{Path: p, Type: Regular, Mode: mode, UID: uid, GID: gid, Size: int64(len(data)), Data: Bytes(data)})
}

// Merge copies every entry of o over t (an upper layer over a lower one):
// first the entries that are not hardlinks, in o's walk order, then the
// hardlinks, so that a link in o names o's file, not the one it replaces.
// Directories that o only made up as parents of deeper paths (see Add) do
// not override t's own directories.
func (t *Tree) Merge(o *Tree) {
	all := o.Walk()
	for pass := range 2 {
		for _, e := range all {
			if e.Path == "." || (e.LinkTo != "") != (pass == 1) {
				continue
			}
			if e.implicit {
				if old := t.Get(e.Path); old != nil && old.Type == Dir {
					continue
				}
			}
			t.Add(*e)
			if e.implicit {
				t.entries[e.Path].implicit = true
			}
		}
	}
}

func sortEntries(es []*Entry) {
	sort.Slice(es, func(i, j int) bool { return Less(es[i].Path, es[j].Path) })
}
