package profiles

import (
	"fmt"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// keepChecked keeps node i's render from Load's checks (r, err are
// renderNode's), for CheckedNodes.
func (s *Site) keepChecked(i int, r *rendered, err error) error {
	if err == nil {
		s.checked[i] = r.node
	}
	return err
}

// CheckedNodes returns every inventory node's configuration as Load
// rendered and checked it, sorted by name, without rendering again (a site
// of 5,000 nodes compared with another, by package sitediff). Unlike
// RenderNode's public configuration, it holds the values written inline
// that are secrets (Node.Secrets names their paths), so that a comparison
// can tell one changed: never print or write them. The nodes are the
// site's own: read them, never modify them (RenderNode gives a copy).
func (s *Site) CheckedNodes() ([]*nodeconf.Node, error) {
	for i, n := range s.checked {
		if n == nil {
			return nil, fmt.Errorf("node %q: not rendered at load", s.nodes[i].Name)
		}
	}
	if len(s.checked) != len(s.nodes) {
		return nil, fmt.Errorf("the site's nodes were not rendered at load")
	}
	return s.checked, nil
}
