package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
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

// TestRebakeLeavesReadersTheirBytes: an initramfs that is still open (a
// machine mid-download from `bellbuild serve`) or linked elsewhere (an
// operator's `cp -l`) when a re-bake replaces it is never cut or
// extended: the reader and the link keep every byte, and the bake copies
// instead of reusing.
func TestRebakeLeavesReadersTheirBytes(t *testing.T) {
	needHost(t)
	opts := testOptions(t)
	sp := spec(t, testSite(t), "fleet")
	initramfs := filepath.Join(opts.OutDir, "fleet", InitramfsFile)
	spare := filepath.Join(opts.OutDir, ".fleet.reuse", spareFile)
	bake := func(t *testing.T, value string) *Manifest {
		t.Helper()
		sp.Bundle.Nodes[0].Conf.Sysctl["vm.swappiness"] = value
		m, err := Image(context.Background(), sp, opts)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	// sum is the sha256 of what f holds from its start.
	sum := func(t *testing.T, f *os.File) string {
		t.Helper()
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<40)); err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(h.Sum(nil))
	}
	noSpare := func(t *testing.T) {
		t.Helper()
		if _, err := os.Stat(spare); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a spare was kept (%v)", err)
		}
	}

	t.Run("open when replaced", func(t *testing.T) {
		m1 := bake(t, "11")
		reader, err := os.Open(initramfs)
		if err != nil {
			t.Fatal(err)
		}
		defer reader.Close()
		bake(t, "12")
		if got, want := sum(t, reader), m1.Artifacts[1].SHA256; got != want {
			t.Errorf("the reader's initramfs changed under it: sha256 %s, want %s", got, want)
		}
		noSpare(t)
	})
	t.Run("linked elsewhere when replaced", func(t *testing.T) {
		m2 := bake(t, "13")
		link := filepath.Join(t.TempDir(), "tftp-initramfs")
		if err := os.Link(initramfs, link); err != nil {
			t.Skipf("SKIPPING: cannot hardlink from %s to the temporary directory: %v", initramfs, err)
		}
		bake(t, "14")
		f, err := os.Open(link)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if got, want := sum(t, f), m2.Artifacts[1].SHA256; got != want {
			t.Errorf("the linked initramfs changed: sha256 %s, want %s", got, want)
		}
		noSpare(t)
	})
	t.Run("spare open when a bake would take it", func(t *testing.T) {
		bake(t, "15") // the last output, unshared, becomes the spare
		f, err := os.Open(spare)
		if err != nil {
			t.Fatalf("no spare to hold open: %v", err)
		}
		defer f.Close()
		before := sum(t, f)
		if m := bake(t, "16"); m.Stats.InitramfsReused {
			t.Errorf("took over a spare that was open elsewhere")
		}
		if after := sum(t, f); after != before {
			t.Errorf("the open spare changed: sha256 %s, was %s", after, before)
		}
	})
	t.Run("unshared again: reused", func(t *testing.T) {
		bake(t, "17")
		if m := bake(t, "18"); !m.Stats.InitramfsReused {
			t.Errorf("InitramfsReused = false once nothing else held the spare")
		}
	})
}
