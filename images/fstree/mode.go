package fstree

import (
	"fmt"
	"io/fs"
)

// Unix file type and permission bits, as stat(2), cpio and tar write them.
const (
	unixTypeMask = 0o170000
	unixSocket   = 0o140000
	unixSymlink  = 0o120000
	unixRegular  = 0o100000
	unixBlockDev = 0o060000
	unixDir      = 0o040000
	unixCharDev  = 0o020000
	unixFIFO     = 0o010000
	unixSetuid   = 0o4000
	unixSetgid   = 0o2000
	unixSticky   = 0o1000
)

// UnixMode returns e's type and permission bits in the numeric form of
// stat(2)'s st_mode (0o100644 for a plain file, 0o104755 for a setuid one).
func (e *Entry) UnixMode() uint32 {
	var m uint32
	switch e.Type {
	case Regular:
		m = unixRegular
	case Dir:
		m = unixDir
	case Symlink:
		m = unixSymlink
	case CharDev:
		m = unixCharDev
	case BlockDev:
		m = unixBlockDev
	case FIFO:
		m = unixFIFO
	case Socket:
		m = unixSocket
	}
	return m | PermBits(e.Mode)
}

// PermBits converts the permission part of an fs.FileMode (including
// setuid, setgid and sticky) to the numeric Unix form (0o7777 at most).
func PermBits(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= unixSetuid
	}
	if m&fs.ModeSetgid != 0 {
		u |= unixSetgid
	}
	if m&fs.ModeSticky != 0 {
		u |= unixSticky
	}
	return u
}

// FromUnixMode splits a numeric st_mode into the entry's Type and Mode. It
// fails on a type field that names no known file type.
func FromUnixMode(m uint32) (Type, fs.FileMode, error) {
	perm := fs.FileMode(m & 0o777)
	if m&unixSetuid != 0 {
		perm |= fs.ModeSetuid
	}
	if m&unixSetgid != 0 {
		perm |= fs.ModeSetgid
	}
	if m&unixSticky != 0 {
		perm |= fs.ModeSticky
	}
	switch m & unixTypeMask {
	case unixRegular:
		return Regular, perm, nil
	case unixDir:
		return Dir, perm, nil
	case unixSymlink:
		return Symlink, perm, nil
	case unixCharDev:
		return CharDev, perm, nil
	case unixBlockDev:
		return BlockDev, perm, nil
	case unixFIFO:
		return FIFO, perm, nil
	case unixSocket:
		return Socket, perm, nil
	}
	return 0, 0, fmt.Errorf("mode %#o: unknown file type", m)
}
