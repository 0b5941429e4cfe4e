package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/report"
	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/pxe"
	"github.com/bellbuild/bellbuild/pxe/fleet"
	"github.com/bellbuild/bellbuild/pxe/state/etcd/etcdtest"

	fbenrol "github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// sharedServe is one serve instance of TestServeSharedEtcd; stop kills it.
type sharedServe struct {
	url, metrics string
	stop         func()
}

// startSharedServe runs `bellbuild serve` (no DHCP, TFTP or HTTP: the
// enrolment endpoint and the status page) over the shared state.
func startSharedServe(t *testing.T, site, state, tokenFile string, ef etcdFlags) *sharedServe {
	t.Helper()
	addr := freePort(t)
	o := serveFlags{site: siteFlags{dir: site}, serverIP: "127.0.0.1", dhcp: pxe.DHCPOff, artifacts: t.TempDir(),
		state: state, work: t.TempDir(), etcd: ef, statusAuth: tokenFile, httpAddr: freePort(t), tftpAddr: "off",
		httpsAddr: addr, bootVia: "http", leaseTime: time.Hour, tftpWindow: 1, loaders: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, o) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp4", addr)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve on %s: not listening after 30 s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &sharedServe{url: "https://" + addr, metrics: "http://" + o.httpAddr + "/metrics", stop: stop}
}

// TestServeSharedEtcd: two serve instances over one three-member etcd
// cluster (TLS with client certificates): a node enrols through one, is
// approved with `bellbuild node approve --state etcd://`, and gets its
// certificate from the other at once; its report, sent to one, is what
// `bellbuild status` tells through the other and from etcd; with one
// instance killed, the other takes the next report.
func TestServeSharedEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd cluster and two serve instances: skipped under -short")
	}
	certs, _ := etcdtest.NewTLS(t, "127.0.0.1")
	c := etcdtest.Start(t, etcdtest.Options{TLS: certs})
	ef := etcdFlags{ca: certs.TrustedCAFile, cert: certs.CertFile, key: certs.KeyFile}
	state := c.URL()
	if !strings.HasPrefix(state, "etcd://") {
		t.Fatalf("cluster URL %q", state)
	}
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	for name, data := range enrolSiteFiles("sha256:" + strings.Repeat("0", 64)) {
		writeTestFile(t, filepath.Join(site, name), data)
	}
	if _, err := pki.Init(context.Background(), pki.Options{Site: site}, filepath.Join(dir, "root-out"), false); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("status-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startSharedServe(t, site, state, tokenFile, ef)
	b := startSharedServe(t, site, state, tokenFile, ef)
	ctx := context.Background()

	// Enrol through a.
	root := t.TempDir()
	pin := rootPin(t, site)
	newClient := func(url string) *fbenrol.Client {
		cl, err := fbenrol.New(fbenrol.Options{Endpoint: fbenrol.Endpoint{URL: url, Node: "n1", MAC: "52:54:00:00:00:01", RootPin: pin},
			Dir: filepath.Join(root, fbenrol.Dir), Console: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	ca := newClient(a.url)
	if ok, err := ca.Enrol(ctx, 0); ok || err != nil {
		t.Fatalf("Enrol through a = %v, %v; want pending", ok, err)
	}
	// Approved from the command line, through etcd.
	out, err := runNodeOut(t, nodeFlags{site: siteFlags{dir: site}, state: state, fingerprint: ca.Fingerprint(), output: "text", etcd: ef}, "approve", "n1")
	if err != nil || !strings.HasPrefix(out, "approved node n1") {
		t.Fatalf("node approve --state etcd://: %q %v", out, err)
	}
	// b knows at once.
	cb := newClient(b.url)
	if ok, err := cb.Enrol(ctx, 0); !ok || err != nil {
		t.Fatalf("Enrol through b after the approval = %v, %v", ok, err)
	}
	// A report to a, told by b and by etcd.
	rep := testReport("n1", time.Now().Add(-time.Second), "files: /etc/motd: disk full")
	if ans, err := report.Send(ctx, report.Options{Root: root, Poster: ca}, rep); err != nil || ans.Accepted != 1 || !ans.Verified {
		t.Fatalf("report to a: %+v %v", ans, err)
	}
	failing := func(args ...string) fleet.Row {
		t.Helper()
		code, stdout, stderr := runCmd(t, append([]string{"status", "-C", site, "-o", "json"}, args...)...)
		var rows []fleet.Row
		if err := json.Unmarshal([]byte(stdout), &rows); err != nil || code != 1 {
			t.Fatalf("status %v: exit %d, %v\n%s%s", args, code, err, stdout, stderr)
		}
		for _, r := range rows {
			if r.Node == "n1" {
				return r
			}
		}
		t.Fatalf("status %v: no n1 in %s", args, stdout)
		return fleet.Row{}
	}
	for _, args := range [][]string{
		{"--server", b.url, "--token-file", tokenFile},
		{"--state", state, "--etcd-ca", ef.ca, "--etcd-cert", ef.cert, "--etcd-key", ef.key},
	} {
		if r := failing(args...); r.State != fleet.StateFailing || r.Error != "files: /etc/motd: disk full" || !r.Verified {
			t.Errorf("status %v: n1 %+v", args[0], r)
		}
	}
	// b's /metrics counts n1 failing.
	resp, err := http.Get(b.metrics)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`bellbuild_fleet_nodes{state="failing"} 1`, `bellbuild_fleet_node_errors{node="n1"} 1`} {
		if !strings.Contains(string(m), want) {
			t.Errorf("b's /metrics lacks %s", want)
		}
	}

	// An operator's certificate from the site PKI reads b's page too,
	// until it is revoked.
	users := t.TempDir()
	if code, _, errs := runCmd(t, "pki", "issue", "user", "alice", "-C", site, "-o", users); code != 0 {
		t.Fatalf("pki issue user: %s", errs)
	}
	alice := []string{"--server", b.url, "--cert", filepath.Join(users, "alice.pem"), "--key", filepath.Join(users, "alice.key")}
	if r := failing(alice...); r.State != fleet.StateFailing {
		t.Errorf("status with alice's certificate: n1 %+v", r)
	}
	pemData, err := os.ReadFile(filepath.Join(users, "alice.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemData)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runCmd(t, "pki", "revoke", cert.SerialNumber.Text(16), "-C", site); code != 0 {
		t.Fatalf("pki revoke: %s", errs)
	}
	if code, _, errs := runCmd(t, append([]string{"status", "-C", site}, alice...)...); code != 1 || !strings.Contains(errs, "401 Unauthorized") {
		t.Errorf("status with a revoked certificate: exit %d, %s", code, errs)
	}

	// a dies; b takes the next report.
	a.stop()
	if _, err := report.Send(ctx, report.Options{Root: root, Poster: ca, Timeout: 2 * time.Second}, testReport("n1", time.Now())); !errors.Is(err, report.ErrNotSent) {
		t.Errorf("report to a killed serve: %v", err)
	}
	ans, err := report.Send(ctx, report.Options{Root: root, Poster: cb}, testReport("n1", time.Now().Add(time.Second)))
	if err != nil || ans.Accepted != 2 {
		t.Fatalf("report to b (with the one a missed): %+v %v", ans, err)
	}
	// Its last run had no error, with another configuration than the
	// site's (the test's): drifted, and status exits 0.
	code, stdout, stderr := runCmd(t, "status", "-C", site, "-o", "json", "--server", b.url, "--token-file", tokenFile)
	var rows []fleet.Row
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil || code != 0 {
		t.Fatalf("status after a's death: exit %d, %v\n%s%s", code, err, stdout, stderr)
	}
	for _, r := range rows {
		if r.Node == "n1" && (r.State != fleet.StateDrifted || r.Errors != 0) {
			t.Errorf("after a's death: n1 %+v", r)
		}
	}
}

// rootPin is the site root CA's fingerprint (what serve puts on a
// machine's command line).
func rootPin(t *testing.T, site string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(site, "pki", "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatal("root.pem: no PEM")
	}
	return wire.CertFingerprint(b.Bytes)
}

func runNodeOut(t *testing.T, o nodeFlags, args ...string) (string, error) {
	t.Helper()
	var b strings.Builder
	err := runNode(context.Background(), o, args, &b)
	return b.String(), err
}
