package profiles

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// TestRenderEnrol: enrol and enrol_wait inherit by replacement down the
// profile chain, an inventory entry's enrol replaces its profile's policy
// (the wait stays the profile's), and a node nobody says anything for
// renders without enrol (the defaults).
func TestRenderEnrol(t *testing.T) {
	fp := "sha256:" + "ab12" + "00000000000000000000000000000000000000000000000000000000000f"
	dir := writeSite(t, map[string]string{
		"profiles/base.yaml":  "stage: {busybox: {}}\nenrol: first-key\nenrol_wait: 90s\n",
		"profiles/child.yaml": "inherits: base\nenrol_wait: 0\n",
		"profiles/plain.yaml": "stage: {busybox: {}}\n",
		"nodes.yaml": `nodes:
- {name: a, mac: "52:54:00:00:00:01", profile: base}
- {name: b, mac: "52:54:00:00:00:02", profile: child}
- {name: c, mac: "52:54:00:00:00:03", profile: child, enrol: {pinned: "SHA256:AB:12` + fp[11:] + `"}}
- {name: d, mac: "52:54:00:00:00:04", profile: plain}
- {name: e, mac: "52:54:00:00:00:05", profile: plain, enrol: manual}
`,
	})
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		node string
		want *nodeconf.Enrol
	}{
		{"a", &nodeconf.Enrol{Policy: "first-key", Wait: "1m30s"}},
		{"b", &nodeconf.Enrol{Policy: "first-key", Wait: "0s"}},
		{"c", &nodeconf.Enrol{Policy: "pinned", Pinned: fp, Wait: "0s"}},
		{"d", nil},
		{"e", &nodeconf.Enrol{Policy: "manual"}},
	} {
		t.Run(tt.node, func(t *testing.T) {
			n, err := s.RenderNode(tt.node)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, n.Enrol); diff != "" {
				t.Errorf("enrol (-want +got):\n%s", diff)
			}
			if err := n.Enrol.Check(); err != nil {
				t.Errorf("rendered enrol does not check: %v", err)
			}
		})
	}
}
