package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// TestInitLayout: the files Init writes, their modes, and the root key
// only in the root-out directory.
func TestInitLayout(t *testing.T) {
	s := newSite(t)
	type file struct {
		path string
		mode fs.FileMode
	}
	priv := filepath.Join(s.opts.Site, "private")
	want := []file{
		{filepath.Join(s.opts.Site, "pki"), fs.ModeDir | 0o755},
		{priv, fs.ModeDir | 0o700},
		{filepath.Join(priv, "pki"), fs.ModeDir | 0o700},
		{filepath.Join(priv, "pki", "log.jsonl"), 0o600},
		{filepath.Join(s.rootDir, "root.key"), 0o600},
		{filepath.Join(s.rootDir, "root.pem"), 0o644},
	}
	for _, k := range Kinds {
		want = append(want, file{filepath.Join(s.opts.Site, "pki", string(k)+".pem"), 0o644}, file{filepath.Join(s.opts.Site, "pki", string(k)+".crl.pem"), 0o644})
		if k != Root {
			want = append(want, file{filepath.Join(priv, "pki", string(k)+".key"), 0o600})
		}
	}
	for _, f := range want {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if fi.Mode() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode(), f.mode)
		}
	}
	rootKey, err := os.ReadFile(filepath.Join(s.rootDir, "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(rootKey, []byte("BEGIN PRIVATE KEY")) {
		t.Fatalf("root.key is not PKCS#8 PEM:\n%s", rootKey)
	}
	b, _ := pem.Decode(rootKey)
	filepath.WalkDir(s.opts.Site, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			data, _ := os.ReadFile(p)
			if bytes.Contains(data, rootKey[30:90]) || bytes.Contains(data, b.Bytes) {
				t.Errorf("%s holds the root key", p)
			}
		}
		return nil
	})
	// Sub-CAs: pathlen 0, signed by the root; the root: pathlen 1.
	for _, k := range SubCAs {
		c := s.CA(k).Cert
		if !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero {
			t.Errorf("%s CA: IsCA %v MaxPathLen %d zero %v, want a CA with pathlen 0", k, c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
		}
		if err := c.CheckSignatureFrom(s.CA(Root).Cert); err != nil {
			t.Errorf("%s CA: %v", k, err)
		}
		if got, want := c.NotAfter.Sub(c.NotBefore), DefaultSubCA+backdate; got != want {
			t.Errorf("%s CA: lifetime %v, want %v", k, got, want)
		}
	}
	if c := s.CA(Root).Cert; c.NotAfter.Sub(c.NotBefore) != DefaultRoot+backdate || c.MaxPathLen != 1 {
		t.Errorf("root CA: lifetime %v pathlen %d", c.NotAfter.Sub(c.NotBefore), c.MaxPathLen)
	}
}

// TestChains: every kind of certificate, with every algorithm, verifies
// with crypto/x509 for its usage and carries exactly its names, key usage
// and extended key usage.
func TestChains(t *testing.T) {
	for _, alg := range Algorithms {
		t.Run(string(alg), func(t *testing.T) {
			if alg == RSA3072 && testing.Short() {
				t.Skip("RSA-3072 key generation is slow: skipped under -short")
			}
			s := newSite(t, func(o *Options) { o.Algorithm = alg })
			host := issueOne(t, s.Store, hostReq(t, testHost))
			svc, err := ServiceRequests(testHost, nodeconf.Credential{Name: "etcd", ExtraSAN: []string{"api"}})
			if err != nil {
				t.Fatal(err)
			}
			client, server := issueOne(t, s.Store, svc[0]), issueOne(t, s.Store, svc[1])
			user := issueOne(t, s.Store, userReq(t, "alice"))
			tests := []struct {
				name   string
				is     *Issued
				cn     string
				dns    []string
				ips    []string
				eku    []x509.ExtKeyUsage
				issuer Kind
			}{
				{"host", host, "n1.example.org", []string{"n1.example.org", "n1"}, []string{"10.0.0.11", "fd00::11"},
					[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, Hosts},
				{"service client", client, "etcd@n1", nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Services},
				{"service server", server, "etcd@n1",
					[]string{"etcd.example.org", "n1", "n1.example.org", "localhost", "api.example.org"},
					[]string{"10.0.0.11", "fd00::11", "127.0.0.1", "::1"},
					[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, Services},
				{"user", user, "alice", nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Users},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					c := mustCert(t, tt.is)
					for _, u := range tt.eku {
						if err := verify(t, s, c, u); err != nil {
							t.Errorf("verify for %v: %v", u, err)
						}
					}
					if err := c.CheckSignatureFrom(s.CA(tt.issuer).Cert); err != nil {
						t.Errorf("not signed by the %s CA: %v", tt.issuer, err)
					}
					var ips []string
					for _, ip := range c.IPAddresses {
						a, _ := netip.AddrFromSlice(ip)
						ips = append(ips, a.Unmap().String())
					}
					got := fmt.Sprintf("CN=%s DNS=%q IP=%q EKU=%v", c.Subject.CommonName, c.DNSNames, ips, c.ExtKeyUsage)
					want := fmt.Sprintf("CN=%s DNS=%q IP=%q EKU=%v", tt.cn, tt.dns, tt.ips, tt.eku)
					if got != want {
						t.Errorf("got  %s\nwant %s", got, want)
					}
					wantKU := x509.KeyUsageDigitalSignature
					if alg == RSA3072 {
						wantKU |= x509.KeyUsageKeyEncipherment
					}
					if c.KeyUsage != wantKU || c.IsCA || !c.BasicConstraintsValid {
						t.Errorf("key usage %v IsCA %v, want %v and not a CA", c.KeyUsage, c.IsCA, wantKU)
					}
					if got := c.NotAfter.Sub(c.NotBefore); got != DefaultLeaf+backdate {
						t.Errorf("lifetime %v", got)
					}
					if tt.is.Key.IsZero() {
						t.Errorf("no private key for a key made here")
					}
					var pubOK bool
					switch alg {
					case ECDSAP256:
						_, pubOK = c.PublicKey.(*ecdsa.PublicKey)
					case Ed25519:
						_, pubOK = c.PublicKey.(ed25519.PublicKey)
					case RSA3072:
						k, ok := c.PublicKey.(*rsa.PublicKey)
						pubOK = ok && k.N.BitLen() == 3072
					}
					if !pubOK {
						t.Errorf("public key %T, want %s", c.PublicKey, alg)
					}
				})
			}
			// Wrong usages fail: a client-only certificate cannot serve.
			if err := verify(t, s, mustCert(t, client), x509.ExtKeyUsageServerAuth); err == nil {
				t.Errorf("a client certificate verified for server auth")
			}
			if err := verify(t, s, mustCert(t, server), x509.ExtKeyUsageClientAuth); err == nil {
				t.Errorf("a server certificate verified for client auth")
			}
		})
	}
}

// TestCertModes: each client_cert_mode and server_cert_mode gives exactly
// its extended key usages; a client certificate that may serve gets the
// server names.
func TestCertModes(t *testing.T) {
	s := newSite(t)
	cl, sv := x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth
	f := false
	tests := []struct {
		name       string
		cred       nodeconf.Credential
		wantClient []x509.ExtKeyUsage // nil: no client certificate
		wantServer []x509.ExtKeyUsage
		clientSANs bool
	}{
		{"defaults", nodeconf.Credential{Name: "a"}, []x509.ExtKeyUsage{cl}, []x509.ExtKeyUsage{sv}, false},
		{"both both", nodeconf.Credential{Name: "b", ClientCertMode: "both", ServerCertMode: "both"}, []x509.ExtKeyUsage{sv, cl}, []x509.ExtKeyUsage{sv, cl}, true},
		{"client as server", nodeconf.Credential{Name: "c", ClientCertMode: "server", ServerCertMode: "client"}, []x509.ExtKeyUsage{sv}, []x509.ExtKeyUsage{cl}, true},
		{"client only", nodeconf.Credential{Name: "d", EnableServer: &f}, []x509.ExtKeyUsage{cl}, nil, false},
		{"server only", nodeconf.Credential{Name: "e", EnableClient: &f}, nil, []x509.ExtKeyUsage{sv}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reqs, err := ServiceRequests(testHost, tt.cred)
			if err != nil {
				t.Fatal(err)
			}
			out, err := s.Issue(context.Background(), reqs...)
			if err != nil {
				t.Fatal(err)
			}
			var gotClient, gotServer []x509.ExtKeyUsage
			for _, is := range out {
				switch {
				case strings.HasSuffix(is.Slot, "/client"):
					gotClient = mustCert(t, is).ExtKeyUsage
					if has := len(mustCert(t, is).DNSNames) > 0; has != tt.clientSANs {
						t.Errorf("client certificate SANs %q, want SANs: %v", mustCert(t, is).DNSNames, tt.clientSANs)
					}
				case strings.HasSuffix(is.Slot, "/server"):
					gotServer = mustCert(t, is).ExtKeyUsage
				}
				for _, u := range mustCert(t, is).ExtKeyUsage {
					if err := verify(t, s, mustCert(t, is), u); err != nil {
						t.Errorf("%s for %v: %v", is.Slot, u, err)
					}
				}
			}
			if diff := cmp.Diff(tt.wantClient, gotClient); diff != "" {
				t.Errorf("client EKU (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantServer, gotServer); diff != "" {
				t.Errorf("server EKU (-want +got):\n%s", diff)
			}
		})
	}
}

// TestNameConstraints: constrained hosts and services CAs; their
// certificates leave the short name out and still verify (crypto/x509
// enforces the constraints); an address outside the subnets is refused.
func TestNameConstraints(t *testing.T) {
	s := newSite(t, func(o *Options) {
		o.NameConstraints = true
		o.Subnets = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00::/64")}
	})
	for _, k := range []Kind{Hosts, Services} {
		c := s.CA(k).Cert
		if !slices.Equal(c.PermittedDNSDomains, []string{"example.org", "localhost"}) || len(c.PermittedIPRanges) != 4 || !c.PermittedDNSDomainsCritical {
			t.Errorf("%s CA constraints: DNS %q IP %v", k, c.PermittedDNSDomains, c.PermittedIPRanges)
		}
	}
	if c := s.CA(Users).Cert; len(c.PermittedDNSDomains) > 0 {
		t.Errorf("users CA constrained: %q", c.PermittedDNSDomains)
	}
	host := issueOne(t, s.Store, hostReq(t, testHost))
	if !slices.Equal(mustCert(t, host).DNSNames, []string{"n1.example.org"}) {
		t.Errorf("host DNS names %q, want the FQDN only", mustCert(t, host).DNSNames)
	}
	reqs, err := ServiceRequests(testHost, nodeconf.Credential{Name: "etcd", ExtraSAN: []string{"api"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Issue(context.Background(), reqs...)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"etcd.example.org", "n1.example.org", "localhost", "api.example.org"}; !slices.Equal(mustCert(t, out[1]).DNSNames, want) {
		t.Errorf("server DNS names %q, want %q", mustCert(t, out[1]).DNSNames, want)
	}
	for _, is := range []*Issued{host, out[1]} {
		if err := verify(t, s, mustCert(t, is), x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("%s: %v", is.Slot, err)
		}
	}
	if err := verify(t, s, mustCert(t, out[0]), x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("client: %v", err)
	}
	outside := testHost
	outside.IPs = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	_, err = s.Issue(context.Background(), hostReq(t, outside))
	if err == nil || !strings.Contains(err.Error(), "192.0.2.1 is outside the hosts CA's name constraints") {
		t.Errorf("an address outside the subnets: %v", err)
	}
	other := testHost
	other.FQDN = "n1.elsewhere.net"
	_, err = s.Issue(context.Background(), hostReq(t, other))
	if err == nil || !strings.Contains(err.Error(), "n1.elsewhere.net is outside") {
		t.Errorf("a name outside the domain: %v", err)
	}
}

// TestEnsure: the same request gets the same certificate and key until
// its renewal window; the key is kept 0600; a revoked slot gets a new key.
func TestEnsure(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	req := hostReq(t, testHost)
	a, err := s.Ensure(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.reopen(t).Ensure(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if a[0].Serial != b[0].Serial || !bytes.Equal(a[0].Key.Reveal(), b[0].Key.Reveal()) || b[0].Key.IsZero() {
		t.Fatalf("second Ensure: serial %s -> %s, same key %v", a[0].Serial, b[0].Serial, bytes.Equal(a[0].Key.Reveal(), b[0].Key.Reveal()))
	}
	if _, err := s.Ensure(ctx, req, req); err == nil || !strings.Contains(err.Error(), "asked for twice") {
		t.Errorf("one slot twice in a batch: %v", err)
	}
	kf := s.keyFile(req.Slot)
	if fi, err := os.Stat(kf); err != nil || fi.Mode() != 0o600 {
		t.Fatalf("key file %s: %v %v", kf, fi.Mode(), err)
	}
	// Other names: a new certificate for the same key.
	req2 := req
	req2.IPs = append(slices.Clone(req.IPs), netip.MustParseAddr("10.0.0.99"))
	c, err := s.Ensure(ctx, req2)
	if err != nil {
		t.Fatal(err)
	}
	if c[0].Serial == a[0].Serial || !samePublic(mustCert(t, c[0]).PublicKey, mustCert(t, a[0]).PublicKey) {
		t.Errorf("changed IPs: serial %s (was %s), same key %v", c[0].Serial, a[0].Serial, samePublic(mustCert(t, c[0]).PublicKey, mustCert(t, a[0]).PublicKey))
	}
	// Revoked: a new key.
	if _, err := s.Revoke(ctx, Selector{Serial: c[0].Serial}, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	d, err := s.Ensure(ctx, req2)
	if err != nil {
		t.Fatal(err)
	}
	if samePublic(mustCert(t, d[0]).PublicKey, mustCert(t, c[0]).PublicKey) {
		t.Errorf("after revocation the slot kept its key")
	}
}

// TestRenewal: nothing is renewed before the window; everything due is
// after it, with the same key and names; status tells the states apart.
func TestRenewal(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	hostReq := hostReq(t, testHost)
	first, err := s.Ensure(ctx, hostReq)
	if err != nil {
		t.Fatal(err)
	}
	user := issueOne(t, s.Store, userReq(t, "alice"))
	_ = user
	c := mustCert(t, first[0])
	window := c.NotAfter.Sub(c.NotBefore) / 3
	// Just before the window: nothing.
	s.clk.t = c.NotAfter.Add(-window).Add(-time.Hour)
	res, err := s.Renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Certs) != 0 {
		t.Fatalf("renewed %d certificates outside the window", len(res.Certs))
	}
	if again, _ := s.Ensure(ctx, hostReq); again[0].Serial != first[0].Serial {
		t.Errorf("Ensure re-issued outside the window")
	}
	// Inside the window: the host certificate (not the user's).
	s.clk.Add(2 * time.Hour)
	st, _ := s.Status()
	if got := stateOf(st, first[0].Serial); got != Renew {
		t.Errorf("status before renew: %s, want renew", got)
	}
	res, err = s.Renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Certs) != 1 || res.Certs[0].Slot != hostReq.Slot {
		t.Fatalf("renewed %d certificates, want the host's", len(res.Certs))
	}
	n := mustCert(t, res.Certs[0])
	if !samePublic(n.PublicKey, c.PublicKey) || !slices.Equal(n.DNSNames, c.DNSNames) || n.Subject.CommonName != c.Subject.CommonName || !n.NotAfter.After(c.NotAfter) {
		t.Errorf("renewed certificate differs: %v %q %s", n.NotAfter, n.DNSNames, n.Subject.CommonName)
	}
	if err := verify(t, s, n, x509.ExtKeyUsageServerAuth); err != nil {
		t.Error(err)
	}
	again, err := s.reopen(t).Ensure(ctx, hostReq)
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Serial != res.Certs[0].Serial {
		t.Errorf("Ensure after renewal: %s, want the renewed %s", again[0].Serial, res.Certs[0].Serial)
	}
	st, _ = s.Status()
	if got := stateOf(st, first[0].Serial); got != Superseded {
		t.Errorf("status of the old certificate: %s, want superseded", got)
	}
	if res, _ := s.Renew(ctx); len(res.Certs) != 0 {
		t.Errorf("a second renew renewed %d", len(res.Certs))
	}
	s.clk.t = c.NotAfter.Add(time.Hour)
	st, _ = s.Status()
	if got := stateOf(st, first[0].Serial); got != Expired {
		t.Errorf("status after its end: %s, want expired", got)
	}
}

func stateOf(es []Entry, serial string) State {
	for _, e := range es {
		if e.Serial == serial {
			return e.State
		}
	}
	return "absent"
}

// crlSerials reads CA k's CRL file, checks its signature and returns its
// serials, sorted.
func crlSerials(t *testing.T, s *site, k Kind) ([]string, *x509.RevocationList) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.opts.Site, "pki", string(k)+".crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(s.CA(k).Cert); err != nil {
		t.Fatalf("%s CRL: %v", k, err)
	}
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, serialHex(e.SerialNumber))
	}
	slices.Sort(out)
	return out, crl
}

// TestRevoke: by serial, node and service; each CRL lists exactly the
// revoked serials of its CA, with a growing number and a next-update.
func TestRevoke(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	h2 := testHost
	h2.Name, h2.IPs = "n2", nil
	var all []*Issued
	for _, h := range []Host{testHost, h2} {
		all = append(all, issueOne(t, s.Store, hostReq(t, h)))
		for _, name := range []string{"etcd", "kubelet"} {
			reqs, err := ServiceRequests(h, nodeconf.Credential{Name: name})
			if err != nil {
				t.Fatal(err)
			}
			out, err := s.Issue(ctx, reqs...)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, out...)
		}
	}
	user := issueOne(t, s.Store, userReq(t, "bob"))
	want := map[Kind][]string{}
	add := func(serials []string) {
		for _, sr := range serials {
			k := s.st.serials[sr].rec.CA
			want[k] = append(want[k], sr)
			slices.Sort(want[k])
		}
	}
	_, before := crlSerials(t, s, Services)
	steps := []struct {
		name   string
		sel    Selector
		reason string
		n      int
	}{
		{"serial", Selector{Serial: strings.ToUpper(user.Serial)}, "", 1},
		{"service", Selector{Service: "kubelet"}, "cessation-of-operation", 4},
		{"node", Selector{Node: "n1"}, "keyCompromise", 3}, // its kubelet pair is revoked already
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			s.clk.Add(time.Minute)
			got, err := s.Revoke(ctx, st.sel, st.reason)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != st.n {
				t.Errorf("revoked %d, want %d", len(got), st.n)
			}
			add(got)
			changed := map[Kind]bool{}
			for _, sr := range got {
				changed[s.st.serials[sr].rec.CA] = true
			}
			for _, k := range SubCAs {
				serials, crl := crlSerials(t, s, k)
				if diff := cmp.Diff(want[k], serials); diff != "" {
					t.Errorf("%s CRL (-want +got):\n%s", k, diff)
				}
				if crl.NextUpdate.Sub(crl.ThisUpdate) != DefaultCRLValidity {
					t.Errorf("%s CRL: this update %v, next %v", k, crl.ThisUpdate, crl.NextUpdate)
				}
				if changed[k] && !crl.ThisUpdate.Equal(s.clk.Now()) {
					t.Errorf("%s CRL not republished: this update %v", k, crl.ThisUpdate)
				}
			}
		})
	}
	_, after := crlSerials(t, s, Services)
	if after.Number.Cmp(before.Number) <= 0 {
		t.Errorf("CRL number %v did not grow from %v", after.Number, before.Number)
	}
	// Reasons and states in the status.
	st, _ := s.reopen(t).Status()
	for _, e := range st {
		if e.Serial == user.Serial && (e.State != Revoked || e.Reason != "unspecified") {
			t.Errorf("user: %s %s", e.State, e.Reason)
		}
		if e.Node == "n2" && e.Service == "etcd" && e.State != Valid {
			t.Errorf("n2 etcd: %s", e.State)
		}
	}
	if _, err := s.Revoke(ctx, Selector{Node: "n9"}, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoking an unknown node: %v", err)
	}
	if _, err := s.Revoke(ctx, Selector{Serial: serialHex(s.CA(Hosts).Cert.SerialNumber)}, ""); err == nil || !strings.Contains(err.Error(), "revoke leaf certificates only") {
		t.Errorf("revoking a CA: %v", err)
	}
	if _, err := s.Revoke(ctx, Selector{Node: "n2"}, "because"); err == nil || !strings.Contains(err.Error(), `reason "because"`) {
		t.Errorf("a bad reason: %v", err)
	}
	if got, err := s.Revoke(ctx, Selector{Serial: user.Serial}, ""); err != nil || len(got) != 0 {
		t.Errorf("revoking again: %v %v", got, err)
	}
	// Another process's revocation is seen after a refresh.
	other := s.reopen(t)
	n2 := all[5] // n2's host certificate
	if r, err := other.Revoked(n2.Serial); err != nil || r {
		t.Fatalf("n2 before: revoked %v %v", r, err)
	}
	if _, err := s.Revoke(ctx, Selector{Serial: n2.Serial}, ""); err != nil {
		t.Fatal(err)
	}
	if r, err := other.Revoked(n2.Serial); err != nil || !r {
		t.Errorf("n2 after another store revoked it: revoked %v %v", r, err)
	}
}

// TestExtend: an expired sub-CA refuses to issue with the extend command
// in its message; extended (same key), it issues again and the leaves it
// issued before verify against the new certificate.
func TestExtend(t *testing.T) {
	s := newSite(t, func(o *Options) { o.Validity.SubCA = 2 * Year })
	ctx := context.Background()
	old := s.CA(Services).Cert
	reqs, err := ServiceRequests(testHost, nodeconf.Credential{Name: "etcd"})
	if err != nil {
		t.Fatal(err)
	}
	s.clk.t = old.NotAfter.Add(-200 * 24 * time.Hour)
	leaves, err := s.Issue(ctx, reqs...)
	if err != nil {
		t.Fatal(err)
	}
	if !mustCert(t, leaves[0]).NotAfter.Equal(old.NotAfter) {
		t.Errorf("a leaf outlives its CA: %v > %v", mustCert(t, leaves[0]).NotAfter, old.NotAfter)
	}
	s.clk.t = old.NotAfter.Add(time.Hour)
	_, err = s.Issue(ctx, reqs...)
	if !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), "bellbuild pki extend -C "+s.opts.Site+" --root ROOT-DIR --ca services") {
		t.Fatalf("issuing from an expired CA: %v", err)
	}
	// Extend before it ends, so that the old leaves are still current.
	s.clk.t = old.NotAfter.Add(-100 * 24 * time.Hour)
	if _, err := s.Extend(ctx, t.TempDir()); err == nil {
		t.Errorf("Extend without the root key worked")
	}
	got, err := s.Extend(ctx, s.rootDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("extended %d CAs", len(got))
	}
	st := s.reopen(t)
	nw := st.CA(Services).Cert
	if !samePublic(nw.PublicKey, old.PublicKey) || !nw.NotAfter.After(old.NotAfter) || nw.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Fatalf("extended CA: same key %v, end %v (was %v)", samePublic(nw.PublicKey, old.PublicKey), nw.NotAfter, old.NotAfter)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(st.CA(Root).Cert)
	inter.AddCert(nw)
	for _, l := range leaves {
		if _, err := mustCert(t, l).Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: s.clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s after extend: %v", l.Slot, err)
		}
	}
	s.clk.t = old.NotAfter.Add(time.Hour)
	if _, err := st.Issue(ctx, reqs...); err != nil {
		t.Errorf("issuing after extend: %v", err)
	}
	if _, err := st.Extend(ctx, s.rootDir, Root); err != nil {
		t.Errorf("extending the root: %v", err)
	}
}

// TestMaterial: the applier's form; keys only when asked.
func TestMaterial(t *testing.T) {
	s := newSite(t)
	f := false
	creds := []nodeconf.Credential{{Name: "etcd", ClientCertMode: "both", ServerCertMode: "both"}, {Name: "kubelet", EnableServer: &f}}
	for _, withKeys := range []bool{false, true} {
		t.Run(fmt.Sprint("keys=", withKeys), func(t *testing.T) {
			out, err := s.Material(context.Background(), withKeys, NodeCredentials{Host: testHost, Credentials: creds})
			if err != nil {
				t.Fatal(err)
			}
			x := out[0]
			conf := nodeconf.Conf{Credentials: creds, X509: x}
			if errs := conf.Validate(); len(errs) > 0 {
				t.Fatalf("material does not validate: %v", errs)
			}
			if x.Credentials["kubelet"].Server != nil || x.Credentials["kubelet"].Client == nil || x.Credentials["etcd"].Server == nil {
				t.Fatalf("credentials %v", x.Credentials)
			}
			if !strings.Contains(x.CA, "BEGIN CERTIFICATE") || strings.Count(x.CRL, "BEGIN X509 CRL") != 4 {
				t.Errorf("CA or CRL missing")
			}
			hasKey := !x.Credentials["etcd"].Server.Key.IsZero()
			if hasKey != withKeys {
				t.Errorf("key present %v, want %v", hasKey, withKeys)
			}
			for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
				if s := fmt.Sprintf(f, x); strings.Contains(s, "PRIVATE KEY") {
					t.Errorf("%s of the material shows the private key", f)
				}
			}
		})
	}
}
