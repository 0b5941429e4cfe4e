package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	fbenrol "github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/pxe"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/httpboot"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// enrolSiteFiles is a site whose nodes enrol: n1 manual, n2 first-key,
// n3 pinned (to a key the test sets), each with a credential "svc".
func enrolSiteFiles(pinned string) map[string]string {
	return map[string]string{
		"site.yaml": "domain: example.org\n",
		"profiles/p.yaml": `stage: {busybox: {}}
kernel: {path: /vmlinuz}
conf:
  credentials:
  - {name: svc}
`,
		"nodes.yaml": `nodes:
- {name: n1, mac: "52:54:00:00:00:01", profile: p}
- {name: n2, mac: "52:54:00:00:00:02", profile: p, enrol: first-key}
- {name: n3, mac: "52:54:00:00:00:03", profile: p, enrol: {pinned: "` + pinned + `"}}
- {name: n4, mac: "52:54:00:00:00:04", profile: p}
`,
	}
}

// fakeClock is a clock tests move forward.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// enrolLab is a site with a PKI and serve's enrolment endpoint on
// loopback, over TLS, with its state in a directory.
type enrolLab struct {
	site, private, state string
	s                    *profiles.Site
	ep                   *enrolEndpoint
	url                  string
	clk                  *fakeClock
	log                  *testtool.Buffer
	reg                  *prometheus.Registry
	pin                  string // pinned key of n3
	pinKey               *ecdsa.PrivateKey
	// owners are the endpoint's leases (none unless a test adds one).
	owners *testOwners
}

// testOwners are leases a test sets: address → MAC.
type testOwners struct {
	mu sync.Mutex
	m  map[netip.Addr]net.HardwareAddr
}

func (o *testOwners) lease(ip, mac string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	hw, _ := net.ParseMAC(mac)
	o.m[netip.MustParseAddr(ip)] = hw
}

func (o *testOwners) MACFor(ip netip.Addr) (net.HardwareAddr, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m, ok := o.m[ip]
	return m, ok
}

func newEnrolLab(t *testing.T, o enrol.Options) *enrolLab {
	t.Helper()
	dir := t.TempDir()
	lab := &enrolLab{site: filepath.Join(dir, "site"), state: filepath.Join(dir, "state"), clk: &fakeClock{t: time.Now()}, log: &testtool.Buffer{}}
	lab.private = filepath.Join(lab.site, "private")
	lab.pinKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lab.pin, _ = wire.Fingerprint(lab.pinKey.Public())
	for name, data := range enrolSiteFiles(lab.pin) {
		writeTestFile(t, filepath.Join(lab.site, name), data)
	}
	if _, err := pki.Init(context.Background(), pki.Options{Site: lab.site}, filepath.Join(dir, "root-out"), false); err != nil {
		t.Fatal(err)
	}
	var err error
	if lab.s, err = profiles.Load(lab.site); err != nil {
		t.Fatal(err)
	}
	o.Now = lab.clk.Now
	o.Log = slog.New(slog.NewTextHandler(lab.log, nil))
	lab.ep, err = newEnrolEndpoint(context.Background(), lab.s, lab.site, "", lab.state, netip.MustParseAddr("127.0.0.1"), nil, o)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := newSiteBackend(context.Background(), lab.s, "", t.TempDir(), t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	lab.reg = prometheus.NewRegistry()
	cfg := lab.ep.cfg
	cfg.Backend = backend
	cfg.Counters = enrol.NewCounters(lab.reg)
	lab.owners = &testOwners{m: map[netip.Addr]net.HardwareAddr{}}
	cfg.Owners = lab.owners
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.url = "https://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- httpboot.ServeTLS(ctx, ln, enrol.New(cfg), httpboot.Limits{}, lab.ep.tls) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("endpoint: %v", err)
		}
		if t.Failed() {
			t.Logf("endpoint log:\n%s", lab.log.String())
		}
	})
	return lab
}

// client is node's enrolment client with its own directory.
func (lab *enrolLab) client(t *testing.T, node, mac string, console io.Writer) *fbenrol.Client {
	t.Helper()
	return lab.clientIn(t, t.TempDir(), node, mac, console)
}

func (lab *enrolLab) clientIn(t *testing.T, dir, node, mac string, console io.Writer) *fbenrol.Client {
	t.Helper()
	c, err := fbenrol.New(fbenrol.Options{
		Endpoint: fbenrol.Endpoint{URL: lab.url, Node: node, MAC: mac, RootPin: lab.ep.root},
		Dir:      dir, Console: console, Now: lab.clk.Now, PollMin: 10 * time.Millisecond, PollMax: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// node runs `bellbuild node ARGS` against the lab.
func (lab *enrolLab) node(t *testing.T, fp string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := runNode(context.Background(), nodeFlags{site: siteFlags{dir: lab.site}, state: lab.state, fingerprint: fp, output: "text"}, args, &out)
	return out.String(), err
}

// snapshot is every state file's content (lock files aside).
func (lab *enrolLab) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(lab.state, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".lock") {
			return err
		}
		data, _ := os.ReadFile(p)
		out[strings.TrimPrefix(p, lab.state)] = string(data)
		return nil
	})
	return out
}

// rawClient trusts the site's root and offers cert (when not nil).
func (lab *enrolLab) rawClient(t *testing.T, cert *tls.Certificate) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	data, err := os.ReadFile(filepath.Join(lab.site, "pki", "root.pem"))
	if err != nil || !pool.AppendCertsFromPEM(data) {
		t.Fatalf("root.pem: %v", err)
	}
	tc := &tls.Config{RootCAs: pool, Time: lab.clk.Now}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
}

func mustCSR(t testing.TB, key any, tmpl *x509.CertificateRequest) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func parseChain(t *testing.T, chain []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(chain)
	if b == nil {
		t.Fatalf("no PEM certificate in %q", chain)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestEnrolManual is the whole life of a manual node over real sockets:
// pending (its fingerprint on the console and in node list), a wrong
// fingerprint refused with nothing changed, approval, its configuration
// and service certificates over mutual TLS, a second key for it refused
// (warning, metric, listed), retirement: renewal and configuration
// refused, the certificate rejected by openssl with the CRL, node list
// saying retired.
func TestEnrolManual(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{})
	ctx := context.Background()
	var console bytes.Buffer
	dir := t.TempDir()
	c := lab.clientIn(t, dir, "n1", "52:54:00:00:00:01", &console)
	fp := c.Fingerprint()

	// Pending.
	if ok, err := c.Enrol(ctx, 0); ok || err != nil {
		t.Fatalf("Enrol = %v, %v; want pending", ok, err)
	}
	if want := "bellbuild: node=n1 enrolment pending fingerprint=" + fp + "\n"; console.String() != want {
		t.Errorf("console %q, want %q", console.String(), want)
	}
	list, err := lab.node(t, "", "list")
	if err != nil {
		t.Fatal(err)
	}
	if !regexpMatch(`(?m)^n1 +pending +manual +`+fp+` +127\.0\.0\.1 `, list) || !regexpMatch(`(?m)^n2 +unknown +first-key `, list) {
		t.Errorf("node list:\n%s", list)
	}
	if _, err := c.Config(ctx); !errors.Is(err, fbenrol.ErrNotEnrolled) {
		t.Errorf("configuration before approval: %v", err)
	}

	// A wrong fingerprint approves nothing and changes nothing.
	before := lab.snapshot(t)
	other := "sha256:" + strings.Repeat("0", 64)
	if _, err := lab.node(t, other, "approve", "n1"); err == nil || !strings.Contains(err.Error(), "no pending CSR with fingerprint "+other) ||
		!strings.Contains(err.Error(), fp) {
		t.Errorf("approve with a wrong fingerprint: %v", err)
	}
	if _, err := lab.node(t, "sha256:12", "approve", "n1"); err == nil || !strings.Contains(err.Error(), "not a fingerprint") {
		t.Errorf("approve with a malformed fingerprint: %v", err)
	}
	if after := lab.snapshot(t); !mapsEqual(before, after) {
		t.Errorf("a refused approval changed the state")
	}

	// Approved: the host certificate, the configuration, the credentials.
	if out, err := lab.node(t, strings.ToUpper(strings.TrimPrefix(fp, "sha256:")), "approve", "n1"); err != nil || !strings.HasPrefix(out, "approved node n1: host certificate ") {
		t.Fatalf("approve: %q %v", out, err)
	}
	if ok, err := c.Enrol(ctx, 0); !ok || err != nil {
		t.Fatalf("Enrol after approval = %v, %v", ok, err)
	}
	host, _, err := c.HostCert()
	if err != nil {
		t.Fatal(err)
	}
	if host.Subject.CommonName != "n1.example.org" {
		t.Errorf("host certificate CN %q", host.Subject.CommonName)
	}
	res, err := c.Converge(ctx, 0)
	if err != nil || res.Node == nil || res.State != wire.StateApproved {
		t.Fatalf("Converge = %+v, %v", res, err)
	}
	if res.Signed != 2 {
		t.Errorf("signed %d service certificates, want 2 (svc client and server)", res.Signed)
	}
	x := res.Node.Conf.X509
	if x == nil || x.Credentials["svc"].Client == nil || x.Credentials["svc"].Server == nil || x.CA == "" || x.CRL == "" {
		t.Fatalf("x509 after Converge: %+v", x)
	}
	svc := parseChain(t, []byte(x.Credentials["svc"].Client.Cert))
	if svc.Subject.CommonName != "svc@n1" || x.Credentials["svc"].Client.Key.IsZero() {
		t.Errorf("svc client certificate CN %q", svc.Subject.CommonName)
	}
	// The service keys were made here and never sent: the state has
	// no private key, only certificates and CSRs.
	for name, data := range lab.snapshot(t) {
		if strings.Contains(data, "PRIVATE KEY") {
			t.Errorf("state file %s holds a private key", name)
		}
	}
	if res, err := c.Converge(ctx, 0); err != nil || res.Signed != 0 {
		t.Errorf("a second Converge signed %d (%v); want none: the certificates are current", res.Signed, err)
	}

	// A second key for n1 is refused, warned about, counted and listed.
	var console2 bytes.Buffer
	c2 := lab.client(t, "n1", "52:54:00:00:00:01", &console2)
	if ok, _ := c2.Enrol(ctx, 0); ok {
		t.Fatal("a second key for an enrolled node was approved")
	}
	if !strings.Contains(console2.String(), "enrolment refused fingerprint="+c2.Fingerprint()+": node n1 is enrolled with another key") {
		t.Errorf("second key's console: %q", console2.String())
	}
	if !regexpMatch(`level=WARN msg="enrol: another key for an enrolled node refused" node=n1 mac=52:54:00:00:00:01 fingerprint=`+c2.Fingerprint()+` enrolled=`+fp+` from=127\.0\.0\.1`, lab.log.String()) {
		t.Errorf("no warning with both fingerprints and the address:\n%s", lab.log.String())
	}
	if n := refusedCount(t, lab, "key-mismatch"); n != 1 {
		t.Errorf("key-mismatch refusals counted %v, want 1", n)
	}
	if _, err := c2.Config(ctx); !errors.Is(err, fbenrol.ErrNotEnrolled) {
		t.Errorf("the second key got a configuration: %v", err)
	}
	list, _ = lab.node(t, "", "list")
	if !regexpMatch(`(?m)^n1 +approved +manual +`+fp+` `, list) || !regexpMatch(`(?m)^n1 +pending +manual +`+c2.Fingerprint()+` .*another key`, list) {
		t.Errorf("node list with a second key:\n%s", list)
	}

	// Retired: the next renewal and configuration are refused, openssl
	// rejects the certificate with the CRL, node list says so.
	out, err := lab.node(t, "", "retire", "n1")
	if err != nil || !strings.Contains(out, "retired node n1: 3 certificates revoked") {
		t.Fatalf("retire: %q %v", out, err)
	}
	lab.clk.Add(300 * 24 * time.Hour) // the host certificate is due
	if _, err := c.RenewHost(ctx); !errors.Is(err, fbenrol.ErrRefused) || !strings.Contains(err.Error(), "node n1 is retired") {
		t.Errorf("renewal after retire: %v", err)
	}
	if _, err := c.Config(ctx); !errors.Is(err, fbenrol.ErrRefused) {
		t.Errorf("configuration after retire: %v", err)
	}
	if _, err := c.CRL(ctx); err != nil {
		t.Errorf("the CRL is for anyone, the retired too: %v", err)
	}
	openssl := testtool.LookPath(t, "openssl", "openssl")
	_, chain, _ := c.HostCert()
	certFile := filepath.Join(t.TempDir(), "host.pem")
	os.WriteFile(certFile, chain, 0o644)
	crl := filepath.Join(t.TempDir(), "crl.pem")
	crls, _ := os.ReadFile(filepath.Join(lab.site, "pki", "hosts.crl.pem"))
	os.WriteFile(crl, crls, 0o644)
	bundle := filepath.Join(t.TempDir(), "ca.pem")
	var b []byte
	for _, k := range []string{"root", "hosts"} {
		d, _ := os.ReadFile(filepath.Join(lab.site, "pki", k+".pem"))
		b = append(b, d...)
	}
	os.WriteFile(bundle, b, 0o644)
	verify := func(crlCheck bool) (string, error) {
		args := []string{"verify", "-CAfile", bundle}
		if crlCheck {
			args = append(args, "-crl_check", "-CRLfile", crl)
		}
		o, err := execCommand(openssl, append(args, certFile)...)
		return o, err
	}
	if out, err := verify(false); err != nil {
		t.Fatalf("openssl verify without the CRL: %v\n%s", err, out)
	}
	if out, err := verify(true); err == nil || !strings.Contains(out, "certificate revoked") {
		t.Errorf("openssl verify -crl_check accepted a retired node's certificate: %v\n%s", err, out)
	}
	list, _ = lab.node(t, "", "list")
	if !regexpMatch(`(?m)^n1 +retired +manual +- +- `, list) {
		t.Errorf("node list after retire:\n%s", list)
	}
	if ok, _ := lab.client(t, "n1", "52:54:00:00:00:01", io.Discard).Enrol(ctx, 0); ok {
		t.Error("a retired node enrolled again")
	}
}

// refusedCount is bellbuild_enrol_refused_total{reason}.
func refusedCount(t *testing.T, lab *enrolLab, reason string) float64 {
	t.Helper()
	mfs, err := lab.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bellbuild_enrol_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestEnrolPolicies: a first-key node is approved at once and its key
// pinned (a second key refused); a pinned node takes only the pinned key.
func TestEnrolPolicies(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{})
	ctx := context.Background()
	c := lab.client(t, "n2", "52:54:00:00:00:02", io.Discard)
	if ok, err := c.Enrol(ctx, 0); !ok || err != nil {
		t.Fatalf("first-key: Enrol = %v, %v", ok, err)
	}
	if ok, _ := lab.client(t, "n2", "52:54:00:00:00:02", io.Discard).Enrol(ctx, 0); ok {
		t.Error("first-key: a second key was approved")
	}
	if ok, _ := lab.client(t, "n3", "52:54:00:00:00:03", io.Discard).Enrol(ctx, 0); ok {
		t.Error("pinned: another key than the pinned one was approved")
	}
	// The pinned key, from its own directory.
	dir := t.TempDir()
	der, _ := x509.MarshalPKCS8PrivateKey(lab.pinKey)
	os.WriteFile(filepath.Join(dir, "host.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	p := lab.clientIn(t, dir, "n3", "52:54:00:00:00:03", io.Discard)
	if p.Fingerprint() != lab.pin {
		t.Fatalf("pinned client fingerprint %s, want %s", p.Fingerprint(), lab.pin)
	}
	if ok, err := p.Enrol(ctx, 0); !ok || err != nil {
		t.Errorf("pinned: the pinned key: %v, %v", ok, err)
	}
	list, _ := lab.node(t, "", "list")
	if !regexpMatch(`(?m)^n2 +approved +first-key +`+c.Fingerprint()+` .* by first-key`, list) || !regexpMatch(`(?m)^n3 +approved +pinned +`+lab.pin, list) {
		t.Errorf("node list:\n%s", list)
	}
}

// TestEnrolRenewal moves a fake clock: nothing is renewed before the last
// third of a certificate's life; then the host certificate is renewed for
// the same key (a new serial), and the service certificates too.
func TestEnrolRenewal(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{})
	ctx := context.Background()
	c := lab.client(t, "n2", "52:54:00:00:00:02", io.Discard)
	res, err := c.Converge(ctx, 0)
	if err != nil || res.Signed != 2 {
		t.Fatalf("Converge: %+v %v", res, err)
	}
	first, _, _ := c.HostCert()
	lab.clk.Add(200 * 24 * time.Hour) // 200 of 365 days: not due
	if res, err := c.Converge(ctx, 0); err != nil || res.Renewed != 0 || res.Signed != 0 {
		t.Errorf("at 200 days: %+v %v; want nothing renewed", res, err)
	}
	lab.clk.Add(50 * 24 * time.Hour) // 250 days: the last third
	res, err = c.Converge(ctx, 0)
	if err != nil || res.Renewed != 1 || res.Signed != 2 {
		t.Fatalf("at 250 days: %+v %v; want the host and both service certificates renewed", res, err)
	}
	second, _, _ := c.HostCert()
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || !second.NotAfter.After(first.NotAfter) {
		t.Errorf("renewed host certificate: serial %x → %x, not after %v → %v", first.SerialNumber, second.SerialNumber, first.NotAfter, second.NotAfter)
	}
	if !second.PublicKey.(*ecdsa.PublicKey).Equal(first.PublicKey) {
		t.Error("the renewal changed the key")
	}
	// A renewal with another key is refused.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	st, code := lab.post(t, lab.mtls(t, c), wire.RenewPath("n2"), wire.RenewRequest{CSR: mustCSR(t, other, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n2"}})})
	if code != http.StatusForbidden || !strings.Contains(st, "a renewal keeps the key") {
		t.Errorf("renewal with another key: %d %s", code, st)
	}
}

// mtls is an http.Client that offers c's host certificate.
func (lab *enrolLab) mtls(t *testing.T, c *fbenrol.Client) *http.Client {
	t.Helper()
	_, chain, err := c.HostCert()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := c.HostKey()
	cert, err := tls.X509KeyPair(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	return lab.rawClient(t, &cert)
}

// post sends a JSON body (or raw bytes) and returns the answer's body and
// status.
func (lab *enrolLab) post(t *testing.T, hc *http.Client, path string, body any) (string, int) {
	t.Helper()
	var data []byte
	switch b := body.(type) {
	case []byte:
		data = b
	case string:
		data = []byte(b)
	default:
		data = mustJSON(t, body)
	}
	resp, err := hc.Post(lab.url+path, "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return string(out), resp.StatusCode
}

func (lab *enrolLab) get(t *testing.T, hc *http.Client, path string) (string, int) {
	t.Helper()
	resp, err := hc.Get(lab.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return string(out), resp.StatusCode
}

func hexSum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// sortedKeys is for messages.
func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// execCommand runs a program and returns its combined output.
func execCommand(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestEnrolDenyAndReplace: a denied key is refused from then on (a new
// key waits again); approving another key for an enrolled node (a
// reinstalled disk) makes it the node's and revokes the old key's host
// certificate, whose holder is refused from then on.
func TestEnrolDenyAndReplace(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{})
	ctx := context.Background()
	c := lab.client(t, "n4", "52:54:00:00:00:04", io.Discard)
	c.Enrol(ctx, 0)
	if out, err := lab.node(t, "", "deny", "n4"); err != nil || out != "denied node n4 key "+c.Fingerprint()+"\n" {
		t.Fatalf("deny: %q %v", out, err)
	}
	var con bytes.Buffer
	c = lab.clientIn(t, c.Dir(), "n4", "52:54:00:00:00:04", &con)
	if ok, _ := c.Enrol(ctx, 0); ok || !strings.Contains(con.String(), "an operator denied this key of node n4") {
		t.Errorf("a denied key: %v %q", ok, con.String())
	}
	if _, err := lab.node(t, "", "deny", "n4"); err == nil || !strings.Contains(err.Error(), "node n4 has no pending CSR to deny") {
		t.Errorf("deny with nothing pending: %v", err)
	}
	fresh := lab.client(t, "n4", "52:54:00:00:00:04", io.Discard)
	if ok, err := fresh.Enrol(ctx, 0); ok || err != nil {
		t.Fatalf("a new key after a denial: %v %v", ok, err)
	}

	// n2 (first-key) enrolled, then a reinstalled disk: a new key.
	old := lab.client(t, "n2", "52:54:00:00:00:02", io.Discard)
	if ok, _ := old.Enrol(ctx, 0); !ok {
		t.Fatal("first key not approved")
	}
	oldCert, _, _ := old.HostCert()
	reinstalled := lab.client(t, "n2", "52:54:00:00:00:02", io.Discard)
	if ok, _ := reinstalled.Enrol(ctx, 0); ok {
		t.Fatal("a second key approved without an operator")
	}
	out, err := lab.node(t, reinstalled.Fingerprint(), "approve", "n2")
	if err != nil || !strings.Contains(out, "revoked "+oldCert.SerialNumber.Text(16)+" (the replaced key "+old.Fingerprint()+")") {
		t.Fatalf("approve the new key: %q %v", out, err)
	}
	if ok, err := reinstalled.Enrol(ctx, 0); !ok || err != nil {
		t.Errorf("the new key: %v %v", ok, err)
	}
	if _, err := old.Config(ctx); !errors.Is(err, fbenrol.ErrRefused) {
		t.Errorf("the replaced key still gets the configuration: %v", err)
	}
	crl, _ := os.ReadFile(filepath.Join(lab.site, "pki", "hosts.crl.pem"))
	if revoked, _ := revokedIn(crl); !revoked[oldCert.SerialNumber.Text(16)] {
		t.Error("the replaced key's certificate is not in the CRL")
	}
}

// TestServeScriptNamesEndpoint: with the enrolment endpoint on, every
// machine's iPXE script names it on the kernel command line, pins the
// site's root CA and passes the boot NIC's settings on.
func TestServeScriptNamesEndpoint(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{})
	backend, err := newSiteBackend(context.Background(), lab.s, "", t.TempDir(), t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pxe.New(pxe.Config{ServerIP: netip.MustParseAddr("127.0.0.1"), DHCP: pxe.DHCPOff, TFTPAddr: "off",
		HTTPAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", Loaders: map[string]string{},
		Enrol: &lab.ep.cfg, EnrolTLS: lab.ep.tls, EnrolRoot: lab.ep.root, Log: slog.New(slog.DiscardHandler)}, backend)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	resp, err := http.Get("http://" + srv.HTTPAddr().String() + "/ipxe?mac=52:54:00:00:00:01")
	if err != nil {
		t.Fatal(err)
	}
	script, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "bellbuild.enrol=https://127.0.0.1:" + strings.Split(srv.HTTPSAddr().String(), ":")[1] +
		" bellbuild.net=${mac},${ip},${netmask},${gateway} bellbuild.enrol_ca=" + lab.ep.root + " bellbuild.node=n1\n"
	if !strings.Contains(string(script), want) {
		t.Errorf("script:\n%s\nwant a kernel line ending %q", script, want)
	}
	// And the endpoint answers there, over TLS with serve's certificate.
	c, err := fbenrol.New(fbenrol.Options{Endpoint: fbenrol.Endpoint{URL: "https://" + srv.HTTPSAddr().String(), Node: "n2",
		MAC: "52:54:00:00:00:02", RootPin: lab.ep.root}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Enrol(context.Background(), 0); !ok || err != nil {
		t.Errorf("enrol through serve's listener: %v %v", ok, err)
	}
}
