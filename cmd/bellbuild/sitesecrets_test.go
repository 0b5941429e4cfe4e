package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/confvol"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/secrets"
)

// The secret values of storedSite: two in the store, two written inline.
const (
	dbPassword    = "DB-PASSWORD-4f1c9a\n"
	adminHash     = "$6$storeSalt$ADMINHASH7d2e0b3c"
	inlineHash    = "$6$inlineSalt$BOBHASH9a8b7c6d"
	inlinePrivate = "INLINE-PRIVATE-5e6f7a"
)

func siteSecretValues() []string {
	return []string{strings.TrimSpace(dbPassword), adminHash, inlineHash, inlinePrivate}
}

// storedSite is a site whose profile refers to two secrets of its store
// (a file's content, a user's password) and holds two inline secrets (a
// password hash, a 0600 file), with extra files. It returns the site and
// an identity that decrypts its store.
func storedSite(t *testing.T, extra map[string]string) (site, identity string) {
	t.Helper()
	site, key, _, _, _ := secretSite(t)
	files := map[string]string{
		"profiles/p.yaml": `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0]
conf:
  files:
    /etc/db.pw: {content: !secret db-password, mode: "0600"}
    /etc/private.conf: {content: ` + inlinePrivate + `, mode: "0600"}
    /etc/motd: {content: "public motd\n"}
  uamlite:
    users:
    - {user_name: admin, user_crypt_passwd: !secret admin-password, user_sudo: true}
    - {user_name: bob, user_crypt_passwd: "` + inlineHash + `"}
`,
		"nodes.yaml": `nodes:
- {name: n1, mac: '52:54:00:00:0a:01', profile: p}
- {name: n2, mac: '52:54:00:00:0a:02', profile: p}
`,
	}
	for p, c := range extra {
		files[p] = c
	}
	for p, c := range files {
		writeTestFile(t, filepath.Join(site, p), c)
	}
	mustSecret(t, dbPassword, "set", "-C", site, "db-password")
	mustSecret(t, adminHash, "set", "-C", site, "admin-password")
	return site, key
}

// noValue fails when out holds a secret value of storedSite.
func noValue(t *testing.T, what, out string) {
	t.Helper()
	for _, v := range siteSecretValues() {
		if strings.Contains(out, v) {
			t.Errorf("%s holds the secret value %q", what, v)
		}
	}
}

func TestSecretValidateCommand(t *testing.T) {
	site, _ := storedSite(t, nil)
	code, out, errOut := runCmd(t, "validate", "-C", site)
	if code != 0 || out != "ok: 1 profiles, 2 nodes\n" {
		t.Fatalf("exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	want := fmt.Sprintf(`%[1]s/profiles/p.yaml:7:34: conf.files["/etc/private.conf"].content: warning: a file others cannot read (mode 0600) written inline: accepted, and kept out of every public configuration; move it into the store: bellbuild secret set -C %[1]s etc-private.conf (the value on standard input), then write !secret etc-private.conf here
%[1]s/profiles/p.yaml:12:43: conf.uamlite.users[1].user_crypt_passwd: warning: a password hash written inline: accepted, and kept out of every public configuration; move it into the store: bellbuild secret set -C %[1]s bob-password (the value on standard input), then write !secret bob-password here
`, site)
	if errOut != want {
		t.Errorf("stderr:\n%s\nwant\n%s", errOut, want)
	}
	noValue(t, "validate's output", errOut)

	bad, _ := storedSite(t, map[string]string{"profiles/q.yaml": `conf:
  sysctl: {kernel.x: !secret nope, kernel.y: !secret Not.Valid}
`})
	code, _, errOut = runCmd(t, "validate", "-C", bad)
	wantErrs := []string{
		fmt.Sprintf(`%s/profiles/q.yaml:2:22: conf.sysctl["kernel.x"]: !secret nope: no such secret in %s/secrets (bellbuild secret set -C %s nope, with the value on standard input, stores it)`, bad, bad, bad),
		fmt.Sprintf(`%s/profiles/q.yaml:2:46: !secret "Not.Valid": want 1 to 128 of a-z 0-9 . _ -, starting with a letter or digit: invalid secret name`, bad),
	}
	for _, w := range wantErrs {
		if code != 1 || !strings.Contains(errOut, w+"\n") {
			t.Errorf("exit %d, stderr\n%s\nwant a line\n%s", code, errOut, w)
		}
	}
}

func TestSecretRenderCommand(t *testing.T) {
	site, key := storedSite(t, nil)
	stranger := filepath.Join(t.TempDir(), "stranger.key")
	mustSecret(t, "", "keygen", "-o", stranger)
	t.Setenv(secrets.IdentityEnv, "")

	t.Run("public", func(t *testing.T) {
		code, out, errOut := runCmd(t, "render", "-C", site, "--node", "n1")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		noValue(t, "render", out)
		for _, want := range []string{
			"content: <secret db-password>", "user_crypt_passwd: <secret admin-password>",
			`user_crypt_passwd: <secret conf.uamlite.users[1].user_crypt_passwd>`,
			`content: <secret conf.files["/etc/private.conf"].content>`, "public motd",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("render lacks %q:\n%s", want, out)
			}
		}
		n, _, err := nodeconf.Decode([]byte(out))
		if err != nil {
			t.Fatal(err)
		}
		if len(n.Secrets) != 4 || !n.Withheld() {
			t.Errorf("secrets: %+v", n.Secrets)
		}
	})
	for _, tt := range []struct {
		name string
		env  string
		args []string
	}{
		{"--identity", "", []string{"--identity", key}},
		{"$BELLBUILD_AGE_IDENTITY", key, nil},
	} {
		t.Run("show-secrets "+tt.name, func(t *testing.T) {
			t.Setenv(secrets.IdentityEnv, tt.env)
			code, out, errOut := runCmd(t, append([]string{"render", "-C", site, "--node", "n1", "--show-secrets"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, v := range siteSecretValues() {
				if !strings.Contains(out, v) {
					t.Errorf("render --show-secrets lacks %q", v)
				}
			}
			if strings.Contains(out, "<secret") {
				t.Errorf("render --show-secrets still shows a reference:\n%s", out)
			}
		})
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"show-secrets without identity", []string{"--show-secrets"}, "--show-secrets: the site's secrets need an identity that decrypts them: --identity FILE or $BELLBUILD_AGE_IDENTITY"},
		{"show-secrets with a stranger's identity", []string{"--show-secrets", "--identity", stranger},
			site + "/profiles/p.yaml:6:27: conf.files[\"/etc/db.pw\"].content: secret db-password: " + site + "/secrets/db-password.age: identity " + stranger + " cannot decrypt it"},
		{"identity without show-secrets", []string{"--identity", key}, "--identity goes with --show-secrets"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, append([]string{"render", "-C", site, "--node", "n1"}, tt.args...)...)
			if code != 1 || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr %q, want it to contain %q", code, errOut, tt.want)
			}
			noValue(t, "stdout", out)
			noValue(t, "stderr", errOut)
		})
	}
	t.Run("explain", func(t *testing.T) {
		code, out, errOut := runCmd(t, "render", "-C", site, "--node", "n1", "--explain")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		noValue(t, "explain", out)
		for _, want := range [][]string{
			{`conf.files["/etc/db.pw"].content`, `"<secret db-password>"`, site + "/profiles/p.yaml:6:27"},
			{"conf.uamlite.users[0].user_crypt_passwd", `"<secret admin-password>"`, site + "/profiles/p.yaml:11:45"},
		} {
			if !strings.Contains(out, want[0]) || !hasLine(out, want...) {
				t.Errorf("explain lacks a line %q:\n%s", want, out)
			}
		}
		code, out, _ = runCmd(t, "render", "-C", site, "--node", "n1", "--explain", "--show-secrets", "--identity", key)
		if code != 0 || !hasLine(out, "conf.uamlite.users[0].user_crypt_passwd", `"`+adminHash+`"`, site+"/profiles/p.yaml:11:45") {
			t.Errorf("explain --show-secrets:\n%s", out)
		}
	})
}

// hasLine reports whether out has a line of exactly these fields.
func hasLine(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

// TestSecretConfigAndApply: config write puts the node's secrets on its
// volume with an identity, and warns without one (the store's stay
// pending, the inline ones are there); apply --config SITE without an
// identity applies everything but the two items that wait for the store,
// and with one converges them.
func TestSecretConfigAndApply(t *testing.T) {
	site, key := storedSite(t, nil)
	t.Setenv(secrets.IdentityEnv, "")
	volume := func(args ...string) (string, string) {
		t.Helper()
		dir := t.TempDir()
		code, _, errOut := runCmd(t, append([]string{"config", "write", dir, "-C", site, "--node", "n1"}, args...)...)
		if code != 0 {
			t.Fatalf("config write: exit %d: %s", code, errOut)
		}
		b, err := os.ReadFile(filepath.Join(dir, confvol.NodePath))
		if err != nil {
			t.Fatal(err)
		}
		return string(b), errOut
	}
	got, errOut := volume("--identity", key)
	for _, v := range siteSecretValues() {
		if !strings.Contains(got, v) {
			t.Errorf("the node's own volume lacks %q", v)
		}
	}
	noValue(t, "config write's log", errOut)
	got, errOut = volume()
	if !strings.Contains(errOut, "their values stay pending") || !strings.Contains(errOut, "secrets=db-password,admin-password") {
		t.Errorf("config write without an identity: stderr %q", errOut)
	}
	if strings.Contains(got, adminHash) || strings.Contains(got, "DB-PASSWORD") || !strings.Contains(got, inlineHash) || !strings.Contains(got, inlinePrivate) {
		t.Errorf("config write without an identity:\n%s", got)
	}

	root := applyRoot(t)
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			return "<absent>"
		}
		return string(b)
	}
	code, out, errOut := runCmd(t, "apply", "--config", site, "--root", root, "--node", "n1")
	if code != 0 || !strings.Contains(out, " pending=2") || !strings.Contains(errOut, "their values stay pending") {
		t.Fatalf("apply without an identity: exit %d\n%s%s", code, out, errOut)
	}
	if read("etc/db.pw") != "<absent>" || strings.Contains(read("etc/shadow"), "admin") ||
		read("etc/private.conf") != inlinePrivate || !strings.Contains(read("etc/shadow"), inlineHash) || read("etc/motd") != "public motd\n" {
		t.Errorf("after apply without an identity: db.pw %q, shadow %q, private.conf %q", read("etc/db.pw"), read("etc/shadow"), read("etc/private.conf"))
	}
	code, out, errOut = runCmd(t, "apply", "--config", site, "--root", root, "--node", "n1", "--identity", key)
	if code != 0 || strings.Contains(out, "pending") || !strings.Contains(read("etc/shadow"), "admin:"+adminHash+":") || read("etc/db.pw") != dbPassword {
		t.Errorf("apply with an identity: exit %d\n%s%s", code, out, errOut)
	}
	noValue(t, "apply's output", out+errOut)
	code, out, _ = runCmd(t, "apply", "--config", site, "--root", root, "--node", "n1", "--identity", key)
	if code != 0 || !strings.Contains(out, " changes=0 ") {
		t.Errorf("rerun: exit %d %s", code, out)
	}
	if !bytes.Contains([]byte(read("var/lib/bellbuild/last-run.json")), []byte(`"changes": []`)) {
		t.Errorf("last run: %s", read("var/lib/bellbuild/last-run.json"))
	}
}

// TestServeIdentity: serve refuses to start with an identity that cannot
// decrypt the site's secrets; with the right one, a node's resolved
// configuration holds them (what the enrolment endpoint serves).
func TestServeIdentity(t *testing.T) {
	site, key := storedSite(t, nil)
	stranger := filepath.Join(t.TempDir(), "stranger.key")
	mustSecret(t, "", "keygen", "-o", stranger)
	t.Setenv(secrets.IdentityEnv, "")
	code, _, errOut := runCmd(t, "serve", "-C", site, "--server-ip", "192.0.2.1", "--dhcp", "off",
		"--identity", stranger, "--state", t.TempDir(), "--artifacts", t.TempDir())
	if code != 1 || !strings.Contains(errOut, "serve refuses to start: the identity cannot decrypt the site's secrets: ") ||
		!strings.Contains(errOut, "admin-password.age") || !strings.Contains(errOut, "db-password.age") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	noValue(t, "serve's refusal", errOut)

	s, err := siteFlags{dir: site}.load()
	if err != nil {
		t.Fatal(err)
	}
	configs, err := serveConfigs(s, []string{key}, "")
	if err != nil || configs == nil {
		t.Fatalf("serveConfigs: %v", err)
	}
	data, err := configs.NodeConfig(t.Context(), "n2")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range siteSecretValues() {
		if !strings.Contains(string(data), v) {
			t.Errorf("n2's resolved configuration lacks %q", v)
		}
	}
	if _, err := configs.NodeConfig(t.Context(), "nope"); err == nil {
		t.Error("an unknown node has a configuration")
	}
}
