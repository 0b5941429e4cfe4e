package profiles

import (
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"go.yaml.in/yaml/v3"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// kind is the shape of a value.
type kind uint8

const (
	kNull kind = iota
	kScalar
	kMap
	kList
)

func (k kind) String() string {
	return [...]string{"null", "scalar", "map", "list"}[k]
}

// value is a YAML value that remembers where it was written. Values are
// immutable once built: merging makes new maps and lists and shares the
// rest, so one profile's merged configuration serves every node.
type value struct {
	kind  kind
	pos   Pos
	tag   string // scalars: the resolved YAML tag, e.g. "!!str", "!!int"
	text  string // scalars: the source text
	ents  []entry
	items []*value
	// literal marks a literal block scalar (|), whose lines are the
	// file's (env.go finds a variable's line in it).
	literal bool
	// subst says which environment variables made the text ("from
	// ${NAME}"; env.go), for messages.
	subst string
}

// entry is one key of a map value.
type entry struct {
	key  string
	kpos Pos
	val  *value
}

func (v *value) get(key string) *value {
	if v == nil || v.kind != kMap {
		return nil
	}
	for i := range v.ents {
		if v.ents[i].key == key {
			return v.ents[i].val
		}
	}
	return nil
}

func (v *value) entry(key string) *entry {
	if v == nil || v.kind != kMap {
		return nil
	}
	for i := range v.ents {
		if v.ents[i].key == key {
			return &v.ents[i]
		}
	}
	return nil
}

// describe names the value's type for messages.
func (v *value) describe() string {
	if v.kind != kScalar {
		return v.kind.String()
	}
	switch v.tag {
	case tagSecret, tagSecretRef:
		return "a secret (!secret " + v.text + "): only a text value can be a secret"
	case "!!int":
		return "integer " + v.text
	case "!!float":
		return "number " + v.text
	case "!!bool":
		return "boolean " + v.text
	}
	if v.subst != "" {
		return "string " + strconv.Quote(v.text) + " (" + v.subst + ")"
	}
	return "string " + strconv.Quote(v.text)
}

// shape names the value's type without its text, for a value that may
// not be ours to quote.
func (v *value) shape() string {
	if v.kind != kScalar {
		return v.kind.String()
	}
	switch v.tag {
	case "!!int":
		return "integer"
	case "!!float":
		return "number"
	case "!!bool":
		return "boolean"
	}
	return "string"
}

// maxValues and maxBytes bound what one file may expand to, so that
// aliases (a "billion laughs" file, or one long string repeated by
// aliases) fail instead of eating the memory: at most maxValues values,
// and at most maxBytes bytes of keys and scalars counted as often as
// aliases repeat them.
const (
	maxValues = 1 << 18
	maxBytes  = 64 << 20
)

// budget is what is left of a file's expansion.
type budget struct {
	values, bytes int
	spent         bool // an error has been reported
}

// fromYAML converts a parsed document into a value tree, reporting
// duplicate keys, non-scalar keys and merge keys.
func fromYAML(n *yaml.Node, file string, errs *ErrorList) *value {
	b := budget{values: maxValues, bytes: maxBytes}
	return convert(n, file, errs, &b)
}

// spend takes values (0 for a map key, else 1) of size bytes from the
// budget and reports, once, when the budget is exhausted.
func (b *budget) spend(pos Pos, values, size int, errs *ErrorList) bool {
	if b.spent {
		return false
	}
	b.values -= values
	b.bytes -= size
	switch {
	case b.values <= 0:
		errs.Add(pos, "", "the file expands to more than %d values (aliases of aliases?)", maxValues)
	case b.bytes < 0:
		errs.Add(pos, "", "the file expands to more than %d bytes (%d MiB) of keys and values (aliases?)", maxBytes, maxBytes>>20)
	default:
		return true
	}
	b.spent = true
	return false
}

func convert(n *yaml.Node, file string, errs *ErrorList, budget *budget) *value {
	pos := Pos{File: file, Line: n.Line, Col: n.Column}
	size := 0
	if n.Kind == yaml.ScalarNode {
		size = len(n.Value)
	}
	if !budget.spend(pos, 1, size, errs) {
		return &value{kind: kNull, pos: pos, tag: reported}
	}
	if n.Tag == tagSecret && n.Kind != yaml.ScalarNode {
		errs.Add(pos, "", "!secret takes a name (!secret NAME), not a %s", map[yaml.Kind]string{yaml.SequenceNode: "list", yaml.MappingNode: "map"}[n.Kind])
		return &value{kind: kNull, pos: pos, tag: reported}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return &value{kind: kNull, pos: pos}
		}
		return convert(n.Content[0], file, errs, budget)
	case yaml.AliasNode:
		v := *convert(n.Alias, file, errs, budget)
		return &v
	case yaml.ScalarNode:
		if n.Tag == tagSecret {
			return secretRef(n, pos, errs)
		}
		if n.ShortTag() == "!!null" {
			return &value{kind: kNull, pos: pos}
		}
		return &value{kind: kScalar, pos: pos, tag: n.ShortTag(), text: n.Value, literal: n.Style&yaml.LiteralStyle != 0}
	case yaml.SequenceNode:
		v := &value{kind: kList, pos: pos, items: make([]*value, 0, len(n.Content))}
		for _, c := range n.Content {
			v.items = append(v.items, convert(c, file, errs, budget))
		}
		return v
	case yaml.MappingNode:
		v := &value{kind: kMap, pos: pos, ents: make([]entry, 0, len(n.Content)/2)}
		seen := map[string]Pos{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			kpos := Pos{File: file, Line: k.Line, Col: k.Column}
			if k.Kind != yaml.ScalarNode {
				errs.Add(kpos, "", "a map key must be a scalar")
				continue
			}
			if k.Tag == "!!merge" || k.Value == "<<" && k.Style == 0 {
				errs.Add(kpos, "", "merge keys (<<) are not supported; use inherits")
				continue
			}
			if first, dup := seen[k.Value]; dup {
				errs.Add(kpos, "", "duplicate key %q (first at line %d)", k.Value, first.Line)
				continue
			}
			seen[k.Value] = kpos
			budget.spend(kpos, 0, len(k.Value), errs)
			v.ents = append(v.ents, entry{key: k.Value, kpos: kpos, val: convert(val, file, errs, budget)})
		}
		return v
	}
	errs.Add(pos, "", "unsupported YAML node")
	return &value{kind: kNull, pos: pos}
}

// keyProbes, when a test sets it, counts the map keys and list items that
// merging and the positioning of errors compare: their number must grow
// linearly with the size of what is merged, or a large map takes minutes
// to load.
var keyProbes *atomic.Int64

func probe(n int) {
	if keyProbes != nil {
		keyProbes.Add(int64(n))
	}
}

// mergeOpts says how lists merge.
type mergeOpts struct {
	// named merges the lists of named items (see namedLists) by name;
	// without it every list is replaced, as in Divingbell's overrides.
	named bool
}

// namedLists are the lists of a Conf whose items merge by a key field
// instead of being replaced: "module.field" → key field.
var namedLists = map[string]string{
	"uamlite.users": "user_name",
	"apt.packages":  "name",
	"perm.paths":    "path",
	"credentials":   "name",
}

// merge returns src laid over dst: maps merge key by key, an explicit null
// in src removes the key, named lists (at conf depth 1 or 2, see namedLists)
// merge item by item, and anything else in src replaces dst. Neither
// argument is modified. trail holds the conf-relative path while it is
// short enough to name a named list ("" above the conf).
func merge(dst, src *value, o mergeOpts, trail string, depth int) *value {
	if src == nil {
		return dst
	}
	if dst == nil || src.kind != dst.kind || src.kind == kScalar || src.kind == kNull {
		return clean(src)
	}
	if src.kind == kList {
		if !o.named || depth < 1 || depth > 2 {
			return clean(src)
		}
		keyField, ok := namedLists[trail]
		if !ok {
			return clean(src)
		}
		return mergeNamed(dst, src, keyField, o)
	}
	out := &value{kind: kMap, pos: dst.pos, ents: make([]entry, len(dst.ents), len(dst.ents)+len(src.ents))}
	copy(out.ents, dst.ents)
	// The keys of src are unique, so each is looked for among dst's keys
	// only: by a scan while dst is small, through an index beyond.
	find := finder(len(dst.ents), func(i int) string { return dst.ents[i].key })
	removed := false
	for _, se := range src.ents {
		idx := find(se.key)
		if se.val.kind == kNull {
			if idx >= 0 {
				out.ents[idx].val, removed = nil, true
			}
			continue
		}
		if idx < 0 {
			out.ents = append(out.ents, entry{key: se.key, kpos: se.kpos, val: clean(se.val)})
			continue
		}
		sub := ""
		if depth < 2 {
			if trail == "" {
				sub = se.key
			} else {
				sub = trail + "." + se.key
			}
		}
		out.ents[idx].val = merge(out.ents[idx].val, se.val, o, sub, depth+1)
	}
	if removed {
		out.ents = slices.DeleteFunc(out.ents, func(e entry) bool { return e.val == nil })
	}
	return out
}

// smallScan is the size up to which finder scans instead of indexing.
const smallScan = 8

// finder returns a function that finds a key among n keys (key(i) is the
// i-th; -1 when absent). Only the first match counts, as for get. Each
// lookup costs O(1) beyond smallScan keys, so that merging two maps (or
// named lists) costs the sum of their sizes, not the product.
func finder(n int, key func(int) string) func(string) int {
	if n <= smallScan {
		return func(k string) int {
			for i := range n {
				probe(1)
				if key(i) == k {
					return i
				}
			}
			return -1
		}
	}
	index := make(map[string]int, n)
	for i := n - 1; i >= 0; i-- {
		index[key(i)] = i
	}
	probe(n)
	return func(k string) int {
		probe(1)
		if i, ok := index[k]; ok {
			return i
		}
		return -1
	}
}

// mergeNamed merges two lists of maps by keyField: an item of src whose key
// matches an item of dst is merged into it in place; the others are
// appended in order.
func mergeNamed(dst, src *value, keyField string, o mergeOpts) *value {
	out := &value{kind: kList, pos: dst.pos, items: make([]*value, len(dst.items), len(dst.items)+len(src.items))}
	copy(out.items, dst.items)
	// An item without a scalar name matches nothing: it is indexed as
	// "!", and names are looked up as "=NAME".
	nameOf := func(v *value) (string, bool) {
		if n := v.get(keyField); n != nil && n.kind == kScalar {
			return n.text, true
		}
		return "", false
	}
	find := finder(len(dst.items), func(i int) string {
		if name, ok := nameOf(dst.items[i]); ok {
			return "=" + name
		}
		return "!"
	})
	// An item appended from src is matched by a later item of src with
	// the same name, as it was when the list was scanned whole.
	added := map[string]int{}
	for _, si := range src.items {
		name, ok := nameOf(si)
		idx := -1
		if ok {
			if idx = find("=" + name); idx < 0 {
				if j, seen := added[name]; seen {
					idx = j
				}
			}
		}
		if idx < 0 {
			if ok {
				added[name] = len(out.items)
			}
			out.items = append(out.items, clean(si))
			continue
		}
		out.items[idx] = merge(out.items[idx], si, o, "", 3)
	}
	return out
}

// clean returns v without null map entries (a null that removes nothing
// means nothing), sharing v when it has none.
func clean(v *value) *value {
	if v == nil || !hasNull(v) {
		return v
	}
	out := *v
	switch v.kind {
	case kMap:
		out.ents = make([]entry, 0, len(v.ents))
		for _, e := range v.ents {
			if e.val.kind != kNull {
				e.val = clean(e.val)
				out.ents = append(out.ents, e)
			}
		}
	case kList:
		out.items = make([]*value, len(v.items))
		for i, it := range v.items {
			out.items[i] = clean(it)
		}
	}
	return &out
}

func hasNull(v *value) bool {
	switch v.kind {
	case kMap:
		for _, e := range v.ents {
			if e.val.kind == kNull || hasNull(e.val) {
				return true
			}
		}
	case kList:
		for _, it := range v.items {
			if it.kind == kMap && hasNull(it) {
				return true
			}
		}
	}
	return false
}

// without returns map v without key (sharing v when key is absent).
func without(v *value, key string) *value {
	if v.get(key) == nil {
		return v
	}
	out := *v
	out.ents = make([]entry, 0, len(v.ents))
	for _, e := range v.ents {
		if e.key != key {
			out.ents = append(out.ents, e)
		}
	}
	return &out
}

// keyFinder finds the keys of the maps of one tree, indexing each large
// map the first time it is searched: looking up the position of each of
// many errors in a large map costs each O(1), not a scan.
type keyFinder map[*value]func(string) int

func (f keyFinder) entry(v *value, key string) *entry {
	if v == nil || v.kind != kMap {
		return nil
	}
	if len(v.ents) <= smallScan {
		return v.entry(key)
	}
	find, ok := f[v]
	if !ok {
		find = finder(len(v.ents), func(i int) string { return v.ents[i].key })
		f[v] = find
	}
	if i := find(key); i >= 0 {
		return &v.ents[i]
	}
	return nil
}

// lookup follows a nodeconf path (`uamlite.users[0].user_name`,
// `sysctl["vm.swappiness"]`) from v as far as it goes and returns the
// deepest value reached, with the position of its map key when the last
// step was a key.
func lookup(v *value, path string) Pos { return keyFinder{}.lookup(v, path) }

// lookup is lookup with the maps' indexes kept in f.
func (f keyFinder) lookup(v *value, path string) Pos {
	pos := v.pos
	for path != "" && v != nil {
		var seg string
		var idx = -1
		switch {
		case path[0] == '.':
			path = path[1:]
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			seg, path = path[:end], path[end:]
		case strings.HasPrefix(path, `["`):
			q, err := strconv.QuotedPrefix(path[1:])
			if err != nil || len(path) < len(q)+2 || path[1+len(q)] != ']' {
				return pos
			}
			s, _ := strconv.Unquote(q)
			seg, path = s, path[len(q)+2:]
		case path[0] == '[':
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return pos
			}
			n, err := strconv.Atoi(path[1:end])
			if err != nil {
				return pos
			}
			idx, path = n, path[end+1:]
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			seg, path = path[:end], path[end:]
		}
		if idx >= 0 {
			if v.kind != kList || idx >= len(v.items) {
				return pos
			}
			v = v.items[idx]
			pos = v.pos
			continue
		}
		e := f.entry(v, seg)
		if e == nil {
			return pos
		}
		v = e.val
		pos = v.pos
		if v.kind != kScalar && v.kind != kList {
			pos = e.kpos
		}
	}
	return pos
}

// leaves calls fn for every scalar (and empty map or list) under v with its
// nodeconf-style path, in order.
func leaves(v *value, path string, fn func(path string, v *value)) {
	switch v.kind {
	case kMap:
		if len(v.ents) == 0 {
			fn(path, v)
		}
		for _, e := range v.ents {
			leaves(e.val, joinKey(path, e.key), fn)
		}
	case kList:
		if len(v.items) == 0 {
			fn(path, v)
		}
		for i, it := range v.items {
			leaves(it, path+nodeconf.Index(i), fn)
		}
	default:
		fn(path, v)
	}
}

// joinKey appends map key k to path.
func joinKey(path, k string) string {
	seg := nodeconf.Key(k)
	if path == "" && seg[0] == '.' {
		return seg[1:]
	}
	return path + seg
}
