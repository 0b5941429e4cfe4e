package enrol

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
)

// TestKeyKept: the node's key is made once, 0600 in a 0700 directory,
// and the same key (fingerprint) is used by every later client over the
// same directory: a disk's data partition keeps it across boots.
func TestKeyKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "enrol")
	o := Options{Endpoint: Endpoint{URL: "https://192.0.2.1:8443", Node: "n1", MAC: "52:54:00:00:00:01",
		RootPin: "sha256:" + strings.Repeat("ab", 32)}, Dir: dir}
	c1, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Fingerprint() != c2.Fingerprint() {
		t.Errorf("a second client made a new key: %s, %s", c1.Fingerprint(), c2.Fingerprint())
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "host.key"): 0o600, filepath.Join(dir, "enrol.json"): 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %04o", p, fi.Mode().Perm(), err, want)
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, "host.key"))
	k, err := parseKey(data, "host.key")
	if err != nil {
		t.Fatal(err)
	}
	if fp, _ := wire.Fingerprint(k.Public()); fp != c1.Fingerprint() {
		t.Errorf("the key file's fingerprint %s, the client's %s", fp, c1.Fingerprint())
	}
	ep, err := ReadEndpoint(dir)
	if err != nil || ep != o.Endpoint {
		t.Errorf("endpoint kept: %+v %v", ep, err)
	}
}

func TestNewRefuses(t *testing.T) {
	pin := "sha256:" + strings.Repeat("ab", 32)
	for _, tt := range []struct {
		name string
		ep   Endpoint
		want string
	}{
		{"http", Endpoint{URL: "http://192.0.2.1:8443", Node: "n1", RootPin: pin}, "want https://HOST:PORT"},
		{"no node", Endpoint{URL: "https://192.0.2.1:8443", RootPin: pin}, "no node name"},
		{"no trust", Endpoint{URL: "https://192.0.2.1:8443", Node: "n1"}, "nothing to check serve's certificate with"},
		{"bad pin", Endpoint{URL: "https://192.0.2.1:8443", Node: "n1", RootPin: "sha256:12"}, "not a fingerprint"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(Options{Endpoint: tt.ep, Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestDue: a certificate is due in the last third of its life.
func TestDue(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &x509.Certificate{NotBefore: start, NotAfter: start.Add(300 * 24 * time.Hour)}
	for _, tt := range []struct {
		days int
		due  bool
	}{{0, false}, {199, false}, {200, true}, {301, true}} {
		if got := Due(c, start.Add(time.Duration(tt.days)*24*time.Hour)); got != tt.due {
			t.Errorf("day %d: due %v, want %v", tt.days, got, tt.due)
		}
	}
}
