package profiles

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad loads arbitrary profile and inventory text: Load must never
// panic, must fail only with an ErrorList whose every entry names a
// position, and a site it accepts must render every node and profile.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/bad/*/profiles/*.yaml")
	seeds = append(seeds, "defaultsite/profiles/demo.yaml", "defaultsite/profiles/demo-base.yaml", "../examples/fleet/profiles/base.yaml")
	for _, p := range seeds {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(string(data), "nodes:\n- {name: n1, mac: '52:54:00:00:00:01', profile: p, labels: {role: db}}\n")
		}
	}
	f.Fuzz(func(t *testing.T, profile, nodes string) {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "profiles"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "profiles", "p.yaml"), []byte(profile), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "nodes.yaml"), []byte(nodes), 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := Load(dir)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("Load error %v is not a non-empty ErrorList", err)
			}
			for _, e := range list {
				if e.Pos.File == "" || e.Msg == "" {
					t.Fatalf("error without a file or message: %#v", e)
				}
			}
			return
		}
		for _, n := range s.Nodes() {
			if _, err := s.RenderNode(n.Name); err != nil {
				t.Fatalf("valid site, but RenderNode(%s): %v", n.Name, err)
			}
			if _, err := s.ExplainNode(n.Name); err != nil {
				t.Fatalf("valid site, but ExplainNode(%s): %v", n.Name, err)
			}
		}
		if _, err := s.RenderProfile("p", map[string]string{"role": "db"}, "n1"); err != nil {
			t.Fatalf("valid site, but RenderProfile: %v", err)
		}
	})
}
