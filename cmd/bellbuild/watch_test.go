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

// TestApplyWatch runs `bellbuild apply --watch` on a root and changes its
// configuration under it: a new content is applied once, the same bytes
// written again are not, a broken file is reported and the watch goes on,
// and SIGTERM ends it with status 0.
func TestApplyWatch(t *testing.T) {
	root := applyRoot(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "node.json")
	node := func(motd string) nodeconf.Node {
		return nodeconf.Node{Node: "n1", Profile: "p", Conf: nodeconf.Conf{
			Files: map[string]nodeconf.File{"/etc/motd": {Content: motd}},
		}}
	}
	// Replaced by rename, as `bellbuild config write` does on a volume.
	replace := func(v any) {
		t.Helper()
		writeJSON(t, conf+".tmp", v)
		if err := os.Rename(conf+".tmp", conf); err != nil {
			t.Fatal(err)
		}
	}
	replace(node("first\n"))

	cmd := exec.Command(testtool.Binary(t), "apply", "--config", conf, "--root", root, "--watch", "--interval", "50ms")
	var stdout, stderr syncBuffer
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
	motd := func(want string) func() bool {
		return func() bool {
			b, _ := os.ReadFile(filepath.Join(root, "etc/motd"))
			return string(b) == want
		}
	}

	waitFor("the first run", func() bool { return motd("first\n")() && runs() == 1 })
	replace(node("second\n"))
	waitFor("the rerun after a change", func() bool { return motd("second\n")() && runs() == 2 })

	// The same bytes again: nothing to do, no run.
	replace(node("second\n"))
	time.Sleep(500 * time.Millisecond) // ten intervals
	if n := runs(); n != 2 {
		t.Errorf("%d runs after rewriting the same content, want 2:\n%s", n, stdout.String())
	}

	// A broken file fails its run; the watch survives it.
	writeTestFile(t, conf, "{not json")
	waitFor("the broken file's error", func() bool { return strings.Contains(stderr.String(), conf) })
	replace(node("third\n"))
	waitFor("the rerun after the error", func() bool { return motd("third\n")() })

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: %v\nstderr:\n%s", err, stderr.String())
	}
}

// TestApplyWatchFlags: the watch's timings are checked before anything
// is applied.
func TestApplyWatchFlags(t *testing.T) {
	root := applyRoot(t)
	conf := filepath.Join(t.TempDir(), "node.json")
	writeJSON(t, conf, nodeconf.Node{Node: "n1", Profile: "p"})
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--resync", "1h"}, "bellbuild apply: --resync needs --watch\n"},
		{[]string{"--watch", "--resync", "-1s"}, "bellbuild apply: --resync -1s: must not be negative\n"},
		{[]string{"--watch", "--interval", "0s"}, "bellbuild apply: --interval 0s: must be positive\n"},
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
