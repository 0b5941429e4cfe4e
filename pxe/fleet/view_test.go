package fleet_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/fleet"
	"github.com/bellbuild/bellbuild/pxe/fleet/wire"
	"github.com/bellbuild/bellbuild/pxe/state"
)

// TestView1000: 1,000 nodes, each made to be in one state by what it
// reported (or did not) and its enrolment; the view tells each exactly,
// and the counts add up. Half the nodes boot from their installed disks:
// they report the disk's root hash, which names the same image.
func TestView1000(t *testing.T) {
	st, err := state.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	var inv wants
	pend := pending{}
	want := map[string]string{}
	for i := range 1000 {
		name := fmt.Sprintf("n%04d", i)
		s := fleet.States[i%len(fleet.States)]
		want[name] = s
		w := fleet.Want{Node: name, Profile: "p", Config: "sha256:good", Image: "sha256:img", ImageRoot: "feed"}
		inv = append(inv, w)
		r := wire.Report{Node: name, Profile: "p", Config: w.Config, Image: w.Image, Changes: []wire.Change{}, Errors: []wire.Error{}, Start: now.Add(-time.Hour)}
		if i%4 >= 2 {
			r.Image = w.ImageRoot // a slot of its disk
		}
		received := now.Add(-time.Minute)
		switch s {
		case fleet.StateNeverSeen:
			continue
		case fleet.StateFailing:
			r.Errors = []wire.Error{{Module: "apt", Item: "curl", Message: "not found"}}
			pend[name] = i%2 == 0 // failing comes first
		case fleet.StateStale:
			received = now.Add(-25 * time.Hour)
		case fleet.StatePending:
			pend[name] = true
		case fleet.StateReboot:
			r.RebootRequired = true
			r.Config = "sha256:old" // a reboot comes before drift
		case fleet.StateDrifted:
			if i%2 == 0 {
				r.Config = "sha256:old"
			} else if i%4 == 1 {
				r.Image = "sha256:oldimg"
			} else {
				r.Image = "beef" // another disk root
			}
		}
		rec := fleet.NewRecorder(st, fleet.Options{Now: func() time.Time { return received }})
		if _, err := rec.Record(ctx, name, []wire.Report{r}, true, "192.0.2.1"); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := fleet.View(ctx, inv, fleet.NewRecorder(st, fleet.Options{}), pend, fleet.ViewOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1000 {
		t.Fatalf("%d rows", len(rows))
	}
	bad := 0
	for _, r := range rows {
		if r.State != want[r.Node] {
			bad++
			if bad < 10 {
				t.Errorf("%s: %s, want %s", r.Node, r.State, want[r.Node])
			}
		}
	}
	counts := fleet.Counts(rows)
	for i, s := range fleet.States {
		n := 1000 / len(fleet.States)
		if i < 1000%len(fleet.States) {
			n++
		}
		if counts[s] != n {
			t.Errorf("%d nodes %s, want %d", counts[s], s, n)
		}
	}
}
