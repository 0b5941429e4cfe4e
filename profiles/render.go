package profiles

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/bellbuild/bellbuild/profiles/internal/parallel"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// ErrNotFound is returned (wrapped) for an unknown node or profile.
var ErrNotFound = errors.New("not found")

// resolved is a profile with its inheritance applied, computed once at load.
type resolved struct {
	chain  []string
	fields map[string]*value // scalar fields, last writer wins; nulls removed
	conf   *value            // the merged conf of the chain
	db     []dbModule        // the merged Divingbell overrides
	// labelOv and hostOv are the native overrides of the whole chain, in
	// chain order.
	labelOv []labelOverride
	hostOv  []hostOverride
}

// resolveAll checks the inheritance graph (unknown parents, cycles) and
// resolves every profile that is not part of or below a cycle.
func (s *Site) resolveAll(errs *ErrorList) {
	s.resolved = map[string]*resolved{}
	bad := map[string]bool{}
	for _, name := range s.names {
		p := s.profiles[name]
		for i, parent := range p.inherits {
			if s.profiles[parent] == nil {
				errs.Add(p.inheritsPos[i], "inherits"+nodeconf.Index(i), "unknown profile %q%s", parent, suggestList(parent, s.names))
				bad[name] = true
			}
		}
	}
	for _, cycle := range s.cycles() {
		first := s.profiles[cycle[0]]
		at := first.pos
		for i, parent := range first.inherits {
			if parent == cycle[1%len(cycle)] {
				at = first.inheritsPos[i]
				break
			}
		}
		errs.Add(at, "inherits", "inheritance cycle: %s → %s", strings.Join(cycle, " → "), cycle[0])
		for _, n := range cycle {
			bad[n] = true
		}
	}
	// A profile below a bad one cannot be resolved either; its own
	// problem has been reported already.
	var isBad func(string, map[string]bool) bool
	isBad = func(n string, seen map[string]bool) bool {
		if bad[n] {
			return true
		}
		if seen[n] || s.profiles[n] == nil {
			return false
		}
		seen[n] = true
		for _, p := range s.profiles[n].inherits {
			if isBad(p, seen) {
				bad[n] = true
				return true
			}
		}
		return false
	}
	for _, name := range s.names {
		if !isBad(name, map[string]bool{}) {
			s.resolved[name] = s.resolve(name)
		}
	}
	s.checkStages(errs)
}

// cycles returns each inheritance cycle once, as the profiles along it,
// starting at the smallest name.
func (s *Site) cycles() [][]string {
	// Tarjan's strongly connected components.
	index, low := map[string]int{}, map[string]int{}
	onStack := map[string]bool{}
	var stack []string
	var sccs [][]string
	next := 0
	var visit func(string)
	visit = func(v string) {
		index[v], low[v] = next, next
		next++
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range s.profiles[v].inherits {
			if s.profiles[w] == nil {
				continue
			}
			if _, seen := index[w]; !seen {
				visit(w)
				low[v] = min(low[v], low[w])
			} else if onStack[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] == index[v] {
			var scc []string
			for {
				w := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				onStack[w] = false
				scc = append(scc, w)
				if w == v {
					break
				}
			}
			if len(scc) > 1 || slices.Contains(s.profiles[v].inherits, v) {
				sccs = append(sccs, scc)
			}
		}
	}
	for _, n := range s.names {
		if _, seen := index[n]; !seen {
			visit(n)
		}
	}
	var out [][]string
	for _, scc := range sccs {
		in := map[string]bool{}
		for _, n := range scc {
			in[n] = true
		}
		start := slices.Min(scc)
		// Walk from start back to start inside the component, parents
		// in order, to print one concrete cycle.
		var path []string
		seen := map[string]bool{}
		var walk func(string) bool
		walk = func(n string) bool {
			path = append(path, n)
			seen[n] = true
			for _, p := range s.profiles[n].inherits {
				if p == start {
					return true
				}
				if in[p] && !seen[p] && walk(p) {
					return true
				}
			}
			path = path[:len(path)-1]
			return false
		}
		walk(start)
		out = append(out, path)
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// chainOf returns name's parents depth-first, left to right, each once,
// then name. The graph is acyclic here.
func (s *Site) chainOf(name string) []string {
	var chain []string
	seen := map[string]bool{}
	var visit func(string)
	visit = func(n string) {
		if seen[n] {
			return
		}
		seen[n] = true
		for _, p := range s.profiles[n].inherits {
			visit(p)
		}
		chain = append(chain, n)
	}
	visit(name)
	return chain
}

func (s *Site) resolve(name string) *resolved { return s.resolveChain(s.chainOf(name)) }

// resolveChain merges the profiles of chain, parents first.
func (s *Site) resolveChain(chain []string) *resolved {
	r := &resolved{chain: chain, fields: map[string]*value{}}
	var db *value
	for _, pn := range r.chain {
		p := s.profiles[pn]
		for _, f := range scalarFields {
			if v, ok := p.fields[f]; ok {
				if v.kind == kNull {
					delete(r.fields, f)
				} else {
					r.fields[f] = v
				}
			}
		}
		r.conf = merge(r.conf, p.conf, mergeOpts{named: true}, "", 0)
		db = merge(db, p.db, mergeOpts{}, "", 0)
		r.labelOv = append(r.labelOv, p.labelOv...)
		r.hostOv = append(r.hostOv, p.hostOv...)
	}
	if db != nil {
		var discard ErrorList
		r.db = parseDBOverrides(db, "conf.overrides", &discard)
	}
	return r
}

// effective computes a node's conf tree: the chain, then Divingbell's
// overrides (per module at most one: a matching host, else the last
// matching label), then every matching native label override in chain
// order, then the services placed on it (by name), then matching native
// host overrides, then the node's own conf.
func (r *resolved) effective(labels map[string]string, host string, own *value, svcs []*service) *value {
	named := mergeOpts{named: true}
	c := r.conf
	for _, m := range r.db {
		var pick *value
		found := false
		for _, h := range m.hosts {
			if host != "" && h.name == host {
				pick, found = h.conf, true
			}
		}
		if !found {
			for _, l := range m.labels {
				if l.matches(labels) {
					pick = l.conf
				}
			}
		}
		// Divingbell merges the override over the values: maps
		// merge, lists are replaced.
		c = merge(c, pick, mergeOpts{}, "", 0)
	}
	for _, l := range r.labelOv {
		if l.matches(labels) {
			c = merge(c, l.conf, named, "", 0)
		}
	}
	c = mergeServices(c, svcs)
	for _, h := range r.hostOv {
		if host != "" && h.name == host {
			c = merge(c, h.conf, named, "", 0)
		}
	}
	return merge(c, own, named, "", 0)
}

// rendered is a node's configuration with the tree it was decoded from.
type rendered struct {
	node *nodeconf.Node
	tree *value
	// certAt says where each of node.Certificates was asked for.
	certAt []Pos
	// secrets are node.Secrets, in order, with where the site wrote
	// each.
	secrets []secretUse
}

// render renders profile for a machine with labels, host name and own
// conf; nd is its inventory entry (nil for a machine that has none), whose
// placed services (services.yaml) are merged in.
func (s *Site) render(profile string, labels map[string]string, host string, own *value, nd *node) (*rendered, error) {
	var svcs []*service
	if nd != nil {
		svcs = s.placedOn[nd.Name]
	}
	r, ok := s.resolved[profile]
	if !ok {
		return nil, fmt.Errorf("profile %q: %w", profile, ErrNotFound)
	}
	out, err := s.renderResolved(r, profile, labels, host, own, svcs)
	if err != nil {
		return nil, err
	}
	if err := s.identity(r, out, nd, host); err != nil {
		return nil, err
	}
	return out, nil
}

// renderResolved renders profile from its merged chain r, with the
// services svcs placed on the machine.
func (s *Site) renderResolved(r *resolved, profile string, labels map[string]string, host string, own *value, svcs []*service) (*rendered, error) {
	tree := r.effective(labels, host, own, svcs)
	var errs ErrorList
	conf, refs := decodeConf(tree, &errs)
	keys := keyFinder{}
	uses := inlineUses(&conf, refs, tree, keys)
	for _, err := range dropRefErrors(conf.Validate(), uses) {
		var fe *nodeconf.FieldError
		if !errors.As(err, &fe) {
			errs.Add(Pos{}, "conf", "%v", err)
			continue
		}
		pos := Pos{File: s.profiles[profile].pos.File}
		msg := fe.Msg
		if tree != nil {
			pos = keys.lookup(tree, fe.Path)
			// Name where the other half of a contradiction was set,
			// when it is elsewhere.
			for _, rel := range fe.Related {
				switch rp := keys.lookup(tree, rel); {
				case rp == pos || rp.File == "":
				case rp.File == pos.File:
					msg += fmt.Sprintf(" (%s is set at line %d)", strings.TrimPrefix(rel[strings.LastIndexByte(rel, '.'):], "."), rp.Line)
				default:
					msg += fmt.Sprintf(" (%s is set at %s)", strings.TrimPrefix(rel[strings.LastIndexByte(rel, '.'):], "."), rp)
				}
			}
		}
		errs.Add(pos, "conf."+fe.Path, "%s", msg)
	}
	if len(errs) > 0 {
		return nil, errs.Err()
	}
	n := &nodeconf.Node{Profile: profile, Profiles: slices.Clone(r.chain), Conf: conf, Enrol: renderEnrol(r, nil)}
	renderInstall(r, nil, n)
	if len(labels) > 0 {
		n.Labels = maps.Clone(labels)
	}
	for _, u := range uses {
		// A reference's value is withheld until resolved; an inline
		// one is in place until the node is made public.
		ref := nodeconf.SecretRef{Path: u.path, Name: u.name, Withheld: u.name != ""}
		if ref.Withheld {
			if err := n.SetField(ref.Path, ""); err != nil {
				return nil, err
			}
		}
		n.Secrets = append(n.Secrets, ref)
	}
	s.setServices(n, svcs)
	return &rendered{node: n, tree: tree, secrets: uses}, nil
}

func (s *Site) renderNode(name string) (*rendered, error) {
	n, ok := s.byName[name]
	if !ok {
		return nil, fmt.Errorf("node %q: %w", name, ErrNotFound)
	}
	out, err := s.render(n.Profile, n.Labels, n.Name, n.conf, n)
	if err != nil {
		return nil, err
	}
	out.node.Node = n.Name
	out.node.MACs = slices.Clone(n.MACs)
	if n.enrol != nil {
		out.node.Enrol = renderEnrol(s.resolved[n.Profile], n.enrol)
	}
	if n.install != nil {
		renderInstall(s.resolved[n.Profile], n.install, out.node)
	}
	return out, nil
}

// RenderNode returns the effective configuration of the inventory node
// name: its public configuration, which names each secret value
// (node.Secrets) and holds none (RenderNodeSecrets gives them). A
// configuration that fails nodeconf validation is an ErrorList naming the
// files and lines that set the offending values.
func (s *Site) RenderNode(name string) (*nodeconf.Node, error) {
	r, err := s.renderNode(name)
	if err != nil {
		return nil, err
	}
	return public(r.node)
}

// RenderProfile returns the public configuration of a machine that boots
// profile with labels and hostname but has no inventory entry (hostname
// may be "" and labels nil).
func (s *Site) RenderProfile(profile string, labels map[string]string, hostname string) (*nodeconf.Node, error) {
	r, err := s.render(profile, labels, hostname, nil, nil)
	if err != nil {
		return nil, err
	}
	r.node.Node = hostname
	return public(r.node)
}

// Origin is where one effective value came from.
type Origin struct {
	// Path is the value's path from the node, e.g. `conf.sysctl["vm.swappiness"]`.
	Path string
	// Value is the value as written (scalars), "{}" / "[]", or for a
	// secret value `<secret NAME>` (`<secret PATH>` when written inline).
	Value string
	// Pos is where it was written: for a `!secret NAME`, the reference.
	Pos Pos
	// Secret says that Value stands for a secret value.
	Secret bool
}

func origins(r *rendered) []Origin {
	var out []Origin
	if r.tree == nil {
		return certOrigins(r)
	}
	// Modules in the applier's order, each in the order written.
	tree := *r.tree
	tree.ents = slices.Clone(r.tree.ents)
	slices.SortStableFunc(tree.ents, func(a, b entry) int {
		return slices.Index(nodeconf.Modules, a.key) - slices.Index(nodeconf.Modules, b.key)
	})
	secret := map[string]string{}
	for i, u := range r.secrets {
		secret[u.path] = r.node.Secrets[i].String()
	}
	leaves(&tree, "conf", func(p string, v *value) {
		o := Origin{Path: p, Pos: v.pos}
		shown, isSecret := secret[p]
		switch {
		case v.kind == kMap:
			o.Value = "{}"
		case v.kind == kList:
			o.Value = "[]"
		case isSecret:
			o.Value, o.Secret = shown, true
		case strings.HasSuffix(p, ".user_crypt_passwd"), v.tag == tagSecretRef:
			o.Value, o.Secret = "<secret>", true // a value never shown
		default:
			o.Value = v.text
		}
		out = append(out, o)
	})
	return append(out, certOrigins(r)...)
}

// ExplainNode returns, for every effective value of node name, the file
// and line that set it, in the order of the effective configuration;
// first, for every service of the site, why it is or is not placed on the
// node (path services.NAME), at the line that decided it.
func (s *Site) ExplainNode(name string) ([]Origin, error) {
	r, err := s.renderNode(name)
	if err != nil {
		return nil, err
	}
	return append(s.explainServices(name), origins(r)...), nil
}

// ExplainProfile is ExplainNode for RenderProfile.
func (s *Site) ExplainProfile(profile string, labels map[string]string, hostname string) ([]Origin, error) {
	r, err := s.render(profile, labels, hostname, nil, nil)
	if err != nil {
		return nil, err
	}
	return origins(r), nil
}

// validateRendered renders what the site can produce — every node, every
// profile alone, and every profile under each of its overrides — and
// reports each problem once, at the line that set the offending value.
// The renders are independent and run on every CPU.
func (s *Site) validateRendered(errs *ErrorList) {
	var jobs []func() (*rendered, error)
	s.checked = make([]*nodeconf.Node, len(s.nodes))
	for i, n := range s.nodes {
		if _, ok := s.resolved[n.Profile]; !ok {
			continue // its profile's own problem is reported already
		}
		jobs = append(jobs, func() (*rendered, error) { r, err := s.renderNode(n.Name); return r, s.keepChecked(i, r, err) })
	}
	for _, name := range s.names {
		r, ok := s.resolved[name]
		if !ok {
			// A profile in or below a cycle has no chain; check its own
			// layer so that its module errors are still reported.
			alone := s.resolveChain([]string{name})
			jobs = append(jobs, func() (*rendered, error) { return s.renderResolved(alone, name, nil, "", nil, nil) })
			continue
		}
		renderAs := func(labels map[string]string, host string) {
			jobs = append(jobs, func() (*rendered, error) { return s.render(name, labels, host, nil, nil) })
		}
		renderAs(nil, "")
		try := func(lo []labelOverride, ho []hostOverride) {
			for _, l := range lo {
				for _, v := range l.values {
					renderAs(map[string]string{l.key: v}, "")
				}
			}
			for _, h := range ho {
				renderAs(nil, h.name)
			}
		}
		try(r.labelOv, r.hostOv)
		for _, m := range r.db {
			try(m.labels, m.hosts)
		}
	}
	results := make([]error, len(jobs))
	warnings := make([]ErrorList, len(jobs))
	// An inline secret is warned about once per place (warned), in the
	// first render that meets it.
	var warned sync.Map
	// Every node's error is kept: f never stops the others.
	parallel.Each(context.Background(), len(jobs), 1, func(_ *struct{}, i int) error {
		r, err := jobs[i]()
		results[i] = err
		if r != nil {
			warnings[i] = s.inlineWarnings(&r.node.Conf, r.secrets, &warned)
		}
		return nil
	})
	for i, err := range results {
		var l ErrorList
		if errors.As(err, &l) {
			*errs = append(*errs, l...)
		} else if err != nil {
			errs.Add(Pos{}, "", "%v", err)
		}
		*errs = append(*errs, warnings[i]...)
	}
	errs.Sort()
}
