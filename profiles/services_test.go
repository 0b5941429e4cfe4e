package profiles

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// layersSite has one node, n1 (label rack=r1), with every layer setting
// sysctls: the profile's chain, its Divingbell override, its label and
// host overrides, the service placed on it, and its own conf. Each key is
// set by the service and one other layer.
var layersSite = map[string]string{
	"profiles/base.yaml": `stage: {busybox: {}}
kernel: {path: /vmlinuz}
conf:
  sysctl: {k.chain: chain, k.divingbell: chain}
  credentials: [{name: host-cred}]
  overrides:
    divingbell_sysctl:
      labels:
      - label: {key: rack, values: [r1]}
        conf: {sysctl: {k.divingbell: divingbell}}
overrides:
  labels:
  - label: {key: rack, values: [r1]}
    conf: {sysctl: {k.label: label}}
  hosts:
  - name: n1
    conf: {sysctl: {k.host: host}}
`,
	"nodes.yaml": `nodes:
- name: n1
  mac: 52:54:00:00:07:01
  profile: base
  labels: {rack: r1}
  conf: {sysctl: {k.node: node}}
`,
	"site.yaml": "domain: example.org\n",
	"services.yaml": `web:
  user: www
  service_credentials: [{name: web, enable_client: false}]
  conf:
    sysctl: {k.chain: service, k.divingbell: service, k.label: service, k.host: service, k.node: service}
`,
}

// TestServiceLayerOrder: a placed service's conf comes after everything
// the profile chain says (its conf, Divingbell overrides, label
// overrides) and before the host overrides and the node's own conf; its
// credentials are appended to the node's.
func TestServiceLayerOrder(t *testing.T) {
	s := mustLoad(t, layersSite)
	n, err := s.RenderNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"k.chain": "service", "k.divingbell": "service", "k.label": "service", "k.host": "host", "k.node": "node"}
	if diff := cmp.Diff(want, n.Conf.Sysctl); diff != "" {
		t.Errorf("sysctl (-want +got):\n%s", diff)
	}
	f := false
	creds := []nodeconf.Credential{{Name: "host-cred"}, {Name: "web", EnableClient: &f, Owner: "www"}}
	if diff := cmp.Diff(creds, n.Conf.Credentials); diff != "" {
		t.Errorf("credentials (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"web"}, n.Services); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	// Explain: where the service's values and credentials came from.
	origins, err := s.ExplainNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, o := range origins {
		got[o.Path] = strings.TrimPrefix(o.Pos.String(), s.dir+"/")
	}
	for path, want := range map[string]string{
		"services.web":                  "services.yaml:1:1",
		`conf.sysctl["k.chain"]`:        "services.yaml:5:23",
		`conf.sysctl["k.host"]`:         "profiles/base.yaml:17:29",
		"conf.credentials[1].name":      "services.yaml:3:32",
		"conf.credentials[1].owner":     "services.yaml:2:9",
		"conf.credentials[0].name":      "profiles/base.yaml:5:24",
		"conf.credentials[1].extra_san": "",
	} {
		if got[path] != want {
			t.Errorf("explain %s at %q, want %q", path, got[path], want)
		}
	}
}

// TestServicesSite covers what the fleet does not: hosts_of, a turned
// down service (num_instances: 0), a scraper with no endpoints placed, a
// credential named like a profile's, and the facts of a profile render.
func TestServicesSite(t *testing.T) {
	files := map[string]string{
		"site.yaml":          "domain: example.org\n",
		"profiles/base.yaml": "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\n",
		"profiles/lb.yaml":   "inherits: base\n",
		"nodes.yaml": `nodes:
- {name: a, mac: "52:54:00:00:08:01", profile: base}
- {name: b, mac: "52:54:00:00:08:02", profile: base}
- {name: c, mac: "52:54:00:00:08:03", profile: lb}
`,
		"services.yaml": `app-server:
  scheduling_group: base
  num_instances: 2
  monitoring_endpoints: [{job_name: app, type: static, port: 9000, scheme: https}]
lb:
  scheduling_group: lb
  hosts_of: [app-server]
old:
  num_instances: 0
  monitoring_endpoints: [{job_name: old, type: static, port: 1}]
  scrape: true
`,
	}
	s := mustLoad(t, files)
	hosts := map[string][]string{}
	for _, svc := range s.Services() {
		hosts[svc.Name] = svc.Hosts
	}
	// app-server's group is every node whose chain holds base: all three.
	if len(hosts["app-server"]) != 2 || hosts["lb"][0] != "c" || len(hosts["old"]) != 0 {
		t.Fatalf("hosts %v", hosts)
	}
	c, err := s.RenderNode("c")
	if err != nil {
		t.Fatal(err)
	}
	list := c.Conf.Files[HostsDir+"/app-server.hosts"].Content
	var fqdns []string // site.yaml's domain names every host
	for _, h := range hosts["app-server"] {
		fqdns = append(fqdns, h+".example.org")
	}
	if want := "# The hosts of service app-server, one per line (bellbuild services).\n" + strings.Join(fqdns, "\n") + "\n"; list != want {
		t.Errorf("lb's list of app-server = %q, want %q", list, want)
	}
	if _, ok := c.Conf.Files[HostsDir+"/lb.hosts"]; ok {
		t.Errorf("lb (num_instances: all) has a list of its own")
	}
	wantFacts := map[string]bool{"enable_app_server": false, "enable_lb": true, "enable_old": false}
	if strings.Contains(strings.Join(hosts["app-server"], " "), "c") {
		wantFacts["enable_app_server"] = true
	}
	if diff := cmp.Diff(wantFacts, c.Facts); diff != "" {
		t.Errorf("facts of c (-want +got):\n%s", diff)
	}
	// A machine outside the inventory gets every fact, all false.
	p, err := s.RenderProfile("lb", nil, "x")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]bool{"enable_app_server": false, "enable_lb": false, "enable_old": false}, p.Facts); diff != "" || p.Services != nil {
		t.Errorf("profile render: facts (-want +got):\n%s\nservices %v", diff, p.Services)
	}

	// A profile's credential and a service's of the same name, on one
	// node: refused where the service's is set.
	files["profiles/base.yaml"] += "conf:\n  credentials: [{name: lb}]\n"
	files["services.yaml"] = strings.Replace(files["services.yaml"], "  hosts_of: [app-server]\n", "  hosts_of: [app-server]\n  service_credentials: [{name: lb}]\n", 1)
	_, err = Load(writeSite(t, files))
	var l ErrorList
	if !errors.As(err, &l) || len(l) != 1 || !strings.HasSuffix(l[0].Error(), `services.yaml:8:32: conf.credentials[1].name: "lb" is also credentials[0]`) {
		t.Errorf("a credential twice on a node: %v", err)
	}
}
