package build

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestRebakeReusesInitramfs: from the third conf-only bake on, the
// initramfs is the one the bake before the last wrote, cut after its
// cached segments and extended; the result is byte for byte the initramfs
// a bake into an empty directory makes, and the manifest names its size
// and sha256. A spare written to since (even with the same bytes), or one
// whose segments differ, is not taken over.
func TestRebakeReusesInitramfs(t *testing.T) {
	needHost(t)
	opts := testOptions(t)
	sp := spec(t, testSite(t), "fleet")
	spare := filepath.Join(opts.OutDir, ".fleet.reuse", spareFile)
	var prev *Manifest
	steps := []struct {
		name       string
		before     func(t *testing.T)
		wantReused bool
	}{
		{"first bake", nil, false},
		{"second bake: nothing kept yet", nil, false},
		{"third bake: takes over the first's initramfs", nil, true},
		{"fourth bake: takes over the second's", nil, true},
		{"a spare written to is not trusted", func(t *testing.T) {
			f, err := os.OpenFile(spare, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var b [1]byte
			if _, err := f.ReadAt(b[:], 100); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(b[:], 100); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"then reuse again", nil, true},
		{"other cached segments (a new source date)", func(t *testing.T) {
			opts.SourceDateEpoch = 1_800_000_000
		}, false},
		// The spare is now the initramfs of the old segments.
		{"next bake: the spare has the old segments", nil, false},
		{"then reuse of the new ones", nil, true},
	}
	for i, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			if step.before != nil {
				step.before(t)
			}
			// Shorter each time: a configuration segment shorter than
			// the one it replaces must not leave the old one's tail.
			sp.Bundle.Nodes[0].Conf.Sysctl["vm.swappiness"] = "0123456789abcdefghijklmnopqrstuvwxyz"[:36-3*i]
			m, err := Image(context.Background(), sp, opts)
			if err != nil {
				t.Fatal(err)
			}
			if m.Stats.InitramfsReused != step.wantReused {
				t.Errorf("InitramfsReused = %v, want %v", m.Stats.InitramfsReused, step.wantReused)
			}
			initramfs := filepath.Join(opts.OutDir, "fleet", InitramfsFile)
			got, err := os.ReadFile(initramfs)
			if err != nil {
				t.Fatal(err)
			}
			size, sum := fileSum(t, initramfs)
			if a := m.Artifacts[1]; a.Name != InitramfsFile || a.Size != size || a.SHA256 != sum {
				t.Errorf("manifest says %+v, the file is %d bytes sha256 %s", a, size, sum)
			}
			fresh := opts
			fresh.OutDir = t.TempDir()
			if _, err := Image(context.Background(), sp, fresh); err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(fresh.OutDir, "fleet", InitramfsFile))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("initramfs (%d bytes) differs from a bake from scratch (%d bytes)", len(got), len(want))
			}
			// The replaced initramfs is kept without its configuration.
			if i >= 1 {
				st, err := os.Stat(spare)
				if err != nil {
					t.Fatalf("after a re-bake, no spare: %v", err)
				}
				if want := prev.Segments[0].Size + prev.Segments[1].Size; st.Size() != want {
					t.Errorf("spare: %d bytes, want the replaced initramfs's stage and applier segments, %d", st.Size(), want)
				}
			}
			prev = m
		})
	}
}
