package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/pxe/fleet/wire"
)

func TestSplitError(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     wire.Error
	}{
		{"module item message", "sysctl: net.ipv4.ip_forward: no such key", wire.Error{Module: "sysctl", Item: "net.ipv4.ip_forward", Message: "no such key"}},
		{"module message", "files: cannot open the root: permission denied", wire.Error{Module: "files", Message: "cannot open the root: permission denied"}},
		{"not a module", "lock: another bellbuild apply is running", wire.Error{Message: "lock: another bellbuild apply is running"}},
		{"no colon", "context canceled", wire.Error{Message: "context canceled"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := SplitError(tt.in); got != tt.want {
				t.Errorf("SplitError(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// TestShorten: a report over the bounds is cut to them, says so, and
// then passes Check.
func TestShorten(t *testing.T) {
	r := wire.Report{Node: "n1", Profile: "p", Start: testStart}
	for range wire.MaxItems + 5 {
		r.Errors = append(r.Errors, wire.Error{Message: strings.Repeat("e", wire.MaxText+10)})
	}
	if err := r.Check("n1"); err == nil {
		t.Fatal("Check passed a report over the bounds")
	}
	r.Shorten()
	if err := r.Check("n1"); err != nil || !r.Truncated || len(r.Errors) != wire.MaxItems || len(r.Errors[0].Message) != wire.MaxText {
		t.Errorf("after Shorten: %v, truncated %v, %d errors of %d bytes", err, r.Truncated, len(r.Errors), len(r.Errors[0].Message))
	}
}

var testStart = time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)

// TestFromRun: a run's report names the image and slot of the kernel
// command line, the reboot the root waits for, and the errors split.
func TestFromRun(t *testing.T) {
	root := t.TempDir()
	for p, data := range map[string]string{
		"proc/cmdline":        "console=ttyS0 bellbuild.node=n1 bellbuild.image=sha256:abcd bellbuild.slot=b quiet\n",
		"run/reboot-required": "",
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rep := &firstboot.Report{Node: "n1", Profile: "p", Errors: []string{"units: foo.service: failed"}, Deferred: []string{"sysctl: x: deferred"}}
	got := FromRun(Run{Report: rep, Root: root, Trigger: "boot", Start: testStart, Duration: 1500 * time.Millisecond})
	want := wire.Report{Node: "n1", Profile: "p", Image: "sha256:abcd", Slot: "b", Trigger: "boot", Changes: []wire.Change{},
		Errors: []wire.Error{{Module: "units", Item: "foo.service", Message: "failed"}}, Deferred: []string{"sysctl: x: deferred"},
		RebootRequired: true, Start: testStart, DurationMS: 1500}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("FromRun (-want +got):\n%s", diff)
	}
}
