package pki

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// pair is a certificate and key written to files for openssl.
type pair struct{ cert, key string }

func writePair(t *testing.T, dir, name string, is *Issued) pair {
	t.Helper()
	p := pair{filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")}
	if err := os.WriteFile(p.cert, is.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.key, is.Key.Reveal(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// opensslSite is a PKI on the real clock (openssl checks validity against
// it) with an etcd credential for n1 and a second, revoked, client.
type opensslSite struct {
	*site
	dir                    string
	server, client, revked pair
	ca, crl                string // the bundle; the services CA's CRL
}

func newOpensslSite(t *testing.T) *opensslSite {
	t.Helper()
	s := newSite(t, func(o *Options) { o.Now = time.Now })
	ctx := context.Background()
	o := &opensslSite{site: s, dir: t.TempDir()}
	reqs, err := ServiceRequests(testHost, nodeconf.Credential{Name: "etcd"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Issue(ctx, reqs...)
	if err != nil {
		t.Fatal(err)
	}
	o.client, o.server = writePair(t, o.dir, "client", out[0]), writePair(t, o.dir, "server", out[1])
	h2 := testHost
	h2.Name = "n2"
	reqs, _ = ServiceRequests(h2, nodeconf.Credential{Name: "etcd"})
	out, err = s.Issue(ctx, reqs[0])
	if err != nil {
		t.Fatal(err)
	}
	o.revked = writePair(t, o.dir, "revoked", out[0])
	if _, err := s.Revoke(ctx, Selector{Serial: out[0].Serial}, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	o.ca = filepath.Join(o.dir, "ca.pem")
	if err := os.WriteFile(o.ca, s.Bundle(), 0o644); err != nil {
		t.Fatal(err)
	}
	o.crl = filepath.Join(s.opts.Site, "pki", "services.crl.pem")
	return o
}

// TestOpensslVerify: openssl, as an independent judge, accepts a valid
// leaf and rejects a revoked one with the site's root, sub-CA and CRL.
func TestOpensslVerify(t *testing.T) {
	openssl := testtool.LookPath(t, "openssl", "openssl")
	o := newOpensslSite(t)
	pki := filepath.Join(o.opts.Site, "pki")
	allCRLs := filepath.Join(o.dir, "all.crl.pem")
	crls, err := o.CRLs()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(allCRLs, crls, 0o644)
	tests := []struct {
		name string
		args []string
		leaf string
		ok   bool
		want string
	}{
		{"valid", []string{"-crl_check", "-CRLfile", o.crl}, o.server.cert, true, ": OK"},
		{"valid client", []string{"-crl_check", "-CRLfile", o.crl}, o.client.cert, true, ": OK"},
		{"valid, whole chain", []string{"-crl_check_all", "-CRLfile", allCRLs}, o.server.cert, true, ": OK"},
		{"revoked", []string{"-crl_check", "-CRLfile", o.crl}, o.revked.cert, false, "certificate revoked"},
		{"revoked, whole chain", []string{"-crl_check_all", "-CRLfile", allCRLs}, o.revked.cert, false, "certificate revoked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"verify", "-CAfile", filepath.Join(pki, "root.pem"), "-untrusted", filepath.Join(pki, "services.pem")}, tt.args...)
			out, err := exec.Command(openssl, append(args, tt.leaf)...).CombinedOutput()
			if (err == nil) != tt.ok || !strings.Contains(string(out), tt.want) {
				t.Errorf("openssl %s: %v\n%s\nwant ok=%v and %q", strings.Join(args, " "), err, out, tt.ok, tt.want)
			}
		})
	}
}

// TestOpensslHandshake: openssl s_server -Verify 1 and s_client shake
// hands on loopback with a service's server and client certificates, and
// refuse a revoked client, a client-only certificate used as a server
// and certificates of another site's CA.
func TestOpensslHandshake(t *testing.T) {
	openssl := testtool.LookPath(t, "openssl", "openssl")
	a := newOpensslSite(t)
	b := newOpensslSite(t) // another site
	tests := []struct {
		name           string
		server, client pair
		ok             bool
		want           string // in the output of the side that refuses
	}{
		{"server and client", a.server, a.client, true, ""},
		{"revoked client", a.server, a.revked, false, "certificate revoked"},
		{"client certificate as server", a.client, a.client, false, "unsuitable certificate purpose"},
		{"server of another site", b.server, a.client, false, "unable to get local issuer certificate"},
		{"client of another site", a.server, b.client, false, "unable to get local issuer certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, out := handshake(t, openssl, a, tt.server, tt.client)
			if ok != tt.ok || !strings.Contains(out, tt.want) {
				t.Errorf("handshake ok=%v, want %v and %q in:\n%s", ok, tt.ok, tt.want, out)
			}
		})
	}
}

// handshake runs s_server (requiring a client certificate from the
// site's CAs, checking the services CRL, echoing lines reversed) and
// s_client (trusting the site's CAs, expecting etcd.example.org), sends
// "ping" and reports whether "gnip" came back, with both outputs.
func handshake(t *testing.T, openssl string, s *opensslSite, server, client pair) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var srvOut testtool.Buffer
	srv := exec.CommandContext(ctx, openssl, "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-rev",
		"-cert", server.cert, "-key", server.key, "-CAfile", s.ca,
		"-Verify", "1", "-verify_return_error", "-crl_check", "-CRL", s.crl)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.Stdout, srv.Stderr = w, w
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	defer srv.Wait()
	defer srv.Process.Kill()
	port := make(chan string, 1)
	srvRead := make(chan struct{}) // closed when all of s_server's output is in srvOut
	go func() {
		defer close(srvRead)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			srvOut.Write([]byte(sc.Text() + "\n"))
			if a, ok := strings.CutPrefix(sc.Text(), "ACCEPT "); ok {
				port <- a
			}
		}
		close(port)
	}()
	addr, ok := <-port
	if !ok {
		t.Fatalf("s_server did not start:\n%s", srvOut.String())
	}
	var cliOut testtool.Buffer
	cli := exec.CommandContext(ctx, openssl, "s_client", "-connect", addr, "-quiet", "-ign_eof",
		"-cert", client.cert, "-key", client.key, "-CAfile", s.ca,
		"-verify_return_error", "-verify_hostname", "etcd.example.org")
	in, err := cli.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cr, cw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cli.Stdout, cli.Stderr = cw, cw
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	cw.Close()
	io.WriteString(in, "ping\n")
	got := false
	sc := bufio.NewScanner(cr)
	for sc.Scan() {
		cliOut.Write([]byte(sc.Text() + "\n"))
		if strings.Contains(sc.Text(), "gnip") {
			got = true
			break
		}
	}
	cli.Process.Kill()
	cli.Wait()
	in.Close()
	// Let s_server finish its report of the connection: it exits after
	// one, and its output is read to the end (waiting for the process
	// alone once lost the last lines, the reason of a refusal).
	select {
	case <-srvRead:
	case <-time.After(5 * time.Second):
	}
	return got, "--- s_server:\n" + srvOut.String() + "--- s_client:\n" + cliOut.String()
}
