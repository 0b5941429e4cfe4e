package nodeconf

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// A rendered node says which of its values are secrets: Node.Secrets lists
// each one's field path (conf.files["/etc/db.pw"].content) and where it
// comes from (a `!secret NAME` of the site, or a field that is secret
// whatever its form, written inline: InlineSecrets). The value itself is
// in its field — in a resolved configuration, the one node's own (a
// disk's config volume, `apply` from a site with an identity) — or it is
// withheld: the field is empty and the reference says so (a public
// configuration: an image's bundle, what serve sends over plain HTTP or
// TFTP). Both forms are documents like any other, written by Encode with
// a checksum of what they hold. The applier holds (neither applies nor
// reverts) every item that has a withheld value: HeldItems.

// SecretRef is one secret value of a rendered node.
type SecretRef struct {
	// Path is the value's field path from the node, e.g.
	// conf.uamlite.users[0].user_crypt_passwd. Only text fields are
	// secrets.
	Path string `json:"path" yaml:"path"`
	// Name is the secret's name in the site's store (`!secret NAME`);
	// "" for a value written inline in a field that is secret whatever
	// its form.
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
	// Withheld says that the value is not in this document: its field
	// is empty and the item it belongs to waits for it.
	Withheld bool `json:"withheld,omitempty" yaml:"withheld,omitempty"`
}

// String is how the value is shown in its place: `<secret NAME>`, or
// `<secret PATH>` for a value written inline.
func (r SecretRef) String() string {
	if r.Name == "" {
		return "<secret " + r.Path + ">"
	}
	return "<secret " + r.Name + ">"
}

// ErrNoField means a path names no text field of a node.
var ErrNoField = errors.New("no such text field")

// Field returns the text at path (e.g. conf.files["/x"].content).
func (n *Node) Field(path string) (string, error) {
	var out string
	err := n.visit(path, func(v reflect.Value) { out = v.String() })
	return out, err
}

// SetField sets the text at path. It changes n's own maps in place.
func (n *Node) SetField(path, text string) error {
	return n.visit(path, func(v reflect.Value) { v.SetString(text) })
}

// Withhold makes n a public configuration: every secret value of n is
// removed from its field and its reference marked Withheld. It changes n
// in place (its maps are its own: a freshly rendered node's).
func (n *Node) Withhold() error {
	for i, r := range n.Secrets {
		if err := n.SetField(r.Path, ""); err != nil {
			return fmt.Errorf("secret %s: %w", r, err)
		}
		n.Secrets[i].Withheld = true
	}
	return nil
}

// Withheld reports whether n lacks the value of any of its secrets.
func (n *Node) Withheld() bool {
	return slices.ContainsFunc(n.Secrets, func(r SecretRef) bool { return r.Withheld })
}

// Show returns a copy of n for display: each withheld value is replaced
// by its reference, `<secret NAME>`, in its field. (A copy of the
// document, not of the configuration: the applier holds those items all
// the same, since their references still say Withheld.)
func (n *Node) Show() (*Node, error) {
	// A round trip through the encoding is the simplest deep copy.
	data, err := Marshal(n, JSON)
	if err != nil {
		return nil, err
	}
	out, _, err := Decode(data)
	if err != nil {
		return nil, err
	}
	for _, r := range out.Secrets {
		if r.Withheld {
			if err := out.SetField(r.Path, r.String()); err != nil {
				return nil, fmt.Errorf("secret %s: %w", r, err)
			}
		}
	}
	return out, nil
}

// InlineSecrets returns the paths (from the node: conf....) of the values
// of c that are secret whatever their form: every user_crypt_passwd; the
// content of a file with secret: true or a mode that others cannot read;
// the answer to a debconf question of type password; and any text that
// holds a PEM private key. Sorted.
func (c *Conf) InlineSecrets() []string {
	set := map[string]bool{}
	if c.Uamlite != nil {
		for i, u := range c.Uamlite.Users {
			if u.UserCryptPasswd != "" {
				set["conf.uamlite.users"+Index(i)+".user_crypt_passwd"] = true
			}
		}
	}
	for p, f := range c.Files {
		if f.Private() {
			set["conf.files"+Key(p)+".content"] = true
		}
	}
	if c.Apt != nil {
		for i, p := range c.Apt.Packages {
			for j, d := range p.Debconf {
				if d.QuestionType == "password" && d.Answer != "" {
					set["conf.apt.packages"+Index(i)+".debconf"+Index(j)+".answer"] = true
				}
			}
		}
	}
	conf := *c
	conf.X509 = nil // issued material, never the site's text
	if anyPrivateKey(reflect.ValueOf(conf)) {
		// Some text holds a private key (rare): find where.
		walkText(reflect.ValueOf(conf), []pathSeg{{key: "conf", idx: -1}}, func(segs []pathSeg, s string) bool {
			set[joinPath(segs)] = true
			return false
		})
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// HoldsPrivateKey reports whether s holds a PEM private key (-----BEGIN
// ... PRIVATE KEY-----).
func HoldsPrivateKey(s string) bool {
	i := strings.Index(s, "-----BEGIN ")
	return i >= 0 && strings.Contains(s[i:], "PRIVATE KEY-----")
}

// Private reports whether the file is secret: secret: true, or a mode
// that lets others not read it.
func (f File) Private() bool {
	if f.Secret {
		return true
	}
	if f.Mode == "" {
		return false
	}
	m, err := strconv.ParseUint(f.Mode, 8, 32)
	return err == nil && m&0o004 == 0
}

// walkText calls found for every text value under v (a Conf or a part of
// it) that holds a private key, with its path (segs, extended as it goes:
// the path is built only for what is found), until found returns true;
// it reports whether one did.
func walkText(v reflect.Value, segs []pathSeg, found func([]pathSeg, string) bool) bool {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			return walkText(v.Elem(), segs, found)
		}
	case reflect.Struct:
		for i, name := range yamlNames(v.Type()) {
			if name != "" && walkText(v.Field(i), append(segs, pathSeg{key: name, idx: -1}), found) {
				return true
			}
		}
	case reflect.Map:
		for it := v.MapRange(); it.Next(); {
			if walkText(it.Value(), append(segs, pathSeg{key: it.Key().String(), idx: -1}), found) {
				return true
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			if walkText(v.Index(i), append(segs, pathSeg{idx: i}), found) {
				return true
			}
		}
	case reflect.String:
		return HoldsPrivateKey(v.String()) && found(segs, v.String())
	}
	return false
}

var stringMap = reflect.TypeFor[map[string]string]()

// anyPrivateKey reports whether any text under v holds a private key
// (walkText without paths: every render asks, and the answer is almost
// always no).
func anyPrivateKey(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Pointer:
		return !v.IsNil() && anyPrivateKey(v.Elem())
	case reflect.Struct:
		for i, name := range yamlNames(v.Type()) {
			if name != "" && anyPrivateKey(v.Field(i)) {
				return true
			}
		}
	case reflect.Map:
		if v.Type() == stringMap {
			for _, s := range v.Interface().(map[string]string) {
				if HoldsPrivateKey(s) {
					return true
				}
			}
			return false
		}
		for it := v.MapRange(); it.Next(); {
			if anyPrivateKey(it.Value()) {
				return true
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			if anyPrivateKey(v.Index(i)) {
				return true
			}
		}
	case reflect.String:
		return HoldsPrivateKey(v.String())
	}
	return false
}

// joinPath writes segments as Key and Index do.
func joinPath(segs []pathSeg) string {
	var b strings.Builder
	for i, s := range segs {
		switch {
		case s.idx >= 0:
			b.WriteString(Index(s.idx))
		case i == 0:
			b.WriteString(s.key)
		default:
			b.WriteString(Key(s.key))
		}
	}
	return b.String()
}

// fieldNames caches each struct type's YAML field names ("" for none).
var fieldNames sync.Map // reflect.Type → []string

func yamlNames(t reflect.Type) []string {
	if v, ok := fieldNames.Load(t); ok {
		return v.([]string)
	}
	names := make([]string, t.NumField())
	for i := range names {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "-" {
			names[i] = name
		}
	}
	fieldNames.Store(t, names)
	return names
}

// pathSeg is one step of a field path: a field or map key, or a list
// index when idx >= 0.
type pathSeg struct {
	key string
	idx int
}

// splitPath parses a path as Key and Index write it: conf.files["/x"].content,
// conf.uamlite.users[0].user_name.
func splitPath(p string) ([]pathSeg, error) {
	var out []pathSeg
	for rest := p; rest != ""; {
		switch {
		case strings.HasPrefix(rest, `["`):
			q, err := strconv.QuotedPrefix(rest[1:])
			if err != nil || len(rest) < len(q)+2 || rest[1+len(q)] != ']' {
				return nil, fmt.Errorf("path %q: a bad [\"key\"]", p)
			}
			k, _ := strconv.Unquote(q)
			out = append(out, pathSeg{key: k, idx: -1})
			rest = rest[len(q)+2:]
		case rest[0] == '[':
			end := strings.IndexByte(rest, ']')
			n, err := strconv.Atoi(rest[1:max(end, 1)])
			if end < 0 || err != nil || n < 0 {
				return nil, fmt.Errorf("path %q: a bad [index]", p)
			}
			out = append(out, pathSeg{idx: n})
			rest = rest[end+1:]
		default:
			if rest[0] == '.' {
				rest = rest[1:]
			} else if len(out) > 0 {
				return nil, fmt.Errorf("path %q: want . or [ after %q", p, out[len(out)-1].key)
			}
			end := strings.IndexAny(rest, ".[")
			if end < 0 {
				end = len(rest)
			}
			if end == 0 {
				return nil, fmt.Errorf("path %q: an empty name", p)
			}
			out = append(out, pathSeg{key: rest[:end], idx: -1})
			rest = rest[end:]
		}
	}
	return out, nil
}

// visit calls fn with the settable text value at path.
func (n *Node) visit(path string, fn func(reflect.Value)) error {
	segs, err := splitPath(path)
	if err != nil {
		return err
	}
	if err := visitValue(reflect.ValueOf(n).Elem(), segs, fn); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func visitValue(v reflect.Value, segs []pathSeg, fn func(reflect.Value)) error {
	if len(segs) == 0 {
		if v.Kind() != reflect.String {
			return ErrNoField
		}
		fn(v)
		return nil
	}
	s := segs[0]
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return ErrNoField
		}
		return visitValue(v.Elem(), segs, fn)
	case reflect.Struct:
		if s.idx >= 0 {
			return ErrNoField
		}
		for i, name := range yamlNames(v.Type()) {
			if name != "" && name == s.key {
				return visitValue(v.Field(i), segs[1:], fn)
			}
		}
		return ErrNoField
	case reflect.Map:
		if s.idx >= 0 || v.Type().Key().Kind() != reflect.String {
			return ErrNoField
		}
		k := reflect.ValueOf(s.key).Convert(v.Type().Key())
		e := v.MapIndex(k)
		if !e.IsValid() {
			return ErrNoField
		}
		cp := reflect.New(e.Type()).Elem()
		cp.Set(e)
		if err := visitValue(cp, segs[1:], fn); err != nil {
			return err
		}
		v.SetMapIndex(k, cp)
		return nil
	case reflect.Slice:
		if s.idx < 0 || s.idx >= v.Len() {
			return ErrNoField
		}
		return visitValue(v.Index(s.idx), segs[1:], fn)
	}
	return ErrNoField
}

// HeldItem is an item of one module that the applier must neither apply
// nor revert, because a secret value of it is withheld.
type HeldItem struct {
	// Module is the module's name (Modules).
	Module string
	// Item names the item as the applier's ledger knows it: a file's or
	// a directory's path (files), a user's name (uamlite), a script's
	// name (exec), a sysctl key, a unit's name (units, and the mount
	// unit of a mount), a package's name (apt), an AppArmor profile's
	// file name. "" holds the whole module (a secret in a field of the
	// module itself, or in a module whose items the ledger does not key
	// by name: perm, ethtool, credentials).
	Item string
	// Ref is the secret it waits for.
	Ref SecretRef
}

// HeldItems returns the item of every withheld secret of n, in the order
// of n.Secrets. A reference whose path names no item of n.Conf holds its
// whole module (or is an error when it names no module at all).
func (n *Node) HeldItems() ([]HeldItem, error) {
	var out []HeldItem
	for _, r := range n.Secrets {
		if !r.Withheld {
			continue
		}
		loc, err := n.Conf.locate(r.Path)
		if err != nil {
			return nil, fmt.Errorf("secret %s: %w", r, err)
		}
		out = append(out, HeldItem{Module: loc.module, Item: loc.item, Ref: r})
	}
	return out, nil
}

// itemLoc is where a path's item is in a Conf: the module, the map key
// or list index of the item (both unset for the whole module), and the
// item's name for the ledger.
type itemLoc struct {
	module, key string
	idx         int
	item        string
}

func (l itemLoc) whole() bool { return l.key == "" && l.idx < 0 }

// locate finds the item path (conf.MODULE...) belongs to.
func (c *Conf) locate(path string) (itemLoc, error) {
	segs, err := splitPath(path)
	if err != nil {
		return itemLoc{}, err
	}
	if len(segs) < 2 || segs[0].key != "conf" || !slices.Contains(Modules, segs[1].key) {
		return itemLoc{}, fmt.Errorf("%s: not a value of a module of conf", path)
	}
	loc := itemLoc{module: segs[1].key, idx: -1}
	var next pathSeg
	if len(segs) > 2 {
		next = segs[2]
	} else {
		next = pathSeg{idx: -1}
	}
	switch loc.module {
	case "sysctl", "limits", "files", "units", "exec":
		loc.key, loc.item = next.key, next.key
	case "mounts":
		if m, ok := c.Mounts[next.key]; ok {
			loc.key, loc.item = next.key, MountUnit(m.MntTgt)
		}
	case "apparmor":
		if next.key == "profiles" && len(segs) > 3 {
			loc.key, loc.item = segs[3].key, segs[3].key
		}
	case "uamlite":
		if next.key == "users" && len(segs) > 3 && c.Uamlite != nil && segs[3].idx >= 0 && segs[3].idx < len(c.Uamlite.Users) {
			loc.idx, loc.item = segs[3].idx, c.Uamlite.Users[segs[3].idx].UserName
		}
	case "apt":
		if next.key == "packages" && len(segs) > 3 && c.Apt != nil && segs[3].idx >= 0 && segs[3].idx < len(c.Apt.Packages) {
			loc.idx, loc.item = segs[3].idx, c.Apt.Packages[segs[3].idx].Name
		}
	}
	if loc.item == "" { // the whole module
		loc.key, loc.idx = "", -1
	}
	return loc, nil
}

// Without returns a copy of c without the items held (c is not changed):
// what the applier applies while they wait. A held whole module is nil.
func (c Conf) Without(held []HeldItem) (Conf, error) {
	drop := map[string]map[string]bool{} // module → map keys
	dropIdx := map[string]map[int]bool{} // module → list indexes
	whole := map[string]bool{}
	for _, h := range held {
		loc, err := c.locate(h.Ref.Path)
		if err != nil {
			return c, err
		}
		switch {
		case loc.whole():
			whole[loc.module] = true
		case loc.idx >= 0:
			if dropIdx[loc.module] == nil {
				dropIdx[loc.module] = map[int]bool{}
			}
			dropIdx[loc.module][loc.idx] = true
		default:
			if drop[loc.module] == nil {
				drop[loc.module] = map[string]bool{}
			}
			drop[loc.module][loc.key] = true
		}
	}
	out := c
	out.Sysctl = without(c.Sysctl, drop["sysctl"])
	out.Limits = without(c.Limits, drop["limits"])
	out.Mounts = without(c.Mounts, drop["mounts"])
	out.Files = without(c.Files, drop["files"])
	out.Units = without(c.Units, drop["units"])
	out.Exec = without(c.Exec, drop["exec"])
	if c.Apparmor != nil && len(drop["apparmor"]) > 0 {
		a := *c.Apparmor
		a.Profiles = without(a.Profiles, drop["apparmor"])
		out.Apparmor = &a
	}
	if c.Uamlite != nil && len(dropIdx["uamlite"]) > 0 {
		u := *c.Uamlite
		u.Users = withoutIdx(u.Users, dropIdx["uamlite"])
		out.Uamlite = &u
	}
	if c.Apt != nil && len(dropIdx["apt"]) > 0 {
		a := *c.Apt
		a.Packages = withoutIdx(a.Packages, dropIdx["apt"])
		out.Apt = &a
	}
	for m := range whole {
		v := reflect.ValueOf(&out).Elem()
		for i, name := range yamlNames(v.Type()) {
			if name == m {
				v.Field(i).SetZero()
			}
		}
	}
	return out, nil
}

func without[V any](m map[string]V, drop map[string]bool) map[string]V {
	if len(drop) == 0 {
		return m
	}
	out := make(map[string]V, len(m))
	for k, v := range m {
		if !drop[k] {
			out[k] = v
		}
	}
	return out
}

func withoutIdx[V any](s []V, drop map[int]bool) []V {
	out := make([]V, 0, len(s))
	for i, v := range s {
		if !drop[i] {
			out = append(out, v)
		}
	}
	return out
}
