package firstboot

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// A test binary started with this variable set applies the exec module of
// execKillConf to the given root, to be killed -9 by TestExecApplierKilled.
const execApplyEnv = "BELLBUILD_TEST_EXEC_APPLY"

var execKillConf = map[string]nodeconf.Exec{"slow": {
	Data:        "#!/bin/sh\necho $$ > /pid\n[ -e /fast ] && exit 0\nsleep 60\n",
	RerunPolicy: "never",
}}

func init() {
	root := os.Getenv(execApplyEnv)
	if root == "" {
		return
	}
	h, err := host.Open(host.Options{RootDir: root})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	errs := (execModule{}).Apply(context.Background(), h, &nodeconf.Conf{Exec: execKillConf})
	fmt.Println("finished:", errs)
	os.Exit(0)
}

// TestExecApplierKilled kills -9 an applier while its script runs: the
// script dies with it, and the next run starts the script again.
func TestExecApplierKilled(t *testing.T) {
	root := busyboxRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), execApplyEnv+"="+root)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	for deadline := time.Now().Add(20 * time.Second); pid == 0; {
		if b, err := os.ReadFile(filepath.Join(root, "pid")); err == nil && strings.HasSuffix(string(b), "\n") {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the script did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if processAlive(pid) {
		t.Errorf("the script (pid %d) outlived its applier", pid)
	}
	if led := readRoot(t, root, host.LedgerPath); !strings.Contains(led, `"status": "started"`) {
		t.Fatalf("the killed run is not recorded as started:\n%s", led)
	}
	os.WriteFile(filepath.Join(root, "fast"), nil, 0o644)
	runs, errs, _ := applyExec(t, root, execStep{conf: execKillConf})
	if !cmp.Equal(runs, []string{"slow"}) || len(errs) > 0 {
		t.Errorf("after the kill: runs %v, errors %v; want slow to run again", runs, errs)
	}
	if runs, _, _ := applyExec(t, root, execStep{conf: execKillConf}); len(runs) > 0 {
		t.Errorf("rerun_policy never ran again after a finished run: %v", runs)
	}
}

// busyboxRoot makes a tiny real root: the host's static busybox as /bin/sh
// and a few applets, with empty /proc, /dev and /tmp, so that scripts run
// under a real chroot (and find /proc and /dev/null only because inRoot
// mounts them in a private namespace).
func busyboxRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "exec tests chroot into a test root: need root")
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		testtool.Skipf(t, "exec tests need a static busybox at /bin/busybox (Debian package busybox-static): %v", err)
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "proc", "dev", "tmp", "etc"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "cat", "echo", "sleep", "pwd", "id", "env", "kill"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// execStep is one run of the exec module in a scenario.
type execStep struct {
	conf map[string]nodeconf.Exec
	at   time.Duration // after the scenario's start
	boot string        // the kernel boot id the run sees ("boot-1" if empty)
	plan bool
	// before runs first (to prepare the root).
	before func(t *testing.T, root string)
	// cancelWhen cancels the run's context once this file in the root is
	// not empty (a script has got that far; the shell creates a file
	// before it writes to it): a fixed delay would race the run's own
	// start on a loaded machine.
	cancelWhen string
	wantRuns   []string // scripts the report says ran, in order
	wantErrs   []string // exact errors
	wantFiles  map[string]string
	check      func(t *testing.T, root string, log string)
}

var execT0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func applyExec(t *testing.T, root string, st execStep) ([]string, []string, string) {
	t.Helper()
	var logBuf testtool.Buffer
	boot := st.boot
	if boot == "" {
		boot = "boot-1"
	}
	execBootID = func() string { return boot }
	h, err := host.Open(host.Options{RootDir: root, Plan: st.plan, Now: func() time.Time { return execT0.Add(st.at) },
		Log: slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx := context.Background()
	if st.cancelWhen != "" {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			for ctx.Err() == nil {
				if fi, err := os.Stat(filepath.Join(root, st.cancelWhen)); err == nil && fi.Size() > 0 {
					cancel()
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	conf := &nodeconf.Conf{Exec: st.conf}
	var errs []error
	if errs = (execModule{}).Check(ctx, h, conf); len(errs) == 0 {
		errs = (execModule{}).Apply(ctx, h, conf)
	}
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	var runs, msgs []string
	for _, c := range h.Changes() {
		if c.Action == "run" {
			runs = append(runs, c.Item)
		}
	}
	for _, err := range errs {
		msgs = append(msgs, err.Error())
	}
	return runs, msgs, logBuf.String()
}

// missing is what readRoot returns for a path that does not exist.
const missing = "<missing>"

func readRoot(t *testing.T, root, p string) string {
	t.Helper()
	if p == host.LedgerPath {
		return ledgerText(t, root)
	}
	b, err := os.ReadFile(filepath.Join(root, p))
	if errors.Is(err, os.ErrNotExist) {
		return missing
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestExec(t *testing.T) {
	oldGrace, oldBoot := execKillGrace, execBootID
	// Long enough for a polite script's trap to run on a loaded machine
	// (at 500 ms it was once killed first at a load average of 9).
	execKillGrace = 2 * time.Second
	t.Cleanup(func() { execKillGrace, execBootID = oldGrace, oldBoot })

	once := "once_successfully"
	f := false
	probe := nodeconf.Exec{
		Data: "#!/bin/sh\n" +
			`echo "$0 args=$#:$1:$2 env=$A,$B cwd=$(pwd) proc=$(cat /proc/self/comm) null=$( [ -c /dev/null ] && echo yes)" >> /out` + "\n" +
			"echo to-stderr >&2\n",
		Args: []string{"x", "y z"}, Env: map[string]string{"B": "2", "A": "1"}, RerunPolicy: once,
	}
	second := nodeconf.Exec{Data: "#!/bin/sh\necho b >> /out\necho \"$0\" >> exec_testfile\n", RerunPolicy: once}
	fail := nodeconf.Exec{Data: "#!/bin/sh\necho failing >> /out\nexit 3\n", RerunPolicy: once}

	cases := []struct {
		name  string
		steps []execStep
	}{{
		name: "key order, args, env, /proc and /dev/null in the chroot; once_successfully converges; removal",
		steps: []execStep{{
			conf:     map[string]nodeconf.Exec{"002-b": second, "001-a": probe},
			plan:     true,
			wantRuns: []string{"001-a", "002-b"},
			wantFiles: map[string]string{
				"/out": missing, "/var/lib/bellbuild/exec/001-a": missing,
			},
		}, {
			conf:     map[string]nodeconf.Exec{"002-b": second, "001-a": probe},
			wantRuns: []string{"001-a", "002-b"},
			wantFiles: map[string]string{
				"/out":                                   "./001-a args=2:x:y z env=1,2 cwd=/var/lib/bellbuild/exec proc=cat null=yes\nb\n",
				"/var/lib/bellbuild/exec/002-b":          second.Data,
				"/var/lib/bellbuild/exec/exec_testfile":  "./002-b\n",
				"/var/lib/bellbuild/exec-logs/001-a.log": "to-stderr\n",
			},
			check: func(t *testing.T, root, log string) {
				fi, err := os.Stat(filepath.Join(root, "var/lib/bellbuild/exec/001-a"))
				if err != nil || fi.Mode().Perm() != 0o700 {
					t.Errorf("script file: %v, mode %v; want 0700", err, fi.Mode())
				}
				if !strings.Contains(log, `script=001-a stream=stderr line=to-stderr`) {
					t.Errorf("the script's stderr line is not in the log:\n%s", log)
				}
			},
		}, {
			conf:      map[string]nodeconf.Exec{"002-b": second, "001-a": probe},
			wantFiles: map[string]string{"/out": "./001-a args=2:x:y z env=1,2 cwd=/var/lib/bellbuild/exec proc=cat null=yes\nb\n"},
		}, {
			conf: map[string]nodeconf.Exec{"002-b": second, "001-a": func() nodeconf.Exec {
				e := probe
				e.Args = []string{"y z", "x"}
				return e
			}()},
			wantRuns:  []string{"001-a"},
			wantFiles: map[string]string{"/out": "./001-a args=2:x:y z env=1,2 cwd=/var/lib/bellbuild/exec proc=cat null=yes\nb\n./001-a args=2:y z:x env=1,2 cwd=/var/lib/bellbuild/exec proc=cat null=yes\n"},
		}, {
			conf: map[string]nodeconf.Exec{"001-a": probe},
			// the definition changed back: it is a new object again
			wantRuns: []string{"001-a"},
			wantFiles: map[string]string{
				"/var/lib/bellbuild/exec/002-b":          missing,
				"/var/lib/bellbuild/exec-logs/002-b.log": missing,
				"/var/lib/bellbuild/exec/001-a":          probe.Data,
				"/var/lib/bellbuild/exec-logs/001-a.log": "to-stderr\n",
			},
		}, {
			conf: nil,
			wantFiles: map[string]string{
				"/var/lib/bellbuild/exec/001-a":          missing,
				"/var/lib/bellbuild/exec-logs/001-a.log": missing,
			},
			check: func(t *testing.T, root, _ string) {
				led := readRoot(t, root, host.LedgerPath)
				if strings.Contains(led, `"exec"`) {
					t.Errorf("ledger still has exec records:\n%s", led)
				}
			},
		}},
	}, {
		name: "a failure is retried by once_successfully, never by never",
		steps: []execStep{{
			conf:      map[string]nodeconf.Exec{"f": fail, "n": {Data: "#!/bin/sh\necho never >> /out\nexit 1\n", RerunPolicy: "never"}},
			wantRuns:  []string{"f", "n"},
			wantErrs:  []string{"f: exit status 3", "n: exit status 1"},
			wantFiles: map[string]string{"/out": "failing\nnever\n"},
		}, {
			conf:      map[string]nodeconf.Exec{"f": fail, "n": {Data: "#!/bin/sh\necho never >> /out\nexit 1\n", RerunPolicy: "never"}},
			wantRuns:  []string{"f"},
			wantErrs:  []string{"f: exit status 3"},
			wantFiles: map[string]string{"/out": "failing\nnever\nfailing\n"},
		}},
	}, {
		name: "foreground continues after a failure, foreground_halt_pod_on_failure stops",
		steps: []execStep{{
			conf: map[string]nodeconf.Exec{
				"1": {Data: "#!/bin/sh\necho 1 >> /out\nexit 1\n"},
				"2": {Data: "#!/bin/sh\necho 2 >> /out\nexit 2\n", BlockingPolicy: "foreground_halt_pod_on_failure"},
				"3": {Data: "#!/bin/sh\necho 3 >> /out\n"},
				"4": {Data: "#!/bin/sh\necho 4 >> /out\n"},
			},
			wantRuns: []string{"1", "2"},
			wantErrs: []string{
				"1: exit status 1", "2: exit status 2",
				"3: not run: 2 failed (blocking_policy foreground_halt_pod_on_failure)",
				"4: not run: 2 failed (blocking_policy foreground_halt_pod_on_failure)",
			},
			wantFiles: map[string]string{"/out": "1\n2\n", "/var/lib/bellbuild/exec/3": missing},
		}},
	}, {
		name: "background runs alongside the next scripts and is waited for",
		steps: []execStep{{
			conf: map[string]nodeconf.Exec{
				"1-bg": {Data: "#!/bin/sh\ni=0\nwhile [ ! -e /fg-done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\necho bg >> /out\nexit 4\n", BlockingPolicy: "background", RerunPolicy: once},
				"2-fg": {Data: "#!/bin/sh\necho fg >> /out\necho > /fg-done\n", RerunPolicy: once},
			},
			wantRuns:  []string{"1-bg", "2-fg"},
			wantErrs:  []string{"1-bg: exit status 4"},
			wantFiles: map[string]string{"/out": "fg\nbg\n"},
		}},
	}, {
		name: "timeout: SIGTERM, then SIGKILL to the whole process group",
		steps: []execStep{{
			conf: map[string]nodeconf.Exec{
				"deaf":   {Data: "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho $! > /child\nwait\n", Timeout: 1, RerunPolicy: once},
				"polite": {Data: "#!/bin/sh\ntrap 'echo term >> /out; exit 7' TERM\nwhile true; do sleep 0.2; done\n", Timeout: 1, RerunPolicy: once},
			},
			wantRuns:  []string{"deaf", "polite"},
			wantErrs:  []string{"deaf: timed out after 1 s", "polite: timed out after 1 s"},
			wantFiles: map[string]string{"/out": "term\n"},
			check: func(t *testing.T, root, _ string) {
				pid, err := strconv.Atoi(strings.TrimSpace(readRoot(t, root, "/child")))
				if err != nil {
					t.Fatalf("child pid: %v", err)
				}
				if processAlive(pid) {
					t.Errorf("the script's child %d outlived the timeout", pid)
				}
				led := readRoot(t, root, host.LedgerPath)
				if !strings.Contains(led, `"status": "failed"`) {
					t.Errorf("timed-out runs not recorded as failed:\n%s", led)
				}
			},
		}},
	}, {
		name: "an interrupted run counts as not run",
		steps: []execStep{{
			conf:       map[string]nodeconf.Exec{"slow": {Data: "#!/bin/sh\necho start >> /out\n[ -e /fast ] && exit 0\nsleep 30\n", RerunPolicy: "never"}},
			cancelWhen: "out",
			wantRuns:   []string{"slow"},
			wantErrs:   []string{"slow: interrupted: context canceled"},
			check: func(t *testing.T, root, _ string) {
				if led := readRoot(t, root, host.LedgerPath); !strings.Contains(led, `"status": "started"`) {
					t.Errorf("interrupted run not left as started:\n%s", led)
				}
			},
		}, {
			before:    func(t *testing.T, root string) { os.WriteFile(filepath.Join(root, "fast"), nil, 0o644) },
			conf:      map[string]nodeconf.Exec{"slow": {Data: "#!/bin/sh\necho start >> /out\n[ -e /fast ] && exit 0\nsleep 30\n", RerunPolicy: "never"}},
			wantRuns:  []string{"slow"},
			wantFiles: map[string]string{"/out": "start\nstart\n"},
		}, {
			conf:      map[string]nodeconf.Exec{"slow": {Data: "#!/bin/sh\necho start >> /out\n[ -e /fast ] && exit 0\nsleep 30\n", RerunPolicy: "never"}},
			wantFiles: map[string]string{"/out": "start\nstart\n"},
		}},
	}, {
		name: "rerun_interval, retry_interval and *_persist false",
		steps: []execStep{{
			conf: map[string]nodeconf.Exec{
				"ok":   {Data: "#!/bin/sh\necho ok >> /out\n", RerunInterval: 60},
				"bad":  {Data: "#!/bin/sh\necho bad >> /out\nexit 1\n", RerunInterval: 60, RetryInterval: 120},
				"boot": {Data: "#!/bin/sh\necho boot >> /out\n", RerunInterval: 3600, RerunIntervalPersist: &f},
			},
			wantRuns: []string{"bad", "boot", "ok"},
			wantErrs: []string{"bad: exit status 1"},
		}, {
			at: 59 * time.Second,
			conf: map[string]nodeconf.Exec{
				"ok":   {Data: "#!/bin/sh\necho ok >> /out\n", RerunInterval: 60},
				"bad":  {Data: "#!/bin/sh\necho bad >> /out\nexit 1\n", RerunInterval: 60, RetryInterval: 120},
				"boot": {Data: "#!/bin/sh\necho boot >> /out\n", RerunInterval: 3600, RerunIntervalPersist: &f},
			},
		}, {
			at: 60 * time.Second,
			conf: map[string]nodeconf.Exec{
				"ok":   {Data: "#!/bin/sh\necho ok >> /out\n", RerunInterval: 60},
				"bad":  {Data: "#!/bin/sh\necho bad >> /out\nexit 1\n", RerunInterval: 60, RetryInterval: 120},
				"boot": {Data: "#!/bin/sh\necho boot >> /out\n", RerunInterval: 3600, RerunIntervalPersist: &f},
			},
			wantRuns: []string{"ok"},
		}, {
			// bad's retry and ok's rerun are due; boot's hour is not, but
			// the machine rebooted.
			at:   121 * time.Second,
			boot: "boot-2",
			conf: map[string]nodeconf.Exec{
				"ok":   {Data: "#!/bin/sh\necho ok >> /out\n", RerunInterval: 60},
				"bad":  {Data: "#!/bin/sh\necho bad >> /out\nexit 1\n", RerunInterval: 60, RetryInterval: 120},
				"boot": {Data: "#!/bin/sh\necho boot >> /out\n", RerunInterval: 3600, RerunIntervalPersist: &f},
			},
			wantRuns:  []string{"bad", "boot", "ok"},
			wantErrs:  []string{"bad: exit status 1"},
			wantFiles: map[string]string{"/out": "bad\nboot\nok\nok\nbad\nboot\nok\n"},
		}},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := busyboxRoot(t)
			mountsBefore := hostMountsUnder(t, root)
			for i, st := range tc.steps {
				if st.before != nil {
					st.before(t, root)
				}
				runs, errs, log := applyExec(t, root, st)
				if diff := cmp.Diff(st.wantRuns, runs); diff != "" {
					t.Errorf("step %d: scripts run (-want +got):\n%s\nlog:\n%s", i, diff, log)
				}
				if diff := cmp.Diff(st.wantErrs, errs); diff != "" {
					t.Errorf("step %d: errors (-want +got):\n%s\nlog:\n%s", i, diff, log)
				}
				for p, want := range st.wantFiles {
					if got := readRoot(t, root, p); got != want {
						t.Errorf("step %d: %s = %q, want %q", i, p, got, want)
					}
				}
				if st.check != nil {
					st.check(t, root, log)
				}
			}
			if got := hostMountsUnder(t, root); !cmp.Equal(got, mountsBefore) {
				t.Errorf("the host's mount table changed under the root: %v", got)
			}
		})
	}
}

// processAlive reports whether pid still runs (a zombie has ended), after
// giving the kernel a moment to reap it.
func processAlive(pid int) bool {
	for range 50 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		if f := strings.Fields(string(b)); len(f) > 2 && f[2] == "Z" {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// hostMountsUnder lists the mount points of the test's own mount namespace
// under root: inRoot must never add one.
func hostMountsUnder(t *testing.T, root string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], root) {
			out = append(out, fields[4])
		}
	}
	return out
}

func TestExecDefHash(t *testing.T) {
	parse := func(s string) nodeconf.Exec {
		var e nodeconf.Exec
		if err := yaml.Unmarshal([]byte(s), &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	base := parse("data: x\nargs: [a, b]\nenv: {A: '1', B: '2'}\n")
	cases := []struct {
		name string
		yaml string
		same bool
	}{
		{"env keys in another order", "env: {B: '2', A: '1'}\nargs: [a, b]\ndata: x\n", true},
		{"explicit defaults", "data: x\nargs: [a, b]\nenv: {A: '1', B: '2'}\nrerun_policy: always\nblocking_policy: foreground\ntimeout: 1800\n", true},
		{"args in another order", "data: x\nargs: [b, a]\nenv: {A: '1', B: '2'}\n", false},
		{"another env value", "data: x\nargs: [a, b]\nenv: {A: '1', B: '3'}\n", false},
		{"another timeout", "data: x\nargs: [a, b]\nenv: {A: '1', B: '2'}\ntimeout: 10\n", false},
		{"another data", "data: y\nargs: [a, b]\nenv: {A: '1', B: '2'}\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := execDefHash("s", parse(tc.yaml)) == execDefHash("s", base)
			if got != tc.same {
				t.Errorf("same hash = %v, want %v", got, tc.same)
			}
		})
	}
	if execDefHash("s", base) == execDefHash("t", base) {
		t.Errorf("the script's name is not part of its hash")
	}
}

func TestExecCheck(t *testing.T) {
	checkBadConf(t, "exec", execModule{})
}

// updateCheck rewrites testdata/check/*.err from the current output.
var updateCheck = flag.Bool("update-check", false, "rewrite testdata/check/*.err (module Check errors) from the current output")

// checkBadConf runs one module's Check on testdata/bad/MODULE.yaml (a
// rendered node) and compares its errors with testdata/check/MODULE.err.
// (TestBadConfigChangesNothing applies the same file end to end, where
// schema validation may stop it before the modules' checks.)
func checkBadConf(t *testing.T, module string, c Checker) {
	data, err := os.ReadFile(filepath.Join("testdata/bad", module+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var node nodeconf.Node
	if err := yaml.Unmarshal(data, &node); err != nil {
		t.Fatal(err)
	}
	h, err := host.Open(host.Options{RootDir: t.TempDir(), Plan: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var got strings.Builder
	for _, err := range c.Check(context.Background(), h, &node.Conf) {
		fmt.Fprintf(&got, "%s: %v\n", module, err)
	}
	golden := filepath.Join("testdata/check", module+".err")
	if *updateCheck {
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update-check to create it)", err)
	}
	if diff := cmp.Diff(string(want), got.String()); diff != "" {
		t.Errorf("Check errors (-want +got):\n%s", diff)
	}
}

// TestUsersBeforeScripts applies accounts and a script through the whole
// applier: the script sees the user uamlite made (modules run in
// Divingbell's order), the run report never holds the password hash, and
// a second run changes nothing.
func TestUsersBeforeScripts(t *testing.T) {
	root := busyboxRoot(t)
	uamBuild(t, root, map[string]string{
		"/etc/passwd": "0644 0:0\nroot:x:0:0:root:/root:/bin/sh\n",
		"/etc/group":  "0644 0:0\nroot:x:0:\n",
	})
	node := &nodeconf.Node{Node: "n1", Profile: "p", Conf: nodeconf.Conf{
		Uamlite: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "alice", UserCryptPasswd: aliceHash, UserSudo: true, UserSSHKeys: []string{aliceKey}}}},
		Exec:    map[string]nodeconf.Exec{"10-whoami": {Data: "#!/bin/sh\nid alice > /out\n", RerunPolicy: "once_successfully"}},
	}}
	rep, err := Apply(context.Background(), Options{RootDir: root}, node)
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("Apply: %v %v", err, rep.Errors)
	}
	if got, want := readRoot(t, root, "/out"), "uid=1000(alice) gid=1000(alice) groups=1000(alice)\n"; got != want {
		t.Errorf("the script saw %q, want %q", got, want)
	}
	report, err := os.ReadFile(filepath.Join(root, "var/lib/bellbuild/last-run.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(report), aliceHash) || !strings.Contains(string(report), `"item": "10-whoami"`) {
		t.Errorf("run report:\n%s", report)
	}
	rep, err = Apply(context.Background(), Options{RootDir: root}, node)
	if err != nil || len(rep.Errors) > 0 || len(rep.Changes) > 0 {
		t.Errorf("second run: %v, errors %v, changes %+v", err, rep.Errors, rep.Changes)
	}
}
