package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
)

// TestEnrolBadInput sends every kind of bad request to the endpoint over
// a real socket: each is refused with a status and a message that says
// what and why, and the state is left exactly as it was.
func TestEnrolBadInput(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{})
	ctx := context.Background()
	// n2 is enrolled (first-key): its certificate is tried on n1's paths.
	n2 := lab.client(t, "n2", "52:54:00:00:00:02", io.Discard)
	if ok, err := n2.Enrol(ctx, 0); !ok || err != nil {
		t.Fatalf("n2: %v %v", ok, err)
	}
	n2c := lab.mtls(t, n2)
	plain := lab.rawClient(t, nil)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := mustCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"}})
	enrolBody := func(node, mac, csr string) []byte {
		return mustJSON(t, wire.EnrolRequest{Node: node, MAC: mac, CSR: csr})
	}
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	// A signature cut: the DER's last byte changed.
	b, _ := pem.Decode([]byte(good))
	bad := append([]byte(nil), b.Bytes...)
	bad[len(bad)-1] ^= 0x55
	badSig := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: bad}))
	huge := mustCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: make([]byte, 20<<10)}}})
	svcCSR := mustCSR(t, key, &x509.CertificateRequest{})
	signBody := func(reqs ...wire.CertRequest) []byte { return mustJSON(t, wire.SignRequest{Requests: reqs}) }
	var many []wire.CertRequest
	for range wire.MaxSignRequests + 1 {
		many = append(many, wire.CertRequest{Credential: "svc", Side: "client", CSR: svcCSR})
	}

	tests := []struct {
		name   string
		client *http.Client
		method string
		path   string
		body   []byte
		code   int
		want   string
	}{
		{"oversized body", plain, "POST", wire.PathEnrol, []byte(`{"node":"` + strings.Repeat("a", 70<<10) + `"}`), 413, "request body larger than 65536 bytes"},
		{"not JSON", plain, "POST", wire.PathEnrol, []byte(`{"node":`), 400, "request is not the JSON this endpoint takes"},
		{"unknown field", plain, "POST", wire.PathEnrol, []byte(`{"node":"n1","mac":"52:54:00:00:00:01","csr":"x","admin":true}`), 400, `unknown field "admin"`},
		{"data after the JSON", plain, "POST", wire.PathEnrol, append(enrolBody("n1", "52:54:00:00:00:01", good), "{}"...), 400, "request has data after its JSON"},
		{"bad node name", plain, "POST", wire.PathEnrol, enrolBody("../n1", "52:54:00:00:00:01", good), 400, `node "../n1": not a node name`},
		{"bad MAC", plain, "POST", wire.PathEnrol, enrolBody("n1", "zz:zz", good), 400, `mac "zz:zz": not a MAC address`},
		{"no CSR", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", ""), 400, "no CSR"},
		{"malformed CSR", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), 400, "CSR: asn1: structure error"},
		{"not a CSR", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 400, `PEM block "CERTIFICATE": not a CERTIFICATE REQUEST`},
		{"bad signature", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", badSig), 400, "CSR: bad signature"},
		{"oversized CSR", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", huge), 400, "larger than 16384"},
		{"weak RSA key", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", mustCSR(t, rsa1024, &x509.CertificateRequest{})), 400, "RSA key of 1024 bits (want at least 2048)"},
		{"unknown curve", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", mustCSR(t, p224, &x509.CertificateRequest{})), 400, "ECDSA curve P-224 (want P-256, P-384 or P-521)"},
		{"another node's CN", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", mustCSR(t, ed, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n2"}})), 403, `CSR asks for CN "n2": a node's CSR may name only itself (CN=n1)`},
		{"a DNS name", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", mustCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"bank.example"}})), 403, "CSR asks for subject alternative names (DNS:bank.example)"},
		{"an IP address", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", mustCSR(t, key, &x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}})), 403, "CSR asks for subject alternative names (IP:10.0.0.1)"},
		{"an organization", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:01", mustCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1", Organization: []string{"root"}}})), 403, "names more than the node"},
		{"unknown MAC", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:99", good), 403, "MAC 52:54:00:00:00:99 is not in the site's inventory"},
		{"another node's MAC", plain, "POST", wire.PathEnrol, enrolBody("n1", "52:54:00:00:00:02", good), 403, "MAC 52:54:00:00:00:02 is not node n1's"},
		{"poll: bad fingerprint", plain, "GET", wire.PollPath("n1", "sha256:xyz"), nil, 400, "not a fingerprint"},
		{"poll: unknown key", plain, "GET", wire.PollPath("n1", "sha256:"+strings.Repeat("a", 64)), nil, 404, "no enrolment of node n1 with key"},
		{"config without a certificate", plain, "GET", wire.ConfigPath("n1"), nil, 401, "needs the node's host certificate (mutual TLS)"},
		{"certificates without a certificate", plain, "POST", wire.CertificatesPath("n2"), signBody(wire.CertRequest{Credential: "svc", Side: "client", CSR: svcCSR}), 401, "needs the node's host certificate"},
		{"renew without a certificate", plain, "POST", wire.RenewPath("n2"), mustJSON(t, wire.RenewRequest{CSR: good}), 401, "needs the node's host certificate"},
		{"another node's certificate", n2c, "GET", wire.ConfigPath("n1"), nil, 403, "is not node n1's"},
		{"unknown credential", n2c, "POST", wire.CertificatesPath("n2"), signBody(wire.CertRequest{Credential: "nope", Side: "client", CSR: svcCSR}), 403, `node n2 has no credential "nope"`},
		{"unknown side", n2c, "POST", wire.CertificatesPath("n2"), signBody(wire.CertRequest{Credential: "svc", Side: "middle", CSR: svcCSR}), 400, `side "middle": want client or server`},
		{"credential CSR with a name", n2c, "POST", wire.CertificatesPath("n2"), signBody(wire.CertRequest{Credential: "svc", Side: "client", CSR: good}), 403, `svc/client: CSR asks for CN "n1": a credential's CSR names nothing`},
		{"too many certificates", n2c, "POST", wire.CertificatesPath("n2"), signBody(many...), 413, "33 certificates requested at once: at most 32"},
		{"a certificate twice", n2c, "POST", wire.CertificatesPath("n2"), signBody(many[:2]...), 400, "credential svc/client asked for twice"},
		{"no such path", plain, "GET", "/v1/admin", nil, 404, "no such enrolment endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := lab.snapshot(t)
			req, _ := http.NewRequest(tt.method, lab.url+tt.path, strings.NewReader(string(tt.body)))
			resp, err := tt.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var msg struct{ Error, Message string }
			json.Unmarshal(body, &msg)
			if resp.StatusCode != tt.code || !strings.Contains(msg.Error+msg.Message, tt.want) {
				t.Errorf("got %d %s\nwant %d and %q", resp.StatusCode, body, tt.code, tt.want)
			}
			if after := lab.snapshot(t); !mapsEqual(before, after) {
				t.Errorf("the refused request changed the state (%v → %v)", sortedKeys(before), sortedKeys(after))
			}
		})
	}
}

// TestEnrolFlood: at most MaxPendingPerMAC CSRs wait per MAC and
// MaxPending in all; the oldest go first, and a dropped key's poll says
// so (the node submits it again).
func TestEnrolFlood(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{MaxPendingPerMAC: 2, MaxPending: 3})
	ctx := context.Background()
	var fps []string
	submit := func(node, mac string) {
		t.Helper()
		c := lab.client(t, node, mac, io.Discard)
		if ok, err := c.Enrol(ctx, 0); ok || err != nil {
			t.Fatalf("%s: %v %v", node, ok, err)
		}
		fps = append(fps, c.Fingerprint())
		lab.clk.Add(time.Second)
	}
	for range 3 {
		submit("n1", "52:54:00:00:00:01")
	}
	for range 2 {
		submit("n4", "52:54:00:00:00:04")
	}
	list, _ := lab.node(t, "", "list")
	// n1's first went for the per-MAC bound, its second for the bound in all.
	for i, want := range []bool{false, false, true, true, true} {
		if got := strings.Contains(list, fps[i]); got != want {
			t.Errorf("key %d listed: %v, want %v\n%s", i, got, want, list)
		}
	}
	_, code := lab.get(t, lab.rawClient(t, nil), wire.PollPath("n1", fps[0]))
	if code != http.StatusNotFound {
		t.Errorf("poll of a dropped key: %d, want 404", code)
	}
	if n := refusedCount(t, lab, "flood"); n != 2 {
		t.Errorf("flood drops counted %v, want 2", n)
	}
}
