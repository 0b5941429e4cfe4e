package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

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
