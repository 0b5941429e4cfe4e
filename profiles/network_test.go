package profiles

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestCheckNetwork checks a site's fixed addresses against networks made
// the way `serve` makes them from its flags, each problem at the node's
// ip label, naming the node, the pool and the flag.
func TestCheckNetwork(t *testing.T) {
	site := t.TempDir()
	writeFile(t, filepath.Join(site, "profiles/p.yaml"), "conf: {}\n")
	writeFile(t, filepath.Join(site, "nodes.yaml"), `nodes:
- {name: a, mac: "52:54:00:00:00:01", profile: p, labels: {ip: 192.0.2.10}}
- {name: b, mac: "52:54:00:00:00:02", profile: p, labels: {ip: 192.0.2.150}}
- {name: c, mac: "52:54:00:00:00:03", profile: p}
`)
	s, err := Load(site)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Network(); ok {
		t.Error("a site without site.yaml declares a network")
	}
	subnet := netip.MustParsePrefix("192.0.2.0/24")
	pool := func(s string) Pool {
		t.Helper()
		p, err := ParsePool(s, subnet)
		if err != nil {
			t.Fatal(err)
		}
		p.Pos = Pos{File: "--pool"}
		return p
	}
	flags := func(server string, pools ...string) Network {
		n := Network{Subnet: subnet, SubnetPos: Pos{File: "--interface br0"}}
		if server != "" {
			n.Server, n.ServerPos = netip.MustParseAddr(server), Pos{File: "--server-ip"}
		}
		for _, p := range pools {
			n.Pools = append(n.Pools, pool(p))
		}
		return n
	}
	tests := []struct {
		name string
		nw   Network
		want string
	}{
		{name: "fine", nw: flags("192.0.2.1", "192.0.2.100-192.0.2.140", "192.0.2.160-192.0.2.199")},
		{name: "pool over a node", nw: flags("192.0.2.1", "192.0.2.100-192.0.2.199"),
			want: `nodes.yaml:3:64: nodes[1].labels.ip: node "b": 192.0.2.150 is inside the dynamic pool 192.0.2.100-192.0.2.199 (--pool), which may lease it to another machine`},
		{name: "node on the server's address", nw: flags("192.0.2.10"),
			want: `nodes.yaml:2:64: nodes[0].labels.ip: node "a": 192.0.2.10 is the server's own address (--server-ip)`},
		{name: "pool over the server", nw: flags("192.0.2.120", "192.0.2.100-192.0.2.140"),
			want: `--pool: pool 192.0.2.100-192.0.2.140 holds the server's own address 192.0.2.120 (--server-ip)`},
		{name: "other subnet", nw: Network{Pools: []Pool{pool("198.51.100.10-198.51.100.20/24")}},
			want: `nodes.yaml:2:64: nodes[0].labels.ip: node "a": 192.0.2.10 is outside every subnet of the boot network (198.51.100.0/24): DHCP cannot give it
nodes.yaml:3:64: nodes[1].labels.ip: node "b": 192.0.2.150 is outside every subnet of the boot network (198.51.100.0/24): DHCP cannot give it`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if err := s.CheckNetwork(tt.nw); err != nil {
				got = strings.ReplaceAll(err.Error(), site+"/", "")
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("CheckNetwork (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSiteNetwork: the network site.yaml declares is the site's, and a
// node's ip label is its fixed address.
func TestSiteNetwork(t *testing.T) {
	site := t.TempDir()
	writeFile(t, filepath.Join(site, "profiles/p.yaml"), "conf: {}\n")
	writeFile(t, filepath.Join(site, "site.yaml"), "network:\n  server: 192.0.2.1\n  subnet: 192.0.2.0/24\n  pools: [192.0.2.100-192.0.2.199, 198.51.100.10-198.51.100.20/24]\n")
	writeFile(t, filepath.Join(site, "nodes.yaml"), "nodes:\n- {name: a, mac: \"52:54:00:00:00:01\", profile: p, labels: {ip: 192.0.2.10}}\n")
	s, err := Load(site)
	if err != nil {
		t.Fatal(err)
	}
	n, ok := s.Network()
	if !ok {
		t.Fatal("site.yaml's network is not the site's")
	}
	var pools []string
	for _, p := range n.Pools {
		pools = append(pools, p.String()+" in "+p.Subnet.String())
	}
	got := n.Server.String() + " " + n.Subnet.String() + " " + strings.Join(pools, ", ")
	if want := "192.0.2.1 192.0.2.0/24 192.0.2.100-192.0.2.199 in 192.0.2.0/24, 198.51.100.10-198.51.100.20 in 198.51.100.0/24"; got != want {
		t.Errorf("network %s, want %s", got, want)
	}
	if ip := s.Nodes()[0].IP; ip != netip.MustParseAddr("192.0.2.10") {
		t.Errorf("node a's IP = %v, want its label's 192.0.2.10", ip)
	}
}
