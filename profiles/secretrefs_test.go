package profiles

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/secrets"
)

// The values of secretSite's store; each must be found only where a
// node's own configuration is.
var storeValues = map[string]string{
	"db-password":    "DB-S3CRET-value\n",
	"admin-password": "$6$storesalt$STOREHASHadmin0123456789",
	"api-token":      "API-T0KEN-value",
	"node-key":       "NODE-ONLY-secret",
	"svc-token":      "SVC-T0KEN-value",
}

// The site's inline secret values: kept out of public configurations too.
const (
	inlineHash = "$6$inlinesalt$INLINEHASHbob0123456789"
	inlineFile = "INLINE-0600-content"
)

// secretSite has references in a profile (a file's content, a user's
// password, a script's environment in a label override), a node's conf
// and a service's conf, and two inline secrets (a password hash and a
// 0600 file). It returns the site's directory and an identity that can
// decrypt its store.
func secretSite(t *testing.T) (string, *secrets.Identity) {
	t.Helper()
	dir := writeSite(t, map[string]string{
		"profiles/p.yaml": `stage: {busybox: {}}
kernel: {path: /vmlinuz}
conf:
  files:
    /etc/db.pw: {content: !secret db-password, mode: "0600"}
    /etc/private.conf: {content: ` + inlineFile + `, mode: "0600"}
    /etc/motd: {content: hello}
  uamlite:
    users:
    - user_name: admin
      user_crypt_passwd: !secret admin-password
      user_sudo: true
    - user_name: bob
      user_crypt_passwd: "` + inlineHash + `"
overrides:
  labels:
  - label: {key: tier, values: [api]}
    conf:
      exec:
        10-api: {data: "#!/bin/sh\n", env: {TOKEN: !secret api-token}}
`,
		"nodes.yaml": `nodes:
- name: n1
  mac: 52:54:00:00:09:01
  profile: p
  labels: {tier: api}
  conf:
    files: {/etc/node.key: {content: !secret node-key, secret: true}}
- name: n2
  mac: 52:54:00:00:09:02
  profile: p
`,
		"services.yaml": `web:
  scheduling_group: label:tier=api
  conf:
    units: {web.service: {content: !secret svc-token}}
`,
	})
	keyFile := filepath.Join(t.TempDir(), "key")
	pub, err := secrets.GenerateIdentity(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "secrets"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secrets", "recipients.txt"), []byte(pub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := secrets.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range storeValues {
		if err := store.Set(name, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	id, err := secrets.LoadIdentity(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return dir, id
}

func allValues() []string {
	out := []string{inlineHash, inlineFile}
	for _, v := range storeValues {
		out = append(out, strings.TrimSpace(v))
	}
	return out
}

// TestSecretReferences: a site with references loads; validate's
// warnings name each inline secret with the command that moves it; a
// node's public configuration names every secret and holds none; with an
// identity every value is in place; without one the store's stay withheld
// and the inline ones are there.
func TestSecretReferences(t *testing.T) {
	dir, id := secretSite(t)
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.SecretNames(); !cmp.Equal(got, []string{"admin-password", "api-token", "db-password", "node-key", "svc-token"}) {
		t.Errorf("SecretNames = %v", got)
	}
	var warnings []string
	for _, w := range s.Warnings() {
		warnings = append(warnings, strings.TrimPrefix(w.Error(), dir+"/"))
	}
	wantWarnings := []string{
		fmt.Sprintf(`profiles/p.yaml:6:34: conf.files["/etc/private.conf"].content: warning: a file others cannot read (mode 0600) written inline: accepted, and kept out of every public configuration; move it into the store: bellbuild secret set -C %s etc-private.conf (the value on standard input), then write !secret etc-private.conf here`, dir),
		fmt.Sprintf(`profiles/p.yaml:14:26: conf.uamlite.users[1].user_crypt_passwd: warning: a password hash written inline: accepted, and kept out of every public configuration; move it into the store: bellbuild secret set -C %s bob-password (the value on standard input), then write !secret bob-password here`, dir),
	}
	if diff := cmp.Diff(wantWarnings, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}

	wantRefs := []nodeconf.SecretRef{
		{Path: `conf.exec["10-api"].env.TOKEN`, Name: "api-token"},
		{Path: `conf.files["/etc/db.pw"].content`, Name: "db-password"},
		{Path: `conf.files["/etc/node.key"].content`, Name: "node-key"},
		{Path: `conf.files["/etc/private.conf"].content`},
		{Path: "conf.uamlite.users[0].user_crypt_passwd", Name: "admin-password"},
		{Path: "conf.uamlite.users[1].user_crypt_passwd"},
		{Path: `conf.units["web.service"].content`, Name: "svc-token"},
	}
	withheld := func(refs []nodeconf.SecretRef, store, inline bool) []nodeconf.SecretRef {
		out := make([]nodeconf.SecretRef, len(refs))
		for i, r := range refs {
			out[i] = r
			out[i].Withheld = r.Name != "" && store || r.Name == "" && inline
		}
		return out
	}
	tests := []struct {
		name          string
		render        func() (*nodeconf.Node, error)
		store, inline bool // values withheld
	}{
		{"public", func() (*nodeconf.Node, error) { return s.RenderNode("n1") }, true, true},
		{"no identity", func() (*nodeconf.Node, error) { return s.RenderNodeSecrets("n1", s.Resolver(nil)) }, true, false},
		{"identity", func() (*nodeconf.Node, error) { return s.RenderNodeSecrets("n1", s.Resolver(id)) }, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := tt.render()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(withheld(wantRefs, tt.store, tt.inline), n.Secrets); diff != "" {
				t.Errorf("secrets (-want +got):\n%s", diff)
			}
			data, err := nodeconf.Marshal(n, nodeconf.YAML)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range n.Secrets {
				v, err := n.Field(r.Path)
				if err != nil {
					t.Fatal(err)
				}
				if r.Withheld != (v == "") {
					t.Errorf("%s: withheld %v, value of %d bytes", r.Path, r.Withheld, len(v))
				}
			}
			for _, v := range allValues() {
				isInline := v == inlineHash || v == inlineFile
				want := !(isInline && tt.inline || !isInline && tt.store)
				if strings.Contains(string(data), v) != want {
					t.Errorf("document holds %q: %v, want %v", v, !want, want)
				}
			}
			if !strings.Contains(string(data), "hello") {
				t.Error("a public value is missing")
			}
		})
	}
	// n2 is not in the label override nor the service's group.
	n2, err := s.RenderNodeSecrets("n2", s.Resolver(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(n2.Secrets) != 4 {
		t.Errorf("n2's secrets: %+v", n2.Secrets)
	}
}

// TestSecretExplain: --explain shows <secret NAME> at the line of the
// reference, and never a value.
func TestSecretExplain(t *testing.T) {
	dir, _ := secretSite(t)
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	origins, err := s.ExplainNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, o := range origins {
		for _, v := range allValues() {
			if strings.Contains(o.Value, v) {
				t.Errorf("%s shows a secret value", o.Path)
			}
		}
		if o.Secret {
			got[o.Path] = o.Value + " " + strings.TrimPrefix(o.Pos.String(), dir+"/")
		}
	}
	want := map[string]string{
		`conf.files["/etc/db.pw"].content`:        "<secret db-password> profiles/p.yaml:5:27",
		`conf.files["/etc/private.conf"].content`: `<secret conf.files["/etc/private.conf"].content> profiles/p.yaml:6:34`,
		"conf.uamlite.users[0].user_crypt_passwd": "<secret admin-password> profiles/p.yaml:11:26",
		"conf.uamlite.users[1].user_crypt_passwd": "<secret conf.uamlite.users[1].user_crypt_passwd> profiles/p.yaml:14:26",
		`conf.exec["10-api"].env.TOKEN`:           "<secret api-token> profiles/p.yaml:20:52",
		`conf.files["/etc/node.key"].content`:     "<secret node-key> nodes.yaml:7:38",
		`conf.units["web.service"].content`:       "<secret svc-token> services.yaml:4:36",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("explain (-want +got):\n%s", diff)
	}
}

// TestSecretResolveErrors: a value the applier would refuse is an error
// at its reference that does not show it; an identity that cannot
// decrypt is an error at the reference; so is a store that lost a file.
func TestSecretResolveErrors(t *testing.T) {
	dir, id := secretSite(t)
	store, _ := secrets.Open(dir)
	const notAHash = "plain-PASSWORD-typed"
	if err := store.Set("admin-password", []byte(notAHash)); err != nil {
		t.Fatal(err)
	}
	// A message that would quote the value shows the reference instead.
	if err := store.Set("limit", []byte("8 PASSWORD-in-limit")); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(filepath.Join(dir, "nodes.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("  conf:\n    limits: {nofile: {domain: '*', type: soft, item: nofile, value: !secret limit}}\n")
	f.Close()
	s, err := Load(dir)
	if err != nil {
		t.Fatalf("a bad value must not stop Load (it is not decrypted): %v", err)
	}
	_, err = s.RenderNodeSecrets("n2", s.Resolver(id))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("err = %v, want two errors", err)
	}
	if got := strings.TrimPrefix(list[0].Error(), dir+"/"); got != `nodes.yaml:12:69: conf.limits.nofile.value: "<secret limit>" contains white space` {
		t.Errorf("error = %s", got)
	}
	if got := strings.TrimPrefix(list[1].Error(), dir+"/"); !strings.HasPrefix(got, "profiles/p.yaml:11:26: conf.uamlite.users[0].user_crypt_passwd: not a crypt") || strings.Contains(got, "PASSWORD") {
		t.Errorf("error = %s", got)
	}

	other := filepath.Join(t.TempDir(), "other")
	if _, err := secrets.GenerateIdentity(other); err != nil {
		t.Fatal(err)
	}
	stranger, _ := secrets.LoadIdentity(other)
	_, err = s.RenderNodeSecrets("n2", s.Resolver(stranger))
	if !errors.As(err, &list) || !strings.Contains(list.Error(), "p.yaml:5:27: conf.files[\"/etc/db.pw\"].content: secret db-password: ") ||
		!strings.Contains(list.Error(), "cannot decrypt") {
		t.Errorf("a stranger's identity: %v", err)
	}

	os.Remove(filepath.Join(dir, "secrets", "db-password.age"))
	_, err = s.RenderNodeSecrets("n2", s.Resolver(id))
	if !errors.As(err, &list) || !strings.Contains(list.Error(), "db-password.age does not exist") {
		t.Errorf("a secret removed after Load: %v", err)
	}
	for _, v := range allValues() {
		if err != nil && strings.Contains(err.Error(), v) {
			t.Errorf("an error shows %q", v)
		}
	}
}
