package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pxeinstall "github.com/bellbuild/bellbuild/pxe/install"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
)

// installSite is a busybox site whose node i1 installs itself onto its
// largest disk.
func installSite(t *testing.T) string {
	t.Helper()
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "site.yaml"), "domain: example.org\n")
	writeTestFile(t, filepath.Join(site, "profiles/inst.yaml"), "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\ncmdline: [console=ttyS0]\noutputs: [raw]\ninstall: {disk: largest}\n")
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), "nodes:\n- {name: i1, mac: \"52:54:00:00:00:21\", profile: inst}\n- {name: i2, mac: \"52:54:00:00:00:22\", profile: inst}\n")
	return site
}

// TestNodeListInstalls: node list shows what serve recorded of an install
// (the disk, when, the slot and image, a pending upgrade), and node
// reinstall clears it, once.
func TestNodeListInstalls(t *testing.T) {
	site := installSite(t)
	state := t.TempDir()
	st, err := pxestate.OpenDir(state)
	if err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	s := pxeinstall.New(st, func() time.Time { return when })
	h1, h2 := strings.Repeat("a1", 32), strings.Repeat("b2", 32)
	ctx := context.Background()
	for _, r := range []wire.Report{
		{Event: wire.EventInstallStart, Disk: "/dev/vda", Size: 1 << 30, Image: h1},
		{Event: wire.EventInstallDone, Disk: "/dev/vda", Size: 1 << 30, Image: h1},
		{Event: wire.EventUpgradeWritten, Image: h2, Reboot: "window 0 2 * * *", RebootAt: "2026-12-08T02:00:00Z"},
	} {
		if _, err := s.Apply(ctx, "i1", "52:54:00:00:00:21", r); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := runCmd(t, "node", "list", "-C", site, "--state", state)
	if code != 0 {
		t.Fatalf("node list: exit %d\n%s%s", code, out, errOut)
	}
	if !regexpMatch(`(?m)^i1 +unknown +manual +- +- +- +/dev/vda +2026-12-07T09:00:00Z +a:a1a1a1a1a1a1 +upgrade to b2b2b2b2b2b2 written: reboot pending at 2026-12-08T02:00:00Z \(window 0 2 \* \* \*\)$`, out) ||
		!regexpMatch(`(?m)^i2 +unknown +manual +- +- +- +- +- +- *$`, out) {
		t.Errorf("node list:\n%s", out)
	}
	for i, want := range []string{"node i1: install cleared: its next network boot installs its disk again\n", "node i1 is not installed: nothing to clear\n"} {
		code, out, errOut = runCmd(t, "node", "reinstall", "i1", "-C", site, "--state", state)
		if code != 0 || out != want {
			t.Errorf("reinstall %d: exit %d, %q, want %q\n%s", i+1, code, out, want, errOut)
		}
	}
	if ok, err := s.Installed(ctx, "i1"); ok || err != nil {
		t.Errorf("after reinstall: installed %v, %v", ok, err)
	}
	_, out, _ = runCmd(t, "node", "list", "-C", site, "--state", state)
	if !regexpMatch(`(?m)^i1 +unknown +manual +- +- +- +- +- +a:a1a1a1a1a1a1 +install: reinstall$`, out) {
		t.Errorf("node list after reinstall:\n%s", out)
	}
	if code, _, errOut := runCmd(t, "node", "reinstall", "nope", "-C", site, "--state", state); code == 0 || !strings.Contains(errOut, "node nope is not in the site's inventory") {
		t.Errorf("reinstall of a stranger: exit %d\n%s", code, errOut)
	}
}

// TestApplyUpgradeNotInstalled: apply --upgrade on a root that did not
// boot from a slot of an installed disk says there is nothing to upgrade,
// and applies as usual.
func TestApplyUpgradeNotInstalled(t *testing.T) {
	site := installSite(t)
	root := applyRoot(t)
	code, out, errOut := runCmd(t, "apply", "--config", site, "--node", "i1", "--root", root, "--offline", "--upgrade")
	if code != 0 || !strings.HasPrefix(out, "bellbuild: node=i1 profile=inst changes=") || strings.Contains(out, "reboot=") ||
		!strings.Contains(errOut, "bellbuild apply: --upgrade: this system did not boot from a slot of an installed disk (no bellbuild.slot= on its command line): nothing to upgrade\n") {
		t.Errorf("exit %d\n%s%s", code, out, errOut)
	}
}
