package profiles

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// TestDefaultSite: the embedded site loads, and its names and shape are
// what the demo and the boot tests rely on.
func TestDefaultSite(t *testing.T) {
	s := Default()
	if diff := cmp.Diff([]string{"demo", "demo-arm64", "demo-base", "minimal"}, s.ProfileNames()); diff != "" {
		t.Errorf("profiles (-want +got):\n%s", diff)
	}
	want := []NodeInfo{
		{Name: "demo-1", MACs: []string{"52:54:00:00:00:01"}, Profile: "demo", Labels: map[string]string{"role": "web"}},
		{Name: "demo-2", MACs: []string{"52:54:00:00:00:02"}, Profile: "demo", Labels: map[string]string{"role": "db"}},
	}
	if diff := cmp.Diff(want, s.Nodes(), equateAddr); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	minimal, err := s.Image("minimal")
	if err != nil {
		t.Fatal(err)
	}
	wantSpec := ImageSpec{
		Profile: "minimal", Description: "Busybox root with the host's Debian kernel", Chain: []string{"minimal"},
		Stage: Stage{Busybox: &BusyboxStage{}}, Kernel: Kernel{Path: "/vmlinuz"},
		Cmdline: []string{"console=ttyS0"}, Outputs: []string{"initramfs"},
		Sources: []string{"embedded:profiles/minimal.yaml"},
	}
	if diff := cmp.Diff(&wantSpec, minimal, cmp.FilterPath(func(p cmp.Path) bool { return p.String() == "Bundle" }, cmp.Ignore())); diff != "" {
		t.Errorf("Image(minimal) (-want +got):\n%s", diff)
	}
	if got := minimal.Bundle.Default.Conf.Sysctl; len(got) != 1 {
		t.Errorf("minimal conf sysctl = %v, want one sysctl", got)
	}
	demo, err := s.Image("demo")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"minimal", "demo-base", "demo"}, demo.Chain); diff != "" {
		t.Errorf("demo chain (-want +got):\n%s", diff)
	}
	if len(demo.Bundle.Nodes) != 2 || demo.Bundle.Nodes[0].Node != "demo-1" || demo.Bundle.Nodes[1].Node != "demo-2" {
		t.Fatalf("demo bundle nodes = %+v", demo.Bundle.Nodes)
	}
	if !slices.Contains(demo.Sources, "embedded:nodes.yaml") {
		t.Errorf("demo sources = %v, want nodes.yaml among them", demo.Sources)
	}
	d1, d2 := demo.Bundle.Nodes[0].Conf, demo.Bundle.Nodes[1].Conf
	if d1.Sysctl["vm.swappiness"] != "30" || d2.Sysctl["vm.swappiness"] != "60" {
		t.Errorf("swappiness demo-1 %q demo-2 %q, want 30 and 60", d1.Sysctl["vm.swappiness"], d2.Sysctl["vm.swappiness"])
	}
	if d1.Sysctl["kernel.domainname"] != "demo.bellbuild" || d2.Sysctl["kernel.domainname"] != "db.demo.bellbuild" {
		t.Errorf("domainname demo-1 %q demo-2 %q", d1.Sysctl["kernel.domainname"], d2.Sysctl["kernel.domainname"])
	}
	if d1.Uamlite == nil || len(d1.Uamlite.Users) != 1 || len(d1.Uamlite.Users[0].UserSSHKeys) != 1 || d1.Exec["010-report.sh"].Data == "" || len(d1.Limits) != 1 {
		t.Errorf("demo-1 conf lacks the user, limit or report script: %+v", d1)
	}
}

// TestFleetExample validates examples/fleet and renders every node.
func TestFleetExample(t *testing.T) {
	s, err := Load("../examples/fleet")
	if err != nil {
		t.Fatal(err)
	}
	nodes := s.Nodes()
	if len(nodes) != 10 {
		t.Fatalf("%d nodes, want 10", len(nodes))
	}
	used := map[string]bool{}
	for _, n := range nodes {
		r, err := s.RenderNode(n.Name)
		if err != nil {
			t.Fatalf("RenderNode(%s): %v", n.Name, err)
		}
		c := r.Conf
		for mod, set := range map[string]bool{"sysctl": c.Sysctl != nil, "limits": c.Limits != nil, "perm": c.Perm != nil,
			"mounts": c.Mounts != nil, "ethtool": c.Ethtool != nil, "uamlite": c.Uamlite != nil, "apt": c.Apt != nil,
			"files": c.Files != nil, "units": c.Units != nil, "exec": c.Exec != nil, "apparmor": c.Apparmor != nil, "credentials": c.Credentials != nil} {
			used[mod] = used[mod] || set
		}
	}
	for _, m := range []string{"sysctl", "limits", "perm", "mounts", "ethtool", "uamlite", "apt", "files", "units", "exec", "apparmor", "credentials"} {
		if !used[m] {
			t.Errorf("no node of the fleet uses %s", m)
		}
	}
	for _, p := range s.ProfileNames() {
		if _, err := s.Image(p); err != nil {
			t.Errorf("Image(%s): %v", p, err)
		}
	}
	// Spot checks of the overrides, derived from the files by hand.
	render := func(name string) nodeconf.Conf {
		n, err := s.RenderNode(name)
		if err != nil {
			t.Fatal(err)
		}
		return n.Conf
	}
	w1, w2, w3, w4 := render("worker-1"), render("worker-2"), render("worker-3"), render("worker-4")
	for _, tc := range []struct{ name, got, want string }{
		{"worker-1 hugepages (no label)", w1.Sysctl["vm.nr_hugepages"], ""},
		{"worker-2 hugepages (sriov label)", w2.Sysctl["vm.nr_hugepages"], "1024"},
		{"worker-3 hugepages (dpdk label)", w3.Sysctl["vm.nr_hugepages"], "1024"},
		{"worker-4 hugepages (host beats label)", w4.Sysctl["vm.nr_hugepages"], "4096"},
		{"worker-4 own conf", w4.Sysctl["kernel.numa_balancing"], "0"},
		{"worker-1 canary (native host override)", w1.Exec["020-canary.sh"].Data, "#!/bin/sh\necho canary > /etc/site/canary\n"},
		{"worker-2 chrony (rack r2)", w2.Files["/etc/chrony/sources.d/site.sources"].Content, "pool ntp-r2.example.org iburst\n"},
		{"worker-1 chrony (rack r1)", w1.Files["/etc/chrony/sources.d/site.sources"].Content, "pool ntp.example.org iburst\n"},
		{"worker-2 ethtool mlx5", w2.Ethtool["ens1f0"]["rx-gro"], "on"},
		{"worker-1 ethtool virtio", w1.Ethtool["ens3"]["tx-tcp-segmentation"], "off"},
		{"limits nofile from k8s-node", w1.Limits["nofile"].Value, "1048576"},
		{"limits nofile domain from base", w1.Limits["nofile"].Domain, "*"},
		{"storage keeps base nofile", render("storage-1").Limits["nofile"].Value, "65536"},
		{"storage exec policy from node", render("storage-1").Exec["001-site-facts.sh"].RerunPolicy, "never"},
		{"etcd swappiness", render("etcd-2").Sysctl["vm.swappiness"], "1"},
		{"kernel.dmesg_restrict (slash form)", render("etcd-2").Sysctl["kernel.dmesg_restrict"], "1"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.name, tc.got, tc.want)
		}
	}
	if _, ok := w2.Exec["020-canary.sh"]; ok {
		t.Error("worker-2 has worker-1's canary script")
	}
	if got := len(render("control-1").Uamlite.Users[0].UserSSHKeys); got != 2 {
		t.Errorf("control-1 ops has %d keys, want 2", got)
	}
}

// TestFleetGolden renders every node of examples/fleet and compares the
// YAML with testdata/fleet/NODE.yaml (refresh with -update after checking
// the difference by eye).
func TestFleetGolden(t *testing.T) {
	s, err := Load("../examples/fleet")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range s.Nodes() {
		t.Run(n.Name, func(t *testing.T) {
			node, err := s.RenderNode(n.Name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := yaml.Marshal(node)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "fleet", n.Name+".yaml")
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

// TestFleetServices checks the placement of examples/fleet/services.yaml
// against expectations written by hand from the files: each list below
// obeys its service's group, count, spread, pins and denies, and the hash
// chose among what those leave open (noted for each).
func TestFleetServices(t *testing.T) {
	s, err := Load("../examples/fleet")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		// tier: control is etcd-1..3 and control-1..2; three of them,
		// spread over racks r1 (etcd-1, etcd-3, control-1) and r2
		// (etcd-2, control-2): r2 twice (its two nodes), r1 once.
		"etcd": {"control-2", "etcd-2", "etcd-3"},
		// num_instances: all, no group: every node.
		"node-exporter": {"control-1", "control-2", "etcd-1", "etcd-2", "etcd-3", "storage-1", "worker-1", "worker-2", "worker-3", "worker-4"},
		// the one storage machine.
		"prometheus": {"storage-1"},
		// worker-4 (rack r1) pins it; spread puts the second on rack r2:
		// worker-2 or worker-3 (worker-1, r1, denies it anyway).
		"registry": {"worker-2", "worker-4"},
	}
	got := map[string][]string{}
	for _, svc := range s.Services() {
		got[svc.Name] = svc.Hosts
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("placement (-want +got):\n%s", diff)
	}
	racks := map[string]bool{}
	for _, h := range got["etcd"] {
		racks[s.byName[h].Labels["rack"]] = true
	}
	if len(racks) != 2 {
		t.Errorf("etcd on racks %v, want both", racks)
	}

	// Hosts are named by their FQDN (site.yaml's domain; etcd-3 has its
	// own).
	fqdns := func(names []string) []string {
		var out []string
		for _, n := range names {
			if n == "etcd-3" {
				out = append(out, "etcd-3.r1.fleet.example.org")
				continue
			}
			out = append(out, n+".fleet.example.org")
		}
		return out
	}
	// What each node got: its services, the facts, the credentials (owned
	// by the service's user), the host lists and the targets.
	falseVal := false
	etcdCreds := []nodeconf.Credential{
		{Name: "etcd-peer", ClientCertMode: "both", ServerCertMode: "both", Owner: "etcd"},
		{Name: "etcd-client", EnableServer: &falseVal, Owner: "etcd"},
	}
	registryCreds := []nodeconf.Credential{{Name: "registry", EnableClient: &falseVal, ExtraSAN: []string{"registry-public", "docker"}, Owner: "registry"}}
	for _, n := range s.Nodes() {
		t.Run(n.Name, func(t *testing.T) {
			node, err := s.RenderNode(n.Name)
			if err != nil {
				t.Fatal(err)
			}
			var services []string
			// The profiles' own credentials come first: the kubelet on
			// every Kubernetes node, the API server on the control plane.
			var creds []nodeconf.Credential
			if n.Profile != "storage" {
				creds = append(creds, nodeconf.Credential{Name: "kubelet", EnableServer: &falseVal})
			}
			if n.Profile == "k8s-control" {
				creds = append(creds, nodeconf.Credential{Name: "kube-apiserver", ExtraSAN: []string{"api", "kubernetes"}})
			}
			facts := map[string]bool{}
			lists := map[string]string{}
			for _, name := range []string{"etcd", "node-exporter", "prometheus", "registry"} {
				on := slices.Contains(want[name], n.Name)
				facts["enable_"+strings.ReplaceAll(name, "-", "_")] = on
				if !on {
					continue
				}
				services = append(services, name)
				switch name {
				case "etcd":
					creds = append(creds, etcdCreds...)
				case "registry":
					creds = append(creds, registryCreds...)
				}
				if name != "node-exporter" { // all instances: no list of its own
					lists[HostsDir+"/"+name+".hosts"] = "# The hosts of service " + name + ", one per line (bellbuild services).\n" +
						strings.Join(fqdns(want[name]), "\n") + "\n"
				}
			}
			if diff := cmp.Diff(services, node.Services); diff != "" {
				t.Errorf("services (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(facts, node.Facts); diff != "" {
				t.Errorf("facts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(creds, node.Conf.Credentials); diff != "" {
				t.Errorf("credentials (-want +got):\n%s", diff)
			}
			gotLists := map[string]string{}
			for p, f := range node.Conf.Files {
				if strings.HasPrefix(p, HostsDir+"/") {
					gotLists[p] = f.Content
				}
			}
			if diff := cmp.Diff(lists, gotLists); diff != "" {
				t.Errorf("host lists (-want +got):\n%s", diff)
			}
			_, scraper := node.Conf.Files[FileSDDir+"/etcd.json"]
			if scraper != (n.Name == "storage-1") {
				t.Errorf("file_sd targets on %s: %v", n.Name, scraper)
			}
			if containers := len(node.Containers); containers != map[bool]int{true: 1}[slices.Contains(want["registry"], n.Name)] {
				t.Errorf("%d containers", containers)
			}
		})
	}

	// The scraper's targets: static endpoints list the hosts and the
	// port, a dynamic one the service's name.
	storage, err := s.RenderNode("storage-1")
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"etcd.json":     `"targets": [` + "\n" + `      "control-2.fleet.example.org:2381",` + "\n" + `      "etcd-2.fleet.example.org:2381",` + "\n" + `      "etcd-3.r1.fleet.example.org:2381"` + "\n    ]",
		"registry.json": `"targets": [` + "\n" + `      "registry.fleet.example.org:5001"` + "\n    ]",
	} {
		if got := storage.Conf.Files[FileSDDir+"/"+file].Content; !strings.Contains(got, want) {
			t.Errorf("%s:\n%s\nwant it to hold\n%s", file, got, want)
		}
	}
	if got := storage.Conf.Files[FileSDDir+"/registry.json"].Content; !strings.Contains(got, `"__scheme__": "https"`) {
		t.Errorf("registry.json lacks its scheme:\n%s", got)
	}

	// --explain: the pin, the deny, the rank.
	for node, want := range map[string]string{
		"worker-4":  "placed: pinned: rank ",
		"worker-1":  "not placed: denied by the node",
		"worker-3":  "not placed: rank ",
		"storage-1": "not placed: not in group k8s-worker",
	} {
		origins, err := s.ExplainNode(node)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, o := range origins {
			if o.Path == "services.registry" {
				found = strings.HasPrefix(o.Value, want)
				if !found {
					t.Errorf("%s: services.registry = %q, want %q…", node, o.Value, want)
				}
			}
		}
		if !found {
			t.Errorf("%s: no services.registry line", node)
		}
	}
}
