package profiles

import (
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

var (
	confType      = reflect.TypeFor[nodeconf.Conf]()
	stringMapType = reflect.TypeFor[map[string]string]()
)

// reported tags a null that stands for a bad value already reported.
const reported = "!!reported"

// normalizeConf rewrites the accepted alternative spellings of a conf
// fragment into the one form that merges and decodes (in place: fragments
// are fresh from the parser), and drops unknown modules with an error:
//
//   - sysctl keys net/ipv4/ip_forward become net.ipv4.ip_forward;
//   - perm given as a list (Divingbell's form) becomes {paths: LIST};
//   - apt.blacklistpkgs items {name: X} become X;
//   - exec rerun_interval / retry_interval "infinity" becomes unset (0).
func normalizeConf(v *value, path string, errs *ErrorList) *value {
	if v.kind == kNull {
		return v
	}
	if v.kind != kMap {
		errs.Add(v.pos, path, "expected a map of modules, got %s", v.describe())
		return &value{kind: kNull, pos: v.pos}
	}
	kept := v.ents[:0]
	for _, e := range v.ents {
		if !slices.Contains(nodeconf.Modules, e.key) {
			errs.Add(e.kpos, joinKey(path, e.key), "unknown module %q (modules: %s)", e.key, strings.Join(nodeconf.Modules, ", "))
			continue
		}
		mp := joinKey(path, e.key)
		switch e.key {
		case "sysctl":
			normalizeSysctl(e.val, mp, errs)
		case "perm":
			if e.val.kind == kList {
				e.val = &value{kind: kMap, pos: e.val.pos, ents: []entry{{key: "paths", kpos: e.val.pos, val: e.val}}}
			}
		case "apt":
			if bl := e.val.get("blacklistpkgs"); bl != nil && bl.kind == kList {
				for i, it := range bl.items {
					if it.kind != kMap {
						continue
					}
					name := it.get("name")
					if len(it.ents) != 1 || name == nil || name.kind != kScalar {
						errs.Add(it.pos, mp+".blacklistpkgs"+nodeconf.Index(i), "expected a package name or {name: PACKAGE}")
						bl.items[i] = &value{kind: kNull, pos: it.pos, tag: reported}
						continue
					}
					bl.items[i] = name
				}
			}
		case "exec":
			if e.val.kind == kMap {
				for _, s := range e.val.ents {
					for _, f := range []string{"rerun_interval", "retry_interval"} {
						if iv := s.val.get(f); iv != nil && iv.kind == kScalar && (iv.text == "infinity" || iv.text == "infinite") {
							*iv = value{kind: kScalar, pos: iv.pos, tag: "!!int", text: "0"}
						}
					}
				}
			}
		}
		kept = append(kept, e)
	}
	v.ents = kept
	return v
}

func normalizeSysctl(v *value, path string, errs *ErrorList) {
	if v.kind != kMap {
		return
	}
	seen := map[string]Pos{}
	kept := v.ents[:0]
	for _, e := range v.ents {
		e.key = strings.ReplaceAll(e.key, "/", ".")
		if first, dup := seen[e.key]; dup {
			errs.Add(e.kpos, joinKey(path, e.key), "duplicate sysctl (first at line %d)", first.Line)
			continue
		}
		seen[e.key] = e.kpos
		kept = append(kept, e)
	}
	v.ents = kept
}

// checkConf reports every unknown key and wrong type in a (normalized) conf
// fragment. Nulls are allowed as map values: they remove inherited keys.
func checkConf(v *value, path string, errs *ErrorList) {
	if v.kind == kNull {
		return
	}
	var c nodeconf.Conf
	decode(v, reflect.ValueOf(&c).Elem(), &fpath{root: path}, errs)
}

// decodeConf turns a merged conf tree into a nodeconf.Conf, and lists its
// `!secret NAME` references, in the order written. A reference's field
// holds `<secret NAME>` (placeholder) until it is resolved or withheld.
func decodeConf(v *value, errs *ErrorList) (nodeconf.Conf, []secretUse) {
	var c nodeconf.Conf
	p := &fpath{root: "conf", segs: make([]seg, 0, 8), refs: []secretUse{}}
	if v != nil && v.kind != kNull {
		decode(v, reflect.ValueOf(&c).Elem(), p, errs)
	}
	return c, p.refs
}

// fieldIndex maps a struct type's YAML names to field indexes.
var fieldIndex = map[reflect.Type]map[string]int{}

func fieldsOf(t reflect.Type) map[string]int {
	if m, ok := fieldIndex[t]; ok {
		return m
	}
	m := map[string]int{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			m[name] = i
		}
	}
	fieldIndex[t] = m
	return m
}

func init() {
	// Fill the field cache once, so that decode never writes to it
	// concurrently.
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		switch t.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map:
			walk(t.Elem())
		case reflect.Struct:
			if _, ok := fieldIndex[t]; ok {
				return
			}
			fieldsOf(t)
			for i := range t.NumField() {
				walk(t.Field(i).Type)
			}
		}
	}
	walk(confType)
}

// fpath is a field path built only when a message needs it: decode
// visits every value of every node, and most have nothing to report. It is
// a stack of segments, pushed and popped around each descent.
type fpath struct {
	root string
	segs []seg
	// refs collects the secret references met (nil: do not collect).
	refs []secretUse
}

// seg is a map key, or a list index when idx >= 0.
type seg struct {
	key string
	idx int
}

func (p *fpath) push(key string, idx int) { p.segs = append(p.segs, seg{key, idx}) }
func (p *fpath) pop()                     { p.segs = p.segs[:len(p.segs)-1] }

func (p *fpath) String() string {
	s := p.root
	for _, g := range p.segs {
		if g.idx >= 0 {
			s += nodeconf.Index(g.idx)
		} else {
			s = joinKey(s, g.key)
		}
	}
	return s
}

// decode stores v into rv (whose type comes from nodeconf), reporting
// unknown keys and type mismatches with their positions.
func decode(v *value, rv reflect.Value, path *fpath, errs *ErrorList) {
	if v.kind == kNull {
		return
	}
	t := rv.Type()
	switch t.Kind() {
	case reflect.Pointer:
		p := reflect.New(t.Elem())
		decode(v, p.Elem(), path, errs)
		rv.Set(p)
	case reflect.Struct:
		if v.kind != kMap {
			errs.Add(v.pos, path.String(), "expected a map, got %s", v.describe())
			return
		}
		fields := fieldIndex[t]
		for _, e := range v.ents {
			i, ok := fields[e.key]
			if !ok {
				errs.Add(e.kpos, joinKey(path.String(), e.key), "unknown key %q%s", e.key, suggest(e.key, fields))
				continue
			}
			path.push(e.key, -1)
			decode(e.val, rv.Field(i), path, errs)
			path.pop()
		}
	case reflect.Map:
		if v.kind != kMap {
			errs.Add(v.pos, path.String(), "expected a map, got %s", v.describe())
			return
		}
		if t == stringMapType { // the common case (sysctl, env, ...), without reflection
			m := make(map[string]string, len(v.ents))
			for _, e := range v.ents {
				switch e.val.kind {
				case kNull:
				case kScalar:
					if e.val.tag == tagSecretRef {
						path.push(e.key, -1)
						path.ref(e.val)
						path.pop()
						m[e.key] = placeholder(e.val)
						continue
					}
					m[e.key] = e.val.text
				default:
					errs.Add(e.val.pos, joinKey(path.String(), e.key), "expected a string, got %s", e.val.describe())
				}
			}
			rv.Set(reflect.ValueOf(m))
			return
		}
		m := reflect.MakeMapWithSize(t, len(v.ents))
		for _, e := range v.ents {
			if e.val.kind == kNull {
				continue
			}
			ev := reflect.New(t.Elem()).Elem()
			path.push(e.key, -1)
			decode(e.val, ev, path, errs)
			path.pop()
			m.SetMapIndex(reflect.ValueOf(e.key), ev)
		}
		rv.Set(m)
	case reflect.Slice:
		if v.kind != kList {
			errs.Add(v.pos, path.String(), "expected a list, got %s", v.describe())
			return
		}
		s := reflect.MakeSlice(t, len(v.items), len(v.items))
		for i, it := range v.items {
			if it.kind == kNull {
				if it.tag != reported {
					errs.Add(it.pos, path.String()+nodeconf.Index(i), "null list item")
				}
				continue
			}
			path.push("", i)
			decode(it, s.Index(i), path, errs)
			path.pop()
		}
		rv.Set(s)
	case reflect.String:
		if v.kind != kScalar {
			errs.Add(v.pos, path.String(), "expected a string, got %s", v.describe())
			return
		}
		if v.tag == tagSecretRef {
			path.ref(v)
			rv.SetString(placeholder(v))
			return
		}
		rv.SetString(v.text)
	case reflect.Int:
		n, ok := scalarInt(v)
		if !ok {
			errs.Add(v.pos, path.String(), "expected an integer, got %s", v.describe())
			return
		}
		rv.SetInt(int64(n))
	case reflect.Bool:
		b, ok := scalarBool(v)
		if !ok {
			errs.Add(v.pos, path.String(), "expected true or false, got %s", v.describe())
			return
		}
		rv.SetBool(b)
	default:
		errs.Add(v.pos, path.String(), "internal error: cannot decode into %s", t)
	}
}

func scalarInt(v *value) (int, bool) {
	if v.kind != kScalar || (v.tag != "!!int" && v.tag != "!!str") {
		return 0, false
	}
	n, err := strconv.Atoi(strings.ReplaceAll(v.text, "_", ""))
	return n, err == nil
}

// scalarBool accepts YAML booleans and, as Helm-era values files write them,
// the strings "true" and "false".
func scalarBool(v *value) (bool, bool) {
	if v.kind != kScalar || (v.tag != "!!bool" && v.tag != "!!str") {
		return false, false
	}
	switch strings.ToLower(v.text) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// suggest returns ` (did you mean "x"?)` when a known name is within two
// edits of key.
func suggest(key string, known map[string]int) string {
	best, bestD := "", 3
	for k := range known {
		if d := editDistance(key, k); d < bestD || d == bestD && k < best {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return ` (did you mean "` + best + `"?)`
}

func suggestList(key string, known []string) string {
	m := make(map[string]int, len(known))
	for i, k := range known {
		m[k] = i
	}
	return suggest(key, m)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
