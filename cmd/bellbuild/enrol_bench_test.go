package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	fbenrol "github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/httpboot"
)

// benchLab is a site of n nodes (b0001, ...) with policy, a PKI, and the
// enrolment endpoint on loopback with its state on disk (fsynced).
type benchLab struct {
	url, root string
	rootPool  *x509.CertPool
	stop      func()
}

func newBenchLab(b *testing.B, n int, policy string) *benchLab {
	b.Helper()
	dir := b.TempDir()
	site := filepath.Join(dir, "site")
	var nodes strings.Builder
	nodes.WriteString("nodes:\n")
	for i := range n {
		fmt.Fprintf(&nodes, "- {name: b%04d, mac: \"52:54:00:01:%02x:%02x\", profile: p, enrol: %s}\n", i, i/256, i%256, policy)
	}
	for name, data := range map[string]string{
		"site.yaml":       "domain: example.org\n",
		"profiles/p.yaml": "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\nconf:\n  credentials:\n  - {name: svc}\n",
		"nodes.yaml":      nodes.String(),
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(site, name)), 0o755)
		os.WriteFile(filepath.Join(site, name), []byte(data), 0o644)
	}
	if _, err := pki.Init(context.Background(), pki.Options{Site: site}, filepath.Join(dir, "root-out"), false); err != nil {
		b.Fatal(err)
	}
	s, err := profiles.Load(site)
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	ep, err := newEnrolEndpoint(context.Background(), s, site, "", filepath.Join(dir, "state"), netip.MustParseAddr("127.0.0.1"), nil, enrol.Options{Log: log})
	if err != nil {
		b.Fatal(err)
	}
	backend, err := newSiteBackend(context.Background(), s, "", b.TempDir(), b.TempDir(), "")
	if err != nil {
		b.Fatal(err)
	}
	cfg := ep.cfg
	cfg.Backend = backend
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		httpboot.ServeTLS(ctx, ln, enrol.New(cfg), httpboot.Limits{}, ep.tls)
	}()
	pool := x509.NewCertPool()
	data, _ := os.ReadFile(filepath.Join(site, "pki", "root.pem"))
	pool.AppendCertsFromPEM(data)
	lab := &benchLab{url: "https://" + ln.Addr().String(), root: ep.root, rootPool: pool, stop: func() { cancel(); <-done }}
	b.Cleanup(lab.stop)
	return lab
}

func benchMAC(i int) string { return fmt.Sprintf("52:54:00:01:%02x:%02x", i/256, i%256) }

// BenchmarkEnrolRenewal: approved nodes renewing their host certificate
// over mutual TLS on loopback, each renewal a new serial in the PKI's log
// and the enrolment state, both fsynced before the answer. "renewals/s"
// counts completed renewals; "new-connection" does a TLS handshake (with
// client certificate) per renewal, "keep-alive" reuses connections, and
// "handshake" is the mutual-TLS handshake alone (ns/op), for comparison.
func BenchmarkEnrolRenewal(b *testing.B) {
	const nodes = 32
	lab := newBenchLab(b, nodes, "first-key")
	type node struct {
		cert tls.Certificate
		csr  []byte
		name string
	}
	var ns []node
	for i := range nodes {
		c, err := fbenrol.New(fbenrol.Options{Endpoint: fbenrol.Endpoint{URL: lab.url, Node: fmt.Sprintf("b%04d", i), MAC: benchMAC(i), RootPin: lab.root}, Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		if ok, err := c.Enrol(context.Background(), 0); !ok || err != nil {
			b.Fatalf("enrol: %v %v", ok, err)
		}
		_, chain, _ := c.HostCert()
		keyPEM, _ := c.HostKey()
		cert, err := tls.X509KeyPair(chain, keyPEM)
		if err != nil {
			b.Fatal(err)
		}
		k, _ := x509.ParsePKCS8PrivateKey(pemBytes(keyPEM))
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: c.Node()}}, k)
		body := mustJSON(b, wire.RenewRequest{CSR: pemEncode("CERTIFICATE REQUEST", csr)})
		ns = append(ns, node{cert: cert, csr: body, name: c.Node()})
	}
	clientFor := func(n node, keepAlive bool) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: lab.rootPool, Certificates: []tls.Certificate{n.cert}},
			DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 4}
		return &http.Client{Transport: tr}
	}
	renew := func(b *testing.B, keepAlive bool) {
		var next atomic.Int64
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			n := ns[int(next.Add(1))%len(ns)]
			hc := clientFor(n, keepAlive)
			for pb.Next() {
				resp, err := hc.Post(lab.url+wire.RenewPath(n.name), "application/json", bytes.NewReader(n.csr))
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("renewal: %s", resp.Status)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "renewals/s")
	}
	b.Run("new-connection", func(b *testing.B) { renew(b, false) })
	b.Run("keep-alive", func(b *testing.B) { renew(b, true) })
	b.Run("handshake", func(b *testing.B) {
		host := strings.TrimPrefix(lab.url, "https://")
		tc := &tls.Config{RootCAs: lab.rootPool, Certificates: []tls.Certificate{ns[0].cert}}
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c, err := tls.Dial("tcp", host, tc)
				if err != nil {
					b.Error(err)
					return
				}
				if err := c.Handshake(); err != nil {
					b.Error(err)
				}
				c.Close()
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
	})
}

// BenchmarkEnrolPending1000 measures what 1,000 pending enrolments (1,000
// manual nodes, one CSR each, submitted over TLS) cost serve's endpoint in
// heap, after a GC: "heap-MB" is the growth of the live heap.
func BenchmarkEnrolPending1000(b *testing.B) {
	const n = 1000
	for range b.N {
		b.StopTimer()
		lab := newBenchLab(b, n, "manual")
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: lab.rootPool}, MaxIdleConnsPerHost: 8}}
		bodies := make([][]byte, n)
		for i := range n {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
			bodies[i] = mustJSON(b, wire.EnrolRequest{Node: fmt.Sprintf("b%04d", i), MAC: benchMAC(i), CSR: pemEncode("CERTIFICATE REQUEST", csr)})
		}
		before := liveHeap()
		b.StartTimer()
		for i := range n {
			resp, err := hc.Post(lab.url+wire.PathEnrol, "application/json", bytes.NewReader(bodies[i]))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				b.Fatalf("submission %d: %s", i, resp.Status)
			}
		}
		b.StopTimer()
		bodies = nil
		hc.CloseIdleConnections()
		time.Sleep(100 * time.Millisecond) // the server's idle connections settle
		b.ReportMetric(float64(int64(liveHeap())-int64(before))/(1<<20), "heap-MB")
		lab.stop()
	}
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// pemBytes is the first PEM block's bytes.
func pemBytes(data []byte) []byte {
	blk, _ := pem.Decode(data)
	if blk == nil {
		return nil
	}
	return blk.Bytes
}

func pemEncode(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}
