package host

import (
	"fmt"
	"io/fs"
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
