package pki

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// certifyNode is a rendered node with a host name, two credentials (one
// client only) and a second node without credentials.
func certifyNodes() []*nodeconf.Node {
	no := false
	return []*nodeconf.Node{
		{Node: "n1", Domain: "example.org", FQDN: "n1.example.org", IPs: []string{"10.0.0.11"},
			Conf: nodeconf.Conf{Credentials: []nodeconf.Credential{{Name: "etcd", ClientCertMode: "both"}, {Name: "kubelet", EnableServer: &no}}}},
		{Node: "n2", Domain: "example.org", FQDN: "n2.example.org"},
		{Node: "", Domain: "example.org"}, // a profile's defaults: nothing
	}
}

func parsePEM(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM in %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCertify: Certify fills conf.x509 with what NodeRequests asks,
// chains that verify, keys only when asked, the same certificates and
// keys on a second call, and nothing for a node that asks for nothing.
func TestCertify(t *testing.T) {
	s := newSite(t)
	nodes := certifyNodes()
	if err := s.Certify(context.Background(), nodes, false); err != nil {
		t.Fatal(err)
	}
	if nodes[2].Conf.X509 != nil {
		t.Errorf("a node without a name got %+v", nodes[2].Conf.X509)
	}
	x := nodes[0].Conf.X509
	if x == nil || x.Host == nil || x.CA != string(s.Bundle()) || !strings.Contains(x.CRL, "X509 CRL") {
		t.Fatalf("n1 x509 = %+v", x)
	}
	var got []string
	for name, ic := range x.Credentials {
		for side, c := range map[string]*nodeconf.IssuedCert{"client": ic.Client, "server": ic.Server} {
			if c != nil {
				got = append(got, name+"/"+side)
				if !c.Key.IsZero() {
					t.Errorf("%s/%s carries its key without keys", name, side)
				}
			}
		}
	}
	if len(got) != 3 || !x.Host.Key.IsZero() {
		t.Errorf("issued %v (host key zero: %v), want etcd client and server, kubelet client", got, x.Host.Key.IsZero())
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(x.CA))
	host := parsePEM(t, x.Host.Cert)
	if _, err := host.Verify(x509.VerifyOptions{Roots: pool, Intermediates: pool, CurrentTime: s.clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("host certificate: %v", err)
	}
	if host.Subject.CommonName != "n1.example.org" || !cmp.Equal(host.DNSNames, []string{"n1.example.org", "n1"}) || len(host.IPAddresses) != 1 {
		t.Errorf("host certificate: CN %s, DNS %v, IPs %v", host.Subject.CommonName, host.DNSNames, host.IPAddresses)
	}
	if sv := parsePEM(t, x.Credentials["etcd"].Server.Cert); sv.Subject.CommonName != "etcd@n1" || !cmp.Equal(sv.DNSNames, []string{"etcd.example.org", "n1", "n1.example.org", "localhost"}) {
		t.Errorf("etcd server: CN %s, DNS %v", sv.Subject.CommonName, sv.DNSNames)
	}
	if nodes[1].Conf.X509 == nil || nodes[1].Conf.X509.Host == nil || nodes[1].Conf.X509.Credentials != nil {
		t.Errorf("n2 (host only) x509 = %+v", nodes[1].Conf.X509)
	}

	// With keys: the same certificates, now with the keys that belong to
	// them (kept in the private directory, so a config volume and the
	// bake agree).
	again := certifyNodes()
	if err := s.reopen(t).Certify(context.Background(), again, true); err != nil {
		t.Fatal(err)
	}
	y := again[0].Conf.X509
	if y.Host.Cert != x.Host.Cert || y.Credentials["etcd"].Server.Cert != x.Credentials["etcd"].Server.Cert {
		t.Error("a second Certify issued new certificates for unchanged nodes")
	}
	for what, c := range map[string]*nodeconf.IssuedCert{"host": y.Host, "etcd/server": y.Credentials["etcd"].Server, "kubelet/client": y.Credentials["kubelet"].Client} {
		if c.Key.IsZero() {
			t.Errorf("%s: no key with keys", what)
			continue
		}
		kb, _ := pem.Decode(c.Key.Reveal())
		k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
		if err != nil {
			t.Fatalf("%s key: %v", what, err)
		}
		if !samePublic(parsePEM(t, c.Cert).PublicKey, k.(crypto.Signer).Public()) {
			t.Errorf("%s: the key does not belong to the certificate", what)
		}
		if strings.Contains(c.Key.String(), "PRIVATE") {
			t.Errorf("%s key prints as %q", what, c.Key.String())
		}
	}

	// A node that needs a domain it lacks, or has a bad address.
	bad := []*nodeconf.Node{{Node: "n9", FQDN: "n9.example.org", Conf: nodeconf.Conf{Credentials: []nodeconf.Credential{{Name: "etcd"}}}}}
	if err := s.Certify(context.Background(), bad, false); err == nil || !strings.Contains(err.Error(), "node n9 has no domain") {
		t.Errorf("credentials without a domain: %v", err)
	}
	bad = []*nodeconf.Node{{Node: "n9", Domain: "example.org", IPs: []string{"10.0.0.300"}}}
	if err := s.Certify(context.Background(), bad, false); err == nil || !strings.Contains(err.Error(), `"10.0.0.300" is not an IP address`) {
		t.Errorf("a bad address: %v", err)
	}
}

// TestExposedInGit: a private directory inside a work tree is exposed
// until .gitignore covers it; outside any work tree it is not.
func TestExposedInGit(t *testing.T) {
	git := testtool.LookPath(t, "git", "git")
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	os.MkdirAll(filepath.Join(repo, "site"), 0o755)
	if out, err := exec.Command(git, "init", "-q", repo).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v %s", err, out)
	}
	real, _ := filepath.EvalSymlinks(repo)
	for _, tc := range []struct {
		name, ignore, private, want string
	}{
		{"not ignored", "", "site/private", real},
		{"not made yet", "", "site/keys", real},
		{"ignored", "private/\n", "site/private", ""},
		{"ignored by path", "/site/private\n", "site/private", ""},
		{"outside", "", "../elsewhere/private", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(filepath.Join(repo, ".gitignore"), []byte(tc.ignore), 0o644)
			p := filepath.Join(repo, tc.private)
			if tc.name != "not made yet" {
				os.MkdirAll(p, 0o700)
			}
			got, err := ExposedInGit(p)
			if err != nil || got != tc.want {
				t.Errorf("ExposedInGit(%s) = %q, %v; want %q", tc.private, got, err, tc.want)
			}
		})
	}
}
