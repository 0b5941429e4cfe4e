package fleet_test

import (
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bellbuild/bellbuild/pxe/fleet"
)

// TestCollector: /metrics says how many nodes are in each state and, per
// inventory node, its errors, whether it drifted and when it reported.
func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(fleet.NewCollector(fleetLab(t))); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := "set"
			if mf.GetName() != "bellbuild_fleet_node_last_apply_timestamp_seconds" {
				v = strconv.FormatFloat(m.GetGauge().GetValue(), 'f', -1, 64)
			}
			got = append(got, mf.GetName()+"{"+strings.Join(labels, ",")+"} "+v)
		}
	}
	sort.Strings(got)
	want := []string{
		"bellbuild_fleet_node_drifted{node=a-ok} 0", "bellbuild_fleet_node_drifted{node=b-fail} 0",
		"bellbuild_fleet_node_drifted{node=c-drift} 1", "bellbuild_fleet_node_drifted{node=d-new} 0",
		"bellbuild_fleet_node_errors{node=a-ok} 0", "bellbuild_fleet_node_errors{node=b-fail} 1",
		"bellbuild_fleet_node_errors{node=c-drift} 0", "bellbuild_fleet_node_errors{node=d-new} 0",
		"bellbuild_fleet_node_last_apply_timestamp_seconds{node=a-ok} set",
		"bellbuild_fleet_node_last_apply_timestamp_seconds{node=b-fail} set",
		"bellbuild_fleet_node_last_apply_timestamp_seconds{node=c-drift} set",
		"bellbuild_fleet_nodes{state=drifted} 1", "bellbuild_fleet_nodes{state=failing} 1",
		"bellbuild_fleet_nodes{state=never seen} 1", "bellbuild_fleet_nodes{state=ok} 1",
		"bellbuild_fleet_nodes{state=pending approval} 0", "bellbuild_fleet_nodes{state=reboot pending} 0",
		"bellbuild_fleet_nodes{state=stale} 0",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}
