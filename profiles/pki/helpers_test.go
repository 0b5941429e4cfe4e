package pki

import (
	"context"
	"crypto/ecdh"
	"crypto/x509"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// clock is a fake clock the tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var epoch = time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)

// site is a PKI made for a test: its store, options, root-out directory
// and clock.
type site struct {
	*Store
	opts    Options
	rootDir string
	clk     *clock
}

// newSite inits a PKI in a temporary site (ECDSA unless edit says
// otherwise).
func newSite(t testing.TB, edit ...func(*Options)) *site {
	t.Helper()
	dir := t.TempDir()
	clk := &clock{t: epoch}
	o := Options{Site: filepath.Join(dir, "site"), Name: "testsite", Now: clk.Now, Domain: "example.org"}
	for _, e := range edit {
		e(&o)
	}
	rootDir := filepath.Join(dir, "root-out")
	if err := os.MkdirAll(o.Site, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := Init(context.Background(), o, rootDir, false)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return &site{Store: s, opts: o, rootDir: rootDir, clk: clk}
}

// reopen opens the site's PKI again (what another command would see).
func (s *site) reopen(t testing.TB) *Store {
	t.Helper()
	st, err := Open(s.opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return st
}

var testHost = Host{Name: "n1", Domain: "example.org", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.11"), netip.MustParseAddr("fd00::11")}}

func hostReq(t testing.TB, h Host) Request {
	t.Helper()
	r, err := HostRequest(h)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func userReq(t testing.TB, name string) Request {
	t.Helper()
	r, err := UserRequest(name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func issueOne(t testing.TB, s *Store, r Request) *Issued {
	t.Helper()
	out, err := s.Issue(context.Background(), r)
	if err != nil {
		t.Fatalf("Issue %s: %v", r.Slot, err)
	}
	return out[0]
}

// verify checks c's chain with crypto/x509 at the store's time, for usage.
func verify(t testing.TB, s *site, c *x509.Certificate, usage x509.ExtKeyUsage) error {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(s.CA(Root).Cert)
	for _, k := range SubCAs {
		inter.AddCert(s.CA(k).Cert)
	}
	_, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: s.clk.Now(), KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// mustCert is is's certificate, parsed, checked against what Issued says
// of it without parsing: its serial, expiry and public key.
func mustCert(t *testing.T, is *Issued) *x509.Certificate {
	t.Helper()
	c, err := is.Certificate()
	if err != nil {
		t.Fatalf("%s: %v", is.Slot, err)
	}
	if serialHex(c.SerialNumber) != is.Serial || !c.NotAfter.Equal(is.NotAfter) || !samePublic(c.PublicKey, is.PublicKey) {
		t.Fatalf("%s: Issued says serial %s, not after %v; its certificate has %s, %v (same public key: %v)",
			is.Slot, is.Serial, is.NotAfter, serialHex(c.SerialNumber), c.NotAfter, samePublic(c.PublicKey, is.PublicKey))
	}
	if _, ok := is.PublicKey.(*ecdh.PublicKey); ok {
		t.Fatalf("%s: Issued.PublicKey is an *ecdh.PublicKey, not as crypto/x509 reads it", is.Slot)
	}
	return c
}
