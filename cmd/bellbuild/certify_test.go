package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/confvol"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// credSite writes a site with a domain, two nodes and two credentials
// (etcd, both ways; kubelet, client only) on profile p, plus extra
// files.
func credSite(t *testing.T, extra map[string]string) string {
	t.Helper()
	site := filepath.Join(t.TempDir(), "site")
	files := map[string]string{
		"site.yaml": "domain: example.org\nnetwork: {server: 192.0.2.1, subnet: 192.0.2.0/24}\n",
		"profiles/p.yaml": `conf:
  credentials:
  - name: etcd
    client_cert_mode: both
    server_cert_mode: both
  - name: kubelet
    enable_server: false
`,
		"nodes.yaml": `nodes:
- {name: n1, mac: '52:54:00:00:01:01', profile: p, labels: {ip: 192.0.2.10}}
- {name: n2, mac: '52:54:00:00:01:02', profile: p, labels: {ip: 192.0.2.11}}
`,
	}
	for p, c := range extra {
		files[p] = c
	}
	for p, c := range files {
		writeTestFile(t, filepath.Join(site, p), c)
	}
	return site
}

func pkiInit(t *testing.T, site string, args ...string) string {
	t.Helper()
	rootOut := filepath.Join(filepath.Dir(site), "root-out")
	if code, _, stderr := pkiRun(t, append([]string{"init", "-C", site, "--root-out", rootOut}, args...)...); code != 0 {
		t.Fatalf("pki init: %s", stderr)
	}
	return rootOut
}

func readNodeFile(t *testing.T, p string) *nodeconf.Node {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var n nodeconf.Node
	if err := json.Unmarshal(data, &n); err != nil {
		t.Fatal(err)
	}
	return &n
}

func certOf(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("not PEM: %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func certFile(t *testing.T, p string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return certOf(t, string(b))
}

// TestPKISettingsFromSite: pki init takes algorithm, validity and name
// constraints from site.yaml; a flag given overrides its setting.
func TestPKISettingsFromSite(t *testing.T) {
	site := credSite(t, map[string]string{"site.yaml": `domain: example.org
network: {server: 192.0.2.1, subnet: 192.0.2.0/24}
pki:
  algorithm: ed25519
  validity: {sub_ca: 5y}
  name_constraints: true
`})
	pkiInit(t, site)
	hosts := certFile(t, filepath.Join(site, "pki/hosts.pem"))
	if _, ok := hosts.PublicKey.(ed25519.PublicKey); !ok {
		t.Errorf("hosts CA key %T, want ed25519 (site.yaml)", hosts.PublicKey)
	}
	if life := hosts.NotAfter.Sub(hosts.NotBefore); life < 5*pki.Year || life > 5*pki.Year+time.Hour {
		t.Errorf("hosts CA lives %s, want 5y (site.yaml)", life)
	}
	if got := hosts.PermittedDNSDomains; len(got) != 2 || got[0] != "example.org" || len(hosts.PermittedIPRanges) != 3 ||
		!hosts.PermittedIPRanges[0].IP.Equal(net.IPv4(192, 0, 2, 0)) {
		t.Errorf("hosts CA constraints: %v %v, want example.org, localhost and the network's subnet", got, hosts.PermittedIPRanges)
	}
	// A flag overrides site.yaml.
	other := credSite(t, map[string]string{"site.yaml": "domain: example.org\npki: {algorithm: ed25519}\n"})
	pkiInit(t, other, "--algorithm", "ecdsa-p256")
	if c := certFile(t, filepath.Join(other, "pki/hosts.pem")); c.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("--algorithm ecdsa-p256 over site.yaml's ed25519: %v", c.PublicKeyAlgorithm)
	}
	// A bad site.yaml stops pki with its problem.
	bad := credSite(t, map[string]string{"site.yaml": "pki: {algorithm: dsa}\n"})
	if code, _, stderr := pkiRun(t, "status", "-C", bad); code != 1 || !strings.Contains(stderr, `pki.algorithm: "dsa": want one of`) {
		t.Errorf("bad site.yaml: exit %d, %s", code, stderr)
	}
}

// TestConfigIssuesCredentials: config write puts a node's certificates and
// private keys (those the private directory keeps) on its volume; a
// second write reuses them; without a PKI the credentials stay pending;
// a missing or open private directory stops it with nothing written.
func TestConfigIssuesCredentials(t *testing.T) {
	site := credSite(t, nil)
	vol := t.TempDir()
	nodeFile := filepath.Join(vol, confvol.NodePath)
	code, _, stderr := runCmd(t, "config", "write", vol, "-C", site, "--node", "n1")
	if code != 0 || !strings.Contains(stderr, "the site has no PKI") {
		t.Fatalf("without a PKI: exit %d, stderr %s", code, stderr)
	}
	if n := readNodeFile(t, nodeFile); n.Conf.X509 != nil || len(n.Certificates) != 4 {
		t.Errorf("without a PKI: x509 %v, %d certificates described", n.Conf.X509, len(n.Certificates))
	}

	pkiInit(t, site)
	if code, _, stderr := runCmd(t, "config", "write", vol, "-C", site, "--node", "n1"); code != 0 {
		t.Fatalf("config write: exit %d\n%s", code, stderr)
	}
	first, _ := os.ReadFile(nodeFile)
	n := readNodeFile(t, nodeFile)
	x := n.Conf.X509
	if x == nil || x.Host == nil || len(x.Credentials) != 2 {
		t.Fatalf("x509 = %+v", x)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(x.CA))
	keyFile := func(slot string) string {
		b, err := os.ReadFile(filepath.Join(site, "private/pki/keys", slot+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, tc := range []struct {
		name string
		c    *nodeconf.IssuedCert
		slot string
		cn   string
	}{
		{"host", x.Host, "host/n1", "n1.example.org"},
		{"etcd client", x.Credentials["etcd"].Client, "service/n1+etcd+client", "etcd@n1"},
		{"etcd server", x.Credentials["etcd"].Server, "service/n1+etcd+server", "etcd@n1"},
		{"kubelet client", x.Credentials["kubelet"].Client, "service/n1+kubelet+client", "kubelet@n1"},
	} {
		if tc.c == nil {
			t.Errorf("%s: missing", tc.name)
			continue
		}
		c := certOf(t, tc.c.Cert)
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil || c.Subject.CommonName != tc.cn {
			t.Errorf("%s: CN %s (want %s), verify: %v", tc.name, c.Subject.CommonName, tc.cn, err)
		}
		if string(tc.c.Key.Reveal()) != keyFile(tc.slot) {
			t.Errorf("%s: the volume's key is not the one the private directory keeps", tc.name)
		}
	}
	if x.Credentials["kubelet"].Server != nil {
		t.Error("kubelet has a server certificate; enable_server is false")
	}
	// Again: the same certificates and keys, the same bytes.
	if code, _, stderr := runCmd(t, "config", "write", vol, "-C", site, "--node", "n1"); code != 0 {
		t.Fatalf("config write again: exit %d\n%s", code, stderr)
	}
	if again, _ := os.ReadFile(nodeFile); !bytes.Equal(first, again) {
		t.Error("a second config write of an unchanged node wrote other certificates")
	}

	// Bad private directories: an error, and the volume keeps what it had.
	os.Chmod(filepath.Join(site, "private"), 0o755)
	code, _, stderr = runCmd(t, "config", "write", vol, "-C", site, "--node", "n2")
	if code != 1 || !strings.Contains(stderr, "readable by others") || !strings.Contains(stderr, "chmod 700") {
		t.Errorf("open private directory: exit %d, stderr %s", code, stderr)
	}
	os.Chmod(filepath.Join(site, "private"), 0o700)
	code, _, stderr = runCmd(t, "config", "write", vol, "-C", site, "--node", "n2", "--private", filepath.Join(site, "nowhere"))
	if code != 1 || !strings.Contains(stderr, "private directory") || !strings.Contains(stderr, "does not exist") {
		t.Errorf("missing private directory: exit %d, stderr %s", code, stderr)
	}
	if now, _ := os.ReadFile(nodeFile); !bytes.Equal(first, now) {
		t.Error("a refused config write changed the volume")
	}
	if strings.Contains(stderr, "PRIVATE KEY") {
		t.Error("an error shows key material")
	}
}

// TestApplyFromSiteIssues: apply --config SITE with the private directory
// at hand installs the node's keys; without it they are pending.
func TestApplyFromSiteIssues(t *testing.T) {
	site := credSite(t, nil)
	pkiInit(t, site)
	root := applyRoot(t)
	code, stdout, stderr := runBin(t, "apply", "--config", site, "--root", root, "--node", "n1")
	if code != 0 {
		t.Fatalf("apply: exit %d\n%s", code, stderr)
	}
	key, err := os.ReadFile(filepath.Join(root, "etc/credentials/x509/host/private_key.pem"))
	want, _ := os.ReadFile(filepath.Join(site, "private/pki/keys/host/n1.key"))
	if err != nil || !bytes.Equal(key, want) {
		t.Errorf("host key on the root: %v (same as the private directory's: %v)", err, bytes.Equal(key, want))
	}
	for p, mode := range map[string]os.FileMode{"etc/credentials/x509/etcd/server/private_key.pem": 0o400, "etc/credentials/x509/kubelet/client/cert.pem": 0o644, "etc/credentials/x509/ca.pem": 0o644} {
		if fi, err := os.Stat(filepath.Join(root, p)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v", p, err)
		}
	}
	if strings.Contains(stdout, "pending") {
		t.Errorf("summary %q: nothing should be pending", stdout)
	}

	// Another root, no private directory at hand: certificates and keys
	// stay pending.
	root2 := applyRoot(t)
	code, stdout, stderr = runBin(t, "apply", "--config", site, "--root", root2, "--node", "n2", "--private", filepath.Join(t.TempDir(), "none"))
	if code != 0 {
		t.Fatalf("apply without the private directory: exit %d\n%s", code, stderr)
	}
	// ca.pem, etcd's client and server, kubelet's client (nothing was
	// issued, so there is no host certificate to wait for either).
	if !strings.Contains(stdout, "pending=4") {
		t.Errorf("summary %q, want the credentials pending", stdout)
	}
	if _, err := os.Stat(filepath.Join(root2, "etc/credentials/x509/etcd")); err == nil {
		t.Error("a credential without its key got its directory")
	}
}

// TestValidatePrivateInGit: validate warns (exit 0) about a private
// directory that a git work tree would commit, and not once it is
// ignored.
func TestValidatePrivateInGit(t *testing.T) {
	git := testtool.LookPath(t, "git", "git")
	site := credSite(t, nil)
	if out, err := exec.Command(git, "init", "-q", filepath.Dir(site)).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v %s", err, out)
	}
	pkiInit(t, site)
	code, out, stderr := runCmd(t, "validate", "-C", site)
	if code != 0 || out != "ok: 1 profiles, 2 nodes\n" || !strings.Contains(stderr, filepath.Join(site, "private")+": warning: the private directory (the site's keys) is inside the git work tree") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	writeTestFile(t, filepath.Join(filepath.Dir(site), ".gitignore"), "private/\n")
	if code, _, stderr := runCmd(t, "validate", "-C", site); code != 0 || stderr != "" {
		t.Errorf("ignored: exit %d, stderr %q", code, stderr)
	}
}
