package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/fleet"
	fwire "github.com/bellbuild/bellbuild/pxe/fleet/wire"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
)

// statusSite is a site with one node for each state status tells.
var statusSite = map[string]string{
	"site.yaml": "domain: example.org\n",
	"profiles/p.yaml": `stage: {busybox: {}}
kernel: {path: /vmlinuz}
conf:
  sysctl: {vm.swappiness: "10"}
`,
	"nodes.yaml": `nodes:
- {name: ok-1, mac: "52:54:00:00:01:01", profile: p, labels: {rack: r1}}
- {name: fail-1, mac: "52:54:00:00:01:02", profile: p, labels: {rack: r1}}
- {name: drift-1, mac: "52:54:00:00:01:03", profile: p, labels: {rack: r2}}
- {name: stale-1, mac: "52:54:00:00:01:04", profile: p, labels: {rack: r2}}
- {name: pend-1, mac: "52:54:00:00:01:05", profile: p, labels: {rack: r2}}
- {name: boot-1, mac: "52:54:00:00:01:06", profile: p, labels: {rack: r2}}
- {name: new-1, mac: "52:54:00:00:01:07", profile: p, labels: {rack: r2}}
`,
}

// statusLab writes the site and serve's state as the nodes' reports
// left it: each node's last report, received at the time given.
func statusLab(t *testing.T) (site, state string) {
	t.Helper()
	dir := t.TempDir()
	site, state = filepath.Join(dir, "site"), filepath.Join(dir, "state")
	for name, data := range statusSite {
		writeTestFile(t, filepath.Join(site, name), data)
	}
	s, err := profiles.Load(site)
	if err != nil {
		t.Fatal(err)
	}
	// good is the configuration the site renders for a node.
	good := func(node string) string {
		n, err := s.RenderNode(node)
		if err != nil {
			t.Fatal(err)
		}
		h, err := nodeconf.ConfigHash(n)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	st, err := pxestate.OpenDir(state)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	for _, tt := range []struct {
		node   string
		ago    time.Duration
		config func(string) string
		errs   []fwire.Error
		reboot bool
	}{
		{"ok-1", time.Minute, good, nil, false},
		{"fail-1", time.Minute, good, []fwire.Error{{Module: "sysctl", Item: "vm.swappiness", Message: "read-only\nfile system"}, {Message: "two"}}, false},
		{"drift-1", time.Minute, func(string) string { return "sha256:" + strings.Repeat("0", 64) }, nil, false},
		{"stale-1", 48 * time.Hour, good, nil, false},
		{"pend-1", time.Minute, good, nil, false},
		{"boot-1", time.Minute, good, nil, true},
	} {
		rec := fleet.NewRecorder(st, fleet.Options{Now: func() time.Time { return now.Add(-tt.ago) }})
		r := fwire.Report{Node: tt.node, Profile: "p", Config: tt.config(tt.node), Changes: []fwire.Change{}, Errors: tt.errs,
			RebootRequired: tt.reboot, Start: now.Add(-tt.ago - time.Second)}
		if r.Errors == nil {
			r.Errors = []fwire.Error{}
		}
		if _, err := rec.Record(ctx, tt.node, []fwire.Report{r}, true, "192.0.2.10"); err != nil {
			t.Fatal(err)
		}
	}
	// pend-1 enrols again with a new key (a reinstalled disk).
	pend, _ := json.Marshal(enrol.Record{Node: "pend-1", Pending: []enrol.Pending{{Fingerprint: "sha256:" + strings.Repeat("a", 64), MAC: "52:54:00:00:01:05", First: now, Last: now}}})
	if err := st.Update(ctx, enrol.NodeKey("pend-1"), func([]byte) ([]byte, error) { return pend, nil }); err != nil {
		t.Fatal(err)
	}
	return site, state
}

// TestStatus: each node in its state, the selections, the exit status,
// and the table.
func TestStatus(t *testing.T) {
	site, state := statusLab(t)
	states := func(out string) map[string]string {
		t.Helper()
		var rows []fleet.Row
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		m := map[string]string{}
		for _, r := range rows {
			m[r.Node] = r.State
		}
		return m
	}
	for _, tt := range []struct {
		name string
		args []string
		code int
		want map[string]string
	}{
		{"all", nil, 1, map[string]string{"ok-1": "ok", "fail-1": "failing", "drift-1": "drifted", "stale-1": "stale",
			"pend-1": "pending approval", "boot-1": "reboot pending", "new-1": "never seen"}},
		{"failing", []string{"--failing"}, 1, map[string]string{"fail-1": "failing"}},
		{"stale 1h", []string{"--stale", "1h"}, 0, map[string]string{"stale-1": "stale", "new-1": "never seen"}},
		{"stale 10s", []string{"--stale", "10s"}, 1, map[string]string{"ok-1": "stale", "fail-1": "failing", "drift-1": "stale", "stale-1": "stale",
			"pend-1": "stale", "boot-1": "stale", "new-1": "never seen"}},
		{"rack r2", []string{"--label", "rack=r2"}, 0, map[string]string{"drift-1": "drifted", "stale-1": "stale",
			"pend-1": "pending approval", "boot-1": "reboot pending", "new-1": "never seen"}},
		{"rack r1 failing", []string{"--label", "rack=r1", "--failing"}, 1, map[string]string{"fail-1": "failing"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCmd(t, append([]string{"status", "-C", site, "--state", state, "-o", "json"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr %s", code, tt.code, errs)
			}
			if diff := cmp.Diff(tt.want, states(out)); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}
		})
	}
	// The table: one row per node, the error in one line.
	code, out, _ := runCmd(t, "status", "-C", site, "--state", state)
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	for _, re := range []string{
		`(?m)^NODE +PROFILE +STATE +CONFIG +IMAGE +LAST SEEN +ERRORS$`,
		`(?m)^fail-1 +p +failing +[0-9a-f]{12} +- +1m ago +sysctl: vm.swappiness: read-only file system \(\+1 more\)$`,
		`(?m)^drift-1 +p +drifted +[0-9a-f]{12}/000000000000 +- +1m ago +-$`,
		`(?m)^new-1 +p +never seen +[0-9a-f]{12}/- +- +never +-$`,
		`(?m)^stale-1 +p +stale .* 2d ago +-$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("table does not match %s:\n%s", re, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 8 {
		t.Errorf("%d lines, want a header and 7 rows:\n%s", n, out)
	}
	// No state: an error, not an empty fleet.
	if code, _, errs := runCmd(t, "status", "-C", site, "--state", filepath.Join(t.TempDir(), "none")); code != 1 || !strings.Contains(errs, "serve's state") {
		t.Errorf("status without a state: exit %d, %s", code, errs)
	}
}
