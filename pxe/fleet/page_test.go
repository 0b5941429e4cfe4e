package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/fleet"
	"github.com/bellbuild/bellbuild/pxe/fleet/wire"
	"github.com/bellbuild/bellbuild/pxe/state"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// wants is a fixed inventory.
type wants []fleet.Want

func (w wants) Wants(context.Context) ([]fleet.Want, error) { return w, nil }

// pending says that every node in it waits for approval.
type pending map[string]bool

func (p pending) PendingApproval(_ context.Context, n string) (bool, error) { return p[n], nil }

const token = "0123456789abcdef-token"

// fleetLab is an inventory of four nodes, three with reports.
func fleetLab(t *testing.T) fleet.PageConfig {
	t.Helper()
	st, err := state.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rec := fleet.NewRecorder(st, fleet.Options{Now: func() time.Time { return now.Add(-time.Minute) }})
	inv := wants{
		{Node: "a-ok", Profile: "p", Config: "sha256:aaaa"},
		{Node: "b-fail", Profile: "p", Config: "sha256:bbbb"},
		{Node: "c-drift", Profile: "q", Config: "sha256:cccc"},
		{Node: "d-new", Profile: "q", Config: "sha256:dddd"},
	}
	for _, r := range []wire.Report{
		{Node: "a-ok", Config: "sha256:aaaa"},
		{Node: "b-fail", Config: "sha256:bbbb", Errors: []wire.Error{{Module: "files", Item: "/etc/x", Message: "permission <denied>"}}},
		{Node: "c-drift", Config: "sha256:0000"},
	} {
		r.Profile, r.Start, r.Trigger = "p", now.Add(-2*time.Minute), "boot"
		if _, err := rec.Record(context.Background(), r.Node, []wire.Report{r}, true, "192.0.2.9"); err != nil {
			t.Fatal(err)
		}
	}
	return fleet.PageConfig{Inventory: inv, Recorder: rec, Enrolments: pending{}, Token: token}
}

// testCA is a CA and a certificate it signs for a client.
func testCA(t *testing.T, name string) (*x509.Certificate, tls.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	ca, _ := x509.ParseCertificate(der)
	ckey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ct := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "alice"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	cder, _ := x509.CreateCertificate(rand.Reader, ct, ca, ckey.Public(), key)
	return ca, tls.Certificate{Certificate: [][]byte{cder}, PrivateKey: ckey}
}

// TestPageAuth: the page over TLS answers a user certificate of the
// users CA and the token, and refuses a certificate of another CA that
// TLS trusts (a node's), a wrong token, and nothing.
func TestPageAuth(t *testing.T) {
	cfg := fleetLab(t)
	users, alice := testCA(t, "users")
	hosts, node := testCA(t, "hosts")
	cfg.Users = users
	srv := httptest.NewUnstartedServer(fleet.Page(cfg))
	pool := x509.NewCertPool()
	pool.AddCert(users)
	pool.AddCert(hosts)
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()
	for _, tt := range []struct {
		name  string
		cert  *tls.Certificate
		token string
		code  int
	}{
		{"nothing", nil, "", 401},
		{"wrong token", nil, "nope", 401},
		{"token", nil, token, 200},
		{"user certificate", &alice, "", 200},
		{"node certificate", &node, "", 401},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr := srv.Client().Transport.(*http.Transport).Clone()
			if tt.cert != nil {
				tr.TLSClientConfig.Certificates = []tls.Certificate{*tt.cert}
			}
			req, _ := http.NewRequest("GET", srv.URL+"/status.json", nil)
			if tt.token != "" {
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code {
				t.Fatalf("%d %s, want %d", resp.StatusCode, body, tt.code)
			}
			if tt.code == 200 {
				var st fleet.Status
				if err := json.Unmarshal(body, &st); err != nil || len(st.Nodes) != 4 || st.Counts["failing"] != 1 || st.Counts["never seen"] != 1 {
					t.Errorf("status.json: %+v %v", st, err)
				}
			}
		})
	}
}

// withToken serves the page on plain loopback HTTP with the token added:
// what a browser in a test can load.
func withToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+token)
		h.ServeHTTP(w, r)
	})
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestPage: the counts, the rows sorted by the column a link names, the
// node page with its reports and errors (escaped), no script, nothing
// loaded from elsewhere.
func TestPage(t *testing.T) {
	srv := httptest.NewServer(withToken(fleet.Page(fleetLab(t))))
	defer srv.Close()
	order := func(body string) string {
		var names []string
		for _, m := range regexp.MustCompile(`<a href="/node/([a-z-]+)">`).FindAllStringSubmatch(body, -1) {
			names = append(names, m[1])
		}
		return strings.Join(names, " ")
	}
	for _, tt := range []struct{ query, want string }{
		{"", "d-new b-fail c-drift a-ok"}, // by state, most urgent first
		{"?sort=node", "a-ok b-fail c-drift d-new"},
		{"?sort=node&desc=1", "d-new c-drift b-fail a-ok"},
		{"?sort=errors&desc=1", "b-fail a-ok c-drift d-new"},
		{"?state=failing", "b-fail"},
	} {
		code, body := get(t, srv.URL+"/"+tt.query)
		if code != 200 || order(body) != tt.want {
			t.Errorf("/%s: %d, rows %q, want %q", tt.query, code, order(body), tt.want)
		}
	}
	_, body := get(t, srv.URL+"/")
	for _, want := range []string{`id="count-failing">1<`, `id="count-ok">1<`, `id="count-drifted">1<`, `id="count-never-seen">1<`,
		`href="/?sort=node"`, `files: /etc/x: permission &lt;denied&gt;`} {
		if !strings.Contains(body, want) {
			t.Errorf("fleet page lacks %s", want)
		}
	}
	for _, bad := range []string{"<script", "http://", "https://"} {
		if strings.Contains(body, bad) {
			t.Errorf("fleet page holds %q", bad)
		}
	}
	code, body := get(t, srv.URL+"/node/b-fail")
	if code != 200 || !strings.Contains(body, "<li>files: /etc/x: permission &lt;denied&gt;</li>") || !strings.Contains(body, "1 errors") {
		t.Errorf("node page: %d\n%s", code, body)
	}
	if code, _ := get(t, srv.URL+"/node/zz"); code != 404 {
		t.Errorf("unknown node: %d", code)
	}
}

// TestPageInBrowser: a real headless Chromium renders the fleet table,
// its counts and a node page; the screenshot is kept
// ($BELLBUILD_TEST_ARTIFACTS, else the test's directory).
func TestPageInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("a headless browser: skipped under -short")
	}
	chromium := testtool.LookPath(t, "chromium", "chromium")
	srv := httptest.NewServer(withToken(fleet.Page(fleetLab(t))))
	defer srv.Close()
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, chromium, append([]string{"--headless", "--no-sandbox", "--disable-gpu",
			"--user-data-dir=" + t.TempDir(), "--window-size=1024,768"}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return string(out)
	}
	dom := run("--dump-dom", srv.URL+"/")
	for _, re := range []string{`<table id="fleet">`, `id="count-failing">1</b>`, `<td><a href="/node/b-fail">b-fail</a></td><td>p</td><td>failing</td>`} {
		if !regexp.MustCompile(regexp.QuoteMeta(re)).MatchString(dom) {
			t.Errorf("the browser's DOM lacks %s:\n%s", re, dom)
		}
	}
	if dom := run("--dump-dom", srv.URL+"/node/b-fail"); !strings.Contains(dom, "permission &lt;denied&gt;") {
		t.Errorf("node page in the browser:\n%s", dom)
	}
	dir := os.Getenv("BELLBUILD_TEST_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "fleet-status-page.png")
	run("--screenshot="+shot, srv.URL+"/")
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 1000 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot: %s", shot)
}
