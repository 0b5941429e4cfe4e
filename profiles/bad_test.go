package profiles

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestBadSites loads each site under testdata/bad/ and compares every
// reported problem (file:line:col: path: message, file relative to the
// site) with the case's errors.golden. A case with a file named env is
// loaded for the environment it names.
func TestBadSites(t *testing.T) {
	dirs, err := filepath.Glob("testdata/bad/*")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 30 {
		t.Fatalf("only %d bad sites", len(dirs))
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			env, err := os.ReadFile(filepath.Join(dir, "env"))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			_, err = LoadEnv(dir, strings.TrimSpace(string(env)))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Load = %v, want an ErrorList", err)
			}
			var b strings.Builder
			for _, e := range list {
				b.WriteString(strings.TrimPrefix(e.Error(), dir+string(filepath.Separator)) + "\n")
			}
			golden := filepath.Join(dir, "errors.golden")
			if *update {
				if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), b.String()); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}
