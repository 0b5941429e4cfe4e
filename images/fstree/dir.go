package fstree

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// File is Content read from a path on the host when a writer needs it.
type File string

// Open implements Content.
func (f File) Open() (io.ReadCloser, error) { return os.Open(string(f)) }

// FromDir reads the directory dir into a tree, without following symlinks:
// owners, modes (setuid, setgid, sticky), symlink targets, device numbers,
// FIFOs, sockets, extended attributes, and hardlinks (regular files sharing
// a device and inode become LinkTo entries of the first name in Walk
// order). Contents are not read: each file's Data opens its path later, so
// the directory must stay in place until the tree is written. dir's own
// metadata becomes the root's. Reading needs no privileges beyond read
// access; nothing is changed.
func FromDir(dir string) (*Tree, error) {
	// The root may be given through a symlink; nothing below it is
	// followed.
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("read dir %s: %w", dir, err)
	}
	if fi, err := os.Stat(real); err != nil {
		return nil, fmt.Errorf("read dir %s: %w", dir, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("read dir %s: not a directory", dir)
	}
	t := New()
	type inode struct{ dev, ino uint64 }
	heads := map[inode]string{}
	var linked []*Entry
	inodes := map[*Entry]inode{}
	err = filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(real, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		typ, mode, err := FromUnixMode(st.Mode)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		e := Entry{
			Path:  filepath.ToSlash(rel),
			Type:  typ,
			Mode:  mode,
			UID:   st.Uid,
			GID:   st.Gid,
			MTime: st.Mtim.Sec,
		}
		switch typ {
		case Regular:
			e.Size = st.Size
			if st.Size > 0 {
				e.Data = File(p)
			}
		case Symlink:
			if e.Target, err = os.Readlink(p); err != nil {
				return err
			}
		case CharDev, BlockDev:
			e.Major, e.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		}
		if e.Xattrs, err = xattrs(p); err != nil {
			return err
		}
		t.Add(e)
		if typ == Regular && st.Nlink > 1 {
			le := t.Get(e.Path)
			linked = append(linked, le)
			inodes[le] = inode{uint64(st.Dev), st.Ino}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read dir %s: %w", dir, err)
	}
	// The first name of each inode in Walk order holds the content; the
	// others link to it.
	sortEntries(linked)
	for _, e := range linked {
		k := inodes[e]
		if head, ok := heads[k]; ok {
			e.LinkTo = head
			t.ref(head, 1)
		} else {
			heads[k] = e.Path
		}
	}
	return t, nil
}

// xattrs lists and reads p's extended attributes without following a
// symlink. A filesystem without xattr support has none.
func xattrs(p string) (map[string][]byte, error) {
	buf := make([]byte, 1024)
	var n int
	for {
		var err error
		n, err = unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "llistxattr", Path: p, Err: err}
		}
		break
	}
	if n == 0 {
		return nil, nil
	}
	var names []string
	for _, name := range splitNUL(buf[:n]) {
		names = append(names, name)
	}
	sort.Strings(names)
	out := map[string][]byte{}
	val := make([]byte, 256)
	for _, name := range names {
		for {
			m, err := unix.Lgetxattr(p, name, val)
			if errors.Is(err, unix.ERANGE) {
				val = make([]byte, len(val)*4)
				continue
			}
			if errors.Is(err, unix.ENODATA) {
				break // removed meanwhile
			}
			if err != nil {
				return nil, &fs.PathError{Op: "lgetxattr " + name, Path: p, Err: err}
			}
			out[name] = append([]byte(nil), val[:m]...)
			break
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func splitNUL(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}
