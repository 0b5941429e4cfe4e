package host

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"syscall"
)

// ErrNoSuchID means a user or group name is not in the root's database.
var ErrNoSuchID = errors.New("not found")

// LookupUser returns the uid of name from ROOT/etc/passwd — the target's
// accounts, never the build host's. A decimal name is taken as a uid.
func (h *Host) LookupUser(name string) (int, error) {
	return h.lookupID("etc/passwd", "user", name)
}

// PrimaryGroup returns the primary gid of user name from ROOT/etc/passwd.
func (h *Host) PrimaryGroup(name string) (int, error) {
	db, err := h.idDB("etc/passwd")
	if err != nil {
		return 0, fmt.Errorf("user %q: %w", name, err)
	}
	if gid, ok := db.gids[name]; ok {
		return gid, nil
	}
	return 0, fmt.Errorf("user %q: %w in /etc/passwd", name, ErrNoSuchID)
}

// LookupGroup returns the gid of name from ROOT/etc/group. A decimal name
// is taken as a gid.
func (h *Host) LookupGroup(name string) (int, error) {
	return h.lookupID("etc/group", "group", name)
}

// idCache is one parsed account database and the stat it was read at.
type idCache struct {
	ino, size uint64
	mtime     int64
	ids       map[string]int
	gids      map[string]int    // passwd only: the primary group
	bad       map[string]string // name → unparsable id field
}

func (h *Host) lookupID(file, what, name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	db, err := h.idDB(file)
	if err != nil {
		return 0, fmt.Errorf("%s %q: %w", what, name, err)
	}
	if id, ok := db.ids[name]; ok {
		return id, nil
	}
	if f, ok := db.bad[name]; ok {
		return 0, fmt.Errorf("%s %q: bad id %q in /%s", what, name, f, file)
	}
	return 0, fmt.Errorf("%s %q: %w in /%s", what, name, ErrNoSuchID, file)
}

// idDB parses /etc/passwd or /etc/group once, and again only when the file
// changed (the uamlite module rewrites them during a run).
func (h *Host) idDB(file string) (idCache, error) {
	var key idCache
	fi, err := h.Stat(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return idCache{}, err
	default:
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			key = idCache{ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim.Nano()}
		}
	}
	if c, ok := h.ids[file]; ok && c.ino == key.ino && c.size == key.size && c.mtime == key.mtime && key.ino != 0 {
		return c, nil
	}
	data, err := h.ReadFile(file)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return idCache{}, err
	}
	key.ids, key.gids, key.bad = map[string]int{}, map[string]int{}, map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 3 {
			continue
		}
		if _, seen := key.ids[f[0]]; seen {
			continue // the first entry wins, as in getpwnam
		}
		if id, err := strconv.Atoi(f[2]); err == nil {
			key.ids[f[0]] = id
			if len(f) >= 4 {
				if gid, err := strconv.Atoi(f[3]); err == nil {
					key.gids[f[0]] = gid
				}
			}
		} else if _, seen := key.bad[f[0]]; !seen {
			key.bad[f[0]] = f[2]
		}
	}
	if h.ids == nil {
		h.ids = map[string]idCache{}
	}
	h.ids[file] = key
	return key, nil
}
