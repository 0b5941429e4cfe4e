package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	fbenrol "github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/httpboot"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
)

// crashEnv makes the test binary serve's enrolment endpoint, frozen at a
// point (see crashChild).
const crashEnv = "BELLBUILD_ENROL_CRASH_CHILD"

func TestMain(m *testing.M) {
	if v := os.Getenv(crashEnv); v != "" {
		crashChild(v)
	}
	os.Exit(m.Run())
}

// crashChild serves the endpoint of the site in SITE over STATE (v is
// "SITE STATE PAUSE"), built as serve builds it, and prints its URL.
// PAUSE "sign" freezes a request right after the CA signed (the serial
// is in the PKI's log, nothing in the state yet); "store" right after a
// state update was written; the test then kills the process (SIGKILL):
// the request is never answered.
func crashChild(v string) {
	f := strings.Fields(v)
	siteDir, stateDir, pause := f[0], f[1], f[2]
	fail := func(err error) {
		fmt.Println("error", err)
		os.Exit(1)
	}
	site, err := profiles.Load(siteDir)
	if err != nil {
		fail(err)
	}
	store, err := openPKI(site, "", nil)
	if err != nil {
		fail(err)
	}
	cert, err := serveCert(context.Background(), store, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		fail(err)
	}
	dir, err := pxestate.OpenDir(stateDir)
	if err != nil {
		fail(err)
	}
	nodes := newSiteNodes(site, nil)
	var ca enrol.CA = &siteCA{store: store, nodes: nodes}
	var st pxestate.Store = dir
	switch pause {
	case "sign":
		ca = pausingCA{ca}
	case "store":
		st = pausingStore{dir}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := enrol.NewRegistry(st, ca, enrol.Options{ParseCSR: pki.ParseCSR, Log: log})
	backend, err := newSiteBackend(context.Background(), site, "", os.TempDir(), filepath.Join(stateDir, "nodes"), "")
	if err != nil {
		fail(err)
	}
	h := enrol.New(enrol.Config{Registry: reg, CA: ca, Backend: backend, Configs: nodes, Bundle: store.Bundle(), Log: log})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	fmt.Printf("listening https://%s\n", ln.Addr())
	fail(httpboot.ServeTLS(context.Background(), ln, h, httpboot.Limits{}, enrol.TLSConfig(cert, store.CA(pki.Hosts).Cert, nil)))
}

// pausingCA signs, says so, and never returns.
type pausingCA struct{ enrol.CA }

func (p pausingCA) SignHost(ctx context.Context, node string, csr *x509.CertificateRequest) (enrol.Cert, error) {
	c, err := p.CA.SignHost(ctx, node, csr)
	if err == nil {
		fmt.Printf("signed %s\n", c.Serial)
		select {}
	}
	return c, err
}

// pausingStore writes, says so, and never returns.
type pausingStore struct{ pxestate.Store }

func (p pausingStore) Update(ctx context.Context, key string, f func([]byte) ([]byte, error)) error {
	err := p.Store.Update(ctx, key, f)
	if err == nil {
		fmt.Printf("stored %s\n", key)
		select {}
	}
	return err
}

// startCrashChild starts the endpoint in a child process and returns its
// URL, a channel of its output lines and how to kill it.
func startCrashChild(t *testing.T, site, state, pause string) (string, <-chan string, func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+site+" "+state+" "+pause)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	kill := func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}
	t.Cleanup(kill)
	select {
	case l := <-lines:
		url, ok := strings.CutPrefix(l, "listening ")
		if !ok {
			t.Fatalf("child: %s", l)
		}
		return url, lines, kill
	case <-time.After(30 * time.Second):
		t.Fatal("the child did not start")
	}
	return "", nil, nil
}

// TestEnrolKilled kills (SIGKILL) the endpoint between receiving a CSR
// and answering it — right after signing a first-key node's certificate,
// and right after recording a manual node's pending CSR — then starts it
// again: the node's retry succeeds, no serial is lost (the PKI's log has
// the one never answered, and retiring the node revokes it) or used twice.
func TestEnrolKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("child processes killed: skipped under -short")
	}
	lab := newEnrolLab(t, enrol.Options{}) // the site, its PKI, a state directory
	state := t.TempDir()
	ctx := context.Background()
	newClient := func(url, node, mac, dir string) *fbenrol.Client {
		c, err := fbenrol.New(fbenrol.Options{Endpoint: fbenrol.Endpoint{URL: url, Node: node, MAC: mac, RootPin: lab.ep.root},
			Dir: dir, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	wait := func(lines <-chan string, prefix string) string {
		t.Helper()
		select {
		case l := <-lines:
			v, ok := strings.CutPrefix(l, prefix+" ")
			if !ok {
				t.Fatalf("child said %q, want %s", l, prefix)
			}
			return v
		case <-time.After(30 * time.Second):
			t.Fatalf("the child never said %s", prefix)
		}
		return ""
	}

	t.Run("after signing", func(t *testing.T) {
		url, lines, kill := startCrashChild(t, lab.site, state, "sign")
		dir := t.TempDir()
		done := make(chan bool)
		go func() {
			ok, _ := newClient(url, "n2", "52:54:00:00:00:02", dir).Enrol(ctx, 0)
			done <- ok
		}()
		lost := wait(lines, "signed")
		kill()
		if <-done {
			t.Fatal("the node was answered by a killed endpoint")
		}
		url, _, _ = startCrashChild(t, lab.site, state, "none")
		c := newClient(url, "n2", "52:54:00:00:00:02", dir)
		if ok, err := c.Enrol(ctx, 0); !ok || err != nil {
			t.Fatalf("retry after the kill: %v %v", ok, err)
		}
		cert, _, _ := c.HostCert()
		got := cert.SerialNumber.Text(16)
		if got == lost {
			t.Fatalf("serial %s was answered after it was lost", got)
		}
		// The PKI's log has both, once each; retiring revokes both.
		entries := pkiEntries(t, lab.site)
		for _, s := range []string{lost, got} {
			if entries[s] != 1 {
				t.Errorf("serial %s is in the PKI's log %d times, want once", s, entries[s])
			}
		}
		if _, err := runNodeIn(t, lab.site, state, "", "retire", "n2"); err != nil {
			t.Fatal(err)
		}
		crl, _ := os.ReadFile(filepath.Join(lab.site, "pki", "hosts.crl.pem"))
		revoked, err := revokedIn(crl)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{lost, got} {
			if !revoked[s] {
				t.Errorf("retire did not revoke %s", s)
			}
		}
	})

	t.Run("after recording a pending CSR", func(t *testing.T) {
		url, lines, kill := startCrashChild(t, lab.site, state, "store")
		dir := t.TempDir()
		done := make(chan bool)
		go func() {
			ok, _ := newClient(url, "n1", "52:54:00:00:00:01", dir).Enrol(ctx, 0)
			done <- ok
		}()
		if key := wait(lines, "stored"); key != enrol.NodeKey("n1") {
			t.Fatalf("stored %s", key)
		}
		kill()
		<-done
		url, _, _ = startCrashChild(t, lab.site, state, "none")
		c := newClient(url, "n1", "52:54:00:00:00:01", dir)
		if ok, err := c.Enrol(ctx, 0); ok || err != nil {
			t.Fatalf("retry: %v %v, want pending", ok, err)
		}
		out, err := runNodeIn(t, lab.site, state, "", "list")
		if err != nil || strings.Count(out, c.Fingerprint()) != 1 {
			t.Fatalf("node list after the kill and the retry (%v):\n%s", err, out)
		}
		if _, err := runNodeIn(t, lab.site, state, c.Fingerprint(), "approve", "n1"); err != nil {
			t.Fatal(err)
		}
		if ok, err := c.Enrol(ctx, 0); !ok || err != nil {
			t.Fatalf("after approval: %v %v", ok, err)
		}
	})
}

// runNodeIn runs `bellbuild node ARGS` on a site and state directory.
func runNodeIn(t *testing.T, site, state, fp string, args ...string) (string, error) {
	t.Helper()
	var out strings.Builder
	err := runNode(context.Background(), nodeFlags{site: siteFlags{dir: site}, state: state, fingerprint: fp, output: "text"}, args, &out)
	return out.String(), err
}

// pkiEntries counts each serial's issue records in the site PKI's log.
func pkiEntries(t *testing.T, site string) map[string]int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(site, "private", "pki", "log.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, `"op":"issue"`) {
			i := strings.Index(l, `"serial":"`)
			s := l[i+len(`"serial":"`):]
			out[s[:strings.IndexByte(s, '"')]]++
		}
	}
	return out
}

// revokedIn lists the serials a PEM CRL revokes.
func revokedIn(pemData []byte) (map[string]bool, error) {
	out := map[string]bool{}
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			return out, nil
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, err
		}
		for _, e := range crl.RevokedCertificateEntries {
			out[e.SerialNumber.Text(16)] = true
		}
	}
}
