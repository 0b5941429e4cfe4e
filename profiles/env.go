package profiles

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
)

// EnvironmentsDir holds a site's environments, one file each:
// SITE/environments/NAME.yaml.
//
//	description: production          # optional
//	nodes: [...]                     # the environment's inventory, as in nodes.yaml,
//	nodes_file: inventories/prod.yaml # or a file of the site that holds it (nodes: [...])
//	vars:                            # ${NAME} in any value of the site's files
//	  domain: prod.example.org
//	  chrony_version: 4.3-2+deb12u1
//	stage:                           # applied over every debootstrap stage of the site
//	  debootstrap: {suite: bookworm, mirror: URL, snapshot: 2024-06-01, snapshot_url: URL}
//	shared_nodes: [worker-9]         # nodes that may also be in another environment
//
// A site with environments is loaded for one of them (LoadEnv); a site
// without is loaded as it always was (Load).
const EnvironmentsDir = "environments"

// DefaultSnapshotURL is the archive a debootstrap snapshot is taken from
// unless snapshot_url says otherwise: the mirror becomes
// SNAPSHOT_URL/TIMESTAMP/ (snapshot.debian.org's layout).
const DefaultSnapshotURL = "https://snapshot.debian.org/archive/debian"

var (
	envKeys      = []string{"description", "nodes", "nodes_file", "vars", "stage", "shared_nodes"}
	envStageKeys = []string{"suite", "mirror", "snapshot", "snapshot_url"}
	varNameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// environment is one SITE/environments/NAME.yaml.
type environment struct {
	name   string
	file   string // display name
	source string // Sources entry
	vars   map[string]envVar
	// root is the file, until it is parsed.
	root *value
	// nodes is the inline inventory (nodes:), nodesFile the file named by
	// nodes_file (site-relative), nodesAt where either was set.
	nodes     *value
	nodesFile string
	nodesAt   Pos
	stage     envStage
	// shared are the nodes of its inventory that may also be in another
	// environment, by name.
	shared map[string]Pos
}

// envVar is one of an environment's vars.
type envVar struct {
	text string
	pos  Pos
}

// envStage is an environment's debootstrap settings ("" when unset).
type envStage struct {
	suite, mirror, snapshot, snapshotURL string
}

// envSet is what a site with environments knows of them.
type envSet struct {
	all []*environment // sorted by name
	cur *environment   // the one loaded
	dir string         // display name of SITE/environments
	// others are the inventories of the environments not loaded (for
	// the checks of nodes in two environments).
	others map[string]*Site
}

// Environment returns the environment the site was loaded for ("" for a
// site without environments).
func (s *Site) Environment() string {
	if s.envs == nil {
		return ""
	}
	return s.envs.cur.name
}

// Environments returns the names of the site's environments, sorted (nil
// for a site without).
func (s *Site) Environments() []string {
	if s.envs == nil {
		return nil
	}
	var out []string
	for _, e := range s.envs.all {
		out = append(out, e.name)
	}
	return out
}

// readEnvironments reads SITE/environments/*.yaml and picks env. Problems
// choosing it (a site with environments and no env, an unknown one, an
// env for a site without any) are returned as fatal: without the
// environment, nothing else can be read. The files' own problems go to
// errs.
func (s *Site) readEnvironments(fsys siteFS, dir, srcPrefix, env string, errs *ErrorList) (fatal ErrorList) {
	dirName := displayName(dir, EnvironmentsDir)
	if !fsys.exists(EnvironmentsDir) {
		if env != "" {
			fatal.Add(Pos{File: dirName}, "", "environment %q: the site has no environments (%s/NAME.yaml)", env, EnvironmentsDir)
		}
		return fatal
	}
	ents, err := fsys.readDir(EnvironmentsDir)
	if err != nil {
		fatal.Add(Pos{File: dirName}, "", "%v", err)
		return fatal
	}
	set := &envSet{dir: dirName}
	for _, e := range ents {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		rel := path.Join(EnvironmentsDir, e.Name())
		file := displayName(dir, rel)
		name, ok := strings.CutSuffix(e.Name(), ".yaml")
		if !ok {
			errs.Add(Pos{File: file}, "", "environment files must be named NAME.yaml")
			continue
		}
		if !nameRE.MatchString(name) {
			errs.Add(Pos{File: file}, "", "bad environment name %q: use lower-case letters, digits, '.', '_' and '-'", name)
			continue
		}
		en := &environment{name: name, file: file, source: srcPrefix + rel, vars: map[string]envVar{}, shared: map[string]Pos{}}
		en.root = readYAML(fsys, rel, file, errs)
		if en.root != nil && en.root.kind == kMap {
			if v := en.root.entry("vars"); v != nil {
				en.parseVars(v.val, errs)
			}
		}
		set.all = append(set.all, en)
	}
	// Once every environment's vars are known (a missing one's message
	// names those that define it), the rest of each file.
	for _, en := range set.all {
		if en.root != nil {
			en.parse(en.root, set.all, errs)
			en.root = nil
		}
	}
	names := make([]string, len(set.all))
	for i, e := range set.all {
		names[i] = e.name
	}
	switch i := slices.Index(names, env); {
	case len(names) == 0:
		// An empty environments directory: a site without environments
		// (its files may still have problems, reported above).
		if env != "" {
			fatal.Add(Pos{File: dirName}, "", "environment %q: the site has no environments (%s/NAME.yaml)", env, EnvironmentsDir)
		}
		return fatal
	case env == "":
		fatal.Add(Pos{File: dirName}, "", "the site has environments (%s): choose one (--env NAME or $BELLBUILD_ENV)", strings.Join(names, ", "))
		return fatal
	case i < 0:
		fatal.Add(Pos{File: dirName}, "", "unknown environment %q (environments: %s)%s", env, strings.Join(names, ", "), suggestList(env, names))
		return fatal
	default:
		set.cur = set.all[i]
	}
	s.envs = set
	return nil
}

// parse reads an environment file, but for its vars (parseVars). Its
// values are substituted with its own vars, but for vars itself.
func (en *environment) parse(root *value, all []*environment, errs *ErrorList) {
	if root.kind == kNull || !expectFileMap(root, errs) {
		return
	}
	top := topKeys{known: envKeys}
	defer top.done(errs)
	for _, e := range root.ents {
		if e.key != "vars" {
			substitute(e.val, en, all, errs)
		}
		fp := joinKey("", e.key)
		switch e.key {
		case "vars":
		case "description":
			if e.val.kind != kNull {
				scalarString(e.val, fp, errs)
			}
		case "nodes":
			en.nodes, en.nodesAt = e.val, e.kpos
		case "nodes_file":
			text, ok := scalarString(e.val, fp, errs)
			switch {
			case !ok:
			case text == "" || path.IsAbs(text) || !fsValid(text):
				errs.Add(e.val.pos, fp, "%q: want a path inside the site, relative to it (inventories/prod.yaml)", text)
			default:
				en.nodesFile, en.nodesAt = path.Clean(text), e.val.pos
			}
		case "stage":
			en.parseStage(e.val, fp, errs)
		case "shared_nodes":
			names, pos := stringList(e.val, fp, errs)
			for i, n := range names {
				if _, dup := en.shared[n]; dup {
					errs.Add(pos[i], fp, "%q is listed twice", n)
				}
				en.shared[n] = pos[i]
			}
		default:
			top.unknown(e, errs)
		}
	}
	if root.get("nodes") != nil && root.get("nodes_file") != nil {
		errs.Add(root.entry("nodes_file").kpos, "nodes_file", "set either nodes or nodes_file, not both")
	}
}

// fsValid reports whether p names a file inside the site: no "..", no
// empty or "." element.
func fsValid(p string) bool {
	for _, el := range strings.Split(p, "/") {
		if el == "" || el == "." || el == ".." {
			return false
		}
	}
	return true
}

// parseVars reads vars: NAME: VALUE, each value a scalar taken as written.
func (en *environment) parseVars(v *value, errs *ErrorList) {
	if v.kind == kNull || !expectMap(v, "vars", errs) {
		return
	}
	for _, e := range v.ents {
		fp := joinKey("vars", e.key)
		if !varNameRE.MatchString(e.key) {
			errs.Add(e.kpos, fp, "bad variable name %q: letters, digits and _, not starting with a digit", e.key)
			continue
		}
		switch {
		case e.val.kind == kNull:
			errs.Add(e.val.pos, fp, "no value (write \"\" for an empty string)")
			continue
		case e.val.kind != kScalar:
			errs.Add(e.val.pos, fp, "a variable's value is a scalar (a string, number or boolean, taken as written), not a %s", e.val.kind)
			continue
		case strings.Contains(e.val.text, "${"):
			errs.Add(e.val.pos, fp, "a variable's value cannot use another variable (values are taken as written; write $${ for a literal ${)")
			continue
		}
		en.vars[e.key] = envVar{text: e.val.text, pos: e.val.pos}
	}
}

// parseStage reads stage: {debootstrap: {suite, mirror, snapshot, snapshot_url}}.
func (en *environment) parseStage(v *value, fp string, errs *ErrorList) {
	if v.kind == kNull || !expectMap(v, fp, errs) {
		return
	}
	for _, e := range v.ents {
		kp := joinKey(fp, e.key)
		if e.key != "debootstrap" {
			errs.Add(e.kpos, kp, "unknown key %q: an environment sets debootstrap's %s", e.key, strings.Join(envStageKeys, ", "))
			continue
		}
		if e.val.kind == kNull || !expectMap(e.val, kp, errs) {
			continue
		}
		st := &en.stage
		for _, f := range e.val.ents {
			ffp := joinKey(kp, f.key)
			text, ok := scalarString(f.val, ffp, errs)
			if !ok {
				continue
			}
			switch f.key {
			case "suite":
				st.suite = text
			case "mirror":
				st.mirror = text
			case "snapshot":
				ts, err := parseSnapshot(text)
				if err != nil {
					errs.Add(f.val.pos, ffp, "%v", err)
					continue
				}
				st.snapshot = ts
			case "snapshot_url":
				st.snapshotURL = text
			default:
				errs.Add(f.kpos, ffp, "unknown key %q%s", f.key, suggestList(f.key, envStageKeys))
			}
		}
		if e.val.get("mirror") != nil && e.val.get("snapshot") != nil {
			errs.Add(e.val.entry("snapshot").kpos, kp+".snapshot", "set either mirror or snapshot (which makes the mirror SNAPSHOT_URL/TIMESTAMP/), not both")
		}
	}
}

// parseSnapshot reads a snapshot date: 20240601T000000Z (snapshot.debian.org's
// form), 2024-06-01 or 2024-06-01T12:00:00Z; it returns the first form.
func parseSnapshot(text string) (string, error) {
	for _, layout := range []string{"20060102T150405Z", time.DateOnly, time.RFC3339} {
		if t, err := time.Parse(layout, text); err == nil {
			return t.UTC().Format("20060102T150405Z"), nil
		}
	}
	return "", fmt.Errorf("snapshot %q: want a date and time like 20240601T000000Z, 2024-06-01 or 2024-06-01T12:00:00Z", text)
}

// snapshotMirror is the mirror of a snapshot: SNAPSHOT_URL/TIMESTAMP/.
func snapshotMirror(base, ts string) string {
	if base == "" {
		base = DefaultSnapshotURL
	}
	return strings.TrimSuffix(base, "/") + "/" + ts + "/"
}

// applyStage lays the loaded environment's debootstrap settings over d:
// its suite and snapshot_url replace the stage's; its mirror replaces the
// stage's mirror and snapshot; its snapshot replaces the stage's. Then a
// snapshot makes the mirror.
func (s *Site) applyStage(d *Debootstrap) {
	if s.envs != nil {
		st := s.envs.cur.stage
		if st.suite != "" {
			d.Suite = st.suite
		}
		if st.mirror != "" {
			d.Mirror, d.Snapshot = st.mirror, ""
		}
		if st.snapshot != "" {
			d.Snapshot = st.snapshot
		}
		if st.snapshotURL != "" {
			d.SnapshotURL = st.snapshotURL
		}
	}
	if d.Snapshot != "" {
		d.Mirror = snapshotMirror(d.SnapshotURL, d.Snapshot)
	}
}

// readInventory reads the loaded environment's inventory (and those of
// the others, for the checks of machines in two environments); without
// environments, nodes.yaml.
func (s *Site) readInventory(fsys siteFS, dir, srcPrefix string, errs *ErrorList) {
	if s.envs == nil {
		if fsys.exists("nodes.yaml") {
			file := displayName(dir, "nodes.yaml")
			if root := s.readSite(fsys, "nodes.yaml", file, errs); root != nil {
				s.parseNodes(root, errs)
				s.checkRefs(root, "", errs)
				s.nodesSource = srcPrefix + "nodes.yaml"
			}
		}
		return
	}
	named := false
	for _, en := range s.envs.all {
		named = named || en.nodesFile == "nodes.yaml"
	}
	if fsys.exists("nodes.yaml") && !named {
		errs.Add(Pos{File: displayName(dir, "nodes.yaml")}, "", "a site with environments has an inventory per environment: name this file in one (nodes_file: nodes.yaml) or move its nodes into %s/NAME.yaml", EnvironmentsDir)
	}
	s.envs.others = map[string]*Site{}
	for _, en := range s.envs.all {
		target := s
		if en != s.envs.cur {
			target = &Site{profiles: s.profiles, names: s.names, byName: map[string]*node{}, byMAC: map[string]*node{},
				envs: &envSet{all: s.envs.all, cur: en}}
			s.envs.others[en.name] = target
		}
		switch {
		case en.nodes != nil:
			target.parseNodeList(en.nodes, errs)
			s.checkRefs(en.nodes, "nodes", errs)
			target.nodesSource = en.source
		case en.nodesFile != "":
			file := displayName(dir, en.nodesFile)
			if !fsys.exists(en.nodesFile) {
				errs.Add(en.nodesAt, "nodes_file", "%s: no such file in the site", en.nodesFile)
				continue
			}
			if root := target.readSite(fsys, en.nodesFile, file, errs); root != nil {
				target.parseNodes(root, errs)
				s.checkRefs(root, "", errs)
				target.nodesSource = srcPrefix + en.nodesFile
			}
		}
	}
	s.checkShared(errs)
}

// checkShared reports the machines of the loaded environment that are
// also in another one — the same node name or a MAC address in common —
// unless both environments list them in shared_nodes, which is then a
// warning (validate prints it). It also reports shared_nodes entries that
// name no node of their environment.
func (s *Site) checkShared(errs *ErrorList) {
	cur := s.envs.cur
	for _, en := range s.envs.all {
		inv := s
		if en != cur {
			inv = s.envs.others[en.name]
		}
		for name, at := range en.shared {
			if inv.byName[name] == nil {
				errs.Add(at, "shared_nodes", "%q is no node of environment %s", name, en.name)
			}
		}
	}
	for _, n := range s.nodes {
		for _, en := range s.envs.all {
			if en == cur {
				continue
			}
			other := s.envs.others[en.name]
			var hits []*node
			if o := other.byName[n.Name]; o != nil {
				hits = append(hits, o)
			}
			for _, m := range n.MACs {
				if o := other.byMAC[m]; o != nil && !slices.Contains(hits, o) {
					hits = append(hits, o)
				}
			}
			for _, o := range hits {
				what := fmt.Sprintf("node %q", n.Name)
				if o.Name != n.Name {
					what = fmt.Sprintf("a MAC of node %q (node %q there)", n.Name, o.Name)
				}
				_, here := cur.shared[n.Name]
				_, there := en.shared[o.Name]
				if here && there {
					errs.Warn(n.pos, n.path, "%s is also in environment %s (%s): both list it in shared_nodes", what, en.name, o.pos)
					continue
				}
				var missing []string
				if !here {
					missing = append(missing, cur.name)
				}
				if !there {
					missing = append(missing, en.name)
				}
				errs.Add(n.pos, n.path, "%s is also in environment %s (%s): a machine in two environments must be in the shared_nodes of both (not in %s)", what, en.name, o.pos, strings.Join(missing, ", "))
			}
		}
	}
}

// readSite reads a site file and substitutes the loaded environment's
// vars in its values.
func (s *Site) readSite(fsys siteFS, rel, file string, errs *ErrorList) *value {
	root := readYAML(fsys, rel, file, errs)
	if root != nil && s.envs != nil {
		substitute(root, s.envs.cur, s.envs.all, errs)
	}
	if root != nil {
		checkSecretNames(root, errs)
	}
	return root
}

// substitute replaces ${NAME} in every scalar value under v (map keys are
// left as they are) with en's var NAME, and $${ with ${. A scalar that
// holds a reference becomes a string (its text substituted), whatever
// YAML took it for (a tag of the site's own, !secret, stays), and
// remembers which variables made it. all are every
// environment, to say which define a missing var.
func substitute(v *value, en *environment, all []*environment, errs *ErrorList) {
	switch v.kind {
	case kScalar:
		if !strings.Contains(v.text, "${") {
			return
		}
		text, refs, ok := expand(v, en, all, errs)
		// A value YAML typed (!!int, !!bool, !!null, ...) becomes a
		// string; a tag of the site's own (!secret NAME) stays.
		if strings.HasPrefix(v.tag, "!!") {
			v.tag = "!!str"
		}
		if !ok {
			return // reported: the text stays as written
		}
		if len(refs) > 0 {
			v.subst = "from " + strings.Join(refs, " ")
		}
		v.text = text
	case kMap:
		for _, e := range v.ents {
			if strings.Contains(e.key, "${") && !strings.Contains(e.key, "$${") {
				errs.Add(e.kpos, "", "variables are substituted in values, not in keys: %q", e.key)
			}
			substitute(e.val, en, all, errs)
		}
	case kList:
		for _, it := range v.items {
			substitute(it, en, all, errs)
		}
	}
}

// expand substitutes the text of scalar v; refs are the references made
// (${NAME}), in order, each once.
func expand(v *value, en *environment, all []*environment, errs *ErrorList) (string, []string, bool) {
	var b strings.Builder
	var refs []string
	ok := true
	t := v.text
	for i := 0; i < len(t); {
		switch {
		case strings.HasPrefix(t[i:], "$${"):
			b.WriteString("${")
			i += 3
		case strings.HasPrefix(t[i:], "${"):
			// A reference ends on its line.
			end := strings.IndexAny(t[i:], "}\n")
			at := refPos(v, i)
			if end < 0 || t[i+end] == '\n' {
				errs.Add(at, "", "unterminated ${ (write $${ for a literal ${)")
				return "", nil, false
			}
			name := t[i+2 : i+end]
			i += end + 1
			if !varNameRE.MatchString(name) {
				errs.Add(at, "", "${%s}: a variable's name is letters, digits and _ (write $${ for a literal ${)", name)
				ok = false
				continue
			}
			val, found := en.vars[name]
			if !found {
				var have []string
				for _, o := range all {
					if _, def := o.vars[name]; def {
						have = append(have, o.name)
					}
				}
				if len(have) == 0 {
					errs.Add(at, "", "${%s}: no environment defines %s (write $${ for a literal ${)", name, name)
				} else {
					errs.Add(at, "", "${%s}: environment %s does not define %s (%s does)", name, en.name, name, strings.Join(have, ", "))
				}
				ok = false
				continue
			}
			b.WriteString(val.text)
			if r := "${" + name + "}"; !slices.Contains(refs, r) {
				refs = append(refs, r)
			}
		default:
			b.WriteByte(t[i])
			i++
		}
	}
	return b.String(), refs, ok
}

// refPos is where byte off of scalar v's text is written, as near as the
// parser lets us say: in a literal block (|) the line it is on, else the
// scalar's start.
func refPos(v *value, off int) Pos {
	if !v.literal {
		return v.pos
	}
	return Pos{File: v.pos.File, Line: v.pos.Line + 1 + strings.Count(v.text[:off], "\n")}
}

// envSources are the files the loaded environment adds to every image's
// sources: its own file (its vars may be anywhere).
func (s *Site) envSources() []string {
	if s.envs == nil {
		return nil
	}
	return []string{s.envs.cur.source}
}
