// Package profiles is bellbuild's site model: it loads a site (inheriting
// profiles and an inventory of machines) with line numbers, checks it
// strictly, and renders each machine's effective host configuration
// (a nodeconf.Node) and each profile's image specification.
//
// A site on disk is
//
//	SITE/profiles/NAME.yaml   one profile per file
//	SITE/nodes.yaml           the inventory (optional)
//	SITE/site.yaml            site-wide settings: domain, boot network, PKI (optional)
//
// Site files are read only from inside the site (a symbolic link that
// leads out of it is refused), only when they are regular files, and only
// up to MaxFileSize.
//
// docs/config.md describes the format and the merge rules. Every problem
// found is reported at once as an ErrorList of FILE:LINE:COL: PATH: MESSAGE.
package profiles

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/secrets"
)

// Site is a loaded, checked site. It is immutable and safe for concurrent
// use.
type Site struct {
	dir      string // absolute site directory; "" for the embedded site
	embedded bool
	profiles map[string]*profile
	names    []string
	nodes    []*node // sorted by name
	byName   map[string]*node
	byMAC    map[string]*node
	// nodesSource is the Sources entry for nodes.yaml ("" when absent).
	nodesSource string
	resolved    map[string]*resolved
	// network is the boot network site.yaml declares (nil: none).
	network *Network
	// siteSettings are site.yaml's domain and pki (sitepki.go).
	siteSettings
	// warnings are the problems Load reported that do not stop it.
	warnings ErrorList
	// services are services.yaml's, by name; placedOn maps a node to
	// the services placed on it, by name; servicesSource is the Sources
	// entry for services.yaml ("" when absent).
	services       []*service
	placedOn       map[string][]*service
	servicesSource string
	// noFacts is every service's fact, false: a node's start.
	noFacts map[string]bool
	// store is the site's secret store (nil for the embedded site);
	// storeArg names the site in the commands messages suggest (the
	// directory as given to Load); refNames are the secrets the site
	// refers to (secretrefs.go).
	store    *secrets.Store
	storeArg string
	refNames map[string]bool
	// envs are the site's environments, and the one it was loaded for
	// (nil: a site without environments; env.go).
	envs *envSet
	// checked are the nodes as Load rendered and checked them, in the
	// order of nodes (checked.go).
	checked []*nodeconf.Node
}

// NodeInfo is one inventory entry.
type NodeInfo struct {
	Name    string
	MACs    []string // lower case, colon separated
	Profile string
	Labels  map[string]string
	// IP is the node's fixed address on the boot network, from its "ip"
	// label (the zero Addr when it has none).
	IP netip.Addr
}

// profile is one parsed profile file.
type profile struct {
	name   string
	source string // absolute path, or "embedded:profiles/NAME.yaml"
	pos    Pos    // the file itself
	// inherits are the parents, in order, with the position of each.
	inherits    []string
	inheritsPos []Pos
	// fields holds description, stage, kernel, cmdline and outputs as
	// written (nil: not set here; a null value: reset to the default).
	fields map[string]*value
	conf   *value // the conf without conf.overrides (nil when absent)
	// db is conf.overrides, Divingbell's per-module overrides.
	db *value
	// labelOv and hostOv are the profile's native overrides.
	labelOv []labelOverride
	hostOv  []hostOverride
}

// labelOverride applies conf to nodes whose label key has one of values.
type labelOverride struct {
	key    string
	values []string
	conf   *value
}

func (o labelOverride) matches(labels map[string]string) bool {
	v, ok := labels[o.key]
	return ok && slices.Contains(o.values, v)
}

// hostOverride applies conf to the node named name.
type hostOverride struct {
	name string
	conf *value
}

// node is one parsed inventory entry.
type node struct {
	NodeInfo
	pos  Pos
	path string // nodes[N]
	ipAt Pos    // the "ip" label's value
	conf *value
	id   nodeIdentity // fqdn and ips (identity.go)
	// services are its pins and denies (services.yaml's services).
	services nodeServices
	// enrol is the entry's enrol policy (nil: its profile's).
	enrol *value
	// install is the entry's install (nil: its profile's).
	install *value
}

// scalarFields are the profile fields that inherit by replacement.
var scalarFields = []string{"description", "stage", "kernel", "cmdline", "outputs", "persist", "domain", "enrol", "enrol_wait", "arch", "install", "upgrade", "reboot"}

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`)
	labelRE = regexp.MustCompile(`^([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)
)

//go:embed defaultsite
var defaultFS embed.FS

var defaultSite = sync.OnceValues(func() (*Site, error) {
	sub, err := fs.Sub(defaultFS, "defaultsite")
	if err != nil {
		return nil, err
	}
	return loadFS(embedFS{sub}, "", "embedded:", "", nil)
})

// Default returns the site embedded in the binary: a `minimal` busybox
// profile and a small `demo` chain with two demo nodes. It panics if the
// embedded site is invalid (a test guards against that).
func Default() *Site {
	s, err := defaultSite()
	if err != nil {
		panic("profiles: embedded default site: " + err.Error())
	}
	return s
}

// Load reads and checks the site in dir. The error, if any, is an
// ErrorList holding every problem found. A site with environments is
// loaded with LoadEnv (Load refuses it, naming them).
func Load(dir string) (*Site, error) { return LoadEnv(dir, "") }

// LoadEnv is Load for environment env of a site with environments
// (SITE/environments/ENV.yaml: its inventory, vars and stage settings);
// env "" is a site without environments. A site with environments and no
// env, an unknown env, or an env for a site without environments is an
// ErrorList naming the environments.
func LoadEnv(dir, env string) (*Site, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("load site: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, ErrorList{{Pos: Pos{File: filepath.Join(dir, "profiles")}, Msg: "not a site: no profiles directory"}}
	}
	defer root.Close()
	store, err := secrets.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("load site: %w", err)
	}
	s, err := loadFS(rootFS{root}, dir, "", env, store)
	if s != nil {
		s.dir = abs
		if s.envs != nil {
			for _, en := range s.envs.all {
				en.source = filepath.Join(abs, en.source)
			}
		}
		for _, p := range s.profiles {
			p.source = filepath.Join(abs, p.source)
		}
		if s.nodesSource != "" {
			s.nodesSource = filepath.Join(abs, s.nodesSource)
		}
		if s.servicesSource != "" {
			s.servicesSource = filepath.Join(abs, s.servicesSource)
		}
	}
	return s, err
}

// displayName is how files are named in messages: relative to the
// directory given to Load, or "embedded:..." for the default site.
func displayName(prefix, rel string) string {
	if strings.HasSuffix(prefix, ":") {
		return prefix + rel
	}
	return filepath.Join(prefix, rel)
}

// loadFS loads a site from fsys; files are named in messages as
// displayName(dir, rel) and in Sources as srcPrefix+rel. env is the
// environment to load (see env.go); store is the site's secret store
// (nil: none).
func loadFS(fsys siteFS, dir, srcPrefix, env string, store *secrets.Store) (*Site, error) {
	var errs ErrorList
	s := &Site{embedded: srcPrefix != "", profiles: map[string]*profile{}, byName: map[string]*node{}, byMAC: map[string]*node{},
		store: store, storeArg: dir}
	if srcPrefix != "" {
		dir = srcPrefix
	}
	if fatal := s.readEnvironments(fsys, dir, srcPrefix, env, &errs); len(fatal) > 0 {
		return nil, append(fatal, errs...).Err()
	}
	ents, err := fsys.readDir("profiles")
	if err != nil {
		msg := "not a site: no profiles directory"
		if fe := (*fileError)(nil); errors.As(err, &fe) && fsys.exists("profiles") {
			msg = "not a site: profiles is " + fe.Error()
		}
		return nil, ErrorList{{Pos: Pos{File: displayName(dir, "profiles")}, Msg: msg}}
	}
	for _, e := range ents {
		rel := path.Join("profiles", e.Name())
		file := displayName(dir, rel)
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		name, ok := strings.CutSuffix(e.Name(), ".yaml")
		if !ok {
			errs.Add(Pos{File: file}, "", "profile files must be named NAME.yaml")
			continue
		}
		if !nameRE.MatchString(name) {
			errs.Add(Pos{File: file}, "", "bad profile name %q: use lower-case letters, digits, '.', '_' and '-'", name)
			continue
		}
		root := s.readSite(fsys, rel, file, &errs)
		if root == nil {
			continue
		}
		p := parseProfile(name, root, file, &errs)
		s.checkRefs(root, "", &errs)
		p.source = srcPrefix + rel
		s.profiles[name] = p
		s.names = append(s.names, name)
	}
	sort.Strings(s.names)
	if len(s.names) == 0 && len(errs) == 0 {
		errs.Add(Pos{File: displayName(dir, "profiles")}, "", "no profiles (want profiles/NAME.yaml)")
	}

	s.resolveAll(&errs)

	s.readInventory(fsys, dir, srcPrefix, &errs)
	if fsys.exists(SiteFile) {
		file := displayName(dir, SiteFile)
		if root := s.readSite(fsys, SiteFile, file, &errs); root != nil {
			s.parseSiteFile(root, &errs)
			s.checkRefs(root, "", &errs)
		}
	}
	if fsys.exists(ServicesFile) {
		file := displayName(dir, ServicesFile)
		if root := s.readSite(fsys, ServicesFile, file, &errs); root != nil {
			s.parseServices(root, &errs)
			s.checkRefs(root, "", &errs)
			s.servicesSource = srcPrefix + ServicesFile
		}
	}
	s.checkAddresses(&errs)
	s.placeServices(&errs)
	// Render-level checks run even when the structure has problems, so
	// that one pass reports everything: they cover what did parse. A
	// position that already has a parse error is not reported twice.
	var rendered ErrorList
	s.validateRendered(&rendered)
	reported := map[Pos]bool{}
	for _, e := range errs.Errors() {
		reported[e.Pos] = true
	}
	for _, e := range rendered {
		if !reported[e.Pos] {
			errs = append(errs, e)
		}
	}
	if len(errs.Errors()) > 0 {
		return nil, errs.Err()
	}
	s.warnings = errs.Warnings()
	return s, nil
}

// Warnings returns the problems Load found that do not stop it (a
// warning each), sorted.
func (s *Site) Warnings() ErrorList { return slices.Clone(s.warnings) }

// readYAML parses one file into a value tree (nil when the file cannot be
// read or is not YAML, which is reported).
func readYAML(fsys siteFS, rel, file string, errs *ErrorList) *value {
	data, err := fsys.readFile(rel)
	if err != nil {
		errs.Add(Pos{File: file}, "", "%v", err)
		return nil
	}
	return parseYAML(data, file, errs)
}

// expectFileMap reports the top of a site file unless it is a map. What
// the file holds is not quoted: a file that is not a map is not one of
// ours, and may be anything (a password file).
func expectFileMap(v *value, errs *ErrorList) bool {
	if v.kind == kMap {
		return true
	}
	errs.Add(v.pos, "", "expected a map, got %s", v.shape())
	return false
}

// keyLikeRE is what a key of a site file's top level looks like. An
// unknown key of another form is not quoted in messages: it is more
// likely a line of some other file (/etc/shadow's
// "root:$6$...:19000:0:99999:7::") than a typo.
var keyLikeRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)

// topKeys reports the unknown keys of a site file's top-level map.
type topKeys struct {
	known []string
	// hint follows an unknown key's message (a suggestion when empty).
	hint string
	odd  []Pos // unknown keys that do not look like keys
}

func (t *topKeys) unknown(e entry, errs *ErrorList) {
	if !keyLikeRE.MatchString(e.key) {
		t.odd = append(t.odd, e.kpos)
		return
	}
	hint := t.hint
	if hint == "" {
		hint = suggestList(e.key, t.known)
	}
	errs.Add(e.kpos, e.key, "unknown key %q%s", e.key, hint)
}

// done reports the odd keys once, at the first of them, without quoting
// any.
func (t *topKeys) done(errs *ErrorList) {
	switch len(t.odd) {
	case 0:
	case 1:
		errs.Add(t.odd[0], "", "an unknown key that does not look like a key (not shown; want %s)", strings.Join(t.known, ", "))
	default:
		errs.Add(t.odd[0], "", "%d unknown keys that do not look like keys, the last at line %d (not shown; want %s)",
			len(t.odd), t.odd[len(t.odd)-1].Line, strings.Join(t.known, ", "))
	}
}

// expectMap reports v unless it is a map.
func expectMap(v *value, path string, errs *ErrorList) bool {
	if v.kind == kMap {
		return true
	}
	errs.Add(v.pos, path, "expected a map, got %s", v.describe())
	return false
}

func scalarString(v *value, path string, errs *ErrorList) (string, bool) {
	if v.kind != kScalar {
		errs.Add(v.pos, path, "expected a string, got %s", v.describe())
		return "", false
	}
	return v.text, true
}

func stringList(v *value, path string, errs *ErrorList) ([]string, []Pos) {
	if v.kind != kList {
		errs.Add(v.pos, path, "expected a list, got %s", v.describe())
		return nil, nil
	}
	var out []string
	var pos []Pos
	for i, it := range v.items {
		if s, ok := scalarString(it, path+nodeconf.Index(i), errs); ok {
			out = append(out, s)
			pos = append(pos, it.pos)
		}
	}
	return out, pos
}

// parseCmdline checks a kernel command line, one argument per item: an
// item with white space would be several arguments, and an item that
// starts with a digit right after a console= item is the rest of that
// argument, split at its comma by YAML's [a, b] flow list
// ([console=ttyS0,115200n8] is two items).
func parseCmdline(v *value, path string, errs *ErrorList) {
	items, pos := stringList(v, path, errs)
	for i, it := range items {
		at := path + nodeconf.Index(i)
		switch {
		case strings.ContainsAny(it, " \t\n"):
			errs.Add(pos[i], at, "%q: one kernel argument per item (split it into several items)", it)
		case i > 0 && pos[i].Line == pos[i-1].Line && strings.HasPrefix(items[i-1], "console=") &&
			!strings.Contains(it, "=") && it != "" && it[0] >= '0' && it[0] <= '9':
			errs.Add(pos[i], at, "%q looks like the rest of %q, split at the comma by YAML's [a, b] list: quote the argument (\"%s,%s\")", it, items[i-1], items[i-1], it)
		}
	}
}

// profileFields checks each of a profile's plain fields (those kept as
// they are written and merged along the inherits chain): a null value
// (an unset inherited one) is not checked.
var profileFields = map[string]func(v *value, path string, errs *ErrorList){
	"description": func(v *value, path string, errs *ErrorList) { scalarString(v, path, errs) },
	"arch":        func(v *value, path string, errs *ErrorList) { parseArch(v, path, errs) },
	"stage":       func(v *value, path string, errs *ErrorList) { parseStage(v, path, errs) },
	"kernel":      func(v *value, path string, errs *ErrorList) { parseKernel(v, path, errs) },
	"cmdline":     parseCmdline,
	"outputs":     func(v *value, path string, errs *ErrorList) { parseOutputs(v, path, errs) },
	"persist": func(v *value, path string, errs *ErrorList) {
		if _, ok := scalarBool(v); !ok {
			errs.Add(v.pos, path, "want true or false")
		}
	},
	"domain":     func(v *value, path string, errs *ErrorList) { parseDomainValue(v, path, errs) },
	"enrol":      func(v *value, path string, errs *ErrorList) { parseEnrol(v, path, errs) },
	"enrol_wait": func(v *value, path string, errs *ErrorList) { parseEnrolWait(v, path, errs) },
	"install":    func(v *value, path string, errs *ErrorList) { parseInstall(v, path, false, errs) },
	"upgrade":    func(v *value, path string, errs *ErrorList) { parseUpgrade(v, path, errs) },
	"reboot":     func(v *value, path string, errs *ErrorList) { parseReboot(v, path, errs) },
}

var profileKeys = []string{"inherits", "description", "arch", "stage", "kernel", "cmdline", "outputs", "persist", "domain", "conf", "overrides", "enrol", "enrol_wait", "install", "upgrade", "reboot"}

func parseProfile(name string, root *value, file string, errs *ErrorList) *profile {
	p := &profile{name: name, pos: Pos{File: file}, fields: map[string]*value{}}
	if root.kind == kNull {
		return p
	}
	if !expectFileMap(root, errs) {
		return p
	}
	top := topKeys{known: profileKeys}
	defer top.done(errs)
	for _, e := range root.ents {
		v := e.val
		switch e.key {
		case "inherits":
			if v.kind == kScalar { // a single parent
				v = &value{kind: kList, pos: v.pos, items: []*value{v}}
			}
			if v.kind == kNull {
				continue
			}
			names, pos := stringList(v, "inherits", errs)
			for i, n := range names {
				if slices.Contains(p.inherits, n) {
					errs.Add(pos[i], "inherits"+nodeconf.Index(i), "%q is listed twice", n)
					continue
				}
				p.inherits = append(p.inherits, n)
				p.inheritsPos = append(p.inheritsPos, pos[i])
			}
		case "conf":
			p.conf, p.db = parseConf(v, "conf", true, errs)
		case "overrides":
			p.labelOv, p.hostOv = parseNativeOverrides(v, "overrides", errs)
		default:
			check, ok := profileFields[e.key]
			if !ok {
				top.unknown(e, errs)
				continue
			}
			if v.kind != kNull {
				check(v, e.key, errs)
			}
			p.fields[e.key] = v
		}
	}
	return p
}

// parseConf normalizes and checks a conf fragment, splitting off
// conf.overrides (Divingbell's overrides) when allowed.
func parseConf(v *value, path string, allowDB bool, errs *ErrorList) (conf, db *value) {
	if v.kind == kNull {
		return nil, nil
	}
	if !expectMap(v, path, errs) {
		return nil, nil
	}
	if e := v.entry("overrides"); e != nil {
		if !allowDB {
			errs.Add(e.kpos, path+".overrides", "Divingbell overrides belong in a profile's conf, not here")
		} else {
			db = e.val
			parseDBOverrides(db, path+".overrides", errs)
		}
		v = without(v, "overrides")
	}
	conf = normalizeConf(v, path, errs)
	markRefs(conf)
	checkConf(conf, path, errs)
	return conf, db
}

// dbModule is the Divingbell overrides of one module.
type dbModule struct {
	module string
	labels []labelOverride // conf holds {MODULE: ...} only
	hosts  []hostOverride
}

// parseDBOverrides reads conf.overrides: {divingbell_MODULE: {labels: [...],
// hosts: [...]}}. Each override's conf is checked whole, but only its
// MODULE key is kept: in Divingbell the daemonset of one module reads
// nothing else of it.
func parseDBOverrides(v *value, path string, errs *ErrorList) []dbModule {
	if v.kind == kNull || !expectMap(v, path, errs) {
		return nil
	}
	var out []dbModule
	for _, e := range v.ents {
		ep := joinKey(path, e.key)
		mod, ok := strings.CutPrefix(e.key, "divingbell_")
		if !ok || !slices.Contains(nodeconf.Modules, mod) {
			errs.Add(e.kpos, ep, "unknown module in override %q (want divingbell_MODULE, MODULE one of %s)", e.key, strings.Join(nodeconf.Modules, ", "))
			continue
		}
		if e.val.kind == kNull || !expectMap(e.val, ep, errs) {
			continue
		}
		m := dbModule{module: mod}
		for _, f := range e.val.ents {
			fp := joinKey(ep, f.key)
			switch f.key {
			case "labels":
				m.labels = parseLabelOverrides(f.val, fp, mod, errs)
			case "hosts":
				m.hosts = parseHostOverrides(f.val, fp, mod, errs)
			default:
				errs.Add(f.kpos, fp, "unknown key %q (want labels or hosts)", f.key)
			}
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].module < out[j].module })
	return out
}

func parseNativeOverrides(v *value, path string, errs *ErrorList) ([]labelOverride, []hostOverride) {
	if v.kind == kNull || !expectMap(v, path, errs) {
		return nil, nil
	}
	var lo []labelOverride
	var ho []hostOverride
	for _, e := range v.ents {
		fp := joinKey(path, e.key)
		switch e.key {
		case "labels":
			lo = parseLabelOverrides(e.val, fp, "", errs)
		case "hosts":
			ho = parseHostOverrides(e.val, fp, "", errs)
		default:
			errs.Add(e.kpos, fp, "unknown key %q (want labels or hosts)", e.key)
		}
	}
	return lo, ho
}

// overrideConf parses an override's conf; with module set (Divingbell) it
// keeps only {module: ...}.
func overrideConf(v *value, path, module string, errs *ErrorList) *value {
	c, _ := parseConf(v, path, false, errs)
	if c == nil || module == "" {
		return c
	}
	e := c.entry(module)
	if e == nil {
		return nil
	}
	return &value{kind: kMap, pos: c.pos, ents: []entry{*e}}
}

func parseLabelOverrides(v *value, path, module string, errs *ErrorList) []labelOverride {
	if v.kind == kNull {
		return nil
	}
	if v.kind != kList {
		errs.Add(v.pos, path, "expected a list, got %s", v.describe())
		return nil
	}
	var out []labelOverride
	for i, it := range v.items {
		ip := path + nodeconf.Index(i)
		if !expectMap(it, ip, errs) {
			continue
		}
		var o labelOverride
		ok := true
		if it.get("label") == nil {
			errs.Add(it.pos, ip+".label", "required")
			ok = false
		}
		for _, e := range it.ents {
			fp := joinKey(ip, e.key)
			switch e.key {
			case "label":
				if !expectMap(e.val, fp, errs) {
					ok = false
					continue
				}
				if e.val.get("key") == nil {
					errs.Add(e.val.pos, fp+".key", "required")
					ok = false
				}
				if e.val.get("values") == nil {
					errs.Add(e.val.pos, fp+".values", "required")
					ok = false
				}
				for _, l := range e.val.ents {
					lp := joinKey(fp, l.key)
					switch l.key {
					case "key":
						o.key, _ = scalarString(l.val, lp, errs)
					case "values":
						o.values, _ = stringList(l.val, lp, errs)
						if l.val.kind == kList && len(l.val.items) == 0 {
							errs.Add(l.val.pos, lp, "empty: the override would match no node")
							ok = false
						}
					default:
						errs.Add(l.kpos, lp, "unknown key %q (want key and values)", l.key)
					}
				}
			case "conf":
				o.conf = overrideConf(e.val, fp, module, errs)
			default:
				errs.Add(e.kpos, fp, "unknown key %q (want label and conf)", e.key)
			}
		}
		if ok {
			out = append(out, o)
		}
	}
	return out
}

func parseHostOverrides(v *value, path, module string, errs *ErrorList) []hostOverride {
	if v.kind == kNull {
		return nil
	}
	if v.kind != kList {
		errs.Add(v.pos, path, "expected a list, got %s", v.describe())
		return nil
	}
	var out []hostOverride
	seen := map[string]int{}
	for i, it := range v.items {
		ip := path + nodeconf.Index(i)
		if !expectMap(it, ip, errs) {
			continue
		}
		var o hostOverride
		nameV := it.get("name")
		if nameV == nil {
			errs.Add(it.pos, ip+".name", "required")
		}
		for _, e := range it.ents {
			fp := joinKey(ip, e.key)
			switch e.key {
			case "name":
				o.name, _ = scalarString(e.val, fp, errs)
			case "conf":
				o.conf = overrideConf(e.val, fp, module, errs)
			default:
				errs.Add(e.kpos, fp, "unknown key %q (want name and conf)", e.key)
			}
		}
		if o.name == "" {
			continue
		}
		if j, dup := seen[o.name]; dup {
			errs.Add(nameV.pos, ip+".name", "host %q is also %s", o.name, path+nodeconf.Index(j))
			continue
		}
		seen[o.name] = i
		out = append(out, o)
	}
	return out
}

var nodeKeys = []string{"name", "mac", "macs", "profile", "labels", "fqdn", "ips", "conf", "services", "enrol", "install"}

func (s *Site) parseNodes(root *value, errs *ErrorList) {
	if root.kind == kNull {
		return
	}
	if !expectFileMap(root, errs) {
		return
	}
	var list *value
	top := topKeys{known: []string{"nodes"}, hint: " (want nodes)"}
	for _, e := range root.ents {
		if e.key != "nodes" {
			top.unknown(e, errs)
			continue
		}
		list = e.val
	}
	top.done(errs)
	s.parseNodeList(list, errs)
}

// parseNodeList reads an inventory's list of nodes (nodes.yaml's nodes,
// or an environment's).
func (s *Site) parseNodeList(list *value, errs *ErrorList) {
	if list == nil || list.kind == kNull {
		return
	}
	if list.kind != kList {
		errs.Add(list.pos, "nodes", "expected a list, got %s", list.describe())
		return
	}
	macPos := map[string]string{}
	namePos := map[string]int{} // every name seen, valid node or not
	for i, it := range list.items {
		ip := "nodes" + nodeconf.Index(i)
		if !expectMap(it, ip, errs) {
			continue
		}
		n := &node{pos: it.pos, path: ip}
		var macs []*value
		var ipAt Pos
		ok := true
		for _, e := range it.ents {
			fp := joinKey(ip, e.key)
			switch e.key {
			case "name":
				if name, good := scalarString(e.val, fp, errs); good {
					if !nameRE.MatchString(name) {
						errs.Add(e.val.pos, fp, "bad node name %q: use lower-case letters, digits, '.', '_' and '-'", name)
						ok = false
					}
					n.Name = name
				}
			case "mac":
				macs = append(macs, e.val)
			case "macs":
				if e.val.kind != kList {
					errs.Add(e.val.pos, fp, "expected a list, got %s", e.val.describe())
					continue
				}
				macs = append(macs, e.val.items...)
			case "profile":
				n.Profile, _ = scalarString(e.val, fp, errs)
				if n.Profile != "" && s.profiles[n.Profile] == nil {
					errs.Add(e.val.pos, fp, "unknown profile %q%s", n.Profile, suggestList(n.Profile, s.names))
					ok = false
				}
			case "labels":
				if e.val.kind == kNull || !expectMap(e.val, fp, errs) {
					continue
				}
				n.Labels = map[string]string{}
				for _, l := range e.val.ents {
					lp := joinKey(fp, l.key)
					if !labelRE.MatchString(l.key) {
						errs.Add(l.kpos, lp, "bad label name %q", l.key)
					}
					if v, good := scalarString(l.val, lp, errs); good {
						n.Labels[l.key] = v
						if l.key == "ip" {
							ipAt = l.val.pos
						}
					}
				}
			case "conf":
				n.conf, _ = parseConf(e.val, fp, false, errs)
			case "fqdn", "ips":
				n.id.parse(e, fp, errs)
			case "services":
				n.services = parseNodeServices(e.val, fp, errs)
			case "enrol":
				if _, _, good := parseEnrol(e.val, fp, errs); good {
					n.enrol = e.val
				}
			case "install":
				if _, _, good := parseInstall(e.val, fp, true, errs); good {
					n.install = e.val
				}
			default:
				errs.Add(e.kpos, fp, "unknown key %q%s", e.key, suggestList(e.key, nodeKeys))
			}
		}
		if ipAt.File != "" {
			n.parseIP(n.Labels["ip"], ipAt, errs)
		}
		if it.get("name") == nil {
			errs.Add(it.pos, ip+".name", "required")
			ok = false
		}
		if it.get("profile") == nil {
			errs.Add(it.pos, ip+".profile", "required")
			ok = false
		}
		if it.get("mac") != nil && it.get("macs") != nil {
			errs.Add(it.entry("macs").kpos, ip+".macs", "set either mac or macs, not both")
		}
		if len(macs) == 0 {
			errs.Add(it.pos, ip+".mac", "required (mac or macs)")
		}
		for j, mv := range macs {
			mp := ip + ".mac"
			if it.get("macs") != nil {
				mp = ip + ".macs" + nodeconf.Index(j)
			}
			text, good := scalarString(mv, mp, errs)
			if !good {
				continue
			}
			hw, err := net.ParseMAC(text)
			if err != nil || len(hw) != 6 {
				errs.Add(mv.pos, mp, "bad MAC %q: want six hex bytes like 52:54:00:12:34:56", text)
				continue
			}
			if why := notAMachine(hw); why != "" {
				errs.Add(mv.pos, mp, "bad MAC %s: %s, not a machine's", hw, why)
				continue
			}
			mac := hw.String()
			if other, dup := macPos[mac]; dup {
				errs.Add(mv.pos, mp, "duplicate MAC %s (also %s)", mac, other)
				continue
			}
			macPos[mac] = fmt.Sprintf("node %q at line %d", n.Name, mv.pos.Line)
			n.MACs = append(n.MACs, mac)
		}
		if n.Name != "" {
			if line, dup := namePos[n.Name]; dup {
				errs.Add(it.get("name").pos, ip+".name", "duplicate node name %q (first at line %d)", n.Name, line)
				continue
			}
			namePos[n.Name] = it.pos.Line
		}
		if !ok {
			continue
		}
		s.byName[n.Name] = n
		for _, m := range n.MACs {
			s.byMAC[m] = n
		}
		s.nodes = append(s.nodes, n)
	}
	sort.Slice(s.nodes, func(i, j int) bool { return s.nodes[i].Name < s.nodes[j].Name })
}

// notAMachine says why hw cannot be one machine's network card: the
// broadcast address, all zeros, or a multicast (group) address, whose
// first byte has its low bit set ("" when it can be).
func notAMachine(hw net.HardwareAddr) string {
	switch {
	case hw.String() == "ff:ff:ff:ff:ff:ff":
		return "the broadcast address"
	case hw.String() == "00:00:00:00:00:00":
		return "all zeros"
	case hw[0]&1 != 0:
		return "a multicast address (the group bit, the low bit of the first byte, is set)"
	}
	return ""
}

// ProfileNames returns the names of every profile, sorted.
func (s *Site) ProfileNames() []string { return slices.Clone(s.names) }

// Nodes returns the inventory, sorted by name.
func (s *Site) Nodes() []NodeInfo {
	out := make([]NodeInfo, len(s.nodes))
	for i, n := range s.nodes {
		out[i] = n.info()
	}
	return out
}

func (n *node) info() NodeInfo {
	info := n.NodeInfo
	info.MACs = slices.Clone(n.MACs)
	if n.Labels != nil {
		info.Labels = make(map[string]string, len(n.Labels))
		for k, v := range n.Labels {
			info.Labels[k] = v
		}
	}
	return info
}

// NodeByMAC finds the inventory entry with hardware address mac.
func (s *Site) NodeByMAC(mac net.HardwareAddr) (NodeInfo, bool) {
	n, ok := s.byMAC[mac.String()]
	if !ok {
		return NodeInfo{}, false
	}
	return n.info(), true
}

// valuesIgnored are the keys of a Divingbell values file's conf that
// configure the chart itself, not a host.
var valuesIgnored = []string{"chroot_mnt_path", "log_colors"}

// LoadValues reads a bare Divingbell values file (its top-level conf:,
// including conf.overrides) as a site with one profile, "divingbell", and no
// inventory, for `bellbuild apply --config values.yaml --hostname H`.
// Top-level keys other than conf (images, pod, manifests, ...) configure
// the chart and are ignored.
func LoadValues(file string) (*Site, error) {
	var errs ErrorList
	data, err := readNamedFile(file)
	if fe := (*fileError)(nil); errors.As(err, &fe) {
		errs.Add(Pos{File: file}, "", "%v", err)
		return nil, errs.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("load values: %w", err)
	}
	root := parseYAML(data, file, &errs)
	if root == nil {
		return nil, errs.Err()
	}
	p := &profile{name: "divingbell", pos: Pos{File: file}, fields: map[string]*value{}}
	if abs, err := filepath.Abs(file); err == nil {
		p.source = abs
	}
	// A values file's secrets are those of the directory it is in:
	// DIR/secrets/NAME.age.
	store, err := secrets.Open(filepath.Dir(file))
	if err != nil {
		return nil, fmt.Errorf("load values: %w", err)
	}
	s := &Site{dir: filepath.Dir(p.source), profiles: map[string]*profile{p.name: p}, names: []string{p.name},
		byName: map[string]*node{}, byMAC: map[string]*node{}, store: store, storeArg: filepath.Dir(file)}
	if expectFileMap(root, &errs) {
		if c := root.get("conf"); c != nil {
			if c.kind == kMap {
				for _, k := range valuesIgnored {
					c = without(c, k)
				}
			}
			p.conf, p.db = parseConf(c, "conf", true, &errs)
		}
		s.checkRefs(root, "", &errs)
	}
	if len(errs) > 0 {
		return nil, errs.Err()
	}
	s.resolveAll(&errs)
	if len(errs.Errors()) == 0 {
		s.validateRendered(&errs)
	}
	if len(errs.Errors()) > 0 {
		return nil, errs.Err()
	}
	s.warnings = errs.Warnings()
	return s, nil
}
