package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// TestBadPKI: every broken PKI is a clear error, and Open changes nothing.
func TestBadPKI(t *testing.T) {
	other := newSite(t) // another site, for its keys and certificates
	tests := []struct {
		name   string
		break_ func(t *testing.T, s *site)
		want   string
		is     error
	}{
		{"private directory missing", func(t *testing.T, s *site) {
			os.Rename(filepath.Join(s.opts.Site, "private"), filepath.Join(s.opts.Site, "elsewhere"))
		}, "private directory " + "SITE/private does not exist", nil},
		{"private directory world-readable", func(t *testing.T, s *site) {
			os.Chmod(filepath.Join(s.opts.Site, "private"), 0o755)
		}, "private directory SITE/private is readable by others (mode 0755); it must be closed to others: chmod 700 SITE/private", ErrInsecure},
		{"key readable by group", func(t *testing.T, s *site) {
			os.Chmod(filepath.Join(s.opts.Site, "private/pki/services.key"), 0o640)
		}, "SITE/private/pki/services.key: private key readable by others (mode 0640); it must be 0600: chmod 600 SITE/private/pki/services.key", ErrInsecure},
		{"key of another site", func(t *testing.T, s *site) {
			copyFile(t, filepath.Join(other.opts.Site, "private/pki/hosts.key"), filepath.Join(s.opts.Site, "private/pki/hosts.key"))
		}, "SITE/pki/hosts.pem: certificate does not match its key SITE/private/pki/hosts.key", ErrKeyMismatch},
		{"CA certificate of another site", func(t *testing.T, s *site) {
			copyFile(t, filepath.Join(other.opts.Site, "pki/users.pem"), filepath.Join(s.opts.Site, "pki/users.pem"))
		}, "SITE/pki/users.pem: not signed by the site's root CA", nil},
		{"no PKI", func(t *testing.T, s *site) {
			os.RemoveAll(filepath.Join(s.opts.Site, "pki"))
		}, "no PKI in SITE/pki: make one with bellbuild pki init -C SITE --root-out DIR", ErrNoPKI},
		{"damaged log", func(t *testing.T, s *site) {
			f, _ := os.OpenFile(filepath.Join(s.opts.Site, "private/pki/log.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString("{not json\n")
			f.Close()
		}, "log.jsonl line 9: invalid character", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSite(t)
			tt.break_(t, s)
			_, err := Open(s.opts)
			if err == nil {
				t.Fatal("Open worked")
			}
			msg := strings.ReplaceAll(err.Error(), s.opts.Site, "SITE")
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q\nwant it to contain %q", msg, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestInitTwice: init over an existing PKI is refused; --force keeps the
// old one aside, whole.
func TestInitTwice(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	before := snapshotFiles(t, filepath.Dir(s.opts.Site))
	if _, err := Init(ctx, s.opts, s.rootDir, false); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("init over a PKI: %v", err)
	}
	if after := snapshotFiles(t, filepath.Dir(s.opts.Site)); !equalMaps(before, after) {
		t.Fatalf("a refused init changed files")
	}
	s.clk.Add(Year)
	if _, err := Init(ctx, s.opts, s.rootDir, true); err != nil {
		t.Fatalf("init --force: %v", err)
	}
	stamp := ".old-20310101T120000Z"
	for _, p := range []string{
		filepath.Join("site", "pki"+stamp, "hosts.pem"),
		filepath.Join("site", "private", "pki"+stamp, "hosts.key"),
		filepath.Join("site", "private", "pki"+stamp, "log.jsonl"),
		filepath.Join("root-out", "root.key"+stamp),
	} {
		old := strings.Replace(p, stamp, "", 1)
		got, err := os.ReadFile(filepath.Join(filepath.Dir(s.opts.Site), p))
		if err != nil {
			t.Errorf("kept aside: %v", err)
			continue
		}
		if string(got) != before[old] {
			t.Errorf("%s differs from the old %s", p, old)
		}
	}
	n := s.reopen(t)
	if samePublic(n.CA(Root).Cert.PublicKey, s.CA(Root).Cert.PublicKey) {
		t.Errorf("init --force kept the root key")
	}
	// The root key may not go into the site.
	o := s.opts
	o.Site = filepath.Join(t.TempDir(), "site2")
	if _, err := Init(ctx, o, filepath.Join(o.Site, "root"), false); err == nil || !strings.Contains(err.Error(), "is inside the site") {
		t.Errorf("root-out inside the site: %v", err)
	}
}

func snapshotFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			r, _ := filepath.Rel(dir, p)
			out[r] = string(data)
		}
		return nil
	})
	return out
}

func equalMaps(a, b map[string]string) bool {
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

// TestBadRequests: credentials, hosts and users the PKI cannot certify.
func TestBadRequests(t *testing.T) {
	noDomain := Host{Name: "n1"}
	tests := []struct {
		name string
		do   func() error
		want string
	}{
		{"unknown cert mode", func() error {
			_, err := ServiceRequests(testHost, nodeconf.Credential{Name: "etcd", ServerCertMode: "peer"})
			return err
		}, `credential etcd: cert mode "peer" is not one of client, server, both`},
		{"extra_san not a DNS name", func() error {
			_, err := ServiceRequests(testHost, nodeconf.Credential{Name: "etcd", ExtraSAN: []string{"api server"}})
			return err
		}, `credential etcd: extra_san "api server" is not a DNS name`},
		{"credential name not a path component", func() error {
			_, err := ServiceRequests(testHost, nodeconf.Credential{Name: "../etc"})
			return err
		}, `credential "../etc": not a safe name`},
		{"node without domain", func() error {
			_, err := ServiceRequests(noDomain, nodeconf.Credential{Name: "etcd"})
			return err
		}, "node n1 has no domain: certificates need one"},
		{"host without domain", func() error {
			_, err := HostRequest(noDomain)
			return err
		}, "node n1 has no domain"},
		{"bad user", func() error {
			_, err := UserRequest("a/b")
			return err
		}, `user "a/b": not a user name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func csrFor(t *testing.T, key crypto.Signer, cn string, dns []string, ips []net.IP) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: dns, IPAddresses: ips}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// TestCSR: a CSR's key is certified with the site's names; weak keys,
// unknown algorithms, bad signatures, oversized CSRs and names the node
// may not have are refused.
func TestCSR(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	req := hostReq(t, testHost)
	good, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := ParseCSR(csrFor(t, good, "n1.example.org", []string{"n1"}, []net.IP{net.ParseIP("10.0.0.11")}))
	if err != nil {
		t.Fatal(err)
	}
	is, err := s.SignCSR(ctx, req, csr)
	if err != nil {
		t.Fatal(err)
	}
	if !samePublic(mustCert(t, is).PublicKey, good.Public()) || !is.Key.IsZero() || len(mustCert(t, is).DNSNames) != 2 {
		t.Errorf("signed CSR: key %v, names %q", samePublic(mustCert(t, is).PublicKey, good.Public()), mustCert(t, is).DNSNames)
	}
	if err := verify(t, s, mustCert(t, is), x509.ExtKeyUsageServerAuth); err != nil {
		t.Error(err)
	}

	weakRSA, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	badSig := csrFor(t, good, "n1.example.org", nil, nil)
	b, _ := pem.Decode(badSig)
	b.Bytes[len(b.Bytes)-3] ^= 0xff
	badSig = pem.EncodeToMemory(b)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"weak RSA", csrFor(t, weakRSA, "", nil, nil), "weak or unsupported key: RSA key of 1024 bits"},
		{"P-224", csrFor(t, p224, "", nil, nil), "weak or unsupported key: ECDSA curve P-224"},
		{"bad signature", badSig, "CSR: bad signature"},
		{"oversized", make([]byte, MaxCSR+1), "larger than"},
		{"not a CSR", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mustCert(t, is).Raw}), `PEM block "CERTIFICATE": not a CERTIFICATE REQUEST`},
		{"garbage", []byte("hello"), "CSR: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCSR(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
	names := []struct {
		name string
		csr  []byte
		want string
	}{
		{"other CN", csrFor(t, good, "n2.example.org", nil, nil), `CSR asks for CN "n2.example.org"`},
		{"other DNS name", csrFor(t, good, "", []string{"evil.example.org"}, nil), `CSR asks for DNS name "evil.example.org"`},
		{"other IP", csrFor(t, good, "", nil, []net.IP{net.ParseIP("10.0.0.12")}), "CSR asks for IP 10.0.0.12"},
	}
	for _, tt := range names {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ParseCSR(tt.csr)
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.SignCSR(ctx, req, csr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
	// The bad requests issued nothing.
	st, _ := s.Status()
	if len(st) != len(Kinds)+1 {
		t.Errorf("status lists %d entries, want the CAs and one certificate", len(st))
	}
}
