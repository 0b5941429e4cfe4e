package build

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles"
)

// fakeSegment puts a segment of size bytes and its info file in dir, last
// used at used.
func fakeSegment(t *testing.T, dir, name string, size int, used time.Time) string {
	t.Helper()
	p := filepath.Join(dir, name+".cpio.zst")
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+".json", []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p+".json", used, used); err != nil {
		t.Fatal(err)
	}
	return p
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// TestCachePrune bakes twice into one cache. Before the second bake the
// cache also holds three segments of other bakes, used one, two and three
// days ago, a temporary file a killed bake left two days ago and one a
// running bake writes now. With room for the bake's own segments and one
// more, the second bake removes the two least recently used segments and
// the stale temporary file, and keeps its own (reused) segments, the
// newest other one and the fresh temporary file.
func TestCachePrune(t *testing.T) {
	needHost(t)
	opts := testOptions(t)
	opts.CacheLimit = -1
	sp := spec(t, profiles.Default(), "minimal")
	m1, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(opts.CacheDir, "segments")
	own := m1.Segments[0].Size + m1.Segments[1].Size
	now := time.Now()
	const size = 1 << 20
	day := 24 * time.Hour
	oldest := fakeSegment(t, dir, "a", size, now.Add(-3*day))
	older := fakeSegment(t, dir, "b", size, now.Add(-2*day))
	newer := fakeSegment(t, dir, "c", size, now.Add(-day))
	stale := filepath.Join(dir, ".d.cpio.zst.tmp-1")
	fresh := filepath.Join(dir, ".e.cpio.zst.tmp-2")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chtimes(stale, now.Add(-2*day), now.Add(-2*day))

	opts.CacheLimit = own + size
	m2, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !m2.Stats.StageCached || !m2.Stats.ApplierCached {
		t.Fatalf("second bake: %+v, want both segments from the cache", m2.Stats)
	}
	for p, want := range map[string]bool{oldest: false, oldest + ".json": false, older: false, stale: false, newer: true, newer + ".json": true, fresh: true} {
		if exists(p) != want {
			t.Errorf("%s: exists %t, want %t", filepath.Base(p), !want, want)
		}
	}
	for _, s := range m2.Segments[:2] {
		findSegment(t, dir, s.Size) // fails the test if pruned
	}

	// Over the limit with only the bake's own segments: they stay.
	opts.CacheLimit = 1
	if _, err := Image(context.Background(), sp, opts); err != nil {
		t.Fatal(err)
	}
	if exists(newer) {
		t.Error("a segment of another bake survived a limit of 1 byte")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.cpio.zst")); len(left) != 2 {
		t.Errorf("segments left: %v, want the bake's two", left)
	}
	for _, s := range m2.Segments[:2] {
		findSegment(t, dir, s.Size)
	}
}
