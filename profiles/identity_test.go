package profiles

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/pki"
)

// identitySite has a domain, a boot network, credentials merged along a
// chain, a profile with a domain of its own, and nodes with an ip label,
// an fqdn and ips of their own, and neither.
var identitySite = map[string]string{
	"site.yaml": `domain: example.org
network: {server: 192.0.2.1, subnet: 192.0.2.0/24}
pki:
  algorithm: ed25519
  validity: {root: 30y, sub_ca: 5y, leaf: 90d}
  renew_before: 30d
`,
	"profiles/base.yaml": `conf:
  credentials:
  - name: etcd
    client_cert_mode: both
  - name: kubelet
    enable_server: false
`,
	"profiles/api.yaml": `inherits: [base]
domain: dc2.example.org
conf:
  credentials:
  - name: etcd
    server_cert_mode: both
  - name: api
    extra_san: [api, kubernetes.dc2.example.org]
    owner: www-data
`,
	"nodes.yaml": `nodes:
- name: n1
  mac: 52:54:00:00:00:01
  profile: base
  labels: {ip: 192.0.2.10}
- name: n2
  mac: 52:54:00:00:00:02
  profile: api
  fqdn: api-2.dc2.example.org
  ips: [192.0.2.11, 2001:db8::11]
  labels: {ip: 192.0.2.11}
- name: n3
  mac: 52:54:00:00:00:03
  profile: base
`,
}

func TestIdentityAndCertificates(t *testing.T) {
	s, err := Load(writeSite(t, identitySite))
	if err != nil {
		t.Fatal(err)
	}
	loop := []string{"127.0.0.1", "::1"}
	tests := []struct {
		node         string
		domain, fqdn string
		ips          []string
		creds        []nodeconf.Credential
		certs        []nodeconf.Certificate
	}{
		{
			node: "n1", domain: "example.org", fqdn: "n1.example.org", ips: []string{"192.0.2.10"},
			creds: []nodeconf.Credential{{Name: "etcd", ClientCertMode: "both"}, {Name: "kubelet", EnableServer: ptr(false)}},
			certs: []nodeconf.Certificate{
				{For: "host", CA: "hosts", Subject: "CN=n1.example.org", Usage: "both", DNSNames: []string{"n1.example.org", "n1"}, IPs: []string{"192.0.2.10"}},
				{For: "etcd/client", CA: "services", Subject: "CN=etcd@n1", Usage: "both",
					DNSNames: []string{"etcd.example.org", "n1", "n1.example.org", "localhost"}, IPs: append([]string{"192.0.2.10"}, loop...)},
				{For: "etcd/server", CA: "services", Subject: "CN=etcd@n1", Usage: "server",
					DNSNames: []string{"etcd.example.org", "n1", "n1.example.org", "localhost"}, IPs: append([]string{"192.0.2.10"}, loop...)},
				{For: "kubelet/client", CA: "services", Subject: "CN=kubelet@n1", Usage: "client"},
			},
		},
		{
			// The profile's domain; fqdn and ips of its own; credentials
			// merged by name (etcd gets server_cert_mode from api.yaml).
			node: "n2", domain: "dc2.example.org", fqdn: "api-2.dc2.example.org", ips: []string{"192.0.2.11", "2001:db8::11"},
			creds: []nodeconf.Credential{{Name: "etcd", ClientCertMode: "both", ServerCertMode: "both"}, {Name: "kubelet", EnableServer: ptr(false)},
				{Name: "api", ExtraSAN: []string{"api", "kubernetes.dc2.example.org"}, Owner: "www-data"}},
			certs: []nodeconf.Certificate{
				{For: "host", CA: "hosts", Subject: "CN=api-2.dc2.example.org", Usage: "both", DNSNames: []string{"api-2.dc2.example.org", "api-2"}, IPs: []string{"192.0.2.11", "2001:db8::11"}},
				{For: "etcd/client", CA: "services", Subject: "CN=etcd@api-2", Usage: "both",
					DNSNames: []string{"etcd.dc2.example.org", "api-2", "api-2.dc2.example.org", "localhost"}, IPs: append([]string{"192.0.2.11", "2001:db8::11"}, loop...)},
				{For: "etcd/server", CA: "services", Subject: "CN=etcd@api-2", Usage: "both",
					DNSNames: []string{"etcd.dc2.example.org", "api-2", "api-2.dc2.example.org", "localhost"}, IPs: append([]string{"192.0.2.11", "2001:db8::11"}, loop...)},
				{For: "kubelet/client", CA: "services", Subject: "CN=kubelet@api-2", Usage: "client"},
				{For: "api/client", CA: "services", Subject: "CN=api@api-2", Usage: "client"},
				{For: "api/server", CA: "services", Subject: "CN=api@api-2", Usage: "server",
					DNSNames: []string{"api.dc2.example.org", "api-2", "api-2.dc2.example.org", "localhost", "kubernetes.dc2.example.org"}, IPs: append([]string{"192.0.2.11", "2001:db8::11"}, loop...)},
			},
		},
		{
			// No address: certificates without IPs (but loopback).
			node: "n3", domain: "example.org", fqdn: "n3.example.org",
			creds: []nodeconf.Credential{{Name: "etcd", ClientCertMode: "both"}, {Name: "kubelet", EnableServer: ptr(false)}},
			certs: []nodeconf.Certificate{
				{For: "host", CA: "hosts", Subject: "CN=n3.example.org", Usage: "both", DNSNames: []string{"n3.example.org", "n3"}},
				{For: "etcd/client", CA: "services", Subject: "CN=etcd@n3", Usage: "both", DNSNames: []string{"etcd.example.org", "n3", "n3.example.org", "localhost"}, IPs: loop},
				{For: "etcd/server", CA: "services", Subject: "CN=etcd@n3", Usage: "server", DNSNames: []string{"etcd.example.org", "n3", "n3.example.org", "localhost"}, IPs: loop},
				{For: "kubelet/client", CA: "services", Subject: "CN=kubelet@n3", Usage: "client"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.node, func(t *testing.T) {
			n, err := s.RenderNode(tc.node)
			if err != nil {
				t.Fatal(err)
			}
			if n.Domain != tc.domain || n.FQDN != tc.fqdn {
				t.Errorf("domain %q fqdn %q, want %q %q", n.Domain, n.FQDN, tc.domain, tc.fqdn)
			}
			if diff := cmp.Diff(tc.ips, n.IPs); diff != "" {
				t.Errorf("ips (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.creds, n.Conf.Credentials); diff != "" {
				t.Errorf("credentials (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.certs, n.Certificates); diff != "" {
				t.Errorf("certificates (-want +got):\n%s", diff)
			}
			if n.Conf.X509 != nil {
				t.Error("render issued material (conf.x509): it must only describe")
			}
		})
	}

	// --explain names the line that asked for each certificate (a credential
	// merged by name: the last profile that named it).
	origins, err := s.ExplainNode("n2")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range origins {
		if strings.HasPrefix(o.Path, "certificates") {
			got = append(got, o.Path+" "+o.Value+" "+filepath.Base(o.Pos.File)+":"+itoa(o.Pos.Line))
		}
	}
	want := []string{
		`certificates["host"] CN=api-2.dc2.example.org nodes.yaml:9`,
		`certificates["etcd/client"] CN=etcd@api-2 api.yaml:5`,
		`certificates["etcd/server"] CN=etcd@api-2 api.yaml:5`,
		`certificates["kubelet/client"] CN=kubelet@api-2 base.yaml:5`,
		`certificates["api/client"] CN=api@api-2 api.yaml:7`,
		`certificates["api/server"] CN=api@api-2 api.yaml:7`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("explain (-want +got):\n%s", diff)
	}

	// A machine outside the inventory: named by its host name, or none.
	p, err := s.RenderProfile("api", nil, "spare")
	if err != nil {
		t.Fatal(err)
	}
	if p.FQDN != "spare.dc2.example.org" || len(p.Certificates) != 6 || p.Certificates[0].Subject != "CN=spare.dc2.example.org" {
		t.Errorf("profile with a host name: fqdn %q, %d certificates %+v", p.FQDN, len(p.Certificates), p.Certificates)
	}
	if d, err := s.RenderProfile("api", nil, ""); err != nil || d.FQDN != "" || d.Certificates != nil || d.Domain != "dc2.example.org" {
		t.Errorf("profile defaults: %v, fqdn %q, certificates %v, domain %q", err, d.FQDN, d.Certificates, d.Domain)
	}

	// The PKI's options come from site.yaml.
	o := s.PKIOptions()
	wantOpts := pki.Options{Site: s.dir, Domain: "example.org", Algorithm: pki.Ed25519,
		Validity: pki.Validity{Root: 30 * pki.Year, SubCA: 5 * pki.Year, Leaf: 90 * 24 * time.Hour}, RenewBefore: 30 * 24 * time.Hour,
		Subnets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	if diff := cmp.Diff(wantOpts, o, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("PKIOptions (-want +got):\n%s", diff)
	}
}

// TestNameConstraintsWarn: with name constraints, Load succeeds with one
// warning, and certificates leave short names out.
func TestNameConstraintsWarn(t *testing.T) {
	files := map[string]string{
		"site.yaml":          "domain: example.org\npki: {name_constraints: true, subnets: [192.0.2.0/24]}\n",
		"profiles/p.yaml":    "conf:\n  credentials: [{name: web}]\n",
		"nodes.yaml":         "nodes:\n- {name: n1, mac: '52:54:00:00:00:01', profile: p, labels: {ip: 192.0.2.10}}\n",
		"profiles/bare.yaml": "conf: {}\n",
	}
	dir := writeSite(t, files)
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range s.Warnings() {
		got = append(got, strings.TrimPrefix(w.Error(), dir+"/"))
	}
	want := []string{"site.yaml:2:25: pki.name_constraints: warning: the hosts and services CAs are limited to example.org, localhost and the site's subnets: host and server certificates leave short host names out (a peer must use NAME.example.org)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	n, err := s.RenderNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range n.Certificates {
		for _, name := range c.DNSNames {
			if name == "n1" {
				t.Errorf("%s names the short host name under name constraints: %v", c.For, c.DNSNames)
			}
		}
	}
	if got := n.Certificates[0].DNSNames; len(got) != 1 || got[0] != "n1.example.org" {
		t.Errorf("host certificate names %v, want [n1.example.org]", got)
	}
	// pki commands read site.yaml alone.
	o, err := PKIOptions(dir, "")
	if err != nil || !o.NameConstraints || o.Domain != "example.org" || len(o.Subnets) != 1 {
		t.Errorf("PKIOptions = %+v, %v", o, err)
	}
	if _, err := PKIOptions(writeSite(t, map[string]string{"site.yaml": "pki: {algorithm: dsa}\n"}), ""); err == nil || !strings.Contains(err.Error(), `pki.algorithm: "dsa"`) {
		t.Errorf("PKIOptions of a bad site.yaml: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestCredentialsDomainFromChild: an abstract parent may declare
// credentials (and host overrides) and leave the domain to its children;
// only an inventory node without a domain is an error.
func TestCredentialsDomainFromChild(t *testing.T) {
	files := map[string]string{
		"profiles/base.yaml": "conf:\n  credentials: [{name: web}]\noverrides:\n  hosts:\n  - name: special\n    conf: {sysctl: {vm.swappiness: 1}}\n",
		"profiles/dc1.yaml":  "inherits: [base]\ndomain: dc1.example.org\n",
		"nodes.yaml":         "nodes:\n- {name: n1, mac: '52:54:00:00:00:01', profile: dc1}\n",
	}
	s, err := Load(writeSite(t, files))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.RenderNode("n1"); err != nil || len(n.Certificates) != 3 || n.FQDN != "n1.dc1.example.org" {
		t.Errorf("n1: %v, fqdn %q, %d certificates", err, n.FQDN, len(n.Certificates))
	}
	files["nodes.yaml"] += "- {name: n2, mac: '52:54:00:00:00:02', profile: base}\n"
	_, err = Load(writeSite(t, files))
	if err == nil || !strings.Contains(err.Error(), "profiles/base.yaml:2:16: conf.credentials: credentials need the site's domain") {
		t.Errorf("a node of the domain-less parent: %v", err)
	}
}
