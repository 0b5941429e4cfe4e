package firstboot

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// testCA issues certificates for the credentials tests (the applier
// never imports the PKI: a small CA of its own is enough to make real
// material).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// leaf issues a certificate for cn, with a new key (or key when given).
func (ca *testCA) leaf(t testing.TB, cn string, key *ecdsa.PrivateKey) (string, nodeconf.Secret, *ecdsa.PrivateKey) {
	t.Helper()
	if key == nil {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	k8, _ := x509.MarshalPKCS8PrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		nodeconf.NewSecret("key of "+cn, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k8})), key
}

func (ca *testCA) crl(t testing.TB) string {
	t.Helper()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
}

// credFixture is a configuration with two services: etcd (owner app, a
// client and a server certificate) and kubelet (root, client only).
type credFixture struct {
	ca                            *testCA
	etcdClient, etcdServer, kubel nodeconf.IssuedCert
	crl                           string
}

func newCredFixture(t *testing.T) *credFixture {
	f := &credFixture{ca: newTestCA(t)}
	f.crl = f.ca.crl(t)
	for _, c := range []struct {
		cn  string
		out *nodeconf.IssuedCert
	}{{"etcd@n1", &f.etcdClient}, {"etcd.example.org", &f.etcdServer}, {"kubelet@n1", &f.kubel}} {
		cert, key, _ := f.ca.leaf(t, c.cn, nil)
		*c.out = nodeconf.IssuedCert{Cert: cert, Key: key}
	}
	return f
}

var noServer = false

func (f *credFixture) conf(names ...string) nodeconf.Conf {
	c := nodeconf.Conf{X509: &nodeconf.X509{CA: f.ca.pem, CRL: f.crl, Credentials: map[string]nodeconf.IssuedCredential{}}}
	for _, n := range names {
		switch n {
		case "etcd":
			c.Credentials = append(c.Credentials, nodeconf.Credential{Name: "etcd", ClientCertMode: "both", ServerCertMode: "both", Owner: "app"})
			ec, es := f.etcdClient, f.etcdServer
			c.X509.Credentials["etcd"] = nodeconf.IssuedCredential{Client: &ec, Server: &es}
		case "kubelet":
			c.Credentials = append(c.Credentials, nodeconf.Credential{Name: "kubelet", EnableServer: &noServer})
			k := f.kubel
			c.X509.Credentials["kubelet"] = nodeconf.IssuedCredential{Client: &k}
		}
	}
	return c
}

// TestCredentials: two services on a root: every file at its path with
// its mode and owner; a rerun changes nothing; removing everything
// restores the root (the runRootCases driver).
func TestCredentials(t *testing.T) {
	f := newCredFixture(t)
	x := credRoot
	key := func(s nodeconf.IssuedCert) string { return string(s.Key.Reveal()) }
	both := rootTree{
		x + "/ca.pem":                         fileEntry("0644", "0:0", f.ca.pem),
		x + "/crl.pem":                        fileEntry("0644", "0:0", f.crl),
		x + "/etcd":                           dirEntry("0750", "0:1235"),
		x + "/etcd/client":                    dirEntry("0750", "0:1235"),
		x + "/etcd/client/cert.pem":           fileEntry("0644", "0:1235", f.etcdClient.Cert),
		x + "/etcd/client/private_key.pem":    fileEntry("0400", "1234:1235", key(f.etcdClient)),
		x + "/etcd/server":                    dirEntry("0750", "0:1235"),
		x + "/etcd/server/cert.pem":           fileEntry("0644", "0:1235", f.etcdServer.Cert),
		x + "/etcd/server/private_key.pem":    fileEntry("0400", "1234:1235", key(f.etcdServer)),
		x + "/kubelet":                        dirEntry("0750", "0:0"),
		x + "/kubelet/client":                 dirEntry("0750", "0:0"),
		x + "/kubelet/client/cert.pem":        fileEntry("0644", "0:0", f.kubel.Cert),
		x + "/kubelet/client/private_key.pem": fileEntry("0400", "0:0", key(f.kubel)),
		"/etc/credentials":                    dirEntry("0755", "0:0"),
		"/etc/credentials/x509":               dirEntry("0755", "0:0"),
	}
	kubeletOnly := rootTree{}
	for p, e := range both {
		if !strings.HasPrefix(p, x+"/etcd") {
			kubeletOnly[p] = e
		}
	}
	runRootCases(t, []rootCase{{
		name: "two services",
		conf: f.conf("etcd", "kubelet"),
		want: both,
	}, {
		name: "a directory that was there keeps its owner and mode",
		before: rootTree{
			x + "/etcd": dirEntry("0755", "0:0"),
		},
		conf: f.conf("etcd"),
		want: func() rootTree {
			w := rootTree{}
			for p, e := range both {
				if !strings.HasPrefix(p, x+"/kubelet") {
					w[p] = e
				}
			}
			return w
		}(),
	}})

	// Removing one credential removes its files and its directories.
	root := t.TempDir()
	buildRoot(t, root)
	applyConf(t, root, f.conf("etcd", "kubelet"), false)
	rep := applyConf(t, root, f.conf("kubelet"), false)
	got, _ := snapshot(t, root)
	if _, err := os.Lstat(filepath.Join(root, x, "etcd")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("etcd's directory is still there: %v", err)
	}
	for p, e := range kubeletOnly {
		if got[p] != e {
			t.Errorf("%s: %q, want %q", p, got[p], e)
		}
	}
	if len(rep.Changes) != 7 { // 4 files, 3 directories
		t.Errorf("removing etcd: %d changes, want 7: %+v", len(rep.Changes), rep.Changes)
	}
}

// TestCredentialsPending: a side without its key is pending: nothing is
// written, no change, no error; the key completes it; a renewed
// certificate for the installed key replaces the old one without the key
// being sent again.
func TestCredentialsPending(t *testing.T) {
	f := newCredFixture(t)
	root := t.TempDir()
	buildRoot(t, root)
	before, _ := snapshot(t, root)
	// Rendered without the PKI at hand: no material at all.
	declared := f.conf("etcd")
	declared.X509 = nil
	rep := applyConf(t, root, declared, false)
	if want := []string{"credentials: ca.pem", "credentials: etcd/client", "credentials: etcd/server"}; strings.Join(rep.Pending, ",") != strings.Join(want, ",") || len(rep.Changes) != 0 {
		t.Fatalf("pending %q changes %+v, want %q and no change", rep.Pending, rep.Changes, want)
	}
	if !strings.HasSuffix(rep.Summary(), " pending=3") {
		t.Errorf("summary %q", rep.Summary())
	}
	if got, _ := snapshot(t, root); !rootsEqual(before, withoutNewDirs(got, before)) {
		t.Errorf("a pending credential changed the root")
	}
	// The public parts only: the CA and CRL go in, the credentials wait.
	noKeys := f.conf("etcd")
	for n, ic := range noKeys.X509.Credentials {
		c, s := *ic.Client, *ic.Server
		c.Key, s.Key = nodeconf.Secret{}, nodeconf.Secret{}
		noKeys.X509.Credentials[n] = nodeconf.IssuedCredential{Client: &c, Server: &s}
	}
	rep = applyConf(t, root, noKeys, false)
	var items []string
	for _, c := range rep.Changes {
		items = append(items, c.Item)
	}
	if want := []string{"credentials: etcd/client", "credentials: etcd/server"}; strings.Join(rep.Pending, ",") != strings.Join(want, ",") ||
		strings.Join(items, ",") != credRoot+"/ca.pem,"+credRoot+"/crl.pem" {
		t.Fatalf("pending %q changes %q, want %q and the CA and CRL", rep.Pending, items, want)
	}
	if _, err := os.Lstat(filepath.Join(root, credRoot, "etcd")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a pending credential got its directory: %v", err)
	}
	// The keys arrive.
	rep = applyConf(t, root, f.conf("etcd"), false)
	if len(rep.Pending) != 0 || len(rep.Changes) == 0 {
		t.Fatalf("with keys: pending %q, %d changes", rep.Pending, len(rep.Changes))
	}
	// Renewed for the same key, sent without it: the certificate is
	// replaced, the key stays.
	etcdKey := parseTestKey(t, f.etcdServer.Key)
	renewed, _, _ := f.ca.leaf(t, "etcd.example.org", etcdKey)
	c := f.conf("etcd")
	ic := c.X509.Credentials["etcd"]
	ic.Server = &nodeconf.IssuedCert{Cert: renewed}
	c.X509.Credentials["etcd"] = ic
	rep = applyConf(t, root, c, false)
	if len(rep.Pending) != 0 || len(rep.Changes) != 1 || rep.Changes[0].Item != credRoot+"/etcd/server/cert.pem" {
		t.Fatalf("renewed certificate: pending %q, changes %+v", rep.Pending, rep.Changes)
	}
	got, _ := os.ReadFile(filepath.Join(root, credRoot, "etcd/server/cert.pem"))
	gotKey, _ := os.ReadFile(filepath.Join(root, credRoot, "etcd/server/private_key.pem"))
	if string(got) != renewed || !bytes.Equal(gotKey, f.etcdServer.Key.Reveal()) {
		t.Errorf("after renewal: cert renewed %v, key kept %v", string(got) == renewed, bytes.Equal(gotKey, f.etcdServer.Key.Reveal()))
	}
	// A certificate for another key without its key: pending, the old
	// pair stays.
	other, _, _ := f.ca.leaf(t, "etcd.example.org", nil)
	ic.Server = &nodeconf.IssuedCert{Cert: other}
	c.X509.Credentials["etcd"] = ic
	rep = applyConf(t, root, c, false)
	if len(rep.Pending) != 1 || len(rep.Changes) != 0 {
		t.Errorf("a new key not delivered yet: pending %q, changes %+v", rep.Pending, rep.Changes)
	}
}

func parseTestKey(t *testing.T, s nodeconf.Secret) *ecdsa.PrivateKey {
	t.Helper()
	b, _ := pem.Decode(s.Reveal())
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

func rootsEqual(a, b rootTree) bool {
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

// TestCredentialsBad: material that does not fit is refused before
// anything changes, and no error or log line shows a key.
func TestCredentialsBad(t *testing.T) {
	f := newCredFixture(t)
	swapped := f.conf("etcd")
	ic := swapped.X509.Credentials["etcd"]
	ic.Server = &nodeconf.IssuedCert{Cert: f.etcdServer.Cert, Key: f.etcdClient.Key}
	swapped.X509.Credentials["etcd"] = ic
	unknownOwner := f.conf("kubelet")
	unknownOwner.Credentials[0].Owner = "nobody"
	badCert := f.conf("kubelet")
	k := *badCert.X509.Credentials["kubelet"].Client
	k.Cert = "not a certificate"
	badCert.X509.Credentials["kubelet"] = nodeconf.IssuedCredential{Client: &k}
	files := f.conf("kubelet")
	files.Files = map[string]nodeconf.File{credRoot + "/kubelet/client/cert.pem": {Content: "x"}}
	tests := []struct {
		name string
		conf nodeconf.Conf
		want string
	}{
		{"key of another certificate", swapped, "credentials: x509.credentials.etcd.server: the key does not belong to the certificate (CN etcd.example.org)"},
		{"unknown owner", unknownOwner, "credentials: kubelet: owner:"},
		{"not a certificate", badCert, "credentials: x509.credentials.kubelet.client: cert: not a PEM certificate"},
		{"a files item in the credentials' place", files, "is managed by credentials; configure it there"},
		{"undeclared material", nodeconf.Conf{X509: f.conf("etcd").X509}, "x509.credentials.etcd: issued for a credential that is not declared"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			buildRoot(t, root)
			before, _ := snapshot(t, root)
			var logs bytes.Buffer
			rep, err := Apply(context.Background(), Options{RootDir: root, Log: slog.New(slog.NewTextHandler(&logs, nil))}, &nodeconf.Node{Node: "n1", Conf: tt.conf})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v\nwant it to contain %q", err, tt.want)
			}
			if got, _ := snapshot(t, root); !rootsEqual(before, got) {
				t.Errorf("a refused configuration changed the root")
			}
			all := logs.String() + strings.Join(rep.Errors, "\n")
			if err != nil {
				all += err.Error()
			}
			if strings.Contains(all, "PRIVATE KEY") {
				t.Errorf("key material in errors or logs:\n%s", all)
			}
		})
	}
}

// TestCredentialsNoSecretsInState: the report, the ledger and the logs of
// a run that installs keys hold no key material.
func TestCredentialsNoSecretsInState(t *testing.T) {
	f := newCredFixture(t)
	root := t.TempDir()
	buildRoot(t, root)
	var logs bytes.Buffer
	rep, err := Apply(context.Background(), Options{RootDir: root, Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, &nodeconf.Node{Node: "n1", Conf: f.conf("etcd", "kubelet")})
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("%v %v", err, rep.Errors)
	}
	for _, name := range []string{"var/lib/bellbuild/last-run.json", "var/lib/bellbuild/ledger.json"} {
		data, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte("PRIVATE KEY")) || bytes.Contains(data, f.etcdServer.Key.Reveal()[28:60]) {
			t.Errorf("%s holds key material", name)
		}
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Errorf("the log holds key material")
	}
}

// TestCredentialsHost: the host certificate goes to
// /etc/credentials/x509/host, root's; without its key it is pending and
// nothing of it is written; a rerun changes nothing; a configuration
// without it removes it.
func TestCredentialsHost(t *testing.T) {
	f := newCredFixture(t)
	cert, key, _ := f.ca.leaf(t, "n1.example.org", nil)
	withHost := func(k nodeconf.Secret) nodeconf.Conf {
		c := f.conf()
		c.X509.Host = &nodeconf.IssuedCert{Cert: cert, Key: k}
		return c
	}
	x := credRoot
	want := rootTree{
		x + "/ca.pem":               fileEntry("0644", "0:0", f.ca.pem),
		x + "/crl.pem":              fileEntry("0644", "0:0", f.crl),
		x + "/host":                 dirEntry("0750", "0:0"),
		x + "/host/cert.pem":        fileEntry("0644", "0:0", cert),
		x + "/host/private_key.pem": fileEntry("0400", "0:0", string(key.Reveal())),
		"/etc/credentials":          dirEntry("0755", "0:0"),
		"/etc/credentials/x509":     dirEntry("0755", "0:0"),
	}
	runRootCases(t, []rootCase{{name: "host certificate", conf: withHost(key), want: want}})

	root := t.TempDir()
	buildRoot(t, root)
	// The public part only (a PXE-served configuration): pending.
	rep := applyConf(t, root, withHost(nodeconf.Secret{}), false)
	if strings.Join(rep.Pending, ",") != "credentials: host" || !strings.HasSuffix(rep.Summary(), " pending=1") {
		t.Fatalf("host without its key: pending %q, summary %q", rep.Pending, rep.Summary())
	}
	if _, err := os.Lstat(filepath.Join(root, x, "host")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a pending host certificate got its directory: %v", err)
	}
	// The key arrives; a rerun changes nothing.
	if rep = applyConf(t, root, withHost(key), false); len(rep.Pending) != 0 || len(rep.Changes) != 3 {
		t.Fatalf("with its key: pending %q, changes %+v", rep.Pending, rep.Changes)
	}
	if rep = applyConf(t, root, withHost(key), false); len(rep.Changes) != 0 {
		t.Errorf("rerun: %+v", rep.Changes)
	}
	// Gone from the configuration: its files and directory go.
	applyConf(t, root, f.conf(), false)
	if _, err := os.Lstat(filepath.Join(root, x, "host")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the host certificate's directory is still there: %v", err)
	}
}

// TestCredentialsTampered: a credential file or directory changed by hand
// after a run that found everything in place (and recorded it) is seen on
// the next run, however the change hides: new content of the same size
// with the old mtime put back, or a symbolic link in the file's place
// (even to the same content), is a conflict, reported and left alone (as
// for every managed file); a mode, an owner or a deleted file is
// repaired; nothing is written through a symbolic link in a directory's
// place.
func TestCredentialsTampered(t *testing.T) {
	f := newCredFixture(t)
	conf := f.conf("etcd")
	x := credRoot
	keyPath, certPath := x+"/etcd/server/private_key.pem", x+"/etcd/server/cert.pem"
	key := string(f.etcdServer.Key.Reveal())
	// sameSize is the key with one character of its body changed.
	sameSize := []byte(key)
	sameSize[40] ^= 1
	tests := []struct {
		name   string
		tamper func(t *testing.T, root string)
		// wantErr is the run's error (the file is then left as tampered);
		// without it the run repairs the root, with wantChanges changes.
		wantErr     string
		wantChanges int
		want        rootTree // the tampered paths afterwards
	}{{
		name: "content changed, same size, mtime put back",
		tamper: func(t *testing.T, root string) {
			full := filepath.Join(root, keyPath)
			fi, err := os.Lstat(full)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(full, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, sameSize, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(full, 0o400); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(full, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
			if now, _ := os.Lstat(full); now.Size() != fi.Size() || !now.ModTime().Equal(fi.ModTime()) {
				t.Fatalf("the tampered file's size or mtime differs: %d %v, was %d %v", now.Size(), now.ModTime(), fi.Size(), fi.ModTime())
			}
		},
		wantErr: "credentials: " + keyPath + ": changed outside bellbuild",
		want:    rootTree{keyPath: fileEntry("0400", "1234:1235", string(sameSize))},
	}, {
		name:        "mode changed",
		tamper:      func(t *testing.T, root string) { must(t, os.Chmod(filepath.Join(root, keyPath), 0o444)) },
		wantChanges: 1,
	}, {
		name:        "owner changed",
		tamper:      func(t *testing.T, root string) { must(t, os.Lchown(filepath.Join(root, keyPath), 0, 0)) },
		wantChanges: 1,
	}, {
		name:        "deleted",
		tamper:      func(t *testing.T, root string) { must(t, os.Remove(filepath.Join(root, certPath))) },
		wantChanges: 1,
	}, {
		name: "replaced by a symbolic link to the same content",
		tamper: func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "etc/copy.pem"), []byte(f.etcdServer.Cert), 0o644))
			must(t, os.Remove(filepath.Join(root, certPath)))
			must(t, os.Symlink("/etc/copy.pem", filepath.Join(root, certPath)))
		},
		wantErr: "credentials: " + certPath + ": changed outside bellbuild (now a symbolic link)",
		want: rootTree{
			certPath:        linkEntry("/etc/copy.pem"),
			"/etc/copy.pem": fileEntry("0644", "0:0", f.etcdServer.Cert),
		},
	}, {
		name: "directory replaced by a symbolic link",
		tamper: func(t *testing.T, root string) {
			must(t, os.Mkdir(filepath.Join(root, "etc/elsewhere"), 0o755))
			must(t, os.RemoveAll(filepath.Join(root, x, "etcd/server")))
			// Relative: it stays inside the root.
			must(t, os.Symlink("../../../elsewhere", filepath.Join(root, x, "etcd/server")))
		},
		wantErr: "credentials: " + x + "/etcd/server: exists and is not a directory",
		want: rootTree{
			x + "/etcd/server":                 linkEntry("../../../elsewhere"),
			x + "/etcd/server/cert.pem":        absent,
			x + "/etcd/server/private_key.pem": absent,
			"/etc/elsewhere":                   dirEntry("0755", "0:0"),
		},
	}, {
		name:        "directory mode changed",
		tamper:      func(t *testing.T, root string) { must(t, os.Chmod(filepath.Join(root, x, "etcd/server"), 0o755)) },
		wantChanges: 1,
	}, {
		name:        "directory owner changed",
		tamper:      func(t *testing.T, root string) { must(t, os.Lchown(filepath.Join(root, x, "etcd"), 1234, 1235)) },
		wantChanges: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			buildRoot(t, root)
			applyConf(t, root, conf, false)
			// A rerun once the files' times are behind the clock finds
			// everything in place (and may record so).
			time.Sleep(tamperSettle)
			if rep := applyConf(t, root, conf, false); len(rep.Changes) != 0 {
				t.Fatalf("rerun: %+v", rep.Changes)
			}
			// That run recorded the files as it found them: the next one
			// trusts what still looks the same without reading it.
			l, err := host.ReadLedger(root)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{keyPath, certPath} {
				if rec, _ := l.Get("credentials", p); rec.Seen == "" {
					t.Fatalf("the ledger records no identity of %s: the case would not test the shortcut", p)
				}
			}
			applied, _ := snapshot(t, root)
			tt.tamper(t, root)
			rep, err := applyNode(root, conf)
			got, _ := snapshot(t, root)
			want := patched(applied, tt.want)
			if tt.wantErr != "" {
				all := strings.Join(rep.Errors, "\n")
				if err != nil {
					all += "\n" + err.Error()
				}
				if !strings.Contains(all, tt.wantErr) {
					t.Errorf("errors %q, want %q", all, tt.wantErr)
				}
			} else {
				if err != nil || len(rep.Errors) > 0 {
					t.Fatalf("repairing run: %v %v", err, rep.Errors)
				}
				if len(rep.Changes) != tt.wantChanges {
					t.Errorf("repairing run: %d changes, want %d: %+v", len(rep.Changes), tt.wantChanges, rep.Changes)
				}
			}
			for p, e := range want {
				if got[p] != e {
					t.Errorf("%s after the run:\n%q\nwant\n%q", p, got[p], e)
				}
			}
			if len(got) != len(want) {
				t.Errorf("the root has %d entries after the run, want %d", len(got), len(want))
			}
		})
	}
}

// tamperSettle is how long TestCredentialsTampered waits after a run
// that wrote files before the run that finds them in place.
const tamperSettle = 200 * time.Millisecond

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCredentialsSwappedAfterInstall: a run that finds a pair installed
// does not check it again, but a key that does not belong to its
// certificate is still refused when the certificate or the key changes.
func TestCredentialsSwappedAfterInstall(t *testing.T) {
	f := newCredFixture(t)
	root := t.TempDir()
	buildRoot(t, root)
	applyConf(t, root, f.conf("etcd"), false)
	applied, _ := snapshot(t, root)
	for _, tc := range []struct {
		name       string
		cert       string
		key        nodeconf.Secret
		wantErrors bool
	}{
		{"the installed pair", f.etcdServer.Cert, f.etcdServer.Key, false},
		{"the key of another certificate", f.etcdServer.Cert, f.etcdClient.Key, true},
		{"another certificate for the key", f.etcdClient.Cert, f.etcdServer.Key, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := f.conf("etcd")
			ic := conf.X509.Credentials["etcd"]
			ic.Server = &nodeconf.IssuedCert{Cert: tc.cert, Key: tc.key}
			conf.X509.Credentials["etcd"] = ic
			_, err := applyNode(root, conf)
			want := "x509.credentials.etcd.server: the key does not belong to the certificate"
			if got := err != nil && strings.Contains(err.Error(), want); got != tc.wantErrors {
				t.Errorf("error %v; want one with %q: %v", err, want, tc.wantErrors)
			}
			if got, _ := snapshot(t, root); !rootsEqual(applied, got) {
				t.Errorf("the root changed")
			}
		})
	}
}
