package profiles

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// TestRenderInstall: install, upgrade and reboot inherit by replacement
// down the profile chain, an inventory entry's install replaces its
// profile's, and the profile's slot_size goes to the image spec (never to
// a node's configuration).
func TestRenderInstall(t *testing.T) {
	dir := writeSite(t, map[string]string{
		"profiles/base.yaml":  "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\ninstall: {disk: largest, slot_size: 1G}\nupgrade: auto\nreboot: window 0 3 * * 1-5\n",
		"profiles/child.yaml": "inherits: base\nreboot: manual\n",
		"profiles/plain.yaml": "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\n",
		"nodes.yaml": `nodes:
- {name: a, mac: "52:54:00:00:00:01", profile: base}
- {name: b, mac: "52:54:00:00:00:02", profile: child, install: {disk: "/dev/disk/by-path/pci-0000:00:04.0*", wipe: true}}
- {name: c, mac: "52:54:00:00:00:03", profile: plain}
- {name: d, mac: "52:54:00:00:00:04", profile: plain, install: {disk: /dev/vdb}}
`,
	})
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		node    string
		install *nodeconf.Install
		upgrade *nodeconf.Upgrade
	}{
		{"a", &nodeconf.Install{Disk: "largest"}, &nodeconf.Upgrade{Mode: "auto", Reboot: "window 0 3 * * 1-5"}},
		{"b", &nodeconf.Install{Disk: "/dev/disk/by-path/pci-0000:00:04.0*", Wipe: true}, &nodeconf.Upgrade{Mode: "auto", Reboot: "manual"}},
		{"c", nil, nil},
		{"d", &nodeconf.Install{Disk: "/dev/vdb"}, nil},
	} {
		t.Run(tt.node, func(t *testing.T) {
			n, err := s.RenderNode(tt.node)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.install, n.Install); diff != "" {
				t.Errorf("install (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.upgrade, n.Upgrade); diff != "" {
				t.Errorf("upgrade (-want +got):\n%s", diff)
			}
			if err := n.Upgrade.Check(); err != nil {
				t.Errorf("rendered upgrade does not check: %v", err)
			}
		})
	}
	for _, tt := range []struct {
		profile string
		slot    int64
	}{{"base", 1 << 30}, {"child", 1 << 30}, {"plain", 0}} {
		sp, err := s.Image(tt.profile)
		if err != nil {
			t.Fatal(err)
		}
		if sp.SlotSize != tt.slot {
			t.Errorf("%s: slot size %d, want %d", tt.profile, sp.SlotSize, tt.slot)
		}
	}
}

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1048576", 1 << 20, true}, {"512M", 512 << 20, true}, {"2G", 2 << 30, true}, {"2GiB", 2 << 30, true},
		{"600MB", 600 << 20, true}, {"1T", 1 << 40, true}, {"0", 0, false}, {"-1G", 0, false}, {"lots", 0, false}, {"9999999999T", 0, false},
	} {
		got, ok := parseSize(&value{kind: kScalar, text: tt.in})
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseSize(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
