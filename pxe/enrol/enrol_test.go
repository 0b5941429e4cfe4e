package enrol

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/node"
	"github.com/bellbuild/bellbuild/pxe/state"
)

// testCA is a throwaway CA for this package's tests (the site's PKI,
// profiles/pki, is the real one: cmd/bellbuild's tests run it).
type testCA struct {
	mu     sync.Mutex
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial int64
	// fail makes the next SignHost fail (a crash before signing).
	fail    bool
	revoked []*big.Int
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test hosts CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, serial: 1}
}

func (c *testCA) issue(pub any, cn string, usage x509.ExtKeyUsage, ips []net.IP) (Cert, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(c.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature, IPAddresses: ips}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return Cert{}, err
	}
	return Cert{Serial: big.NewInt(c.serial).Text(16), PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func (c *testCA) SignHost(_ context.Context, name string, csr *x509.CertificateRequest) (Cert, error) {
	c.mu.Lock()
	fail := c.fail
	c.fail = false
	c.mu.Unlock()
	if fail {
		return Cert{}, errors.New("killed")
	}
	return c.issue(csr.PublicKey, name+".test", x509.ExtKeyUsageClientAuth, nil)
}

func (c *testCA) SignService(_ context.Context, name, cred, side string, csr *x509.CertificateRequest) (Cert, error) {
	if cred != "svc" {
		return Cert{}, errors.Join(ErrRefused, errors.New("no credential "+cred))
	}
	return c.issue(csr.PublicKey, cred+"@"+name, x509.ExtKeyUsageClientAuth, nil)
}

func (c *testCA) CRL(context.Context) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var entries []x509.RevocationListEntry
	for _, s := range c.revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(),
		NextUpdate: time.Now().Add(time.Hour), RevokedCertificateEntries: entries}, c.cert, c.key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// machines is the inventory of these tests.
var machines = node.Static{
	"52:54:00:00:00:01": {Name: "n1"},
	"52:54:00:00:00:02": {Name: "n2", Enrol: node.Enrol{Policy: node.EnrolFirstKey}},
}

func testRegistry(t testing.TB, ca CA) (*Registry, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := state.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return NewRegistry(st, ca, Options{Log: slog.New(slog.DiscardHandler)}), dir
}

func testCSR(t testing.TB, cn string) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := wire.Fingerprint(key.Public())
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), fp
}

// TestSubmitIdempotent: the same CSR submitted again gets the same answer
// and writes nothing (a client that lost the answer asks again).
func TestSubmitIdempotent(t *testing.T) {
	g, dir := testRegistry(t, newTestCA(t))
	ctx := context.Background()
	csr, fp := testCSR(t, "n1")
	req := wire.EnrolRequest{Node: "n1", MAC: "52:54:00:00:00:01", CSR: csr}
	st, err := g.Submit(ctx, req, machines["52:54:00:00:00:01"], "192.0.2.10")
	if err != nil || st.State != wire.StatePending || st.Fingerprint != fp {
		t.Fatalf("first: %+v %v", st, err)
	}
	file := filepath.Join(dir, NodeKey("n1"))
	data1, _ := os.ReadFile(file)
	st2, err := g.Submit(ctx, req, machines["52:54:00:00:00:01"], "192.0.2.10")
	if err != nil || *st2 != *st {
		t.Errorf("again: %+v %v, want %+v", st2, err, st)
	}
	var r1, r2 Record
	data2, _ := os.ReadFile(file)
	json.Unmarshal(data1, &r1)
	json.Unmarshal(data2, &r2)
	if len(r2.Pending) != 1 || r2.Pending[0].First != r1.Pending[0].First {
		t.Errorf("pending after a resubmission: %+v", r2.Pending)
	}
}

// TestFirstKeyKilledBeforeSigning: serve dies after recording a first-key
// approval and before signing (the CA fails once); the node's retry gets
// its certificate, and exactly one host serial is recorded.
func TestFirstKeyKilledBeforeSigning(t *testing.T) {
	ca := newTestCA(t)
	ca.fail = true
	g, dir := testRegistry(t, ca)
	ctx := context.Background()
	csr, fp := testCSR(t, "")
	req := wire.EnrolRequest{Node: "n2", MAC: "52:54:00:00:00:02", CSR: csr}
	if _, err := g.Submit(ctx, req, machines["52:54:00:00:00:02"], "192.0.2.11"); err == nil {
		t.Fatal("the killed signing succeeded")
	}
	// A new registry over the same directory: serve restarted.
	st, _ := state.OpenDir(dir)
	g2 := NewRegistry(st, ca, Options{Log: slog.New(slog.DiscardHandler)})
	rec, _ := g2.Get(ctx, "n2")
	if rec.Key != fp || rec.Cert != "" {
		t.Fatalf("after the crash: key %q cert %d bytes; want the approval recorded, no certificate", rec.Key, len(rec.Cert))
	}
	got, err := g2.Submit(ctx, req, machines["52:54:00:00:00:02"], "192.0.2.11")
	if err != nil || got.State != wire.StateApproved || got.Cert == "" {
		t.Fatalf("retry: %+v %v", got, err)
	}
	rec, _ = g2.Get(ctx, "n2")
	if len(rec.Issued) != 1 || rec.CertSerial != rec.Issued[0].Serial {
		t.Errorf("issued %+v, cert serial %s", rec.Issued, rec.CertSerial)
	}
	// Polled, the same certificate, not a new one.
	p, err := g2.Poll(ctx, "n2", fp)
	if err != nil || p.Cert != got.Cert {
		t.Errorf("poll: %v, same certificate %v", err, p != nil && p.Cert == got.Cert)
	}
}

// testServer is the handler over TLS on loopback.
func testServer(t testing.TB, g *Registry, ca *testCA) *httptest.Server {
	t.Helper()
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sc, err := ca.issue(srvKey.Public(), "serve", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(sc.PEM)
	h := New(Config{Registry: g, CA: ca, Backend: machines, Configs: configs{}, Log: slog.New(slog.DiscardHandler)})
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = TLSConfig(tls.Certificate{Certificate: [][]byte{b.Bytes}, PrivateKey: srvKey}, ca.cert, nil)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

type configs struct{}

func (configs) NodeConfig(_ context.Context, name string) ([]byte, error) {
	return []byte(`{"node":"` + name + `"}`), nil
}

func client(ca *testCA) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// FuzzEnrol sends arbitrary submissions (and, for the JSON decoder,
// arbitrary bodies) to POST /v1/enrol: never a server error, always a
// JSON answer, and a request refused before the registry decides (4xx
// other than 403) changes no state.
func FuzzEnrol(f *testing.F) {
	ca := newTestCA(f)
	g, dir := testRegistry(f, ca)
	srv := testServer(f, g, ca)
	hc := client(ca)
	csr, _ := testCSR(f, "n1")
	csr2, _ := testCSR(f, "")
	f.Add("n1", "52:54:00:00:00:01", csr, false)
	f.Add("n2", "52:54:00:00:00:02", csr2, false)
	f.Add("n1", "52:54:00:00:00:02", csr, false)
	f.Add("n1", "52:54:00:00:00:01", "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----", false)
	f.Add("../x", "zz", "", false)
	f.Add(`{"node":"n1","mac":"52:54:00:00:00:01","csr":"x"}{}`, "", "", true)
	f.Fuzz(func(t *testing.T, nodeName, mac, csr string, raw bool) {
		body := []byte(nodeName)
		if !raw {
			body, _ = json.Marshal(wire.EnrolRequest{Node: nodeName, MAC: mac, CSR: csr})
		}
		before := snapshot(dir)
		resp, err := hc.Post(srv.URL+wire.PathEnrol, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			t.Fatalf("server error %d: %s", resp.StatusCode, data)
		}
		var v map[string]any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatalf("answer is not JSON: %q", data)
		}
		if resp.StatusCode >= 400 && resp.StatusCode != http.StatusForbidden && snapshot(dir) != before {
			t.Fatalf("a refused request (%d %s) changed the state", resp.StatusCode, data)
		}
	})
}

// FuzzCSR feeds arbitrary bytes to the CSR checks: no panic, and a CSR
// that passes names nothing but the node and has a fingerprint.
func FuzzCSR(f *testing.F) {
	g, _ := testRegistry(f, nil)
	csr, _ := testCSR(f, "n1")
	f.Add([]byte(csr))
	b, _ := pem.Decode([]byte(csr))
	f.Add(b.Bytes)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, fp, err := g.csr(string(data), "n1")
		if err != nil {
			var r *Refusal
			if !errors.As(err, &r) || r.Message == "" || r.Code < 400 || r.Code >= 500 {
				t.Fatalf("error %v is not a refusal with a message", err)
			}
			return
		}
		if c.Subject.CommonName != "" && c.Subject.CommonName != "n1" || len(c.DNSNames)+len(c.IPAddresses)+len(c.EmailAddresses)+len(c.URIs) > 0 {
			t.Fatalf("accepted a CSR with names: %v %v", c.Subject, c.DNSNames)
		}
		if _, err := wire.ParseFingerprint(fp); err != nil {
			t.Fatalf("fingerprint %q: %v", fp, err)
		}
	})
}

// snapshot is every file's name and content under dir (lock files aside).
func snapshot(dir string) string {
	var b strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.HasSuffix(p, ".lock") {
			return nil
		}
		data, _ := os.ReadFile(p)
		b.WriteString(p + "\x00" + string(data) + "\x00")
		return nil
	})
	return b.String()
}
