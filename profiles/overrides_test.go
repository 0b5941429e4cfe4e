package profiles

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// TestDivingbellValues renders a Divingbell values file for hosts matched
// by a host override, by label overrides, or by nothing, and compares with
// what Divingbell gives each of them (testdata/divingbell/expected.yaml,
// derived by hand from Divingbell's documented rules).
func TestDivingbellValues(t *testing.T) {
	s, err := LoadValues("testdata/divingbell/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("testdata/divingbell/expected.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Name   string
		Host   string
		Labels map[string]string
		Conf   nodeconf.Conf
	}
	if err := yaml.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 8 {
		t.Fatalf("only %d cases in expected.yaml", len(cases))
	}
	for _, tt := range cases {
		t.Run(tt.Name, func(t *testing.T) {
			n, err := s.RenderProfile("divingbell", tt.Labels, tt.Host)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.Conf, n.Conf, confCmp); diff != "" {
				t.Errorf("conf (-Divingbell +bellbuild):\n%s", diff)
			}
		})
	}
}

// TestDivingbellOverridesInAProfile: the same overrides in a profile's conf
// mean the same thing, and they merge along the inheritance chain like any
// conf map (a child's labels or hosts list replaces its parent's).
func TestDivingbellOverridesInAProfile(t *testing.T) {
	values, err := os.ReadFile("testdata/divingbell/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(values, &doc); err != nil {
		t.Fatal(err)
	}
	conf := doc["conf"].(map[string]any)
	delete(conf, "chroot_mnt_path")
	delete(conf, "log_colors")
	profile, _ := yaml.Marshal(map[string]any{"conf": conf})
	s := mustLoad(t, map[string]string{
		"profiles/db.yaml": string(profile),
		"profiles/child.yaml": `
inherits: [db]
conf:
  overrides:
    divingbell_sysctl:
      hosts:
      - name: superhost3
        conf: {sysctl: {fs.file-max: 3}}
`,
	})
	vs, err := LoadValues("testdata/divingbell/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host   string
		labels map[string]string
	}{{"superhost", nil}, {"superhost2", nil}, {"w", map[string]string{"compute_type": "dpdk", "another_label": "another_value"}}} {
		want, err := vs.RenderProfile("divingbell", tc.labels, tc.host)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.RenderProfile("db", tc.labels, tc.host)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want.Conf, got.Conf); diff != "" {
			t.Errorf("%s: profile db differs from the values file (-values +profile):\n%s", tc.host, diff)
		}
	}
	// In the child, the sysctl hosts list is replaced: superhost's
	// override is gone, superhost3's applies; labels are inherited.
	got, err := s.RenderProfile("child", map[string]string{"compute_type": "dpdk"}, "superhost")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "1", "fs.file-max": "9999"}; !cmp.Equal(want, got.Conf.Sysctl) {
		t.Errorf("child superhost sysctl = %v, want %v", got.Conf.Sysctl, want)
	}
	got, _ = s.RenderProfile("child", nil, "superhost3")
	if got.Conf.Sysctl["fs.file-max"] != "3" {
		t.Errorf("child superhost3 fs.file-max = %q, want 3", got.Conf.Sysctl["fs.file-max"])
	}
}

// TestNativeOverrides: the site's own overrides stack — every matching label
// override in chain order, then host overrides, then the node's conf.
func TestNativeOverrides(t *testing.T) {
	s := mustLoad(t, map[string]string{
		"profiles/base.yaml": `
conf:
  sysctl: {a.x: base, b.x: base, c.x: base, d.x: base}
  uamlite: {users: [{user_name: alice}]}
overrides:
  labels:
  - label: {key: role, values: [db, cache]}
    conf: {sysctl: {a.x: base-role, b.x: base-role}, uamlite: {users: [{user_name: dba}]}}
  - label: {key: zone, values: [z1]}
    conf: {sysctl: {c.x: base-zone}}
  hosts:
  - name: h1
    conf: {sysctl: {a.x: base-h1}}
`,
		"profiles/child.yaml": `
inherits: [base]
overrides:
  labels:
  - label: {key: role, values: [db]}
    conf: {sysctl: {b.x: child-role}}
  hosts:
  - name: h1
    conf: {sysctl: {d.x: child-h1}}
`,
		"nodes.yaml": `
nodes:
- {name: h1, mac: "52:54:00:00:00:01", profile: child, labels: {role: db, zone: z1}, conf: {sysctl: {d.x: node}}}
- {name: h2, mac: "52:54:00:00:00:02", profile: child, labels: {role: cache}}
- {name: h3, mac: "52:54:00:00:00:03", profile: child, labels: {role: web}}
`,
	})
	tests := []struct {
		node   string
		sysctl map[string]string
		users  []string
	}{
		{"h1", map[string]string{"a.x": "base-h1", "b.x": "child-role", "c.x": "base-zone", "d.x": "node"}, []string{"alice", "dba"}},
		{"h2", map[string]string{"a.x": "base-role", "b.x": "base-role", "c.x": "base", "d.x": "base"}, []string{"alice", "dba"}},
		{"h3", map[string]string{"a.x": "base", "b.x": "base", "c.x": "base", "d.x": "base"}, []string{"alice"}},
	}
	for _, tt := range tests {
		t.Run(tt.node, func(t *testing.T) {
			n, err := s.RenderNode(tt.node)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.sysctl, n.Conf.Sysctl); diff != "" {
				t.Errorf("sysctl (-want +got):\n%s", diff)
			}
			var users []string
			for _, u := range n.Conf.Uamlite.Users {
				users = append(users, u.UserName)
			}
			if diff := cmp.Diff(tt.users, users); diff != "" {
				t.Errorf("users (-want +got):\n%s", diff)
			}
		})
	}
}

// TestProvenance: every effective value names the file and line that set
// it, through inheritance, overrides and the node's own conf.
func TestProvenance(t *testing.T) {
	dir := writeSite(t, map[string]string{
		"profiles/base.yaml": `conf:
  sysctl:
    a.x: 1
    b.x: 1
  uamlite:
    users:
    - user_name: alice
      user_sudo: true
`,
		"profiles/child.yaml": `inherits: [base]
conf:
  sysctl:
    b.x: 2
  uamlite:
    users:
    - user_name: alice
      user_sshkeys: [ssh-rsa AAAA k]
overrides:
  labels:
  - label: {key: role, values: [db]}
    conf:
      sysctl: {c.x: 3}
`,
		"nodes.yaml": `nodes:
- name: n1
  mac: 52:54:00:00:00:01
  profile: child
  labels: {role: db}
  conf:
    sysctl:
      a.x: 4
`,
	})
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.ExplainNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	f := func(name string, line, col int) Pos { return Pos{File: filepath.Join(dir, name), Line: line, Col: col} }
	want := []Origin{
		{Path: `conf.sysctl["a.x"]`, Value: "4", Pos: f("nodes.yaml", 8, 12)},
		{Path: `conf.sysctl["b.x"]`, Value: "2", Pos: f("profiles/child.yaml", 4, 10)},
		{Path: `conf.sysctl["c.x"]`, Value: "3", Pos: f("profiles/child.yaml", 13, 21)},
		{Path: "conf.uamlite.users[0].user_name", Value: "alice", Pos: f("profiles/child.yaml", 7, 18)}, // restated by the child
		{Path: "conf.uamlite.users[0].user_sudo", Value: "true", Pos: f("profiles/base.yaml", 8, 18)},
		{Path: "conf.uamlite.users[0].user_sshkeys[0]", Value: "ssh-rsa AAAA k", Pos: f("profiles/child.yaml", 8, 22)},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ExplainNode (-want +got):\n%s", diff)
	}
}
