// Package sitediff says what a change of a site does to its machines:
// given the site before and after (two revisions of it in git, or two
// directories), which nodes get another configuration (each changed
// value by its path, old → new; a secret as changed, never its value),
// which nodes come and go, which profiles' images must be baked again and
// why (stage, kernel, command line, outputs, or the configuration they
// carry), which service instances move, and which secrets of the store
// change.
//
// It compares what the site model renders (package profiles), so two
// sites that say the same thing in other words compare equal.
package sitediff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/internal/parallel"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/placement"
	"github.com/bellbuild/bellbuild/profiles/secrets"
)

// Side is one of the two sites compared: the loaded site and the
// directory it was loaded from (for its secret store; "" for none).
type Side struct {
	Site *profiles.Site
	Dir  string
}

// Report is what changes going from one site to the other. Its zero
// value (every list empty) means nothing changes.
type Report struct {
	Environment string       `json:"environment,omitempty"`
	Nodes       []NodeChange `json:"nodes"`
	Rebake      []Rebake     `json:"rebake"`
	Services    []Move       `json:"services"`
	Secrets     []Secret     `json:"secrets"`
}

// Empty reports whether nothing changes.
func (r *Report) Empty() bool {
	return len(r.Nodes) == 0 && len(r.Rebake) == 0 && len(r.Services) == 0 && len(r.Secrets) == 0
}

// Status says how a node, image or secret changes.
type Status string

// Statuses.
const (
	Added   Status = "added"
	Removed Status = "removed"
	Changed Status = "changed"
)

// NodeChange is one inventory node whose configuration changes, or that
// comes or goes.
type NodeChange struct {
	Node   string `json:"node"`
	Status Status `json:"status"`
	// Profile is the profile it boots (before, for a removed node).
	Profile string `json:"profile"`
	// Changes are its changed values, by path (changed nodes only).
	Changes []Change `json:"changes,omitempty"`
}

// Change is one value that changes. Old is nil where the value is new,
// New nil where it goes. A secret's Old and New are `<secret NAME>`,
// never its value.
type Change struct {
	Path   string  `json:"path"`
	Old    *string `json:"old"`
	New    *string `json:"new"`
	Secret bool    `json:"secret,omitempty"`
}

// Rebake is a profile whose image must be baked again: an image that
// differs (Changed, with the reasons), or one only the new site makes
// (Added) or only the old one made (Removed).
type Rebake struct {
	Profile string `json:"profile"`
	Status  Status `json:"status"`
	// Reasons are the settings of the image that change: stage...,
	// kernel..., cmdline, outputs, persist.
	Reasons []Change `json:"reasons,omitempty"`
	// Bundle names the configurations the image carries that change
	// (their public parts: a secret value is in no image):
	// "(default)" for the profile's own, else nodes.
	Bundle []string `json:"bundle,omitempty"`
}

// Move is a service whose instances move: the hosts it leaves, those it
// comes to.
type Move struct {
	Service string   `json:"service"`
	Removed []string `json:"removed"`
	Added   []string `json:"added"`
	New     bool     `json:"new,omitempty"`
	Gone    bool     `json:"gone,omitempty"`
}

// Secret is a secret of the store (SITE/secrets/NAME.age) that changes:
// its ciphertext differs (a new value, or the same encrypted to other
// recipients), or it comes or goes.
type Secret struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
}

// DefaultBundle names a profile's own configuration in Rebake.Bundle.
const DefaultBundle = "(default)"

// side is what a comparison needs of one site, computed once.
type side struct {
	nodes    map[string]*nodeconf.Node
	images   map[string]*profiles.ImageSpec // nil: the profile makes none
	defaults map[string]*nodeconf.Node
	secrets  map[string][]byte
}

// Compare says what changes going from old to cur.
func Compare(old, cur Side) (*Report, error) {
	// 1. Render both sides: every profile's image (with the
	// configuration it carries) and every node.
	var a, b *side
	var aerr, berr error
	var wg sync.WaitGroup
	wg.Go(func() { a, aerr = load(old) })
	b, berr = load(cur)
	wg.Wait()
	if err := errors.Join(aerr, berr); err != nil {
		return nil, err
	}
	r := &Report{Environment: cur.Site.Environment(), Nodes: []NodeChange{}, Rebake: []Rebake{}, Services: []Move{}, Secrets: []Secret{}}

	// 2. Secrets of the store; a reference to one that changed changes.
	for _, name := range union(a.secrets, b.secrets) {
		o, okO := a.secrets[name]
		n, okN := b.secrets[name]
		switch {
		case !okN:
			r.Secrets = append(r.Secrets, Secret{Name: name, Status: Removed})
		case !okO:
			r.Secrets = append(r.Secrets, Secret{Name: name, Status: Added})
		case !bytes.Equal(o, n):
			r.Secrets = append(r.Secrets, Secret{Name: name, Status: Changed})
		}
	}
	var storeChanged func(string) bool
	if len(r.Secrets) > 0 {
		storeChanged = func(name string) bool {
			return slices.ContainsFunc(r.Secrets, func(s Secret) bool { return s.Name == name })
		}
	}

	// 3. Nodes: gone, new, changed.
	for _, name := range union(a.nodes, b.nodes) {
		on, nn := a.nodes[name], b.nodes[name]
		switch {
		case nn == nil:
			r.Nodes = append(r.Nodes, NodeChange{Node: name, Status: Removed, Profile: on.Profile})
		case on == nil:
			r.Nodes = append(r.Nodes, NodeChange{Node: name, Status: Added, Profile: nn.Profile})
		default:
			if ch := diffNode(on, nn, storeChanged); len(ch) > 0 {
				r.Nodes = append(r.Nodes, NodeChange{Node: name, Status: Changed, Profile: nn.Profile, Changes: ch})
			}
		}
	}
	// An image carries a node's public configuration: a node whose only
	// changes are secret values (withheld from every image) changes no
	// image.
	changedNode := map[string]bool{}
	for _, n := range r.Nodes {
		changedNode[n.Node] = n.Status != Changed || slices.ContainsFunc(n.Changes, func(c Change) bool { return !c.Secret })
	}
	// The nodes each image carries, on either side.
	carried := map[string][]string{}
	for _, name := range union(a.nodes, b.nodes) {
		for _, sd := range []*side{a, b} {
			if n := sd.nodes[name]; n != nil && !slices.Contains(carried[n.Profile], name) {
				carried[n.Profile] = append(carried[n.Profile], name)
			}
		}
	}

	// 4. Images: settings, and the configurations they carry.
	for _, p := range union(a.images, b.images) {
		oi, ni := a.images[p], b.images[p]
		switch {
		case oi == nil && ni == nil:
		case ni == nil:
			r.Rebake = append(r.Rebake, Rebake{Profile: p, Status: Removed})
		case oi == nil:
			r.Rebake = append(r.Rebake, Rebake{Profile: p, Status: Added})
		default:
			rb := Rebake{Profile: p, Status: Changed, Reasons: diffImage(oi, ni)}
			if ch := diffNode(a.defaults[p], b.defaults[p], storeChanged); slices.ContainsFunc(ch, func(c Change) bool { return !c.Secret }) {
				rb.Bundle = append(rb.Bundle, DefaultBundle)
			}
			for _, n := range carried[p] {
				if changedNode[n] {
					rb.Bundle = append(rb.Bundle, n)
				}
			}
			if len(rb.Reasons) > 0 || len(rb.Bundle) > 0 {
				r.Rebake = append(r.Rebake, rb)
			}
		}
	}

	// 5. Services that move.
	for _, m := range placement.Diff(hostsOf(old.Site), hostsOf(cur.Site)) {
		r.Services = append(r.Services, Move{Service: m.Service, Removed: nonNil(m.Removed), Added: nonNil(m.Added), New: m.New, Gone: m.Gone})
	}

	return r, nil
}

// load renders what Compare needs of s: each profile's image settings
// and default configuration, on every CPU; the nodes are those Load
// rendered and checked.
func load(s Side) (*side, error) {
	out := &side{nodes: map[string]*nodeconf.Node{}, images: map[string]*profiles.ImageSpec{}, defaults: map[string]*nodeconf.Node{}}
	names := s.Site.ProfileNames()
	specs := make([]*profiles.ImageSpec, len(names))
	defs := make([]*nodeconf.Node, len(names))
	errs := make([]error, len(names))
	// Every profile's error is kept: f never stops the others.
	parallel.Each(context.Background(), len(names), 1, func(_ *struct{}, i int) error {
		// A profile without a stage or kernel makes no image (a
		// parent's abstract part): nothing to bake.
		specs[i], _ = s.Site.ImageSettings(names[i])
		defs[i], errs[i] = s.Site.RenderProfile(names[i], nil, "")
		return nil
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i, p := range names {
		out.defaults[p] = defs[i]
		if specs[i] != nil {
			out.images[p] = specs[i]
		}
	}
	nodes, err := s.Site.CheckedNodes()
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		out.nodes[n.Node] = n
	}
	if out.secrets, err = readSecrets(s.Dir); err != nil {
		return nil, err
	}
	return out, nil
}

// readSecrets reads the ciphertexts of the store of the site in dir, by
// name (none when there is no store).
func readSecrets(dir string) (map[string][]byte, error) {
	out := map[string][]byte{}
	if dir == "" {
		return out, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	ents, err := fs.ReadDir(root.FS(), secrets.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret store: %w", err)
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), secrets.Ext)
		if !ok || !e.Type().IsRegular() || secrets.ValidName(name) != nil {
			continue
		}
		data, err := root.ReadFile(filepath.Join(secrets.Dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("secret store: %w", err)
		}
		out[name] = data
	}
	return out, nil
}

// diffNode lists the values of two renders of a node that differ, by
// path. A reference to a secret whose value changed in the store counts
// as changed. Only the parts that differ are flattened (a change to one
// module of 5,000 nodes compares that module).
func diffNode(o, n *nodeconf.Node, storeChanged func(string) bool) []Change {
	if o == nil || n == nil {
		return nil
	}
	oc, nc := *o, *n
	oc.Node, nc.Node = "", ""
	if storeChanged != nil && refersTo(&nc, storeChanged) {
		// A reference that reads the same may change: compare all.
		return diffLeaves(collect(&oc), collect(&nc), storeChanged)
	}
	ol, nl := newLeaves(), newLeaves()
	jointWalk(reflect.ValueOf(oc), reflect.ValueOf(nc), reflect.Value{}, "", "", &ol, &nl)
	if len(ol.paths) == 0 && len(nl.paths) == 0 {
		return nil
	}
	return diffLeaves(ol, nl, storeChanged)
}

// jointWalk flattens the parts of a and b (values at path, a field named
// field of parent) that differ into ol and nl: it goes down the structs
// and maps the two have in common while they differ, and flattens what
// is left whole (walk). An invalid a or b is a value absent on that side.
func jointWalk(a, b, parent reflect.Value, field, path string, ol, nl *leaves) {
	if a.IsValid() && b.IsValid() && a.Type() == b.Type() {
		if reflect.DeepEqual(a.Interface(), b.Interface()) {
			return
		}
		_, secret := secretOf(parent, field, a)
		switch {
		case secret || a.Type() == secretType:
		case a.Kind() == reflect.Pointer && !a.IsNil() && !b.IsNil():
			jointWalk(a.Elem(), b.Elem(), parent, field, path, ol, nl)
			return
		case a.Kind() == reflect.Struct:
			t := a.Type()
			for i := range t.NumField() {
				f := t.Field(i)
				name, omit := jsonName(f)
				if !f.IsExported() || name == "-" {
					continue
				}
				fa, fb := a.Field(i), b.Field(i)
				if omit && fa.IsZero() {
					fa = reflect.Value{}
				}
				if omit && fb.IsZero() {
					fb = reflect.Value{}
				}
				jointWalk(fa, fb, a, name, join(path, name), ol, nl)
			}
			return
		case a.Kind() == reflect.Map && !a.IsNil() && !b.IsNil():
			keys := map[string]reflect.Value{}
			for _, m := range []reflect.Value{a, b} {
				for _, k := range m.MapKeys() {
					keys[fmt.Sprint(k)] = k
				}
			}
			names := make([]string, 0, len(keys))
			for k := range keys {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, k := range names {
				jointWalk(a.MapIndex(keys[k]), b.MapIndex(keys[k]), reflect.Value{}, "", path+nodeconf.Key(k), ol, nl)
			}
			return
		}
	}
	if a.IsValid() {
		walk(a, parent, field, path, ol.add)
	}
	if b.IsValid() {
		walk(b, parent, field, path, nl.add)
	}
}

// refersTo says whether n refers to a secret of the store that changed.
func refersTo(n *nodeconf.Node, changed func(string) bool) bool {
	found := false
	flatten(n, func(_ string, l leaf) {
		found = found || l.secret != "" && strings.HasPrefix(l.cmp, "secret:") && changed(l.secret)
	})
	return found
}

// leaves are a flattened value: its paths in order, and each one's leaf.
type leaves struct {
	paths  []string
	byPath map[string]leaf
}

func newLeaves() leaves { return leaves{byPath: map[string]leaf{}} }

func (ls *leaves) add(p string, l leaf) {
	if _, dup := ls.byPath[p]; !dup {
		ls.paths = append(ls.paths, p)
	}
	ls.byPath[p] = l
}

func collect(v any) leaves {
	ls := newLeaves()
	flatten(v, ls.add)
	return ls
}

// diffLeaves compares two flattened values: the paths of o in order, then
// those only n has.
func diffLeaves(o, n leaves, storeChanged func(string) bool) []Change {
	var out []Change
	str := func(s string) *string { return &s }
	for _, p := range o.paths {
		ol := o.byPath[p]
		nl, ok := n.byPath[p]
		switch {
		case !ok:
			out = append(out, Change{Path: p, Old: str(ol.show), Secret: ol.secret != ""})
		case ol.cmp != nl.cmp || nl.secret != "" && storeChanged != nil && storeChanged(nl.secret) && strings.HasPrefix(nl.show, "<secret "):
			out = append(out, Change{Path: p, Old: str(ol.show), New: str(nl.show), Secret: ol.secret != "" || nl.secret != ""})
		}
	}
	for _, p := range n.paths {
		if _, ok := o.byPath[p]; !ok {
			nl := n.byPath[p]
			out = append(out, Change{Path: p, New: str(nl.show), Secret: nl.secret != ""})
		}
	}
	return out
}

// diffImage lists the settings of two image specs that differ: stage,
// kernel, cmdline, outputs, persist. Paths inside the site are compared
// relative to it (the two sides are two checkouts).
func diffImage(o, n *profiles.ImageSpec) []Change {
	return diffLeaves(imageLeaves(o), imageLeaves(n), nil)
}

// imageLeaves are the settings of s that make its image, but for the
// configuration it carries, as the site spells them.
func imageLeaves(s *profiles.ImageSpec) leaves {
	ls := newLeaves()
	add := func(path, show string) { ls.add(path, leaf{show: show, cmp: show}) }
	str := strconv.Quote
	list := func(l []string) string {
		q := make([]string, len(l))
		for i, x := range l {
			q[i] = str(x)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	rel := func(p string) string {
		if s.SiteDir == "" || p == "" {
			return str(p)
		}
		if r, err := filepath.Rel(s.SiteDir, p); err == nil && r != ".." && !strings.HasPrefix(r, "../") {
			return str(r) + " (in the site)"
		}
		return str(p)
	}
	st := s.Stage
	switch {
	case st.Busybox != nil:
		add("stage.busybox", "{}")
	case st.Tarball != "":
		add("stage.tarball", rel(st.Tarball))
	case st.OCI != "":
		add("stage.oci", rel(st.OCI))
	case st.Dir != "":
		add("stage.dir", rel(st.Dir))
	case st.Profile != "":
		add("stage.profile", str(st.Profile))
	case st.Debootstrap != nil:
		d := st.Debootstrap
		add("stage.debootstrap.suite", str(d.Suite))
		add("stage.debootstrap.variant", str(d.Variant))
		add("stage.debootstrap.mirror", str(d.Mirror))
		add("stage.debootstrap.include", list(d.Include))
		if d.Snapshot != "" {
			add("stage.debootstrap.snapshot", str(d.Snapshot))
		}
	}
	if s.Kernel.Path != "" {
		add("kernel.path", rel(s.Kernel.Path))
	} else {
		add("kernel.from", str(s.Kernel.From))
	}
	add("cmdline", list(s.Cmdline))
	add("outputs", list(s.Outputs))
	add("persist", strconv.FormatBool(s.Persist))
	return ls
}

func hostsOf(s *profiles.Site) map[string][]string {
	out := map[string][]string{}
	for _, svc := range s.Services() {
		out[svc.Name] = svc.Hosts
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// union is the keys of a and b, sorted.
func union[V any](a, b map[string]V) []string {
	out := make([]string, 0, len(a)+len(b))
	for k := range a {
		out = append(out, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
