package host

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// ErrNoSuchID means a user or group name is not in the root's database.
var ErrNoSuchID = errors.New("not found")

// LookupUser returns the uid of name from ROOT/etc/passwd — the target's
// accounts, never the build host's. A decimal name is taken as a uid.
func (h *Host) LookupUser(name string) (int, error) {
	return h.lookupID("etc/passwd", "user", name)
}

// LookupGroup returns the gid of name from ROOT/etc/group. A decimal name
// is taken as a gid.
func (h *Host) LookupGroup(name string) (int, error) {
	return h.lookupID("etc/group", "group", name)
}

func (h *Host) lookupID(file, what, name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	data, err := h.ReadFile(file)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%s %q: %w", what, name, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) >= 3 && f[0] == name {
			id, err := strconv.Atoi(f[2])
			if err != nil {
				return 0, fmt.Errorf("%s %q: bad id %q in /%s", what, name, f[2], file)
			}
			return id, nil
		}
	}
	return 0, fmt.Errorf("%s %q: %w in /%s", what, name, ErrNoSuchID, file)
}
