package sitediff

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// leaf is one value of a flattened configuration: what is shown, and
// what is compared (the same but for a secret, which is shown by name and
// compared by a digest of its value).
type leaf struct {
	show string
	cmp  string
	// secret is the secret's name ("" when the value is none; "password
	// hash" and the like for a secret that has no name of its own).
	secret string
}

var secretType = reflect.TypeFor[nodeconf.Secret]()

// secretRefRE is how a secret the site refers to by name (`!secret
// NAME`) shows in a rendered configuration: its value is not there.
var secretRefRE = regexp.MustCompile(`^<secret ([a-z0-9][a-z0-9._-]*)>$`)

// secretOf says whether the value at path (a field named field of a
// struct parent, or a map value) is a secret, and its name. It is the one
// place that knows which values are: a nodeconf.Secret, a reference
// `<secret NAME>`, a password hash, a debconf answer to a password
// question.
func secretOf(parent reflect.Value, field string, v reflect.Value) (string, bool) {
	switch {
	case v.Type() == secretType:
		s := v.Interface().(nodeconf.Secret)
		if s.Name() == "" {
			return "secret", true
		}
		return s.Name(), true
	case v.Kind() == reflect.String && secretRefRE.MatchString(v.String()):
		return secretRefRE.FindStringSubmatch(v.String())[1], true
	case field == "user_crypt_passwd":
		return "password hash", true
	case field == "answer" && parent.IsValid() && parent.Type() == reflect.TypeFor[nodeconf.Debconf]() &&
		parent.FieldByName("QuestionType").String() == "password":
		return "debconf password", true
	}
	return "", false
}

// secretLeaf is the leaf of a secret: shown as <secret NAME>, compared by
// a digest of its value (a reference, by its name: its value is in the
// store, compared apart).
func secretLeaf(name string, v reflect.Value) leaf {
	var value []byte
	switch {
	case v.Type() == secretType:
		value = v.Interface().(nodeconf.Secret).Reveal()
	case v.Kind() == reflect.String:
		value = []byte(v.String())
	}
	sum := sha256.Sum256(value)
	return leaf{show: "<secret " + name + ">", cmp: "secret:" + hex.EncodeToString(sum[:]), secret: name}
}

// keyFields name the items of a list of structs, in order of preference:
// a list whose items all have distinct values of one of them is
// flattened by that value (conf.apt.packages["chrony"].version), so that
// inserting an item does not shift the others.
var keyFields = []string{"name", "user_name", "path", "for", "question"}

// flatten calls fn with the path and leaf of every value of v (a
// nodeconf.Node), in a stable order. Lists of scalars are one leaf each
// (cmdline: [a, b]); zero values tagged omitempty are left out.
func flatten(v any, fn func(path string, l leaf)) {
	walk(reflect.ValueOf(v), reflect.Value{}, "", "", fn)
}

func walk(v, parent reflect.Value, field, path string, fn func(string, leaf)) {
	if !v.IsValid() {
		return
	}
	if name, ok := secretOf(parent, field, v); ok {
		if !v.IsZero() {
			fn(path, secretLeaf(name, v))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			walk(v.Elem(), parent, field, path, fn)
		}
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, omit := jsonName(f)
			if name == "-" {
				continue
			}
			fv := v.Field(i)
			if omit && fv.IsZero() {
				continue
			}
			walk(fv, v, name, join(path, name), fn)
		}
	case reflect.Map:
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		for _, k := range keys {
			walk(v.MapIndex(k), reflect.Value{}, "", path+nodeconf.Key(fmt.Sprint(k)), fn)
		}
	case reflect.Slice, reflect.Array:
		elem := v.Type().Elem()
		for elem.Kind() == reflect.Pointer {
			elem = elem.Elem()
		}
		if elem.Kind() != reflect.Struct && elem.Kind() != reflect.Map && elem.Kind() != reflect.Slice {
			fn(path, scalarList(v))
			return
		}
		if key := listKey(v); key != "" {
			for i := range v.Len() {
				it := reflect.Indirect(v.Index(i))
				walk(it, reflect.Value{}, "", path+"["+strconv.Quote(it.FieldByIndex(fieldIndex(it.Type(), key)).String())+"]", fn)
			}
			return
		}
		for i := range v.Len() {
			walk(v.Index(i), reflect.Value{}, "", path+nodeconf.Index(i), fn)
		}
	case reflect.String:
		s := v.String()
		fn(path, leaf{show: strconv.Quote(s), cmp: s})
	default:
		s := fmt.Sprint(v.Interface())
		fn(path, leaf{show: s, cmp: s})
	}
}

// scalarList is a list of scalars as one leaf: [a, b], quoted where a
// value needs it.
func scalarList(v reflect.Value) leaf {
	items := make([]string, v.Len())
	for i := range v.Len() {
		it := v.Index(i)
		if it.Kind() == reflect.String {
			items[i] = strconv.Quote(it.String())
		} else {
			items[i] = fmt.Sprint(it.Interface())
		}
	}
	s := "[" + strings.Join(items, ", ") + "]"
	return leaf{show: s, cmp: s}
}

// listKey is the field of keyFields (by JSON name) whose string values
// tell v's items apart ("" when none does).
func listKey(v reflect.Value) string {
	t := v.Type().Elem()
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return ""
	}
	for _, k := range keyFields {
		idx := fieldIndex(t, k)
		if idx == nil || t.FieldByIndex(idx).Type.Kind() != reflect.String {
			continue
		}
		seen := map[string]bool{}
		ok := true
		for i := range v.Len() {
			it := reflect.Indirect(v.Index(i))
			s := it.FieldByIndex(idx).String()
			if s == "" || seen[s] {
				ok = false
				break
			}
			seen[s] = true
		}
		if ok {
			return k
		}
	}
	return ""
}

// fieldIndex finds the field of struct type t whose JSON name is name.
func fieldIndex(t reflect.Type, name string) []int {
	for i := range t.NumField() {
		if n, _ := jsonName(t.Field(i)); n == name {
			return []int{i}
		}
	}
	return nil
}

// jsonName is a field's name in JSON, and whether it is left out when
// zero.
func jsonName(f reflect.StructField) (string, bool) {
	tag := f.Tag.Get("json")
	name, opts, _ := strings.Cut(tag, ",")
	if name == "" {
		name = f.Name
	}
	return name, strings.Contains(opts, "omitempty") || strings.Contains(opts, "omitzero")
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + nodeconf.Key(name)
}
