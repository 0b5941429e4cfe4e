package firstboot

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/host"
)

// accountDB is one of /etc/passwd, shadow, group, gshadow: colon-separated
// lines keyed by their first field. Lines that are not entries (comments,
// blank lines, NIS "+" lines) are kept as they are, in place.
type accountDB struct {
	path   string
	exists bool
	orig   []byte
	lines  []string
	meta   host.Meta
}

func loadAccountDB(h *host.Host, p string, def host.Meta) (*accountDB, error) {
	d := &accountDB{path: p, meta: def}
	data, err := h.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return nil, err
	}
	d.exists, d.orig = true, data
	if m, err := h.StatMeta(p); err == nil {
		d.meta = m
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		d.lines = append(d.lines, sc.Text())
	}
	return d, sc.Err()
}

func (d *accountDB) index(name string) int {
	for i, l := range d.lines {
		if n, _, ok := strings.Cut(l, ":"); ok && n == name {
			return i
		}
	}
	return -1
}

// get returns the fields of name's entry, padded to n fields, or nil.
func (d *accountDB) get(name string, n int) []string {
	i := d.index(name)
	if i < 0 {
		return nil
	}
	f := strings.Split(d.lines[i], ":")
	for len(f) < n {
		f = append(f, "")
	}
	return f
}

// set replaces name's entry, or appends it.
func (d *accountDB) set(fields []string) {
	line := strings.Join(fields, ":")
	if i := d.index(fields[0]); i >= 0 {
		d.lines[i] = line
		return
	}
	d.lines = append(d.lines, line)
}

func (d *accountDB) remove(name string) {
	if i := d.index(name); i >= 0 {
		d.lines = append(d.lines[:i], d.lines[i+1:]...)
	}
}

// entries calls fn with the fields of every entry.
func (d *accountDB) entries(fn func(f []string)) {
	for _, l := range d.lines {
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "+") || strings.HasPrefix(l, "-") {
			continue
		}
		fn(strings.Split(l, ":"))
	}
}

// dropMember removes user from the member list in field i of every entry.
func (d *accountDB) dropMember(user string, i int) {
	for j, l := range d.lines {
		f := strings.Split(l, ":")
		if len(f) <= i || f[i] == "" {
			continue
		}
		var keep []string
		for _, m := range strings.Split(f[i], ",") {
			if m != user {
				keep = append(keep, m)
			}
		}
		if len(keep) != len(strings.Split(f[i], ",")) {
			f[i] = strings.Join(keep, ",")
			d.lines[j] = strings.Join(f, ":")
		}
	}
}

func (d *accountDB) bytes() []byte {
	if len(d.lines) == 0 {
		return nil
	}
	return []byte(strings.Join(d.lines, "\n") + "\n")
}

func (d *accountDB) changed() bool { return !bytes.Equal(d.bytes(), d.orig) }

// ids returns the numeric ids (field 2) in use.
func (d *accountDB) ids() map[int]bool {
	used := map[int]bool{}
	d.entries(func(f []string) {
		if len(f) > 2 {
			if id, err := strconv.Atoi(f[2]); err == nil {
				used[id] = true
			}
		}
	})
	return used
}

// allocID picks an id the way useradd does: one above the highest id in
// use within [lo, hi]; when that is past hi, the lowest free one.
func allocID(used map[int]bool, lo, hi int) (int, error) {
	highest := lo - 1
	for id := range used {
		if id >= lo && id <= hi && id > highest {
			highest = id
		}
	}
	if highest+1 <= hi {
		return highest + 1, nil
	}
	for id := lo; id <= hi; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free id in %d-%d", lo, hi)
}

// loginDefs are the settings of ROOT/etc/login.defs that account creation
// follows.
type loginDefs struct {
	uidMin, uidMax, gidMin, gidMax int
	homeMode                       fs.FileMode
}

// readLoginDefs reads login.defs; without HOME_MODE, homes are 0700, as
// Debian's adduser makes them since bookworm (DIR_MODE=0700) — useradd
// alone would derive 0755 from UMASK 022.
func readLoginDefs(h *host.Host) loginDefs {
	d := loginDefs{uidMin: 1000, uidMax: 60000, gidMin: 1000, gidMax: 60000, homeMode: 0o700}
	data, _ := h.ReadFile("/etc/login.defs")
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if f[0] == "HOME_MODE" {
			if m, err := host.ParseMode(f[1]); err == nil {
				d.homeMode = m
			}
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		switch f[0] {
		case "UID_MIN":
			d.uidMin = n
		case "UID_MAX":
			d.uidMax = n
		case "GID_MIN":
			d.gidMin = n
		case "GID_MAX":
			d.gidMax = n
		}
	}
	return d
}

// pwdLockWait is how long lockAccounts waits (lckpwdf's 15 s); tests
// shorten it.
var pwdLockWait = 15 * time.Second

// errPwdLocked means another tool holds the account files' lock.
var errPwdLocked = errors.New("/etc/.pwd.lock is held by another program")

// lockAccounts takes the lock that glibc's lckpwdf(3) — and so passwd,
// useradd, chpasswd — take: a write lock (fcntl) on ROOT/etc/.pwd.lock,
// waiting up to 15 seconds as lckpwdf does.
func lockAccounts(h *host.Host) (func(), error) {
	if err := h.Root().MkdirAll("etc", 0o755); err != nil {
		return nil, err
	}
	f, err := h.Root().OpenFile("etc/.pwd.lock", os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0}
	deadline := time.Now().Add(pwdLockWait)
	for {
		err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EACCES) {
			f.Close()
			return nil, fmt.Errorf("lock /etc/.pwd.lock: %w", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, errPwdLocked
		}
		time.Sleep(100 * time.Millisecond)
	}
}
