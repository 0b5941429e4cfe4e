package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/sitediff"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// Password hashes of the scratch site: neither may ever be printed.
const (
	oldHash = "$6$saltsalt$OLDHASHoldhashOLDHASHoldhashOLDHASHoldhash"
	newHash = "$6$saltsalt$NEWHASHnewhashNEWHASHnewhashNEWHASHnewhash"
)

// diffSite is the scratch site of TestDiff: base and its children web and
// db, and other, which inherits nothing.
var diffSite = map[string]string{
	"profiles/base.yaml": `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0]
conf:
  sysctl: {vm.swappiness: 10}
  uamlite:
    users:
    - user_name: ops
      user_crypt_passwd: ` + oldHash + `
`,
	"profiles/web.yaml":   "inherits: [base]\nconf:\n  sysctl: {net.core.somaxconn: 1024}\n",
	"profiles/db.yaml":    "inherits: [base]\n",
	"profiles/other.yaml": "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\nconf:\n  sysctl: {vm.swappiness: 30}\n",
	"nodes.yaml": `nodes:
- {name: web-1, mac: 52:54:00:00:00:01, profile: web}
- {name: web-2, mac: 52:54:00:00:00:02, profile: web}
- {name: db-1, mac: 52:54:00:00:00:03, profile: db}
- {name: o-1, mac: 52:54:00:00:00:04, profile: other}
`,
	"secrets/db.age": "age-encryption.org/v1\nfirst ciphertext\n",
}

// gitRepo makes a git repository in a new directory holding files under
// site/, committed; it returns the site's directory and a git runner.
func gitRepo(t *testing.T, files map[string]string) (string, func(args ...string) string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		testtool.Skipf(t, "git not found (apt-get install git)")
	}
	repo := t.TempDir()
	site := filepath.Join(repo, "site")
	writeFiles(t, site, files)
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.org"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q", "-b", "main")
	git("add", ".")
	git("commit", "-q", "-m", "site")
	return site, git
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDiff reviews changes of a scratch site in git: each case edits the
// work tree, which is compared with the commit (FROM HEAD, TO the work
// tree), then committed and compared again (HEAD~1 HEAD), in text and in
// JSON. Neither the work tree nor the index is touched, and no secret
// value is printed.
func TestDiff(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit map[string][2]string // file → old, new text ("" old: the whole file is new; "" new: removed)
		code int
		// nodes are the changed nodes as NAME:STATUS, rebake the
		// profiles to bake again as NAME:REASONS.
		nodes, rebake, secrets []string
		// lines must be in the text output, absent must not.
		lines  []string
		absent []string
	}{{
		name:  "sysctl changed in base: every node of its chain, no other",
		edit:  map[string][2]string{"profiles/base.yaml": {"vm.swappiness: 10", "vm.swappiness: 20"}},
		code:  1,
		nodes: []string{"db-1:changed", "web-1:changed", "web-2:changed"},
		// Their images carry their configurations.
		rebake: []string{"base:bundle", "db:bundle", "web:bundle"},
		lines: []string{"node web-1 (web): changed", `  conf.sysctl["vm.swappiness"]: "10" → "20"`,
			"re-bake web: bundle: (default), web-1, web-2"},
		absent: []string{"o-1", "re-bake other"},
	}, {
		name:   "stage changed: the profiles to bake again",
		edit:   map[string][2]string{"profiles/base.yaml": {"stage: {busybox: {}}", "stage: {dir: rootfs}"}},
		code:   1,
		rebake: []string{"base:stage.busybox,stage.dir", "db:stage.busybox,stage.dir", "web:stage.busybox,stage.dir"},
		lines:  []string{`re-bake db: stage.busybox {} → (none); stage.dir (none) → "rootfs" (in the site)`},
		absent: []string{"node ", "re-bake other"},
	}, {
		name: "a node removed and one added",
		edit: map[string][2]string{"nodes.yaml": {"- {name: web-2, mac: 52:54:00:00:00:02, profile: web}\n",
			"- {name: web-3, mac: 52:54:00:00:00:05, profile: web}\n"}},
		code:   1,
		nodes:  []string{"web-2:removed", "web-3:added"},
		rebake: []string{"web:bundle"},
		lines:  []string{"node web-2 (web): removed", "node web-3 (web): added", "re-bake web: bundle: web-2, web-3"},
	}, {
		name: "secrets changed: shown as changed, never their values",
		edit: map[string][2]string{
			"profiles/base.yaml": {oldHash, newHash},
			"secrets/db.age":     {"first ciphertext", "second ciphertext"},
		},
		code:  1,
		nodes: []string{"db-1:changed", "web-1:changed", "web-2:changed"},
		// No image carries a secret value: nothing to bake again.
		secrets: []string{"db:changed"},
		lines: []string{`  conf.uamlite.users["ops"].user_crypt_passwd: changed (<secret password hash>, not shown)`,
			"secret db: changed"},
		absent: []string{oldHash, newHash, "OLDHASH", "NEWHASH", "ciphertext"},
	}, {
		name:  "identical: nothing changes",
		code:  0,
		lines: []string{"nothing changes"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			site, git := gitRepo(t, diffSite)
			for file, e := range tc.edit {
				editFile(t, filepath.Join(site, file), e[0], e[1])
			}
			if tc.edit == nil {
				// An empty commit: two revisions, one site.
				git("commit", "-q", "--allow-empty", "-m", "nothing")
			} else {
				before := gitState(t, filepath.Dir(site))
				check(t, tc.code, tc.nodes, tc.rebake, tc.secrets, tc.lines, tc.absent, "-C", site, "HEAD")
				if after := gitState(t, filepath.Dir(site)); after != before {
					t.Errorf("diff changed the work tree or the index:\nbefore %s\nafter  %s", before, after)
				}
				git("add", "-A")
				git("commit", "-q", "-m", tc.name)
			}
			check(t, tc.code, tc.nodes, tc.rebake, tc.secrets, tc.lines, tc.absent, "-C", site, "HEAD~1", "HEAD")
		})
	}
}

// check runs diff ARGS in text and JSON and compares what it says with
// the expectations.
func check(t *testing.T, code int, nodes, rebake, secrets, lines, absent []string, args ...string) {
	t.Helper()
	got, out, errOut := runCmd(t, append([]string{"diff"}, args...)...)
	if got != code {
		t.Errorf("diff %s: exit %d, want %d\n%s%s", strings.Join(args, " "), got, code, out, errOut)
	}
	for _, l := range lines {
		if !slices.Contains(strings.Split(out, "\n"), l) {
			t.Errorf("diff %s: no line %q in\n%s", strings.Join(args, " "), l, out)
		}
	}
	for _, a := range absent {
		if strings.Contains(out+errOut, a) {
			t.Errorf("diff %s: %q printed:\n%s%s", strings.Join(args, " "), a, out, errOut)
		}
	}
	got, out, errOut = runCmd(t, append([]string{"diff", "-o", "json"}, args...)...)
	var r sitediff.Report
	if err := json.Unmarshal([]byte(out), &r); got != code || err != nil {
		t.Fatalf("diff -o json %s: exit %d, %v\n%s%s", strings.Join(args, " "), got, err, out, errOut)
	}
	var gotNodes, gotRebake, gotSecrets []string
	for _, n := range r.Nodes {
		gotNodes = append(gotNodes, n.Node+":"+string(n.Status))
	}
	for _, rb := range r.Rebake {
		var why []string
		for _, c := range rb.Reasons {
			why = append(why, c.Path)
		}
		if len(rb.Bundle) > 0 {
			why = append(why, "bundle")
		}
		gotRebake = append(gotRebake, rb.Profile+":"+strings.Join(why, ","))
	}
	for _, s := range r.Secrets {
		gotSecrets = append(gotSecrets, s.Name+":"+string(s.Status))
	}
	for _, c := range []struct {
		what      string
		want, got []string
	}{{"nodes", nodes, gotNodes}, {"rebake", rebake, gotRebake}, {"secrets", secrets, gotSecrets}} {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("diff -o json %s: %s (-want +got):\n%s", strings.Join(args, " "), c.what, diff)
		}
	}
	for _, a := range absent {
		if strings.Contains(out, a) {
			t.Errorf("diff -o json %s: %q printed", strings.Join(args, " "), a)
		}
	}
}

// TestDiffPromotion: with a branch per environment, `diff --env prod prod
// staging` shows what merging staging into prod would change on prod's
// machines (and nothing of staging's own).
func TestDiffPromotion(t *testing.T) {
	files := map[string]string{
		"profiles/base.yaml":        "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\nconf:\n  apt:\n    packages: [{name: chrony, version: \"${chrony}\"}]\n  sysctl: {vm.swappiness: 10}\n",
		"environments/prod.yaml":    "vars: {chrony: 4.3-2}\nnodes:\n- {name: p1, mac: 52:54:00:00:01:01, profile: base}\n",
		"environments/staging.yaml": "vars: {chrony: 4.3-2+deb12u1}\nnodes:\n- {name: s1, mac: 52:54:00:00:02:01, profile: base}\n",
	}
	site, git := gitRepo(t, files)
	git("branch", "prod")
	git("checkout", "-q", "-b", "staging")
	editFile(t, filepath.Join(site, "profiles/base.yaml"), "vm.swappiness: 10", "vm.swappiness: 5")
	editFile(t, filepath.Join(site, "environments/staging.yaml"), "{chrony: 4.3-2+deb12u1}", "{chrony: 4.3-3}")
	git("commit", "-q", "-am", "staging: swappiness 5, chrony 4.3-3")
	code, out, errOut := runCmd(t, "diff", "-C", site, "--env", "prod", "prod", "staging")
	want := `node p1 (base): changed
  conf.sysctl["vm.swappiness"]: "10" → "5"
re-bake base: bundle: (default), p1
1 nodes change (0 added, 0 removed), 1 images to bake again, 0 services move (0 instances), 0 secrets change
`
	if code != 1 || out != want {
		t.Errorf("diff --env prod prod staging: exit %d\n%s%s\nwant\n%s", code, out, errOut, want)
	}
	// $BELLBUILD_ENV chooses the environment too; staging sees both.
	t.Setenv(envVar, "staging")
	code, out, _ = runCmd(t, "diff", "-C", site, "prod", "staging")
	if code != 1 || !strings.Contains(out, `conf.apt.packages["chrony"].version: "4.3-2+deb12u1" → "4.3-3"`) || !strings.Contains(out, "node s1 (base)") {
		t.Errorf("diff with BELLBUILD_ENV=staging: exit %d\n%s", code, out)
	}
}

// TestDiffErrors: exit 2, with a clear message, for a revision that does
// not exist, a site outside git, an unknown environment, no environment
// for a site with them, and bad usage.
func TestDiffErrors(t *testing.T) {
	site, _ := gitRepo(t, diffSite)
	envSite, _ := gitRepo(t, map[string]string{
		"profiles/p.yaml":        "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\n",
		"environments/prod.yaml": "nodes: []\n",
		"environments/dev.yaml":  "nodes: []\n",
	})
	outside := t.TempDir()
	writeFiles(t, outside, diffSite)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown revision", []string{"-C", site, "no-such-branch"}, `revision "no-such-branch": not a commit of the repository`},
		{"not a git repository", []string{"-C", outside, "HEAD"}, "not in a git work tree"},
		{"unknown environment", []string{"-C", envSite, "--env", "prd", "HEAD"}, `unknown environment "prd" (environments: dev, prod) (did you mean "prod"?)`},
		{"no environment", []string{"-C", envSite, "HEAD"}, "the site has environments (dev, prod): choose one"},
		{"no TO and no -C", []string{"HEAD"}, "give -C SITE"},
		{"three versions", []string{"-C", site, "HEAD", "HEAD", "HEAD"}, "want FROM [TO]"},
		{"bad format", []string{"-C", site, "-o", "yaml", "HEAD"}, `-o "yaml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "not a git repository" {
				t.Setenv("GIT_CEILING_DIRECTORIES", filepath.Dir(outside))
			}
			code, out, errOut := runCmd(t, append([]string{"diff"}, tc.args...)...)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, want 2 and %q\n%s%s", code, tc.want, out, errOut)
			}
		})
	}
	// Two directories need no git at all.
	other := t.TempDir()
	writeFiles(t, other, diffSite)
	editFile(t, filepath.Join(other, "profiles/other.yaml"), "vm.swappiness: 30", "vm.swappiness: 31")
	code, out, errOut := runCmd(t, "diff", outside, other)
	if code != 1 || !strings.HasPrefix(out, "node o-1 (other): changed\n") {
		t.Errorf("diff DIR DIR: exit %d\n%s%s", code, out, errOut)
	}
}
