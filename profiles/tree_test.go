package profiles

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestErrorList(t *testing.T) {
	var l ErrorList
	l.Add(Pos{File: "b.yaml", Line: 2, Col: 1}, "conf.x", "second")
	l.Add(Pos{File: "a.yaml", Line: 9, Col: 3}, "", "first")
	l.Add(Pos{File: "b.yaml", Line: 2, Col: 1}, "conf.x", "second")
	l.Add(Pos{File: "b.yaml"}, "", "whole file")
	err := l.Err()
	want := "a.yaml:9:3: first\nb.yaml: whole file\nb.yaml:2:1: conf.x: second"
	if err == nil || err.Error() != want {
		t.Errorf("Err() = %q, want %q (sorted, duplicates dropped)", err, want)
	}
	if (ErrorList{}).Err() != nil {
		t.Error("empty ErrorList.Err() is not nil")
	}
}

// TestLookup maps nodeconf paths back to positions, including keys with
// dots, slashes and quotes, list indexes, and paths that go past the tree.
func TestLookup(t *testing.T) {
	var errs ErrorList
	tree := parseYAML([]byte(`sysctl:
  vm.swappiness: 10
files:
  "/etc/a\"b": {mode: "0644"}
uamlite:
  users:
  - user_name: a
  - user_name: b
    user_sshkeys: [k1, k2]
`), "f.yaml", &errs)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for path, want := range map[string]Pos{
		`sysctl["vm.swappiness"]`:            {File: "f.yaml", Line: 2, Col: 18},
		`files["/etc/a\"b"].mode`:            {File: "f.yaml", Line: 4, Col: 23},
		`uamlite.users[1].user_name`:         {File: "f.yaml", Line: 8, Col: 16},
		`uamlite.users[1].user_sshkeys[1]`:   {File: "f.yaml", Line: 9, Col: 24},
		`uamlite.users[5].user_name`:         {File: "f.yaml", Line: 7, Col: 3}, // the list
		`mounts.mnt.device`:                  {File: "f.yaml", Line: 1, Col: 1}, // the conf
		`uamlite.users[0].user_crypt_passwd`: {File: "f.yaml", Line: 7, Col: 5}, // the user
	} {
		if got := lookup(tree, path); got != want {
			t.Errorf("lookup(%s) = %v, want %v", path, got, want)
		}
	}
}

// TestMergeDoesNotModify: merging shares but never changes its inputs, so
// one profile's merged conf can serve every node.
func TestMergeDoesNotModify(t *testing.T) {
	var errs ErrorList
	parse := func(s string) *value { return parseYAML([]byte(s), "f.yaml", &errs) }
	dst := parse("uamlite: {users: [{user_name: a, user_sudo: true}]}\nsysctl: {a.x: 1, b.x: 2}")
	src := parse("uamlite: {users: [{user_name: a, user_sudo: false}, {user_name: b}]}\nsysctl: {a.x: null}")
	before := func(v *value) []string {
		var out []string
		leaves(v, "", func(p string, v *value) { out = append(out, p+"="+v.text) })
		return out
	}
	d0, s0 := before(dst), before(src)
	out := merge(dst, src, mergeOpts{named: true}, "", 0)
	if diff := cmp.Diff(d0, before(dst)); diff != "" {
		t.Errorf("merge changed dst:\n%s", diff)
	}
	if diff := cmp.Diff(s0, before(src)); diff != "" {
		t.Errorf("merge changed src:\n%s", diff)
	}
	want := []string{"uamlite.users[0].user_name=a", "uamlite.users[0].user_sudo=false", "uamlite.users[1].user_name=b", `sysctl["b.x"]=2`}
	if diff := cmp.Diff(want, before(out)); diff != "" {
		t.Errorf("merged (-want +got):\n%s", diff)
	}
}
