package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// applyRoot makes a small target root with its own accounts.
func applyRoot(t *testing.T) string {
	t.Helper()
	return applyRootIn(t, t.TempDir())
}

// memRoot is applyRoot in /dev/shm when there is one: a kill -9 test is
// about process death, not power loss, and fsync on a shared disk would
// make 100 runs take minutes.
func memRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "bellbuild-kill-")
	if err != nil {
		return applyRoot(t)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return applyRootIn(t, dir)
}

func applyRootIn(t *testing.T, root string) string {
	t.Helper()
	for p, c := range map[string]string{
		"etc/passwd":                      "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/srv/app:/bin/sh\n",
		"etc/group":                       "root:x:0:\napp:x:1234:\n",
		"etc/motd":                        "Debian original\n",
		"etc/security/limits.d/keep.conf": "* soft core 0\n",
		"srv/data/a":                      "a\n",
		"srv/data/b":                      "b\n",
	} {
		writeTestFile(t, filepath.Join(root, p), c)
	}
	return root
}

func writeTestFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeConf writes a node or bundle as `bellbuild render -o json` does.
func writeConf[D nodeconf.Node | nodeconf.Bundle](t *testing.T, p string, d *D) {
	t.Helper()
	data, err := nodeconf.Marshal(d, nodeconf.JSON)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, p, string(data))
}

// runBin runs the bellbuild binary and returns its exit code and output.
func runBin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(testtool.Binary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

func TestApplyCommand(t *testing.T) {
	root := applyRoot(t)
	dir := t.TempDir()
	conf := nodeconf.Conf{
		Sysctl: map[string]string{"vm.swappiness": "10"},
		Files:  map[string]nodeconf.File{"/etc/motd": {Content: "node n1\n"}},
	}
	node := filepath.Join(dir, "node.json")
	writeConf(t, node, &nodeconf.Node{Node: "n1", Profile: "worker", Conf: conf})
	bundle := filepath.Join(dir, "bundle.yaml")
	writeConf(t, bundle, &nodeconf.Bundle{Profile: "worker",
		Default: nodeconf.Node{Conf: nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/motd": {Content: "default\n"}}}},
		Nodes: []nodeconf.Node{
			{Node: "n1", Profile: "worker", Conf: conf},
			{Node: "n2", Profile: "worker", Conf: nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/motd": {Content: "node n2\n"}}}},
		}})
	bad := filepath.Join(dir, "bad.json")
	writeConf(t, bad, &nodeconf.Node{Node: "n1", Profile: "worker", Conf: nodeconf.Conf{
		Sysctl: map[string]string{"bad..key": "1"},
		Perm:   &nodeconf.Perm{Paths: []nodeconf.PermPath{{Path: "/nothing", Owner: "root", Group: "root", Permissions: "0644"}}},
	}})
	badRoot := filepath.Join(dir, "badroot.json")
	writeConf(t, badRoot, &nodeconf.Node{Node: "n1", Profile: "worker", Conf: nodeconf.Conf{
		Sysctl: map[string]string{"vm.swappiness": "1"},
		Perm:   &nodeconf.Perm{Paths: []nodeconf.PermPath{{Path: "/nothing", Owner: "root", Group: "root", Permissions: "0644"}}},
		Files:  map[string]nodeconf.File{"/etc/x": {Content: "x", Owner: "www-data"}},
	}})

	for _, step := range []struct {
		name   string
		args   []string
		code   int
		stdout string // exact
		stderr string // substring
		motd   string
	}{
		{"plan shows pending changes, exits 2", []string{"--config", node, "--root", root, "--plan"}, 2,
			"sysctl:\n  + create /etc/sysctl.d/60-bellbuild.conf\nfiles:\n  ~ update /etc/motd: \"Debian original\\n\" -> \"node n1\\n\"\nbellbuild: node=n1 profile=worker changes=2 errors=0\n", "", "Debian original\n"},
		{"apply", []string{"--config", node, "--root", root}, 0, "bellbuild: node=n1 profile=worker changes=2 errors=0\n", "", "node n1\n"},
		{"again: nothing to do", []string{"--config", node, "--root", root}, 0, "bellbuild: node=n1 profile=worker changes=0 errors=0\n", "", "node n1\n"},
		{"plan on a converged root exits 0", []string{"--config", node, "--root", root, "--plan"}, 0, "bellbuild: node=n1 profile=worker changes=0 errors=0\n", "", "node n1\n"},
		{"invalid config: every error, nothing changed", []string{"--config", bad, "--root", root}, 1, "bellbuild: node=n1 profile=worker changes=0 errors=1\n",
			"bellbuild apply: sysctl[\"bad..key\"]: \"bad..key\" is not a sysctl name like net.ipv4.ip_forward\n", "node n1\n"},
		{"root checks: every error, nothing changed", []string{"--config", badRoot, "--root", root}, 1, "bellbuild: node=n1 profile=worker changes=0 errors=2\n",
			"bellbuild apply: perm: paths[0] /nothing: matches nothing in the root (set ignore_missing to allow this)\nbellbuild apply: files: /etc/x: owner: user \"www-data\": not found in /etc/passwd\n", "node n1\n"},
		{"bundle by --node", []string{"--config", bundle, "--root", root, "--node", "n2"}, 0, "bellbuild: node=n2 profile=worker changes=3 errors=0\n", "", "node n2\n"},
		{"bundle by --hostname", []string{"--config", bundle, "--root", root, "--hostname", "n1"}, 0, "bellbuild: node=n1 profile=worker changes=2 errors=0\n", "", "node n1\n"},
		{"bundle, unknown --node", []string{"--config", bundle, "--root", root, "--node", "n9"}, 1, "", `node "n9": no such node in the bundle of profile worker`, "node n1\n"},
		{"bundle default", []string{"--config", bundle, "--root", root, "--hostname", "elsewhere"}, 0, "bellbuild: node=- profile=worker changes=3 errors=0\n", "", "default\n"},
		{"--offline and --live", []string{"--config", node, "--root", root, "--offline", "--live"}, 1, "", "--offline and --live contradict each other", "default\n"},
		{"no --config", []string{"--root", root}, 1, "", "--config and --root are required", "default\n"},
		{"no --root", []string{"--config", node}, 1, "", "--config and --root are required", "default\n"},
	} {
		t.Run(step.name, func(t *testing.T) {
			code, stdout, stderr := runBin(t, append([]string{"apply"}, step.args...)...)
			if code != step.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, step.code, stdout, stderr)
			}
			if step.stdout != "" || code != 1 {
				if diff := cmp.Diff(step.stdout, stdout); diff != "" {
					t.Errorf("stdout (-want +got):\n%s", diff)
				}
			}
			if !strings.Contains(stderr, step.stderr) {
				t.Errorf("stderr does not contain %q:\n%s", step.stderr, stderr)
			}
			got, _ := os.ReadFile(filepath.Join(root, "etc/motd"))
			if string(got) != step.motd {
				t.Errorf("/etc/motd = %q, want %q", got, step.motd)
			}
		})
	}
}

// TestApplyLocked: a run refused because another applier holds the
// root's lock exits 1, says why on stderr, and its summary counts that
// error (it said errors=0).
func TestApplyLocked(t *testing.T) {
	root := applyRoot(t)
	node := filepath.Join(t.TempDir(), "node.json")
	writeConf(t, node, &nodeconf.Node{Node: "n1", Profile: "worker", Conf: nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/motd": {Content: "node n1\n"}}}})
	writeTestFile(t, filepath.Join(root, "var/lib/bellbuild/lock"), "")
	f, err := os.Open(filepath.Join(root, "var/lib/bellbuild/lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runBin(t, "apply", "--config", node, "--root", root)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if want := "bellbuild: node=n1 profile=worker changes=0 errors=1\n"; stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	if !strings.Contains(stderr, "another bellbuild apply is running on this root") {
		t.Errorf("stderr does not say why:\n%s", stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(got) != "Debian original\n" {
		t.Errorf("/etc/motd = %q: a locked-out run changed the root", got)
	}
}

// killConfs are two configurations that differ in content and in their
// items, so that runs between them write, rewrite and revert. Two batches
// are large enough for a kill to land inside them: killBatchFiles files
// written in one batch (one ledger save, then the files), and the perm
// change of every file under /srv/data (killRoot makes killPermFiles).
func killConfs() [2]nodeconf.Conf {
	yes := true
	var c [2]nodeconf.Conf
	for i := range c {
		v := fmt.Sprint(i)
		c[i] = nodeconf.Conf{
			Sysctl: map[string]string{"vm.swappiness": "1" + v, "kernel.pid_max": "4194304"},
			Limits: map[string]nodeconf.Limit{"nofile-" + v: {Domain: "*", Type: "soft", Item: "nofile", Value: "1024" + v}, "core": {Domain: "app", Type: "hard", Item: "core", Value: "1" + v}},
			Perm:   &nodeconf.Perm{Paths: []nodeconf.PermPath{{Path: "/srv/data/*", Owner: "app", Group: "app", Permissions: "064" + v}}},
			Mounts: map[string]nodeconf.Mount{"m" + v: {MntTgt: "/mnt/m" + v, Device: "tmpfs", Type: "tmpfs", Options: "size=" + v + "M"}},
			Units:  map[string]nodeconf.Unit{"agent.service": {Content: "[Service]\nExecStart=/bin/agent " + v + "\n[Install]\nWantedBy=multi-user.target\n", Enabled: &yes}},
			Files:  map[string]nodeconf.File{"/etc/motd": {Content: strings.Repeat("motd "+v+"\n", 2000)}},
		}
		for j := 0; j < 20; j++ {
			c[i].Files[fmt.Sprintf("/etc/bellbuild-test/%d-%02d.conf", i, j)] = nodeconf.File{Content: strings.Repeat("x", 512*j), Mode: "0640", Owner: "app"}
			c[i].Files[fmt.Sprintf("/etc/bellbuild-test/shared-%02d.conf", j)] = nodeconf.File{Content: strings.Repeat(v, 100*j+1)}
		}
		for j := 0; j < killBatchFiles; j++ {
			c[i].Files[fmt.Sprintf("%s/%03d.conf", killBatchDir, j)] = nodeconf.File{Content: fmt.Sprintf("%03d %s\n", j, strings.Repeat(v, 2048))}
		}
	}
	return c
}

const (
	killBatchDir   = "/etc/bellbuild-test/batch"
	killBatchFiles = 200
	killPermFiles  = 200
)

// killRoot is memRoot with killPermFiles more files under /srv/data, and
// killBatchDir.
func killRoot(t *testing.T) string {
	t.Helper()
	root := memRoot(t)
	// The batch directory exists from the start, to be watched.
	if err := os.MkdirAll(filepath.Join(root, killBatchDir), 0o755); err != nil {
		t.Fatal(err)
	}
	for j := 0; j < killPermFiles; j++ {
		writeTestFile(t, filepath.Join(root, fmt.Sprintf("srv/data/p%03d", j)), "p\n")
	}
	return root
}

// state reads every file and link under root but the applier's state.
func state(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, root)
		if rel == "/var/lib/bellbuild" {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "-> " + target
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("%v %s", fi.Mode(), data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// killRig is the setting of the kill -9 tests: the two configurations,
// each applied to a clean root (the references), and the root the
// appliers are killed on.
type killRig struct {
	bin    string
	nodes  [2]string
	refs   [2]map[string]string
	before map[string]string
	root   string
	full   time.Duration // the longest reference run
}

func newKillRig(t *testing.T) *killRig {
	t.Helper()
	k := &killRig{bin: testtool.Binary(t)}
	dir := t.TempDir()
	for i, c := range killConfs() {
		k.nodes[i] = filepath.Join(dir, fmt.Sprintf("node%d.json", i))
		writeConf(t, k.nodes[i], &nodeconf.Node{Node: "n", Profile: "p", Conf: c})
	}
	k.root = killRoot(t)
	for i := range k.nodes {
		ref := killRoot(t)
		start := time.Now()
		if code, out, errs := runBin(t, "apply", "--config", k.nodes[i], "--root", ref); code != 0 {
			t.Fatalf("reference run %d: exit %d\n%s%s", i, code, out, errs)
		}
		k.full = max(k.full, time.Since(start))
		k.refs[i] = state(t, ref)
	}
	k.before = state(t, k.root)
	return k
}

// start starts an applier of configuration which on the root.
func (k *killRig) start(t *testing.T, which int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(k.bin, "apply", "--config", k.nodes[which], "--root", k.root)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// whole reports whether p's content and mode are as before any run, or as
// one of the configurations gives them.
func (k *killRig) whole(p, got string) bool {
	for _, s := range []map[string]string{k.before, k.refs[0], k.refs[1]} {
		if want, ok := s[p]; ok && want == got {
			return true
		}
	}
	return false
}

// afterKill checks the root after run i was killed: every file whole
// (temporary files aside), then a rerun of configuration which converges
// to exactly what a clean root gets, with no temporary file left, and a
// third run changes nothing.
func (k *killRig) afterKill(t *testing.T, i, which int) {
	t.Helper()
	for p, got := range state(t, k.root) {
		if strings.Contains(p, ".bellbuild-tmp") {
			continue // a write's temp file: never a managed path
		}
		if !k.whole(p, got) {
			t.Fatalf("run %d: after kill -9, %s is neither old nor new:\n%.200s", i, p, got)
		}
	}
	if code, out, errs := runBin(t, "apply", "--config", k.nodes[which], "--root", k.root); code != 0 {
		t.Fatalf("run %d: the run after a kill failed: exit %d\n%s%s", i, code, out, errs)
	}
	if diff := cmp.Diff(k.refs[which], state(t, k.root)); diff != "" {
		t.Fatalf("run %d: after a kill and a rerun, the root differs from a clean apply (-clean +got):\n%s", i, diff)
	}
	if code, out, _ := runBin(t, "apply", "--config", k.nodes[which], "--root", k.root); code != 0 || !strings.Contains(out, " changes=0 ") {
		t.Fatalf("run %d: third run not converged: exit %d: %s", i, code, out)
	}
}

// TestApplyKill9 kills `bellbuild apply` at random points, over and over,
// switching between two configurations: after every kill each managed
// file is whole — as before, as one configuration or as the other — and
// the next run converges to exactly what a clean root gets, without
// errors or spurious conflicts, and a run after that changes nothing.
func TestApplyKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("kills 100 appliers: skipped in -short")
	}
	k := newKillRig(t)
	// The kill lands at a random point within a window that adapts to how
	// fast runs are now (it shrinks when a run finished first, grows when
	// one was killed), so that most kills hit a run in progress whatever
	// the load on the machine.
	window := k.full
	t.Logf("a full run took %v; first window %v", k.full, window)
	rng := rand.New(rand.NewPCG(1, 2))
	killed := 0
	for i := 0; i < 100; i++ {
		which := i % 2
		cmd := k.start(t, which)
		time.Sleep(time.Duration(rng.Int64N(int64(window) + 1)))
		cmd.Process.Kill()
		if err := cmd.Wait(); err != nil && cmd.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
			killed++
			window += window / 20
		} else {
			window -= window / 10
		}
		k.afterKill(t, i, which)
	}
	t.Logf("%d of 100 appliers killed before they finished (last window %v)", killed, window)
	if killed < 30 {
		t.Errorf("only %d of 100 appliers were killed mid-run: the test proves little", killed)
	}
}

// TestApplyKill9InBatch kills `bellbuild apply` inside a batch: right after
// the N-th of killBatchFiles files written in one batch is renamed into
// place, or the N-th of the perm batch's paths changes mode (N at random),
// as inotify reports it. The batch's ledger save came before any of its
// changes, so the root is left with some files of the batch old and some
// new (and temporary files of the batch's unfinished writes): each must be
// whole, and the next run must clean up and converge as after any kill.
func TestApplyKill9InBatch(t *testing.T) {
	if testing.Short() {
		t.Skip("kills 40 appliers: skipped in -short")
	}
	k := newKillRig(t)
	rng := rand.New(rand.NewPCG(3, 4))
	mixed := map[string]int{}
	for i := 0; i < 40; i++ {
		which := i % 2
		batch, dir, mask, size := "files", killBatchDir, uint32(unix.IN_MOVED_TO), killBatchFiles
		if i%4 >= 2 {
			batch, dir, mask, size = "perm", "/srv/data", unix.IN_ATTRIB, killPermFiles
		}
		n := 1 + rng.IntN(size-1)
		killAfterEvents(t, k, which, filepath.Join(k.root, dir), mask, n)
		// Inside the batch: some of its paths are as one configuration
		// has them, some as the other (or as before) has them.
		kinds := map[int]bool{}
		for p, got := range state(t, k.root) {
			if !strings.HasPrefix(p, dir+"/") || strings.Contains(p, ".bellbuild-tmp") || p == "/srv/data/a" || p == "/srv/data/b" {
				continue
			}
			for j, ref := range k.refs {
				if ref[p] == got {
					kinds[j] = true
				}
			}
		}
		if len(kinds) == 2 {
			mixed[batch]++
		}
		k.afterKill(t, i, which)
	}
	t.Logf("kills that left a batch half old, half new: %v of 20 each", mixed)
	for _, b := range []string{"files", "perm"} {
		if mixed[b] < 5 {
			t.Errorf("only %d of 20 kills landed inside the %s batch: the test proves little", mixed[b], b)
		}
	}
}

// TestApplyCleansTempsAfterKill: the temporary files of a run killed in
// the middle of a batch are removed by the next run even when it does not
// rewrite those files (here it removes them: an empty configuration).
func TestApplyCleansTempsAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills appliers: skipped in -short")
	}
	k := newKillRig(t)
	temps := func() []string {
		var out []string
		filepath.WalkDir(k.root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(p, ".bellbuild-tmp") {
				out = append(out, strings.TrimPrefix(p, k.root))
			}
			return nil
		})
		return out
	}
	rng := rand.New(rand.NewPCG(5, 6))
	var left []string
	for i := 0; i < 30 && len(left) == 0; i++ {
		killAfterEvents(t, k, 0, filepath.Join(k.root, killBatchDir), unix.IN_MOVED_TO, 1+rng.IntN(killBatchFiles-2*32))
		left = temps()
	}
	if len(left) == 0 {
		t.Fatal("no kill in 30 left a temporary file behind")
	}
	t.Logf("a kill left %d temporary files, such as %s", len(left), left[0])
	empty := filepath.Join(t.TempDir(), "empty.json")
	writeConf(t, empty, &nodeconf.Node{Node: "n", Profile: "p"})
	if code, out, errs := runBin(t, "apply", "--config", empty, "--root", k.root); code != 0 {
		t.Fatalf("the run after the kill: exit %d\n%s%s", code, out, errs)
	}
	if got := temps(); len(got) > 0 {
		t.Errorf("temporary files left after the next run: %v", got)
	}
	if diff := cmp.Diff(k.before, state(t, k.root)); diff != "" {
		t.Errorf("the empty configuration did not give the root back (-before +after):\n%s", diff)
	}
}

// killAfterEvents starts an applier of configuration which and kills it -9
// as soon as inotify has reported n events of mask in dir.
func killAfterEvents(t *testing.T, k *killRig, which int, dir string, mask uint32, n int) {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		t.Fatal(err)
	}
	cmd := k.start(t, which)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	buf := make([]byte, 64<<10)
	seen := 0
	for seen < n {
		select {
		case <-done:
			return // finished first: a whole run, checked all the same
		default:
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 10); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		m, err := unix.Read(fd, buf)
		if err == unix.EAGAIN {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= m; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			if ev.Mask&mask != 0 && !strings.Contains(name, ".bellbuild-tmp") {
				seen++
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	cmd.Process.Kill()
	<-done
}

// TestApplySources applies a site directory and a Divingbell values file:
// the node is rendered by --node, by hostname in the inventory, or from a
// profile with --hostname and --label (the values file's overrides).
func TestApplySources(t *testing.T) {
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	writeTestFile(t, filepath.Join(site, "profiles/base.yaml"), `description: base
conf:
  sysctl:
    vm.swappiness: 10
overrides:
  labels:
  - label: {key: role, values: [db]}
    conf:
      sysctl:
        vm.swappiness: 60
`)
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), `nodes:
- name: web-1
  mac: 52:54:00:00:00:01
  profile: base
  labels: {role: web}
- name: db-1
  mac: 52:54:00:00:00:02
  profile: base
  labels: {role: db}
`)
	values := filepath.Join(dir, "values.yaml")
	writeTestFile(t, values, `images:
  divingbell: 'ubuntu:16.04'
conf:
  chroot_mnt_path: /mnt
  sysctl:
    net.ipv4.ip_forward: 1
  overrides:
    divingbell_sysctl:
      labels:
      - label:
          key: compute_type
          values: ["dpdk"]
        conf:
          sysctl:
            net.ipv4.ip_forward: 0
      hosts:
      - name: superhost
        conf:
          sysctl:
            net.ipv4.ip_forward: 2
`)
	const head = "# Written by bellbuild apply: kernel parameters of this node.\n# Edits are reported as conflicts; change the site instead.\n"
	for _, tc := range []struct {
		name    string
		args    []string
		summary string
		sysctl  string
	}{
		{"site --node", []string{"--config", site, "--node", "db-1"}, "node=db-1 profile=base", "vm.swappiness = 60\n"},
		{"site by inventory hostname", []string{"--config", site, "--hostname", "web-1"}, "node=web-1 profile=base", "vm.swappiness = 10\n"},
		{"site profile with labels", []string{"--config", site, "--hostname", "new", "--profile", "base", "--label", "role=db"}, "node=new profile=base", "vm.swappiness = 60\n"},
		{"values, plain host", []string{"--config", values, "--hostname", "h1"}, "node=h1 profile=divingbell", "net.ipv4.ip_forward = 1\n"},
		{"values, label override", []string{"--config", values, "--hostname", "h1", "--label", "compute_type=dpdk"}, "node=h1 profile=divingbell", "net.ipv4.ip_forward = 0\n"},
		{"values, host override", []string{"--config", values, "--hostname", "superhost"}, "node=superhost profile=divingbell", "net.ipv4.ip_forward = 2\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := applyRoot(t)
			code, stdout, stderr := runBin(t, append([]string{"apply", "--root", root}, tc.args...)...)
			if code != 0 || !strings.HasPrefix(stdout, "bellbuild: "+tc.summary+" ") {
				t.Fatalf("exit %d, stdout %q, want summary %q\n%s", code, stdout, tc.summary, stderr)
			}
			got, err := os.ReadFile(filepath.Join(root, "etc/sysctl.d/60-bellbuild.conf"))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(head+tc.sysctl, string(got)); diff != "" {
				t.Errorf("sysctl file (-want +got):\n%s", diff)
			}
		})
	}
}
