package firstboot

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
)

// dpkgStatusPath is dpkg's database of installed packages. Plans read it
// instead of running apt or dpkg.
const dpkgStatusPath = "/var/lib/dpkg/status"

// debPkg is one stanza of the dpkg status file.
type debPkg struct {
	Name, Version, Arch, Priority, Status string
	Essential, Protected                  bool
	Depends, PreDepends, Recommends       string
	Provides                              string
}

// installed reports whether the package is unpacked and configured
// ("install ok installed", "hold ok installed").
func (p *debPkg) installed() bool { return strings.HasSuffix(p.Status, " installed") }

// present reports whether files of the package are on disk in any state
// but "config-files" and "not-installed".
func (p *debPkg) present() bool {
	s := p.state()
	return s != "" && s != "not-installed" && s != "config-files"
}

func (p *debPkg) state() string {
	f := strings.Fields(p.Status)
	if len(f) != 3 {
		return ""
	}
	return f[2]
}

// interrupted reports whether dpkg left the package half-done: what
// `dpkg --configure -a` (or a reinstall) finishes.
func (p *debPkg) interrupted() bool {
	switch p.state() {
	case "half-installed", "unpacked", "half-configured", "triggers-awaited", "triggers-pending":
		return true
	}
	return strings.Contains(p.Status, " reinstreq ")
}

// dpkgDB is the parsed status file: packages by name (for a package
// installed for several architectures, the native one wins).
type dpkgDB map[string]*debPkg

func readDpkgStatus(h *host.Host) (dpkgDB, error) {
	data, err := h.ReadFile(dpkgStatusPath)
	if errors.Is(err, fs.ErrNotExist) {
		return dpkgDB{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dpkg status: %w", err)
	}
	return parseDpkgStatus(data)
}

func parseDpkgStatus(data []byte) (dpkgDB, error) {
	db := dpkgDB{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 4<<20)
	p := &debPkg{}
	var last *string
	flush := func() {
		if p.Name != "" {
			if old, ok := db[p.Name]; !ok || (!old.present() && p.present()) {
				db[p.Name] = p
			}
		}
		p, last = &debPkg{}, nil
	}
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != nil {
				*last += " " + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("dpkg status: bad line %q", line)
		}
		v = strings.TrimSpace(v)
		last = nil
		switch k {
		case "Package":
			p.Name = v
		case "Version":
			p.Version = v
		case "Architecture":
			p.Arch = v
		case "Priority":
			p.Priority = v
		case "Status":
			p.Status = v
		case "Essential":
			p.Essential = v == "yes"
		case "Protected":
			p.Protected = v == "yes"
		case "Depends":
			p.Depends, last = v, &p.Depends
		case "Pre-Depends":
			p.PreDepends, last = v, &p.PreDepends
		case "Recommends":
			p.Recommends, last = v, &p.Recommends
		case "Provides":
			p.Provides, last = v, &p.Provides
		}
	}
	flush()
	return db, sc.Err()
}

// depNames lists the package names a dependency field mentions, every
// alternative included, without versions or architecture qualifiers.
func depNames(field string) []string {
	var out []string
	for _, clause := range strings.Split(field, ",") {
		for _, alt := range strings.Split(clause, "|") {
			name := strings.TrimSpace(alt)
			if i := strings.IndexAny(name, " ([<"); i >= 0 {
				name = name[:i]
			}
			name, _, _ = strings.Cut(name, ":")
			if name != "" {
				out = append(out, name)
			}
		}
	}
	return out
}

// strictKeep is the set strict mode keeps: packages of priority required
// or important, Essential or Protected ones, the requested and whitelisted
// ones, and — transitively — everything installed that they depend on,
// pre-depend on or recommend, through any alternative and any virtual
// package an installed package provides. It errs on the side of keeping.
func strictKeep(db dpkgDB, requested, whitelist []string) map[string]bool {
	providers := map[string][]string{}
	for name, p := range db {
		if !p.present() {
			continue
		}
		for _, v := range depNames(p.Provides) {
			providers[v] = append(providers[v], name)
		}
	}
	keep := map[string]bool{}
	var queue []string
	add := func(name string) {
		for _, n := range append([]string{name}, providers[name]...) {
			if p, ok := db[n]; ok && p.present() && !keep[n] {
				keep[n] = true
				queue = append(queue, n)
			}
		}
	}
	for name, p := range db {
		if p.Priority == "required" || p.Priority == "important" || p.Essential || p.Protected {
			add(name)
		}
	}
	for _, n := range append(append([]string(nil), requested...), whitelist...) {
		add(n)
	}
	for len(queue) > 0 {
		p := db[queue[0]]
		queue = queue[1:]
		for _, field := range []string{p.PreDepends, p.Depends, p.Recommends} {
			for _, n := range depNames(field) {
				add(n)
			}
		}
	}
	return keep
}

// strictRemovals lists, sorted, the installed packages strict mode removes.
func strictRemovals(db dpkgDB, requested, whitelist []string) []string {
	keep := strictKeep(db, requested, whitelist)
	var out []string
	for name, p := range db {
		if p.present() && !keep[name] {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// compareDebVersions compares two Debian versions as dpkg does
// (epoch:upstream-revision, with "~" sorting before everything, even the
// end of the string): negative when a < b, 0 when equal, positive when a > b.
func compareDebVersions(a, b string) int {
	ea, ua, ra := splitDebVersion(a)
	eb, ub, rb := splitDebVersion(b)
	if ea != eb {
		if ea < eb {
			return -1
		}
		return 1
	}
	if c := compareDebPart(ua, ub); c != 0 {
		return c
	}
	return compareDebPart(ra, rb)
}

func splitDebVersion(v string) (epoch int, upstream, revision string) {
	if e, rest, ok := strings.Cut(v, ":"); ok {
		for _, c := range e {
			if c < '0' || c > '9' {
				epoch = -1
				break
			}
			epoch = epoch*10 + int(c-'0')
		}
		v = rest
	}
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		return epoch, v[:i], v[i+1:]
	}
	return epoch, v, ""
}

// debOrder is dpkg's weight of a character in the non-digit parts.
func debOrder(c byte) int {
	switch {
	case c == '~':
		return -1
	case c >= '0' && c <= '9':
		return 0
	case c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z':
		return int(c)
	case c == 0:
		return 0
	}
	return int(c) + 256
}

func compareDebPart(a, b string) int {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		// Non-digit prefix, character by character.
		for (i < len(a) && !isDigit(a[i])) || (j < len(b) && !isDigit(b[j])) {
			var ca, cb byte
			if i < len(a) && !isDigit(a[i]) {
				ca = a[i]
			}
			if j < len(b) && !isDigit(b[j]) {
				cb = b[j]
			}
			if oa, ob := debOrder(ca), debOrder(cb); oa != ob {
				return oa - ob
			}
			if ca != 0 {
				i++
			}
			if cb != 0 {
				j++
			}
			if ca == 0 && cb == 0 {
				break
			}
		}
		// Digit run, numerically.
		for i < len(a) && a[i] == '0' {
			i++
		}
		for j < len(b) && b[j] == '0' {
			j++
		}
		si, sj := i, j
		for i < len(a) && isDigit(a[i]) {
			i++
		}
		for j < len(b) && isDigit(b[j]) {
			j++
		}
		da, db := a[si:i], b[sj:j]
		if len(da) != len(db) {
			return len(da) - len(db)
		}
		if c := strings.Compare(da, db); c != 0 {
			return c
		}
	}
	return 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
