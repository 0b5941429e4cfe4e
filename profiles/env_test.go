package profiles

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// envSite is a small site with two environments: vars used in a profile,
// site.yaml, services.yaml and an inventory; staging's inventory inline,
// prod's in a file of its own.
var envSite = map[string]string{
	"profiles/base.yaml": `stage:
  debootstrap: {suite: bookworm, variant: minbase}
kernel: {from: stage}
domain: ${domain}
conf:
  sysctl:
    vm.swappiness: ${swappiness}
  apt:
    packages:
    - {name: chrony, version: "${chrony}"}
  exec:
    run.sh:
      rerun_policy: always
      rerun_interval: ${interval}
      data: |
        #!/bin/sh
        echo $${HOME} $HOME $$ "${env}"
`,
	"profiles/plain.yaml": "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\n",
	"site.yaml":           "network: {server: \"${net}.1\", subnet: \"${net}.0/24\"}\n",
	"services.yaml":       "web:\n  scheduling_group: base\n  num_instances: ${web}\n",
	"environments/staging.yaml": `vars: {env: staging, domain: staging.example.org, swappiness: 30, chrony: 4.3-2+deb12u1, interval: 600, net: 198.51.100, web: 1}
stage:
  debootstrap: {snapshot: 2024-09-01}
nodes:
- {name: s1, mac: 52:54:00:00:01:01, profile: base, labels: {ip: "${net}.11"}}
`,
	"environments/prod.yaml": `vars: {env: prod, domain: example.org, swappiness: 10, chrony: 4.3-2, interval: "3600", net: 192.0.2, web: 2}
stage:
  debootstrap: {suite: trixie, snapshot: 20240601T000000Z, snapshot_url: http://snapshot.example.org/debian}
nodes_file: inv/prod.yaml
`,
	"inv/prod.yaml": `nodes:
- {name: p1, mac: 52:54:00:00:02:01, profile: base, labels: {ip: "${net}.11"}}
- {name: p2, mac: 52:54:00:00:02:02, profile: base, labels: {ip: "${net}.12"}}
`,
}

// TestEnvironments loads each environment of envSite: its inventory, its
// vars in every file (as strings, taken by int fields as quoted digits),
// $${ as a literal ${ and other $ left alone, its stage settings over the
// profiles' and the snapshot's mirror, the files an image names.
func TestEnvironments(t *testing.T) {
	dir := writeSite(t, envSite)
	for _, tc := range []struct {
		env, node, swappiness, chrony, domain, ip, mirror, suite string
		interval, web                                            int
		nodes                                                    []string
		sources                                                  []string
	}{
		{env: "staging", node: "s1", swappiness: "30", chrony: "4.3-2+deb12u1", domain: "staging.example.org", ip: "198.51.100.11",
			mirror: "https://snapshot.debian.org/archive/debian/20240901T000000Z/", suite: "bookworm", interval: 600, web: 1,
			nodes: []string{"s1"}, sources: []string{"profiles/base.yaml", "environments/staging.yaml", "services.yaml"}},
		{env: "prod", node: "p2", swappiness: "10", chrony: "4.3-2", domain: "example.org", ip: "192.0.2.12",
			mirror: "http://snapshot.example.org/debian/20240601T000000Z/", suite: "trixie", interval: 3600, web: 2,
			nodes: []string{"p1", "p2"}, sources: []string{"profiles/base.yaml", "inv/prod.yaml", "services.yaml", "environments/prod.yaml"}},
	} {
		t.Run(tc.env, func(t *testing.T) {
			s, err := LoadEnv(dir, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if s.Environment() != tc.env || !slices.Equal(s.Environments(), []string{"prod", "staging"}) {
				t.Errorf("Environment() = %q, Environments() = %v", s.Environment(), s.Environments())
			}
			var names []string
			for _, n := range s.Nodes() {
				names = append(names, n.Name)
			}
			if !slices.Equal(names, tc.nodes) {
				t.Errorf("nodes = %v, want %v", names, tc.nodes)
			}
			n, err := s.RenderNode(tc.node)
			if err != nil {
				t.Fatal(err)
			}
			c := n.Conf
			for _, f := range []struct{ what, got, want string }{
				{"swappiness", c.Sysctl["vm.swappiness"], tc.swappiness},
				{"chrony", c.Apt.Packages[0].Version, tc.chrony},
				{"domain", n.Domain, tc.domain},
				{"ip", strings.Join(n.IPs, " "), tc.ip},
				{"script", c.Exec["run.sh"].Data, "#!/bin/sh\necho ${HOME} $HOME $$ \"" + tc.env + "\"\n"},
			} {
				if f.got != f.want {
					t.Errorf("%s = %q, want %q", f.what, f.got, f.want)
				}
			}
			if c.Exec["run.sh"].RerunInterval != tc.interval {
				t.Errorf("rerun_interval = %d, want %d", c.Exec["run.sh"].RerunInterval, tc.interval)
			}
			if svc := s.Services()[0]; svc.Instances != tc.web {
				t.Errorf("web num_instances = %d, want %d", svc.Instances, tc.web)
			}
			spec, err := s.Image("base")
			if err != nil {
				t.Fatal(err)
			}
			if d := spec.Stage.Debootstrap; d.Mirror != tc.mirror || d.Suite != tc.suite || d.Variant != "minbase" {
				t.Errorf("debootstrap = %+v, want mirror %s suite %s variant minbase", d, tc.mirror, tc.suite)
			}
			if spec.Environment != tc.env {
				t.Errorf("spec environment %q", spec.Environment)
			}
			var rel []string
			for _, src := range spec.Sources {
				rel = append(rel, strings.TrimPrefix(src, dir+"/"))
			}
			if diff := cmp.Diff(tc.sources, rel); diff != "" {
				t.Errorf("sources (-want +got):\n%s", diff)
			}
			if got := s.PKIOptions().Env; got != tc.env {
				t.Errorf("PKIOptions().Env = %q, want %q (each environment its own CA hierarchy)", got, tc.env)
			}
		})
	}
}

// TestEnvironmentsNone: without environments nothing changes — ${...} is
// text like any other, $${ stays $${ — and --env is refused.
func TestEnvironmentsNone(t *testing.T) {
	dir := writeSite(t, map[string]string{
		"profiles/p.yaml": "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\nconf:\n  files:\n    /etc/x: {content: \"${HOME} $${HOME}\"}\n",
	})
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.RenderProfile("p", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Conf.Files["/etc/x"].Content; got != "${HOME} $${HOME}" {
		t.Errorf("content = %q, want it as written", got)
	}
	if s.Environment() != "" || s.Environments() != nil {
		t.Errorf("environment %q %v", s.Environment(), s.Environments())
	}
	if _, err := LoadEnv(dir, "prod"); err == nil || !strings.Contains(err.Error(), `environment "prod": the site has no environments`) {
		t.Errorf("LoadEnv(prod) = %v", err)
	}
}

// TestEnvironmentsSharedPKI: pki.environments: shared gives every
// environment the site's one hierarchy (no Env), and PKIOptions reads
// the environment's vars for site.yaml.
func TestEnvironmentsSharedPKI(t *testing.T) {
	files := map[string]string{}
	for k, v := range envSite {
		files[k] = v
	}
	files["site.yaml"] = "domain: ${domain}\npki: {environments: shared}\n"
	dir := writeSite(t, files)
	s, err := LoadEnv(dir, "prod")
	if err != nil {
		t.Fatal(err)
	}
	if o := s.PKIOptions(); o.Env != "" || o.Domain != "example.org" {
		t.Errorf("PKIOptions = env %q domain %q, want no env and example.org", o.Env, o.Domain)
	}
	o, err := PKIOptions(dir, "staging")
	if err != nil {
		t.Fatal(err)
	}
	if o.Env != "" || o.Domain != "staging.example.org" {
		t.Errorf("PKIOptions(dir, staging) = env %q domain %q", o.Env, o.Domain)
	}
	delete(files, "site.yaml")
	o, err = PKIOptions(writeSite(t, files), "staging")
	if err != nil || o.Env != "staging" {
		t.Errorf("PKIOptions without site.yaml = env %q, %v; want staging", o.Env, err)
	}
	if _, err := PKIOptions(dir, ""); err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Errorf("PKIOptions(no env) = %v, want the environments listed", err)
	}
}

// TestFleetEnvsGolden renders every node of each environment of
// examples/fleet-envs and compares it with
// testdata/fleet-envs/ENV/NODE.yaml (refresh with -update after checking
// the difference by eye); the two environments' images differ in their
// snapshot.
func TestFleetEnvsGolden(t *testing.T) {
	mirrors := map[string]string{}
	for _, env := range []string{"staging", "prod"} {
		s, err := LoadEnv("../examples/fleet-envs", env)
		if err != nil {
			t.Fatal(err)
		}
		if w := s.Warnings(); len(w) != 1 || !strings.Contains(w[0].Error(), `node "worker-4" is also in environment`) {
			t.Errorf("%s: warnings %v, want worker-4 reported in both", env, w)
		}
		spec, err := s.Image("k8s-worker")
		if err != nil {
			t.Fatal(err)
		}
		mirrors[env] = spec.Stage.Debootstrap.Mirror
		for _, n := range s.Nodes() {
			t.Run(env+"/"+n.Name, func(t *testing.T) {
				node, err := s.RenderNode(n.Name)
				if err != nil {
					t.Fatal(err)
				}
				got, err := yaml.Marshal(node)
				if err != nil {
					t.Fatal(err)
				}
				golden := filepath.Join("testdata", "fleet-envs", env, n.Name+".yaml")
				if *update {
					if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(golden, got, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(string(want), string(got)); diff != "" {
					t.Errorf("render %s (-want +got):\n%s", n.Name, diff)
				}
			})
		}
	}
	want := map[string]string{
		"staging": "https://snapshot.debian.org/archive/debian/20240901T000000Z/",
		"prod":    "https://snapshot.debian.org/archive/debian/20240601T000000Z/",
	}
	if diff := cmp.Diff(want, mirrors); diff != "" {
		t.Errorf("k8s-worker's debootstrap mirror per environment (-want +got):\n%s", diff)
	}
	if _, err := Load("../examples/fleet-envs"); err == nil || !strings.Contains(err.Error(), "the site has environments (prod, staging)") {
		t.Errorf("Load without an environment = %v, want the environments listed", err)
	}
}

// TestSubstitute: what one scalar becomes, and the errors, with vars
// {a: x, n: 3}.
func TestSubstitute(t *testing.T) {
	en := &environment{name: "prod", vars: map[string]envVar{"a": {text: "x"}, "n": {text: "3"}}}
	other := &environment{name: "dev", vars: map[string]envVar{"b": {text: "y"}}}
	for _, tc := range []struct {
		name, yaml string
		text, tag  string
		errs       string
	}{
		{"plain", "v: ${a}\n", "x", "!!str", ""},
		{"number becomes a string", "v: ${n}\n", "3", "!!str", ""},
		{"inside text, twice", "v: \"${a}-${n}-${a}\"\n", "x-3-x", "!!str", ""},
		{"escaped", "v: \"$${a} $a $$ $ {a}\"\n", "${a} $a $$ $ {a}", "!!str", ""},
		{"no reference: YAML's type stays", "v: 12\n", "12", "!!int", ""},
		{"a tag of the site's own stays", "v: !secret ${a}\n", "x", "!secret", ""},
		{"another environment's", "v: ${b}\n", "${b}", "!!str", "t.yaml:1:4: ${b}: environment prod does not define b (dev does)"},
		{"nobody's", "v: ${c}\n", "${c}", "!!str", "t.yaml:1:4: ${c}: no environment defines c (write $${ for a literal ${)"},
		{"unterminated on its line", "v: |\n  ${a\n  }\n", "${a\n}\n", "!!str", "t.yaml:2: unterminated ${ (write $${ for a literal ${)"},
		{"a key", "\"${a}\": 1\n", "", "", "t.yaml:1:1: variables are substituted in values, not in keys: \"${a}\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var errs ErrorList
			root := parseYAML([]byte(tc.yaml), "t.yaml", &errs)
			substitute(root, en, []*environment{en, other}, &errs)
			var got []string
			for _, e := range errs {
				got = append(got, e.Error())
			}
			if strings.Join(got, "\n") != tc.errs {
				t.Errorf("errors %q, want %q", got, tc.errs)
			}
			if tc.text == "" {
				return
			}
			v := root.get("v")
			if v.text != tc.text || v.tag != tc.tag {
				t.Errorf("v = %q %s, want %q %s", v.text, v.tag, tc.text, tc.tag)
			}
		})
	}
}
