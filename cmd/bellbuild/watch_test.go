package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// TestApplyWatchProcess runs `bellbuild apply --watch` and rewrites its
// configuration in place, in two halves with a pause of many intervals:
// the half-written file is reported once and not applied, the whole one
// is, and SIGTERM ends the watch with status 0. (firstboot's own tests
// cover the rest of the watch.)
func TestApplyWatchProcess(t *testing.T) {
	root := applyRoot(t)
	conf := filepath.Join(t.TempDir(), "node.yaml")
	node := func(motd string) []byte {
		data, err := nodeconf.Marshal(&nodeconf.Node{Node: "n1", Profile: "p", Conf: nodeconf.Conf{
			Files: map[string]nodeconf.File{"/etc/motd": {Content: motd}},
			Uamlite: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "ops", UserSudo: true,
				UserSSHKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvCKado9531t9oyr7ok/dUnUOGkvPSS1rh63JQy4IoH ops@example.org"}}}},
		}}, nodeconf.YAML)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	writeTestFile(t, conf, string(node("first\n")))

	cmd := exec.Command(testtool.Binary(t), "apply", "--config", conf, "--root", root, "--offline", "--watch", "--interval", "50ms")
	var stdout, stderr testtool.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	runs := func() int { return strings.Count(stdout.String(), "bellbuild: node=n1 profile=p ") }
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s\nstdout:\n%s\nstderr:\n%s", what, stdout.String(), stderr.String())
			}
		}
	}
	motd := func() string {
		b, _ := os.ReadFile(filepath.Join(root, "etc/motd"))
		return string(b)
	}
	waitFor("the first run", func() bool { return motd() == "first\n" && runs() == 1 })
	sudo := filepath.Join(root, "etc/sudoers.d/bellbuild-ops")
	if _, err := os.Stat(sudo); err != nil {
		t.Fatalf("the first run gave ops no sudo: %v", err)
	}

	// The first half ends at a line before the users: valid YAML that
	// has no users, no sudo and no keys.
	second := node("second\n")
	half := bytes.Index(second, []byte("  uamlite:"))
	f, err := os.OpenFile(conf, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(second[:half]); err != nil {
		t.Fatal(err)
	}
	waitFor("the half-written file reported", func() bool { return strings.Contains(stderr.String(), "waiting for a complete configuration") })
	time.Sleep(time.Second) // twenty intervals
	if runs() != 1 || motd() != "first\n" {
		t.Fatalf("the half-written file was applied: motd %q, %d runs\nstdout:\n%s\nstderr:\n%s", motd(), runs(), stdout.String(), stderr.String())
	}
	if _, err := os.Stat(sudo); err != nil {
		t.Fatalf("the half-written file took ops's sudo: %v", err)
	}
	if _, err := f.Write(second[half:]); err != nil {
		t.Fatal(err)
	}
	waitFor("the whole file applied", func() bool { return motd() == "second\n" && runs() == 2 })
	if n := strings.Count(stderr.String(), "waiting for a complete configuration"); n != 1 {
		t.Errorf("reported %d times, want once:\n%s", n, stderr.String())
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: %v\nstderr:\n%s", err, stderr.String())
	}
}

// TestApplyWatchFlags: the watch's flags are checked before anything is
// applied.
func TestApplyWatchFlags(t *testing.T) {
	root := applyRoot(t)
	conf := filepath.Join(t.TempDir(), "node.json")
	writeConf(t, conf, &nodeconf.Node{Node: "n1", Profile: "p"})
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--resync", "1h"}, "bellbuild apply: --resync needs --watch\n"},
		{[]string{"--watch", "--resync", "-1s"}, "bellbuild apply: resync -1s: must not be negative\n"},
		{[]string{"--watch", "--interval", "-1s"}, "bellbuild apply: watch interval -1s: must be positive\n"},
		{[]string{"--watch", "--plan"}, "bellbuild apply: --watch applies; it cannot be combined with --plan\n"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"apply", "--config", conf, "--root", root}, tc.args...), &stdout, &stderr)
		if code != 1 || stderr.String() != tc.msg {
			t.Errorf("%q: exit %d, stderr %q, want 1 and %q", tc.args, code, stderr.String(), tc.msg)
		}
		if _, err := os.Stat(filepath.Join(root, "var/lib/bellbuild/last-run.json")); err == nil {
			t.Fatalf("%q applied", tc.args)
		}
	}
}
