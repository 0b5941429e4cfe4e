package profiles

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.yaml.in/yaml/v3"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// writeSite writes files (path → content, relative to the site) into a new
// site directory.
func writeSite(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mustLoad(t *testing.T, files map[string]string) *Site {
	t.Helper()
	s, err := Load(writeSite(t, files))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s
}

// confYAML decodes the expected configuration of a test.
func confYAML(t *testing.T, text string) nodeconf.Conf {
	t.Helper()
	var c nodeconf.Conf
	if err := yaml.Unmarshal([]byte(text), &c); err != nil {
		t.Fatalf("bad expected conf: %v", err)
	}
	return c
}

var confCmp = cmpopts.EquateEmpty()

func TestInheritance(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		profile string
		chain   []string
		want    string // nodeconf.Conf as YAML
	}{{
		name: "diamond resolves each parent once, left to right",
		files: map[string]string{
			"profiles/base.yaml":  "conf: {sysctl: {a.x: 1, b.x: 1}}",
			"profiles/left.yaml":  "inherits: [base]\nconf: {sysctl: {a.x: 2}}",
			"profiles/right.yaml": "inherits: base\nconf: {sysctl: {b.x: 3, c.x: 3, a.x: 3}}",
			"profiles/top.yaml":   "inherits: [left, right]\nconf: {sysctl: {d.x: 4}}",
		},
		profile: "top",
		chain:   []string{"base", "left", "right", "top"},
		want:    "sysctl: {a.x: '3', b.x: '3', c.x: '3', d.x: '4'}",
	}, {
		name: "diamond with the parents swapped",
		files: map[string]string{
			"profiles/base.yaml":  "conf: {sysctl: {a.x: 1, b.x: 1}}",
			"profiles/left.yaml":  "inherits: [base]\nconf: {sysctl: {a.x: 2}}",
			"profiles/right.yaml": "inherits: base\nconf: {sysctl: {b.x: 3, c.x: 3, a.x: 3}}",
			"profiles/top.yaml":   "inherits: [right, left]",
		},
		profile: "top",
		chain:   []string{"base", "right", "left", "top"},
		want:    "sysctl: {a.x: '2', b.x: '3', c.x: '3'}",
	}, {
		name:    "deep chain: the child comes last",
		files:   deepChain(12),
		profile: "p11",
		chain:   []string{"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11"},
		want: `sysctl: {vm.last: '11', k.p0: '0', k.p1: '1', k.p2: '2', k.p3: '3', k.p4: '4', k.p5: '5',
  k.p6: '6', k.p7: '7', k.p8: '8', k.p9: '9', k.p10: '10', k.p11: '11'}`,
	}, {
		name: "explicit null removes an inherited key, a module, a nested field",
		files: map[string]string{
			"profiles/base.yaml": `
conf:
  sysctl: {a.x: 1, b.x: 2}
  limits: {nofile: {domain: root, type: soft, item: nofile, value: 10}}
  mounts: {tmp: {mnt_tgt: /tmp, device: tmpfs, type: tmpfs, options: "size=1G"}}
`,
			"profiles/child.yaml": `
inherits: [base]
conf:
  sysctl: {a.x: null, c.x: null}
  limits: null
  mounts: {tmp: {options: null}}
`,
		},
		profile: "child",
		chain:   []string{"base", "child"},
		want:    "sysctl: {b.x: '2'}\nmounts: {tmp: {mnt_tgt: /tmp, device: tmpfs, type: tmpfs}}",
	}, {
		name: "named lists merge by name; other lists are replaced",
		files: map[string]string{
			"profiles/base.yaml": `
conf:
  uamlite:
    users:
    - {user_name: alice, user_sudo: true, user_sshkeys: [ssh-rsa AAAA1 a@x]}
    - {user_name: bob}
  apt:
    packages: [{name: vim, version: "1"}, {name: curl}]
    blacklistpkgs: [telnetd, nis]
  perm:
  - {path: /etc/ssh/sshd_config, owner: root, group: root, permissions: "0640"}
  exec:
    a.sh: {data: x, args: [one, two]}
`,
			"profiles/child.yaml": `
inherits: [base]
conf:
  uamlite:
    users:
    - {user_name: carol}
    - {user_name: alice, user_sshkeys: [ssh-ed25519 AAAA2 a@y]}
  apt:
    packages: [{name: vim, allow_downgrade: true}]
    blacklistpkgs: [{name: ntpdate}]
  perm:
    paths:
    - {path: /etc/crontab, owner: root, group: root, permissions: "0644"}
    - {path: /etc/ssh/sshd_config, permissions: "0600"}
  exec:
    a.sh: {args: [three]}
`,
		},
		profile: "child",
		chain:   []string{"base", "child"},
		want: `
uamlite:
  users:
  - {user_name: alice, user_sudo: true, user_sshkeys: [ssh-ed25519 AAAA2 a@y]}
  - {user_name: bob}
  - {user_name: carol}
apt:
  packages: [{name: vim, version: "1", allow_downgrade: true}, {name: curl}]
  blacklistpkgs: [ntpdate]
perm:
  paths:
  - {path: /etc/ssh/sshd_config, owner: root, group: root, permissions: "0600"}
  - {path: /etc/crontab, owner: root, group: root, permissions: "0644"}
exec:
  a.sh: {data: x, args: [three]}
`,
	}, {
		name: "sysctl slash and dot forms are one key",
		files: map[string]string{
			"profiles/base.yaml":  "conf: {sysctl: {net/ipv4/ip_forward: 1}}",
			"profiles/child.yaml": "inherits: [base]\nconf: {sysctl: {net.ipv4.ip_forward: 0}}",
		},
		profile: "child",
		chain:   []string{"base", "child"},
		want:    "sysctl: {net.ipv4.ip_forward: '0'}",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustLoad(t, tt.files)
			n, err := s.RenderProfile(tt.profile, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.chain, n.Profiles); diff != "" {
				t.Errorf("chain (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(confYAML(t, tt.want), n.Conf, confCmp); diff != "" {
				t.Errorf("conf (-want +got):\n%s", diff)
			}
		})
	}
}

func deepChain(n int) map[string]string {
	files := map[string]string{}
	for i := range n {
		var b strings.Builder
		if i > 0 {
			b.WriteString("inherits: [p" + itoa(i-1) + "]\n")
		}
		b.WriteString("conf: {sysctl: {vm.last: " + itoa(i) + ", k.p" + itoa(i) + ": " + itoa(i) + "}}\n")
		files["profiles/p"+itoa(i)+".yaml"] = b.String()
	}
	return files
}

func itoa(i int) string { return nodeconf.Index(i)[1 : len(nodeconf.Index(i))-1] }

func TestImageFieldsInherit(t *testing.T) {
	dir := writeSite(t, map[string]string{
		"profiles/base.yaml": `
description: base
stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0, quiet]
outputs: [initramfs, iso]
`,
		"profiles/mid.yaml": `
inherits: [base]
stage: {tarball: stages/root.tar}
cmdline: [console=ttyS1]
outputs: null
`,
		"profiles/leaf.yaml": `
inherits: [mid]
description: leaf
kernel: {from: stage}
`,
		"profiles/deb.yaml": `
inherits: [base]
stage: {debootstrap: {suite: bookworm, variant: minbase, include: [systemd]}}
`,
		"profiles/onleaf.yaml": `
inherits: [base]
stage: {profile: leaf}
`,
		"nodes.yaml": "nodes:\n- {name: n1, mac: '52:54:00:00:00:0a', profile: leaf}\n",
	})
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	tests := []struct {
		profile string
		want    ImageSpec
	}{{
		profile: "leaf",
		want: ImageSpec{
			Profile: "leaf", Description: "leaf", Chain: []string{"base", "mid", "leaf"},
			Stage:   Stage{Tarball: filepath.Join(abs, "stages/root.tar")},
			Kernel:  Kernel{From: "stage"},
			Cmdline: []string{"console=ttyS1"},
			Outputs: []string{"initramfs"},
			Sources: []string{filepath.Join(abs, "profiles/base.yaml"), filepath.Join(abs, "profiles/mid.yaml"),
				filepath.Join(abs, "profiles/leaf.yaml"), filepath.Join(abs, "nodes.yaml")},
			SiteDir: abs,
		},
	}, {
		profile: "deb",
		want: ImageSpec{
			Profile: "deb", Description: "base", Chain: []string{"base", "deb"},
			Stage:   Stage{Debootstrap: &Debootstrap{Suite: "bookworm", Variant: "minbase", Include: []string{"systemd"}}},
			Kernel:  Kernel{Path: "/vmlinuz"},
			Cmdline: []string{"console=ttyS0", "quiet"},
			Outputs: []string{"initramfs", "iso"},
			Sources: []string{filepath.Join(abs, "profiles/base.yaml"), filepath.Join(abs, "profiles/deb.yaml")},
			SiteDir: abs,
		},
	}, {
		profile: "onleaf",
		want: ImageSpec{
			Profile: "onleaf", Description: "base", Chain: []string{"base", "onleaf"},
			Stage:   Stage{Profile: "leaf"},
			Kernel:  Kernel{Path: "/vmlinuz"},
			Cmdline: []string{"console=ttyS0", "quiet"},
			Outputs: []string{"initramfs", "iso"},
			Sources: []string{filepath.Join(abs, "profiles/base.yaml"), filepath.Join(abs, "profiles/onleaf.yaml")},
			SiteDir: abs,
		},
	}}
	for _, tt := range tests {
		t.Run(tt.profile, func(t *testing.T) {
			got, err := s.Image(tt.profile)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(&tt.want, got, cmpopts.IgnoreFields(ImageSpec{}, "Bundle")); diff != "" {
				t.Errorf("Image (-want +got):\n%s", diff)
			}
			if got.Bundle == nil || got.Bundle.Profile != tt.profile || got.Bundle.Default.Profile != tt.profile {
				t.Errorf("Bundle = %+v, want one for %s", got.Bundle, tt.profile)
			}
		})
	}
	leaf, _ := s.Image("leaf")
	if len(leaf.Bundle.Nodes) != 1 || leaf.Bundle.Nodes[0].Node != "n1" || leaf.Bundle.Nodes[0].MACs[0] != "52:54:00:00:00:0a" {
		t.Errorf("leaf bundle nodes = %+v, want n1", leaf.Bundle.Nodes)
	}
	if _, err := s.Image("base-x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Image(unknown) = %v, want ErrNotFound", err)
	}
}

func TestImageWithoutStage(t *testing.T) {
	s := mustLoad(t, map[string]string{"profiles/abstract.yaml": "description: no stage"})
	_, err := s.Image("abstract")
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 || !strings.Contains(list[0].Msg, "has no kernel") || !strings.Contains(list[1].Msg, "has no stage") {
		t.Errorf("Image(abstract) = %v, want no kernel and no stage", err)
	}
}

func TestInventory(t *testing.T) {
	s := mustLoad(t, map[string]string{
		"profiles/p.yaml": "conf: {}",
		"nodes.yaml": `
nodes:
- name: b
  macs: ["52:54:00:AA:BB:02", "52-54-00-aa-bb-03"]
  profile: p
  labels: {rack: 7, role: db}
- name: a
  mac: 52:54:00:aa:bb:01
  profile: p
`,
	})
	want := []NodeInfo{
		{Name: "a", MACs: []string{"52:54:00:aa:bb:01"}, Profile: "p"},
		{Name: "b", MACs: []string{"52:54:00:aa:bb:02", "52:54:00:aa:bb:03"}, Profile: "p", Labels: map[string]string{"rack": "7", "role": "db"}},
	}
	if diff := cmp.Diff(want, s.Nodes(), equateAddr); diff != "" {
		t.Errorf("Nodes (-want +got):\n%s", diff)
	}
	mac, _ := net.ParseMAC("52:54:00:aa:bb:03")
	if n, ok := s.NodeByMAC(mac); !ok || n.Name != "b" {
		t.Errorf("NodeByMAC(%s) = %v, %v; want b", mac, n, ok)
	}
	mac, _ = net.ParseMAC("52:54:00:aa:bb:09")
	if _, ok := s.NodeByMAC(mac); ok {
		t.Errorf("NodeByMAC(%s) found a node", mac)
	}
	if _, err := s.RenderNode("zz"); !IsNotFound(err) {
		t.Errorf("RenderNode(zz) = %v, want not found", err)
	}
}

// equateAddr lets cmp compare netip.Addr values (NodeInfo.IP).
var equateAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

// Every checked profile field is a known key, and every known key is
// either checked or one of the three read apart (inherits, conf,
// overrides): a field added to one list and not the other would be
// refused as unknown, or taken unchecked.
func TestProfileFieldsKnown(t *testing.T) {
	apart := map[string]bool{"inherits": true, "conf": true, "overrides": true}
	for k := range profileFields {
		if !slices.Contains(profileKeys, k) {
			t.Errorf("profileFields has %q, profileKeys does not", k)
		}
	}
	for _, k := range profileKeys {
		if _, ok := profileFields[k]; !ok && !apart[k] {
			t.Errorf("profileKeys has %q, which nothing checks", k)
		}
	}
}
