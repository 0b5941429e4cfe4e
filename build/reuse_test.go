package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// TestRebakeReusesInitramfs: a conf-only re-bake makes its initramfs
// without copying the cached segments — from the cached stage segment's
// file when it has the cache to itself, else from the spare a bake that
// could not do so kept — and the result is byte for byte the initramfs a
// bake into an empty directory makes, the manifest names its size and
// sha256, and the cached stage segment is whole after every bake. A spare
// written to since (even with the same bytes), or one whose segments
// differ, is not taken over.
func TestRebakeReusesInitramfs(t *testing.T) {
	needHost(t)
	opts := testOptions(t)
	sp := spec(t, testSite(t), "fleet")
	spare := filepath.Join(opts.OutDir, ".fleet.reuse", spareFile)
	// busy holds the cache's lock as a concurrent bake would, so that no
	// bake gets it to itself.
	var busy *cacheLock
	holdCache := func(t *testing.T) {
		var err error
		if busy, err = lockCache(opts.CacheDir, false); err != nil {
			t.Fatal(err)
		}
	}
	var prev *Manifest
	const (
		copied = "copied"
		stage  = "stage taken"
		spared = "spare taken"
	)
	steps := []struct {
		name   string
		before func(t *testing.T)
		want   string
		// spare: the replaced initramfs was kept, cut after its cached
		// segments.
		spare bool
	}{
		{"first bake", nil, copied, false},
		{"second bake takes the cached stage", nil, stage, false},
		{"third bake too", nil, stage, false},
		{"the cache busy: a copy, the replaced initramfs kept", holdCache, copied, true},
		{"a spare before the cache (one an older bellbuild left world-readable)", func(t *testing.T) {
			if err := os.Chmod(spare, 0o644); err != nil {
				t.Fatal(err)
			}
			rec, err := readRecord(filepath.Join(filepath.Dir(spare), spareRecord))
			if err != nil {
				t.Fatal(err)
			}
			if rec.File, err = statID(spare); err != nil {
				t.Fatal(err)
			}
			if err := writeRecord(filepath.Join(filepath.Dir(spare), spareRecord), rec); err != nil {
				t.Fatal(err)
			}
		}, spared, true},
		{"a spare written to is not trusted", func(t *testing.T) {
			holdCache(t)
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
		}, copied, true},
		{"then the spare again", nil, spared, true},
		{"other cached segments (a new source date)", func(t *testing.T) {
			epoch := int64(1_800_000_000)
			opts.SourceDateEpoch = &epoch
		}, copied, true},
		// The spare is now the initramfs of the old segments.
		{"the spare has the old segments: the stage is taken", nil, stage, false},
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
			if busy != nil {
				busy.unlock()
				busy = nil
			}
			if err != nil {
				t.Fatal(err)
			}
			got := copied
			switch {
			case m.Stats.StageTaken:
				got = stage
			case m.Stats.InitramfsReused:
				got = spared
			}
			if got != step.want {
				t.Errorf("initramfs %s, want %s (%+v)", got, step.want, m.Stats)
			}
			initramfs := filepath.Join(opts.OutDir, "fleet", InitramfsFile)
			size, sum := fileSum(t, initramfs)
			if a := m.Artifacts[1]; a.Name != InitramfsFile || a.Size != size || a.SHA256 != sum {
				t.Errorf("manifest says %+v, the file is %d bytes sha256 %s", a, size, sum)
			}
			checkCachedSegment(t, opts.CacheDir, m.Segments[0])
			checkModes(t, m.Stats.Dir)
			if st, err := os.Stat(spare); err == nil && st.Mode() != 0o600 {
				t.Errorf("spare: mode %v, want 0600", st.Mode())
			}
			fresh := opts
			fresh.OutDir = t.TempDir()
			f, err := Image(context.Background(), sp, fresh)
			if err != nil {
				t.Fatal(err)
			}
			if a := f.Artifacts[1]; a.Size != size || a.SHA256 != sum {
				t.Fatalf("initramfs (%d bytes, sha256 %s) differs from a bake from scratch (%d bytes, sha256 %s)", size, sum, a.Size, a.SHA256)
			}
			st, err := os.Stat(spare)
			switch {
			case step.spare && err != nil:
				t.Errorf("no spare: %v", err)
			case step.spare:
				if want := prev.Segments[0].Size + prev.Segments[1].Size; st.Size() != want {
					t.Errorf("spare: %d bytes, want the replaced initramfs's stage and applier segments, %d", st.Size(), want)
				}
			case !errors.Is(err, os.ErrNotExist):
				t.Errorf("a spare was kept (%v)", err)
			}
			prev = m
		})
	}
}

// checkCachedSegment fails t unless the cache in dir holds segment a
// whole: a file of its size and sha256, under the name its info gives.
func checkCachedSegment(t *testing.T, dir string, a Artifact) {
	t.Helper()
	infos, err := filepath.Glob(filepath.Join(dir, "segments", "*.cpio.zst.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range infos {
		file := strings.TrimSuffix(j, ".json")
		info, err := readInfo(file)
		if err != nil || info.SHA256 != a.SHA256 {
			continue
		}
		if size, sum := fileSum(t, file); size != a.Size || sum != a.SHA256 {
			t.Fatalf("cached %s segment %s: %d bytes sha256 %s, want %d bytes sha256 %s", a.Name, file, size, sum, a.Size, a.SHA256)
		}
		return
	}
	t.Fatalf("the cache has no %s segment of sha256 %s", a.Name, a.SHA256)
}

// TestTakenStageGoesBack: a bake that took the cached stage segment over
// and then fails leaves the segment in the cache as it was, and the
// previous output as it was.
func TestTakenStageGoesBack(t *testing.T) {
	needHost(t)
	opts := testOptions(t)
	sp := spec(t, testSite(t), "fleet")
	sp.Outputs = []string{"initramfs", "tar"}
	m1, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Cancel the bake once it assembles the output: writing the tarball
	// after the initramfs then fails.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts.Progress = cancelOn{"assemble", cancel}
	sp.Bundle.Nodes[0].Conf.Sysctl["vm.swappiness"] = "77"
	if _, err := Image(ctx, sp, opts); !errors.Is(err, context.Canceled) {
		t.Fatalf("bake: %v, want it canceled", err)
	}
	checkCachedSegment(t, opts.CacheDir, m1.Segments[0])
	if size, sum := fileSum(t, filepath.Join(opts.OutDir, "fleet", InitramfsFile)); size != m1.Artifacts[1].Size || sum != m1.Artifacts[1].SHA256 {
		t.Errorf("the previous initramfs changed: %d bytes sha256 %s, was %+v", size, sum, m1.Artifacts[1])
	}
	if left, _ := filepath.Glob(filepath.Join(opts.OutDir, ".fleet.tmp-*")); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	// And the next bake takes it over again.
	opts.Progress = nil
	m, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Stats.StageTaken {
		t.Errorf("StageTaken = false after a failed bake returned the segment")
	}
	checkCachedSegment(t, opts.CacheDir, m1.Segments[0])
}

// cancelOn is a progress display that calls cancel when a step whose
// name contains step begins.
type cancelOn struct {
	step   string
	cancel func()
}

func (c cancelOn) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte(c.step)) {
		c.cancel()
	}
	return len(b), nil
}

// TestRebakeLeavesReadersTheirBytes: an initramfs that is still open (a
// machine mid-download from `bellbuild serve`) or linked elsewhere (an
// operator's `cp -l`) when a re-bake replaces it is never cut or
// extended: the reader and the link keep every byte; a bake that took the
// cached stage over copies it back to the cache instead, and one that
// would take a spare over copies the segments.
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
		checkCachedSegment(t, opts.CacheDir, m.Segments[0])
		return m
	}
	// bakeBusy bakes while another bake holds the cache: the bake cannot
	// take the cached stage over, and keeps the initramfs it replaces as
	// the spare.
	bakeBusy := func(t *testing.T, value string) *Manifest {
		t.Helper()
		l, err := lockCache(opts.CacheDir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer l.unlock()
		return bake(t, value)
	}
	stageTaken := func(t *testing.T, m *Manifest) {
		t.Helper()
		if !m.Stats.StageTaken {
			t.Errorf("the bake did not take the cached stage over: %+v", m.Stats)
		}
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
		stageTaken(t, bake(t, "12"))
		if got, want := sum(t, reader), m1.Artifacts[1].SHA256; got != want {
			t.Errorf("the reader's initramfs changed under it: sha256 %s, want %s", got, want)
		}
		noSpare(t)
	})
	t.Run("linked elsewhere when replaced", func(t *testing.T) {
		m2 := bake(t, "13")
		link := filepath.Join(t.TempDir(), "tftp-initramfs")
		if err := os.Link(initramfs, link); err != nil {
			testtool.Skipf(t, "cannot hardlink from %s to the temporary directory: %v", initramfs, err)
		}
		// The link changed the initramfs's ctime, so its record no
		// longer vouches for it: the bake copies.
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
		bakeBusy(t, "15") // the last output, unshared, becomes the spare
		f, err := os.Open(spare)
		if err != nil {
			t.Fatalf("no spare to hold open: %v", err)
		}
		defer f.Close()
		before := sum(t, f)
		if m := bakeBusy(t, "16"); m.Stats.InitramfsReused {
			t.Errorf("took over a spare that was open elsewhere")
		}
		if after := sum(t, f); after != before {
			t.Errorf("the open spare changed: sha256 %s, was %s", after, before)
		}
	})
	t.Run("unshared again: reused", func(t *testing.T) {
		bakeBusy(t, "17")
		if m := bake(t, "18"); !m.Stats.InitramfsReused || m.Stats.StageTaken {
			t.Errorf("the spare was not taken over once nothing else held it: %+v", m.Stats)
		}
	})
}

// TestConcurrentRebakes: re-bakes that run at once, into one OUT and into
// two, share the cache — one may take the stage over while the others
// wait or copy — and each leaves an initramfs that is its manifest's, the
// cached stage whole, and re-bakes after them that still match a bake
// from scratch.
func TestConcurrentRebakes(t *testing.T) {
	needHost(t)
	opts := testOptions(t)
	outs := []string{opts.OutDir, filepath.Join(t.TempDir(), "out2")}
	base := spec(t, testSite(t), "fleet")
	for _, out := range outs {
		o := opts
		o.OutDir = out
		if _, err := Image(context.Background(), base, o); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		var wg sync.WaitGroup
		errs := make([]error, 4)
		ms := make([]*Manifest, 4)
		for i := range errs {
			sp := spec(t, testSite(t), "fleet")
			sp.Bundle.Nodes[0].Conf.Sysctl["vm.swappiness"] = fmt.Sprint(round*10 + i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				o := opts
				o.OutDir = outs[i%2]
				o.Log = discardLog()
				ms[i], errs[i] = Image(context.Background(), sp, o)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		checkCachedSegment(t, opts.CacheDir, ms[0].Segments[0])
		for _, out := range outs {
			b, err := os.ReadFile(filepath.Join(out, "fleet", ManifestFile))
			if err != nil {
				t.Fatal(err)
			}
			var m Manifest
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			if size, sum := fileSum(t, filepath.Join(out, "fleet", InitramfsFile)); size != m.Artifacts[1].Size || sum != m.Artifacts[1].SHA256 {
				t.Errorf("round %d: %s: initramfs %d bytes sha256 %s, its manifest says %+v", round, out, size, sum, m.Artifacts[1])
			}
		}
	}
	// Then, one at a time: each matches a bake from scratch.
	base.Bundle.Nodes[0].Conf.Sysctl["vm.swappiness"] = "99"
	fresh := opts
	fresh.OutDir = t.TempDir()
	want, err := Image(context.Background(), base, fresh)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range outs {
		o := opts
		o.OutDir = out
		m, err := Image(context.Background(), base, o)
		if err != nil {
			t.Fatal(err)
		}
		if m.Artifacts[1] != want.Artifacts[1] {
			t.Errorf("%s: initramfs %+v, a bake from scratch %+v", out, m.Artifacts[1], want.Artifacts[1])
		}
		if size, sum := fileSum(t, filepath.Join(out, "fleet", InitramfsFile)); size != want.Artifacts[1].Size || sum != want.Artifacts[1].SHA256 {
			t.Errorf("%s: initramfs %d bytes sha256 %s, want %+v", out, size, sum, want.Artifacts[1])
		}
	}
	checkCachedSegment(t, opts.CacheDir, want.Segments[0])
}
