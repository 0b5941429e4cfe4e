package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/build"
	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// envsSite has two environments that boot one profile with another
// sysctl each.
var envsSite = map[string]string{
	"profiles/p.yaml":           "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\ncmdline: [console=ttyS0]\nconf:\n  sysctl: {vm.swappiness: \"${swappiness}\"}\n",
	"environments/staging.yaml": "vars: {swappiness: 30}\nnodes:\n- {name: s1, mac: 52:54:00:00:01:01, profile: p}\n",
	"environments/prod.yaml":    "vars: {swappiness: 10}\nnodes:\n- {name: p1, mac: 52:54:00:00:02:01, profile: p}\n",
}

// TestImageEnvironments bakes one profile of a site in git for each of
// its environments: OUT/ENV/PROFILE each, different images, each manifest
// naming its environment and the site's commit; then from a dirty work
// tree, which the manifest and a warning say. Neither the work tree nor
// the index is touched.
func TestImageEnvironments(t *testing.T) {
	if _, err := os.Stat("/vmlinuz"); err != nil {
		testtool.Skipf(t, "no host kernel at /vmlinuz (apt-get install linux-image-amd64)")
	}
	bin := testtool.Binary(t)
	site, git := gitRepo(t, envsSite)
	commit := git("rev-parse", "HEAD")
	out := filepath.Join(t.TempDir(), "out")
	t.Setenv("BELLBUILD_CACHE", filepath.Join(t.TempDir(), "cache"))
	before := gitState(t, filepath.Dir(site))

	type manifest struct {
		build.Manifest
		Site *struct {
			Commit  string   `json:"commit"`
			Dirty   bool     `json:"dirty"`
			Changed []string `json:"changed"`
		} `json:"site"`
	}
	bake := func(env string) (manifest, string) {
		t.Helper()
		code, stdout, stderr := runCmd(t, "image", "p", "-C", site, "--env", env, "-o", out, "--applier", bin)
		if code != 0 {
			t.Fatalf("image --env %s: exit %d\n%s%s", env, code, stdout, stderr)
		}
		data, err := os.ReadFile(filepath.Join(out, env, "p", build.ManifestFile))
		if err != nil {
			t.Fatal(err)
		}
		var m manifest
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		return m, stderr
	}
	initramfs := func(m manifest) string {
		for _, a := range m.Artifacts {
			if a.Name == build.InitramfsFile {
				return a.SHA256
			}
		}
		t.Fatalf("no initramfs in %+v", m.Artifacts)
		return ""
	}
	staging, _ := bake("staging")
	prod, stderr := bake("prod")
	for env, m := range map[string]manifest{"staging": staging, "prod": prod} {
		if m.Environment != env || m.Site == nil || m.Site.Commit != commit || m.Site.Dirty || m.Site.Changed != nil {
			t.Errorf("%s manifest: environment %q, site %+v; want %s at %s, clean", env, m.Environment, m.Site, env, commit)
		}
		if !slices.Equal(m.Nodes, []string{map[string]string{"staging": "s1", "prod": "p1"}[env]}) {
			t.Errorf("%s manifest nodes %v", env, m.Nodes)
		}
	}
	if initramfs(staging) == initramfs(prod) {
		t.Errorf("staging and prod baked the same initramfs %s", initramfs(prod))
	}
	if strings.Contains(stderr, "dirty") {
		t.Errorf("a clean bake warns:\n%s", stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "p")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OUT/p exists (%v): an environment's bakes go to OUT/ENV/p", err)
	}
	if after := gitState(t, filepath.Dir(site)); after != before {
		t.Errorf("image changed the work tree or the index:\nbefore %s\nafter  %s", before, after)
	}

	// A dirty work tree: an edit and a new file.
	editFile(t, filepath.Join(site, "environments/prod.yaml"), "swappiness: 10", "swappiness: 11")
	writeFiles(t, site, map[string]string{"profiles/new.yaml": "inherits: [p]\n"})
	dirty, stderr := bake("prod")
	if dirty.Site == nil || !dirty.Site.Dirty || dirty.Site.Commit != commit ||
		!slices.Equal(dirty.Site.Changed, []string{"environments/prod.yaml", "profiles/new.yaml"}) {
		t.Errorf("dirty manifest: site %+v, want dirty at %s with the two files", dirty.Site, commit)
	}
	if !strings.Contains(stderr, "baking from a dirty work tree") || !strings.Contains(stderr, "environments/prod.yaml profiles/new.yaml") {
		t.Errorf("a dirty bake does not say so:\n%s", stderr)
	}
}

// TestEnvFlags: every command that reads a site takes --env (or
// $BELLBUILD_ENV); a site with environments and none is an error that
// lists them; --env for a site without environments, or without -C, is
// refused; $BELLBUILD_ENV does not stop a site without environments.
func TestEnvFlags(t *testing.T) {
	site := t.TempDir()
	writeFiles(t, site, envsSite)
	plain := t.TempDir()
	writeFiles(t, plain, map[string]string{"profiles/p.yaml": "conf: {}\n"})
	for _, tc := range []struct {
		name string
		env  string // $BELLBUILD_ENV
		args []string
		code int
		want string // in stdout+stderr
	}{
		{"validate --env", "", []string{"validate", "-C", site, "--env", "prod"}, 0, "ok: 1 profiles, 1 nodes (environment prod)"},
		{"validate $BELLBUILD_ENV", "staging", []string{"validate", "-C", site}, 0, "(environment staging)"},
		{"validate without", "", []string{"validate", "-C", site}, 1, "environments: the site has environments (prod, staging): choose one (--env NAME or $BELLBUILD_ENV)"},
		{"render unknown", "", []string{"render", "-C", site, "--env", "qa", "--node", "p1"}, 1, `unknown environment "qa" (environments: prod, staging)`},
		{"render", "", []string{"render", "-C", site, "--env", "staging", "--node", "s1"}, 0, `vm.swappiness: "30"`},
		{"render the other's node", "", []string{"render", "-C", site, "--env", "staging", "--node", "p1"}, 1, `node "p1": not found`},
		{"services", "", []string{"services", "-C", site, "--env", "prod"}, 0, "no services"},
		{"config", "", []string{"config", "image", "-C", site, "--env", "prod", "--node", "p1", "-o", filepath.Join(t.TempDir(), "c.img")}, 0, ""},
		{"--env without -C", "", []string{"validate", "--env", "prod"}, 1, "--env needs -C SITE"},
		{"--env for a site without", "", []string{"validate", "-C", plain, "--env", "prod"}, 1, `environment "prod": the site has no environments`},
		{"$BELLBUILD_ENV for a site without", "prod", []string{"validate", "-C", plain}, 0, "ok: 1 profiles, 0 nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envVar, tc.env)
			code, out, errOut := runCmd(t, tc.args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Errorf("%s: exit %d, want %d and %q\n%s%s", strings.Join(tc.args, " "), code, tc.code, tc.want, out, errOut)
			}
		})
	}
}

// TestPKIEnvironments: `pki init --env` makes each environment a CA
// hierarchy of its own in SITE/pki/ENV and PRIVATE/pki/ENV (named after
// it), unless site.yaml shares one (SITE/pki).
func TestPKIEnvironments(t *testing.T) {
	site := t.TempDir()
	writeFiles(t, site, envsSite)
	for _, env := range []string{"prod", "staging"} {
		if code, out, errOut := runCmd(t, "pki", "init", "-C", site, "--env", env, "--root-out", filepath.Join(t.TempDir(), "root")); code != 0 {
			t.Fatalf("pki init --env %s: exit %d\n%s%s", env, code, out, errOut)
		}
		for _, f := range []string{filepath.Join(site, "pki", env, "root.pem"), filepath.Join(site, "private", "pki", env, "hosts.key")} {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("%s: %v", env, err)
			}
		}
		o, err := pkiOptionsFor(site, env)
		if err != nil {
			t.Fatal(err)
		}
		st, err := pki.Open(o)
		if err != nil {
			t.Fatal(err)
		}
		status, err := st.Status()
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(status[0].Subject, filepath.Base(site)+" "+env+" ") {
			t.Errorf("%s: CA subject %q does not name the environment", env, status[0].Subject)
		}
	}
	if _, err := os.Stat(filepath.Join(site, "pki", "root.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("SITE/pki/root.pem exists (%v): each environment has its own", err)
	}
	if code, _, errOut := runCmd(t, "pki", "status", "-C", site); code == 0 || !strings.Contains(errOut, "choose one") {
		t.Errorf("pki status without --env: exit %d\n%s", code, errOut)
	}
	writeFiles(t, site, map[string]string{"site.yaml": "pki: {environments: shared}\n"})
	if code, out, errOut := runCmd(t, "pki", "init", "-C", site, "--env", "prod", "--root-out", filepath.Join(t.TempDir(), "root")); code == 0 ||
		!strings.Contains(errOut, "exists") {
		// SITE/pki holds the environments' own: a shared one cannot be
		// made over them.
		t.Errorf("pki init of a shared hierarchy over the environments' own: exit %d\n%s%s", code, out, errOut)
	}
}

// pkiOptionsFor is what pki does for -C site --env env.
func pkiOptionsFor(site, env string) (pki.Options, error) {
	return pkiFlags{site: site, env: env}.options()
}

// TestServeEnvironment: serve keeps an environment's state apart, in
// STATE/ENV (its nodes' rendered files, its leases), and boots from
// OUT/ENV.
func TestServeEnvironment(t *testing.T) {
	site := t.TempDir()
	writeFiles(t, site, envsSite)
	state, out := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(out, "prod"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	o := serveFlags{site: siteFlags{dir: site, env: "prod"}, serverIP: "127.0.0.1", dhcp: "off", artifacts: out, state: state,
		httpAddr: "127.0.0.1:0", tftpAddr: "127.0.0.1:0", bootVia: "http", leaseTime: time.Hour, tftpWindow: 1, loaders: t.TempDir()}
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, o) }()
	node := filepath.Join(state, "prod", "nodes", "p1", NodeFile)
	for {
		if _, err := os.Stat(node); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	<-done
	ents, err := os.ReadDir(state)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "prod" {
		t.Errorf("STATE holds %v, want prod only", ents)
	}
	data, err := os.ReadFile(node)
	if err != nil || !strings.Contains(string(data), `"vm.swappiness": "10"`) {
		t.Errorf("%s: %v\n%s", node, err, data)
	}
}

// TestRunOut: run boots OUT/ENV/PROFILE for --env ENV, and for
// $BELLBUILD_ENV when OUT/ENV exists (a bake of a site without
// environments stays in OUT).
func TestRunOut(t *testing.T) {
	out := t.TempDir()
	if err := os.Mkdir(filepath.Join(out, "prod"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ flag, env, want string }{
		{"", "", out},
		{"staging", "", filepath.Join(out, "staging")},
		{"", "prod", filepath.Join(out, "prod")},
		{"", "staging", out},
	} {
		t.Setenv(envVar, tc.env)
		if got := runOut(out, tc.flag); got != tc.want {
			t.Errorf("runOut(--env %q, $%s=%q) = %s, want %s", tc.flag, envVar, tc.env, got, tc.want)
		}
	}
}
