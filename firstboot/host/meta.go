package host

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// origMetaKey is the Record.Extra key under which EnsureFile keeps the
// mode and owner of a file it replaced, so ReleaseFile restores them too.
const origMetaKey = "orig_meta"

// Meta is the owner, group and permission bits of a path.
type Meta struct {
	Mode     fs.FileMode // permission bits plus setuid, setgid, sticky
	UID, GID int
}

// String formats m as "0644 0:0", the form the ledger stores.
func (m Meta) String() string {
	return fmt.Sprintf("%04o %d:%d", unixMode(m.Mode), m.UID, m.GID)
}

func formatMeta(fi fs.FileInfo) string { return metaOf(fi).String() }

// metaOf extracts Meta from a stat result.
func metaOf(fi fs.FileInfo) Meta {
	m := Meta{Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		m.UID, m.GID = int(st.Uid), int(st.Gid)
	}
	return m
}

// MetaOf is the Meta of a stat result (of Lstat: a symbolic link's own).
func MetaOf(fi fs.FileInfo) Meta { return metaOf(fi) }

// parseMeta reads what Meta.String wrote.
func parseMeta(s string) (Meta, bool) {
	mode, owner, ok := strings.Cut(s, " ")
	if !ok {
		return Meta{}, false
	}
	u, g, ok := strings.Cut(owner, ":")
	if !ok {
		return Meta{}, false
	}
	mv, err1 := strconv.ParseUint(mode, 8, 32)
	uid, err2 := strconv.Atoi(u)
	gid, err3 := strconv.Atoi(g)
	if err1 != nil || err2 != nil || err3 != nil {
		return Meta{}, false
	}
	return Meta{Mode: FileMode(uint32(mv)), UID: uid, GID: gid}, true
}

// ParseMeta reads the "0644 0:0" form of Meta.String.
func ParseMeta(s string) (Meta, bool) { return parseMeta(s) }

// StatMeta returns the Meta of p inside the root, following a final
// symlink as chown and chmod do.
func (h *Host) StatMeta(p string) (Meta, error) {
	fi, err := h.Stat(p)
	if err != nil {
		return Meta{}, err
	}
	return metaOf(fi), nil
}

// SetMeta changes owner, group and mode of p inside the root (following a
// final symlink, confined to the root).
func (h *Host) SetMeta(p string, m Meta) error {
	if err := h.root.Chown(rel(p), m.UID, m.GID); err != nil {
		return err
	}
	// chown clears setuid/setgid, so the mode goes second.
	return h.root.Chmod(rel(p), m.Mode)
}

// ErrHardLinked means a file has more than one hard link: changing its
// owner or mode would change it under every name, some of which may be
// outside the root (a root that is a directory of a larger file system) or
// be another file entirely (/etc/shadow linked into a directory a perm glob
// covers). Nothing finds the other names short of reading the whole file
// system, so bellbuild does not change such a file.
var ErrHardLinked = errors.New("has more than one hard link")

// Links returns the number of hard links of fi (1 when unknown).
func Links(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}

// SetMetaOneLink is SetMeta for a path that must be the only name of its
// file: a directory, or a file with one hard link (else ErrHardLinked). A
// regular file or directory is opened without following a final symlink
// and checked and changed through that handle, so that it cannot be
// swapped for a link between the check and the change; other kinds of
// file (devices, FIFOs, sockets) are checked, then changed by path.
func (h *Host) SetMetaOneLink(p string, m Meta) error {
	d, name := h.at(p)
	fi, err := d.Lstat(name)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symbolic link: not following it", p)
	}
	if !fi.Mode().IsRegular() && !fi.IsDir() {
		if Links(fi) > 1 {
			return fmt.Errorf("%s: %w (%d)", p, ErrHardLinked, Links(fi))
		}
		return h.SetMeta(p, m)
	}
	f, err := d.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return err
	}
	switch {
	case !fi.Mode().IsRegular() && !fi.IsDir():
		return fmt.Errorf("%s changed under bellbuild (now %s)", p, fi.Mode().Type())
	case !fi.IsDir() && Links(fi) > 1:
		return fmt.Errorf("%s: %w (%d)", p, ErrHardLinked, Links(fi))
	}
	if err := f.Chown(m.UID, m.GID); err != nil {
		return err
	}
	// chown clears setuid/setgid, so the mode goes second.
	return f.Chmod(m.Mode)
}

// FileMode converts Unix permission bits (0o4755) to an fs.FileMode.
func FileMode(unix uint32) fs.FileMode {
	m := fs.FileMode(unix & 0o777)
	if unix&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if unix&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if unix&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// ParseMode reads an octal mode such as "0640" or "4755".
func ParseMode(s string) (fs.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o7777 {
		return 0, fmt.Errorf("mode %q: not an octal mode between 0000 and 7777", s)
	}
	return FileMode(uint32(v)), nil
}
