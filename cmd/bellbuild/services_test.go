package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// runServicesCmd runs `bellbuild services ARGS` in-process and returns its
// exit status and output.
func runServicesCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runCmd(t, append([]string{"services"}, args...)...)
}

// TestServicesCommand prints the fleet's placement as a table and as
// JSON.
func TestServicesCommand(t *testing.T) {
	code, out, errOut := runServicesCmd(t, "-C", "../../examples/fleet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := `SERVICE        GROUP               INSTANCES       HOSTS
etcd           label:tier=control  3 of 5 by rack  control-2 etcd-2 etcd-3
node-exporter  (every node)        10 of 10        control-1 control-2 etcd-1 etcd-2 etcd-3 storage-1 worker-1 worker-2 worker-3 worker-4
prometheus     storage             1 of 1          storage-1
registry       k8s-worker          2 of 4 by rack  worker-2 worker-4
`
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	code, out, errOut = runServicesCmd(t, "-C", "../../examples/fleet", "-o", "json")
	if code != 0 {
		t.Fatalf("-o json: exit %d: %s", code, errOut)
	}
	var rows []serviceRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 || rows[1].Service != "node-exporter" || rows[1].Instances != "all" || rows[3].Instances != "2" ||
		strings.Join(rows[3].Hosts, " ") != "worker-2 worker-4" || rows[3].PublicEndpoints[0].Port != 443 ||
		strings.Join(rows[0].Credentials, " ") != "etcd-peer etcd-client" {
		t.Errorf("json rows: %+v", rows)
	}
	if code, _, _ := runServicesCmd(t, "-C", "../../examples/fleet", "-o", "yaml"); code != 2 {
		t.Errorf("-o yaml: exit %d, want 2", code)
	}
	code, _, errOut = runServicesCmd(t, "-C", "../../profiles/testdata/bad/services-placement")
	if code != 2 || !strings.Contains(errOut, "services.yaml:4:18: toomany.num_instances: num_instances is 4, but group worker has 3 nodes") {
		t.Errorf("bad site: exit %d, stderr:\n%s", code, errOut)
	}
}

// copyDir copies the regular files of src into dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func editFile(t *testing.T, p, old, new string) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s has no %q", p, old)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(data), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// gitState is what `services --diff REV` must leave alone: the work
// tree's status and the index file's bytes and times.
func gitState(t *testing.T, repo string) string {
	t.Helper()
	index := filepath.Join(repo, ".git", "index")
	data, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(index)
	if err != nil {
		t.Fatal(err)
	}
	// GIT_OPTIONAL_LOCKS=0: git status itself must not refresh the index.
	cmd := exec.Command("git", "-C", repo, "status", "--porcelain", "--untracked-files=all")
	cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0")
	status, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%s\nindex %x mtime %d ctime %d", status, sha256.Sum256(data), st.Mtim.Nano(), st.Ctim.Nano())
}

// TestServicesDiff reviews inventory changes before they are applied:
// against another copy of the site, and against a git revision of it
// (read without touching the work tree or the index). Exit 0 when nothing
// moves, 1 when something does, 2 on an error.
func TestServicesDiff(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		testtool.Skipf(t, "git not found (apt-get install git)")
	}
	repo := t.TempDir()
	site := filepath.Join(repo, "sites", "fleet")
	copyDir(t, "../../examples/fleet", site)
	old := t.TempDir()
	copyDir(t, "../../examples/fleet", old)
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.org"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	git("init", "-q")
	git("add", ".")
	git("commit", "-q", "-m", "fleet")

	// Nothing changed yet.
	for _, against := range []string{"HEAD", old} {
		code, out, errOut := runServicesCmd(t, "-C", site, "--diff", against)
		if code != 0 || out != "nothing moves\n" {
			t.Errorf("--diff %s of the same site: exit %d\n%s%s", against, code, out, errOut)
		}
	}

	// Two changes, uncommitted: registry gets a third instance; etcd-2
	// denies etcd, so its member moves within rack r2 (to the only other
	// r2 node, control-2, which has one already: it goes to rack r1).
	editFile(t, filepath.Join(site, "services.yaml"), "  num_instances: 2\n", "  num_instances: 3\n")
	editFile(t, filepath.Join(site, "nodes.yaml"), "- name: etcd-2\n  mac: 52:54:00:10:00:02\n  profile: etcd\n",
		"- name: etcd-2\n  mac: 52:54:00:10:00:02\n  profile: etcd\n  services: {deny: [etcd]}\n")
	before := gitState(t, repo)
	for _, against := range []string{"HEAD", "main~0", old} {
		if against == "main~0" {
			// The default branch may be main or master.
			b, _ := exec.Command("git", "-C", repo, "branch", "--show-current").Output()
			against = strings.TrimSpace(string(b)) + "~0"
		}
		code, out, errOut := runServicesCmd(t, "-C", site, "--diff", against)
		if code != 1 {
			t.Errorf("--diff %s: exit %d, want 1\n%s%s", against, code, out, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "etcd: -etcd-2 +") || !strings.HasPrefix(lines[1], "registry: +worker-") ||
			lines[2] != "2 services change, 2 instances move, start or stop" {
			t.Errorf("--diff %s:\n%s", against, out)
		}
		code, out, _ = runServicesCmd(t, "-C", site, "--diff", against, "-o", "json")
		var rows []moveRow
		if err := json.Unmarshal([]byte(out), &rows); code != 1 || err != nil || len(rows) != 2 || rows[0].Removed[0] != "etcd-2" {
			t.Errorf("--diff %s -o json: exit %d, %v:\n%s", against, code, err, out)
		}
	}
	if after := gitState(t, repo); after != before {
		t.Errorf("--diff changed the work tree or the index:\nbefore %s\nafter  %s", before, after)
	}

	// Errors: exit 2.
	for _, tc := range []struct{ name, rev, want string }{
		{"unknown revision", "no-such-branch", `revision "no-such-branch": not a commit of the repository`},
		{"an option", "--output=/tmp/x", `not a revision`},
		{"the site did not exist", "HEAD", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := site
			if tc.want == "" {
				// A site created after the last commit.
				dir = filepath.Join(repo, "sites", "new")
				copyDir(t, "../../examples/fleet", dir)
				tc.want = "git archive"
			}
			code, out, errOut := runServicesCmd(t, "-C", dir, "--diff", tc.rev)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, want 2 and %q\n%s%s", code, tc.want, out, errOut)
			}
		})
	}
	// A revision whose site has errors names them as REV:FILE.
	editFile(t, filepath.Join(site, "services.yaml"), "  num_instances: 3\n", "  num_instances: 9\n")
	git("commit", "-q", "-am", "too many")
	editFile(t, filepath.Join(site, "services.yaml"), "  num_instances: 9\n", "  num_instances: 3\n")
	code, _, errOut := runServicesCmd(t, "-C", site, "--diff", "HEAD")
	if code != 2 || !strings.Contains(errOut, "HEAD:services.yaml:11:18: etcd.num_instances: num_instances is 9, but group label:tier=control has 5 nodes") {
		t.Errorf("--diff of a bad revision: exit %d\n%s", code, errOut)
	}
}

// TestServicesDiffErrorsWithoutGit: a revision needs -C (the embedded site
// has no repository), and a site outside a work tree says so.
func TestServicesDiffErrorsWithoutGit(t *testing.T) {
	if code, _, errOut := runServicesCmd(t, "--diff", "HEAD"); code != 2 || !strings.Contains(errOut, "needs -C SITE") {
		t.Errorf("--diff HEAD without -C: exit %d, %s", code, errOut)
	}
	if _, err := exec.LookPath("git"); err != nil {
		testtool.Skipf(t, "git not found (apt-get install git)")
	}
	dir := t.TempDir()
	copyDir(t, "../../examples/fleet", dir)
	t.Setenv("GIT_CEILING_DIRECTORIES", filepath.Dir(dir))
	if code, _, errOut := runServicesCmd(t, "-C", dir, "--diff", "HEAD"); code != 2 || !strings.Contains(errOut, "not in a git work tree") {
		t.Errorf("--diff HEAD outside git: exit %d, %s", code, errOut)
	}
}

// rootSnapshot reads a root (but the applier's state) as path → kind,
// mode, owner and content.
func rootSnapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == filepath.Join("var", "lib", "bellbuild") {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		meta := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "link " + target
		case fi.IsDir():
			out[rel] = "dir " + meta
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = "file " + meta + "\n" + string(data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestServiceMovesAway applies a node of a site, then the same node with a
// service placed on it (its files, unit, limits, sysctl, permissions, host
// list and credentials), then with the service moved to another node: the
// root is exactly as it was before the service came.
func TestServiceMovesAway(t *testing.T) {
	root := applyRoot(t)
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "profiles", "node.yaml"), `stage: {busybox: {}}
kernel: {path: /vmlinuz}
conf:
  files:
    /etc/motd: {content: "a node\n"}
`)
	nodes := func(pinned string) string {
		return fmt.Sprintf(`nodes:
- name: n1
  mac: 52:54:00:00:05:01
  profile: node
  services: {%s: [web]}
- name: n2
  mac: 52:54:00:00:05:02
  profile: node
  services: {%s: [web]}
`, map[bool]string{true: "pin", false: "deny"}[pinned == "n1"], map[bool]string{true: "pin", false: "deny"}[pinned == "n2"])
	}
	writeTestFile(t, filepath.Join(site, "site.yaml"), "domain: example.org\n")
	writeTestFile(t, filepath.Join(site, "services.yaml"), `web:
  num_instances: 1
  user: app
  service_credentials: [{name: web}]
  monitoring_endpoints: [{job_name: web, type: static, port: 8080}]
  conf:
    sysctl: {net.core.somaxconn: 1024}
    limits:
      web: {domain: app, type: soft, item: nofile, value: 65536}
    perm:
      paths: [{path: /srv/data/a, owner: app, group: app, permissions: "0600"}]
    files:
      /etc/web/web.conf: {content: "listen 8080\n", owner: app, mode: "0640"}
      /etc/motd: {content: "web lives here\n"}
    units:
      web.service:
        enabled: true
        content: |
          [Service]
          ExecStart=/usr/bin/web
          [Install]
          WantedBy=multi-user.target
`)
	apply := func(pinned string) {
		t.Helper()
		writeTestFile(t, filepath.Join(site, "nodes.yaml"), nodes(pinned))
		code, out, errOut := runCmd(t, "apply", "--config", site, "--node", "n1", "--root", root, "--offline")
		if code != 0 {
			t.Fatalf("apply with web on %s: exit %d\n%s%s", pinned, code, out, errOut)
		}
	}

	// 1. The node without the service: the root "before".
	apply("n2")
	before := rootSnapshot(t, root)
	if before["etc/motd"] != "file -rw-r--r-- 0:0\na node\n" {
		t.Fatalf("motd before: %q", before["etc/motd"])
	}

	// 2. The service placed on it: what it brings is there.
	apply("n1")
	placed := rootSnapshot(t, root)
	for p, want := range map[string]string{
		"etc/motd":                                               "file -rw-r--r-- 0:0\nweb lives here\n",
		"etc/web/web.conf":                                       "file -rw-r----- 1234:1234\nlisten 8080\n",
		"etc/bellbuild/services/web.hosts":                       "file -rw-r--r-- 0:0\n# The hosts of service web, one per line (bellbuild services).\nn1.example.org\n",
		"etc/security/limits.d/bellbuild-web.conf":               "",
		"etc/sysctl.d/60-bellbuild.conf":                         "",
		"etc/systemd/system/web.service":                         "",
		"etc/systemd/system/multi-user.target.wants/web.service": "link /etc/systemd/system/web.service",
		"srv/data/a":                                             "file -rw------- 1234:1234\na\n",
	} {
		got, ok := placed[p]
		switch {
		case !ok:
			t.Errorf("%s missing with the service placed", p)
		case want != "" && got != want:
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	if !strings.Contains(placed["etc/sysctl.d/60-bellbuild.conf"], "net.core.somaxconn = 1024") {
		t.Errorf("sysctl file: %q", placed["etc/sysctl.d/60-bellbuild.conf"])
	}

	// 3. Moved away: the root exactly as it was, down to the directories
	// the applier made for the service's files (it removes them with the
	// last item they held).
	apply("n2")
	after := rootSnapshot(t, root)
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("the root after the service moved away (-before +after):\n%s", diff)
	}
}
