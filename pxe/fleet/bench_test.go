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

// BenchmarkRecord is serve's ingestion of one report (into a state
// directory: a durable update per report), over 1,000 nodes.
func BenchmarkRecord(b *testing.B) {
	st, err := state.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	rec := fleet.NewRecorder(st, fleet.Options{})
	ctx := context.Background()
	start := time.Now()
	b.ResetTimer()
	for i := range b.N {
		node := fmt.Sprintf("n%04d", i%1000)
		r := wire.Report{Node: node, Profile: "p", Config: "sha256:x", Changes: []wire.Change{}, Errors: []wire.Error{},
			Start: start.Add(time.Duration(i) * time.Millisecond)}
		if _, err := rec.Record(ctx, node, []wire.Report{r}, true, "192.0.2.1"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkView is the status page's view of 1,000 nodes that reported.
func BenchmarkView(b *testing.B) {
	st, err := state.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	rec := fleet.NewRecorder(st, fleet.Options{})
	ctx := context.Background()
	var inv wants
	for i := range 1000 {
		node := fmt.Sprintf("n%04d", i)
		inv = append(inv, fleet.Want{Node: node, Profile: "p", Config: "sha256:x"})
		r := wire.Report{Node: node, Profile: "p", Config: "sha256:x", Changes: []wire.Change{}, Errors: []wire.Error{}, Start: time.Now()}
		if _, err := rec.Record(ctx, node, []wire.Report{r}, true, "192.0.2.1"); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		if _, err := fleet.View(ctx, inv, rec, pending{}, fleet.ViewOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
