package fleet_test

import (
	"context"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/fleet"
	"github.com/bellbuild/bellbuild/pxe/fleet/wire"
	"github.com/bellbuild/bellbuild/pxe/state"
)

// TestRecord: a batch sent again is ignored; a node whose clock went back
// is still told by its newest report; the history keeps the newest.
func TestRecord(t *testing.T) {
	st, err := state.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rec := fleet.NewRecorder(st, fleet.Options{Keep: 3})
	ctx := context.Background()
	t0 := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	rep := func(start time.Time, trigger string) wire.Report {
		return wire.Report{Node: "n1", Profile: "p", Trigger: trigger, Changes: []wire.Change{}, Errors: []wire.Error{}, Start: start}
	}
	for _, tt := range []struct {
		name             string
		batch            []wire.Report
		accepted, ignore int
		last             string
		n                int
	}{
		{"first", []wire.Report{rep(t0, "boot"), rep(t0.Add(time.Hour), "apply")}, 2, 0, "apply", 2},
		{"the same again", []wire.Report{rep(t0.Add(time.Hour), "apply")}, 0, 1, "apply", 2},
		{"clock went back", []wire.Report{rep(t0.Add(-24*time.Hour), "watch")}, 1, 0, "watch", 3},
		{"the oldest dropped", []wire.Report{rep(t0.Add(2*time.Hour), "boot")}, 1, 0, "boot", 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ans, err := rec.Record(ctx, "n1", tt.batch, true, "192.0.2.1")
			if err != nil || ans.Accepted != tt.accepted || ans.Ignored != tt.ignore {
				t.Fatalf("Record = %+v, %v; want %d accepted, %d ignored", ans, err, tt.accepted, tt.ignore)
			}
			h, err := rec.History(ctx, "n1")
			if err != nil {
				t.Fatal(err)
			}
			if len(h.Reports) != tt.n || h.Last().Trigger != tt.last {
				t.Errorf("history: %d reports, last %q; want %d, %q", len(h.Reports), h.Last().Trigger, tt.n, tt.last)
			}
		})
	}
	if _, err := rec.Record(ctx, "../x", []wire.Report{rep(t0, "boot")}, true, ""); err == nil {
		t.Error("a node name that is no state key was recorded")
	}
}
