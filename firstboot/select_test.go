package firstboot

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

func selectBundle() *nodeconf.Bundle {
	return &nodeconf.Bundle{
		Profile: "web",
		Default: nodeconf.Node{Profiles: []string{"web"}},
		Nodes: []nodeconf.Node{
			{Node: "web-1", Profile: "web", MACs: []string{"52:54:00:00:00:01"}},
			{Node: "web-2", Profile: "web", MACs: []string{"52-54-00-00-00-02"}},
		},
	}
}

// TestSelect: --node, then bellbuild.node=, then a MAC, then the host
// name, then the default; a name given explicitly must exist.
func TestSelect(t *testing.T) {
	mac := func(s string) net.HardwareAddr {
		m, err := net.ParseMAC(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	all := Machine{Node: "web-1", Cmdline: "bellbuild.node=web-2", MACs: []net.HardwareAddr{mac("52:54:00:00:00:01")}, Hostname: "web-2"}
	for _, tc := range []struct {
		name    string
		m       Machine
		node    string
		by      string
		err     error
		message string
	}{
		{name: "--node first", m: all, node: "web-1", by: "--node"},
		{name: "then the command line", m: Machine{Cmdline: all.Cmdline, MACs: all.MACs, Hostname: "web-1"}, node: "web-2", by: "cmdline"},
		{name: "then a MAC", m: Machine{MACs: []net.HardwareAddr{mac("52:54:00:99:99:99"), mac("52:54:00:00:00:02")}, Hostname: "web-1"}, node: "web-2", by: "mac 52:54:00:00:00:02"},
		{name: "then the hostname", m: Machine{MACs: []net.HardwareAddr{mac("52:54:00:99:99:99")}, Hostname: "web-1"}, node: "web-1", by: "hostname"},
		{name: "else the default", m: Machine{Hostname: "elsewhere"}, node: "", by: "default"},
		{name: "unknown --node", m: Machine{Node: "web-9", Hostname: "web-1"}, err: ErrNoSuchNode, message: `node "web-9": no such node in the bundle of profile web`},
		{name: "unknown bellbuild.node=", m: Machine{Cmdline: "quiet bellbuild.node=web-9", Hostname: "web-1"}, err: ErrNoSuchNode, message: "bellbuild.node=web-9: no such node in the bundle of profile web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, by, err := Select(BundleInventory(selectBundle()), tc.m)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || err.Error() != tc.message {
					t.Fatalf("error %v, want %q", err, tc.message)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Node != tc.node || by != tc.by || n.Profile != "web" {
				t.Errorf("node %q profile %q by %q, want %q profile web by %q", n.Node, n.Profile, by, tc.node, tc.by)
			}
		})
	}
}

// TestLoadValuesWithoutSite: a file that is not a rendered document goes
// to the site model, which only cmd can open.
func TestLoadValuesWithoutSite(t *testing.T) {
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte("conf:\n  sysctl:\n    vm.swappiness: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Source{Path: values}.Load(nil)
	if !errors.Is(err, nodeconf.ErrNotRendered) || !strings.HasPrefix(err.Error(), values+": ") {
		t.Errorf("error %v, want %s: ... %v", err, values, nodeconf.ErrNotRendered)
	}
}
