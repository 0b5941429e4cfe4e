package report

import (
	"strings"
	"testing"
	"time"

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
