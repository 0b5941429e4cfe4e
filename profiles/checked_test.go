package profiles

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestCheckedNodes: the nodes Load rendered and checked are, made public,
// what RenderNode renders, every one, by name.
func TestCheckedNodes(t *testing.T) {
	for _, dir := range []string{"../examples/fleet"} {
		s, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		checked, err := s.CheckedNodes()
		if err != nil {
			t.Fatal(err)
		}
		infos := s.Nodes()
		if len(checked) != len(infos) {
			t.Fatalf("%d checked nodes, %d in the inventory", len(checked), len(infos))
		}
		for i, n := range infos {
			want, err := s.RenderNode(n.Name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := public(checked[i])
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s (-RenderNode +checked):\n%s", n.Name, diff)
			}
		}
	}
}
