package fstree

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// File is Content read from a path on the host when a writer needs it.
type File string

// Open implements Content. It opens the file with one system call and
// hands the descriptor to os.NewFile, which (unlike os.Open) does not try
// to register a regular file with the network poller: os.Open spends four
// more system calls per file on that, which shows in a tree of thousands.
func (f File) Open() (io.ReadCloser, error) {
	fd, err := unix.Open(string(f), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	for err == unix.EINTR {
		fd, err = unix.Open(string(f), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: string(f), Err: err}
	}
	return os.NewFile(uintptr(fd), string(f)), nil
}

// SourceFile is a File with the identity its path had when FromDir read
// it: device, inode, size, and modification and change times in
// nanoseconds. A cache can tell from it whether the content may have
// changed since, without another stat.
type SourceFile struct {
	File
	Dev, Ino     uint64
	Size         int64
	MTime, CTime int64
}

// FromDir reads the directory dir into a tree, without following symlinks:
// owners, modes (setuid, setgid, sticky), symlink targets, device numbers,
// FIFOs, sockets, extended attributes, and hardlinks (regular files sharing
// a device and inode become LinkTo entries of the first name in Walk
// order). Contents are not read: each file's Data (a SourceFile) opens its path later, so
// the directory must stay in place until the tree is written. dir's own
// metadata becomes the root's. Reading needs no privileges beyond read
// access; nothing is changed.
//
// Directories are read by several goroutines at once (a tree of thousands
// of entries is mostly stat calls); the tree does not depend on their
// order. When entries cannot be read, the error names the first of them in
// Walk order.
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
	found, err := walkDir(real)
	if err != nil {
		return nil, fmt.Errorf("read dir %s: %w", dir, err)
	}
	// In Walk order every parent comes before its children, so the
	// entries go straight in: no parent is ever made up.
	sort.Slice(found, func(i, j int) bool { return Less(found[i].e.Path, found[j].e.Path) })
	t := New()
	type inode struct{ dev, ino uint64 }
	heads := map[inode]string{}
	for i := range found {
		f := &found[i]
		t.entries[f.e.Path] = &f.e
		if f.e.Type != Regular || f.nlink < 2 {
			continue
		}
		// The first name of each inode in Walk order holds the content;
		// the others link to it.
		k := inode{f.dev, f.ino}
		if head, ok := heads[k]; ok {
			f.e.LinkTo = head
			t.ref(head, 1)
		} else {
			heads[k] = f.e.Path
		}
	}
	return t, nil
}

// dirWalkers is how many directories FromDir reads at once. More than the
// CPUs it usually has, so that a cold cache's disk reads overlap.
const dirWalkers = 4

// found is one entry read by walkDir, with what hardlink detection needs.
type found struct {
	e        Entry
	dev, ino uint64
	nlink    uint64
}

// walkError is an entry walkDir could not read.
type walkError struct {
	path string // relative, for ordering
	err  error
}

// dirWalk is the shared state of walkDir's goroutines: a stack of
// directories still to read.
type dirWalk struct {
	root   string
	mu     sync.Mutex
	cond   sync.Cond
	queue  []string // relative paths of directories to read
	active int      // directories being read
	errs   []walkError
}

// walkDir reads every entry under root (root's own included, as ".").
func walkDir(root string) ([]found, error) {
	w := &dirWalk{root: root}
	w.cond.L = &w.mu
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: root, Err: err}
	}
	top, err := readEntry(root, ".", &st, func() (string, error) { return os.Readlink(root) })
	if err != nil {
		return nil, err
	}
	w.queue = []string{"."}
	parts := make([][]found, dirWalkers)
	var wg sync.WaitGroup
	for i := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[i] = w.work()
		}()
	}
	wg.Wait()
	if len(w.errs) > 0 {
		first := w.errs[0]
		for _, e := range w.errs[1:] {
			if Less(e.path, first.path) {
				first = e
			}
		}
		return nil, first.err
	}
	n := 1
	for _, p := range parts {
		n += len(p)
	}
	out := make([]found, 0, n)
	out = append(out, found{e: top})
	for _, p := range parts {
		out = append(out, p...)
	}
	return out, nil
}

// work reads directories from the stack until none is left or being read
// (which could add more), and returns what it found.
func (w *dirWalk) work() []found {
	var out []found
	buf := make([]byte, 32<<10)
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for len(w.queue) == 0 && w.active > 0 {
			w.cond.Wait()
		}
		if len(w.queue) == 0 {
			w.cond.Broadcast()
			return out
		}
		dir := w.queue[len(w.queue)-1]
		w.queue = w.queue[:len(w.queue)-1]
		w.active++
		w.mu.Unlock()
		var subdirs []string
		var errs []walkError
		out, subdirs, errs = w.readDir(dir, buf, out)
		w.mu.Lock()
		w.active--
		w.queue = append(w.queue, subdirs...)
		w.errs = append(w.errs, errs...)
		w.cond.Broadcast()
	}
}

// readDir appends the entries of the directory rel to out, and returns the
// subdirectories to read next.
func (w *dirWalk) readDir(rel string, buf []byte, out []found) ([]found, []string, []walkError) {
	abs := filepath.Join(w.root, rel)
	prefix, sep := "", "/"
	if rel != "." {
		prefix = rel + "/"
	}
	if abs == "/" {
		sep = ""
	}
	fail := func(p string, err error) []walkError { return []walkError{{p, err}} }
	fd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return out, nil, fail(rel, &fs.PathError{Op: "open", Path: abs, Err: err})
	}
	defer unix.Close(fd)
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return out, nil, fail(rel, &fs.PathError{Op: "readdirent", Path: abs, Err: err})
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	var subdirs []string
	var errs []walkError
	for _, name := range names {
		p := abs + sep + name
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			errs = append(errs, walkError{prefix + name, &fs.PathError{Op: "lstat", Path: p, Err: err}})
			continue
		}
		e, err := readEntry(p, prefix+name, &st, func() (string, error) { return readlinkat(fd, name, p) })
		if err != nil {
			errs = append(errs, walkError{prefix + name, err})
			continue
		}
		if e.Type == Dir {
			subdirs = append(subdirs, e.Path)
		}
		out = append(out, found{e: e, dev: uint64(st.Dev), ino: st.Ino, nlink: uint64(st.Nlink)})
	}
	return out, subdirs, errs
}

// readEntry makes the entry at relative path rel from its lstat result,
// reading its symlink target (through readlink) and extended attributes.
func readEntry(p, rel string, st *unix.Stat_t, readlink func() (string, error)) (Entry, error) {
	typ, mode, err := FromUnixMode(st.Mode)
	if err != nil {
		return Entry{}, fmt.Errorf("%s: %w", p, err)
	}
	e := Entry{
		Path:  rel,
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
			e.Data = SourceFile{File: File(p), Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size, MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano()}
		}
	case Symlink:
		if e.Target, err = readlink(); err != nil {
			return Entry{}, err
		}
	case CharDev, BlockDev:
		e.Major, e.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	if e.Xattrs, err = xattrs(p); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// readlinkat reads the target of the symlink name in the directory fd.
func readlinkat(fd int, name, p string) (string, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, name, buf)
		if err != nil {
			return "", &fs.PathError{Op: "readlink", Path: p, Err: err}
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
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
