package profiles

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
)

// MaxFileSize is the largest site file that is read (16 MiB). A bigger
// file is refused before it is read: a site file is text someone wrote,
// and a file of that size is a mistake (or /dev/zero).
const MaxFileSize = 16 << 20

// siteFS is where a site's files come from: the site directory, confined
// by an os.Root, or the site embedded in the binary.
type siteFS interface {
	// readDir lists the directory name, sorted by name.
	readDir(name string) ([]fs.DirEntry, error)
	// readFile reads the regular file name, of at most MaxFileSize bytes.
	// Anything else is refused with a *fileError.
	readFile(name string) ([]byte, error)
	// exists reports whether name is there at all (a dangling symbolic
	// link is).
	exists(name string) bool
}

// fileError is a site file that is not read: a symbolic link out of the
// site, something other than a regular file, or a file over MaxFileSize.
// Its message says what the file is, never what it holds.
type fileError struct {
	// Link is the target of the symbolic link the file is ("" when it is
	// none).
	Link string
	// What says what is wrong: "a FIFO (named pipe), not a regular file".
	What string
}

func (e *fileError) Error() string {
	if e.Link != "" {
		return fmt.Sprintf("a symbolic link to %s, %s", e.Link, e.What)
	}
	return e.What
}

// kindOf names what kind of file m is.
func kindOf(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO (named pipe)"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return fmt.Sprintf("a special file (%v)", m.Type())
}

func tooLarge(size int64) *fileError {
	return &fileError{What: fmt.Sprintf("too large: %d bytes, over the limit of %d bytes (%d MiB) for a site file",
		size, MaxFileSize, MaxFileSize>>20)}
}

// readLimited reads r to its end, refusing more than MaxFileSize bytes.
func readLimited(r io.Reader, size int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, tooLarge(max(size, int64(len(data))))
	}
	return data, nil
}

// rootFS reads a site directory through an os.Root: a symbolic link is
// followed only while it stays inside the site, and only regular files
// are opened, so that no site file can make Load read /etc/shadow, eat
// the memory (/dev/zero) or wait for ever (a FIFO).
type rootFS struct{ root *os.Root }

// stat returns what name is, following a symbolic link inside the site;
// link is the link's target when name is one.
func (r rootFS) stat(name string) (fi fs.FileInfo, link string, err error) {
	fi, err = r.root.Lstat(name)
	if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		return fi, "", err
	}
	link, err = r.root.Readlink(name)
	if err != nil {
		return nil, "", err
	}
	fi, err = r.root.Stat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, link, &fileError{Link: link, What: "which does not exist"}
	case err != nil:
		// os.Root refuses a link that leads out of the root (or loops).
		return nil, link, &fileError{Link: link, What: "outside the site: site files are read only from inside it"}
	}
	return fi, link, nil
}

func (r rootFS) readDir(name string) ([]fs.DirEntry, error) {
	fi, link, err := r.stat(name)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, &fileError{Link: link, What: notWhat(link, kindOf(fi.Mode()), "a directory")}
	}
	f, err := r.root.OpenFile(name, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return ents, err
}

func (r rootFS) readFile(name string) ([]byte, error) {
	fi, link, err := r.stat(name)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &fileError{Link: link, What: notWhat(link, kindOf(fi.Mode()), "a regular file")}
	}
	if fi.Size() > MaxFileSize {
		return nil, tooLarge(fi.Size())
	}
	// O_NONBLOCK: should the file have been swapped for a FIFO since the
	// stat, the open does not wait for a writer; the fstat below refuses it.
	f, err := r.root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &fileError{What: notWhat("", kindOf(fi.Mode()), "a regular file")}
	}
	return readLimited(f, fi.Size())
}

// notWhat says that a file is kind, not want.
func notWhat(link, kind, want string) string {
	if link != "" {
		return "which is " + kind + ", not " + want
	}
	return kind + ", not " + want
}

func (r rootFS) exists(name string) bool {
	_, err := r.root.Lstat(name)
	return err == nil
}

// embedFS reads the site embedded in the binary.
type embedFS struct{ fsys fs.FS }

func (e embedFS) readDir(name string) ([]fs.DirEntry, error) { return fs.ReadDir(e.fsys, name) }

func (e embedFS) readFile(name string) ([]byte, error) {
	f, err := e.fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, 0)
}

func (e embedFS) exists(name string) bool {
	_, err := fs.Stat(e.fsys, name)
	return err == nil
}

// readNamedFile reads a file the user named on the command line (a
// Divingbell values file): it may be a symbolic link or a pipe
// (<(...)), but not a directory or a device, and it is capped at
// MaxFileSize.
func readNamedFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if m := fi.Mode(); m.IsDir() || m&fs.ModeDevice != 0 {
		return nil, &fileError{What: notWhat("", kindOf(m), "a regular file")}
	}
	if fi.Mode().IsRegular() && fi.Size() > MaxFileSize {
		return nil, tooLarge(fi.Size())
	}
	return readLimited(f, fi.Size())
}
