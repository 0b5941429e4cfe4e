package bakes

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// bakeFiles is one bake's directory: its manifest names a root hash and
// lists disk.raw's size.
func bakeFiles(root, disk string) map[string][]byte {
	m := wire.ImageManifest{Profile: "p", Cmdline: "console=ttyS0",
		Artifacts: []wire.Artifact{{Name: "disk.raw", Size: int64(len(disk))}},
		Disk:      &wire.ManifestDisk{Root: wire.ManifestRoot{SHA256: root}}}
	data, _ := json.Marshal(m)
	return map[string][]byte{"manifest.json": data, "disk.raw": []byte(disk), "vmlinuz": []byte("KERNEL " + root), "initramfs.cpio.zst": []byte("INITRD " + root)}
}

// made is what the tests make of a bake: the bake itself, and how many
// were made.
type testSet struct {
	*Set[*Bake]
	log   *testtool.Buffer
	clock time.Time
	made  int
}

func newTestSet(t *testing.T, out string) *testSet {
	t.Helper()
	ts := &testSet{log: &testtool.Buffer{}, clock: time.Unix(1_800_000_000, 0)}
	s, err := New(Config{Dir: out, Manifest: "manifest.json", Files: []string{"disk.raw", "vmlinuz", "disk-initrd.cpio.zst"}, Live: []string{"initramfs.cpio.zst"},
		Log: slog.New(slog.NewTextHandler(ts.log, &slog.HandlerOptions{Level: slog.LevelDebug}))},
		func(_ string, b *Bake) (*Bake, error) {
			ts.made++
			return b, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return ts.clock }
	t.Cleanup(func() { s.Close() })
	ts.Set = s
	return ts
}

// get returns the profile's bake after the interval has passed.
func (ts *testSet) get(t *testing.T, profile string) *Bake {
	t.Helper()
	ts.clock = ts.clock.Add(DefaultInterval)
	b, err := ts.Get(profile)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func read(t *testing.T, b *Bake, name string) string {
	t.Helper()
	f, err := b.Open(name)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestNewBake: a profile baked again is served from its new bake, once
// the interval has passed, with a log line naming both roots; a file
// opened from the old bake reads the old bytes to its end, even after
// the old bake's directory is gone and its files are closed; a live file
// is opened by name.
func TestNewBake(t *testing.T) {
	out := t.TempDir()
	r1, r2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	testtool.SwapBake(t, out, "p", bakeFiles(r1, "DISK-ONE"))
	ts := newTestSet(t, out)
	b1 := ts.get(t, "p")
	if b1.Root != r1 || read(t, b1, "p/disk.raw") != "DISK-ONE" || read(t, b1, "p/vmlinuz") != "KERNEL "+r1 {
		t.Fatalf("first bake: root %s", b1.Root)
	}
	if _, err := b1.Open("p/disk-initrd.cpio.zst"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file the bake lacks: %v", err)
	}
	if _, err := b1.Open("q/disk.raw"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("another profile's file: %v", err)
	}
	inFlight, err := b1.Open("p/disk.raw")
	if err != nil {
		t.Fatal(err)
	}
	defer inFlight.Close()
	head := make([]byte, 4)
	if _, err := io.ReadFull(inFlight, head); err != nil {
		t.Fatal(err)
	}

	testtool.SwapBake(t, out, "p", bakeFiles(r2, "DISK-TWO"))
	// Within the interval: still the first bake.
	if b, _ := ts.Get("p"); b != b1 {
		t.Errorf("a new bake taken within the interval")
	}
	// A live file is the one on disk now; a held one the bake's.
	if read(t, b1, "p/initramfs.cpio.zst") != "INITRD "+r2 || read(t, b1, "p/vmlinuz") != "KERNEL "+r1 {
		t.Errorf("the first bake's files, after the second")
	}
	b2 := ts.get(t, "p")
	if b2 == b1 || b2.Root != r2 || read(t, b2, "p/disk.raw") != "DISK-TWO" {
		t.Fatalf("second bake: root %s", b2.Root)
	}
	if want := `msg="bake: new bake served" profile=p root="` + r1 + " → " + r2 + `"`; !strings.Contains(ts.log.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, ts.log)
	}
	// Looked at again, unchanged: nothing made.
	made := ts.made
	ts.get(t, "p")
	if ts.made != made {
		t.Errorf("an unchanged manifest made %d times more", ts.made-made)
	}
	// The old bake, closed after the grace: what was open reads on;
	// nothing more opens.
	b1.close()
	rest, err := io.ReadAll(inFlight)
	if err != nil || string(head)+string(rest) != "DISK-ONE" {
		t.Errorf("in flight: %q%q, %v", head, rest, err)
	}
	if _, err := b1.Open("p/disk.raw"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a replaced bake opens: %v", err)
	}
}

// TestRefused: a manifest that is not whole, or that does not match its
// bake's files, is refused once (one log line) and the previous bake
// stays served, manifest included, even when the file was written over
// in place.
func TestRefused(t *testing.T) {
	r1 := strings.Repeat("1", 64)
	v1 := bakeFiles(r1, "DISK-ONE")
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, out string)
		err   string
	}{
		{"half-written in place", func(t *testing.T, out string) {
			m := bakeFiles(strings.Repeat("3", 64), "DISK-THREE")["manifest.json"]
			os.WriteFile(filepath.Join(out, "p", "manifest.json"), m[:len(m)/2], 0o644)
		}, `err="p/manifest.json: not whole: unexpected end of JSON input"`},
		{"disk of another bake", func(t *testing.T, out string) {
			files := bakeFiles(strings.Repeat("3", 64), "DISK-THREE")
			files["disk.raw"] = []byte("DISK-ONE")
			testtool.SwapBake(t, out, "p", files)
		}, `err="p/disk.raw: 8 bytes, the manifest says 10: not the manifest's bake"`},
		{"not JSON", func(t *testing.T, out string) {
			files := bakeFiles(strings.Repeat("3", 64), "DISK-THREE")
			files["manifest.json"] = []byte("profile: p\n")
			testtool.SwapBake(t, out, "p", files)
		}, `err="p/manifest.json: not whole: invalid character 'p' looking for beginning of value"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			testtool.SwapBake(t, out, "p", v1)
			ts := newTestSet(t, out)
			b1 := ts.get(t, "p")
			tc.write(t, out)
			for range 3 {
				if b := ts.get(t, "p"); b != b1 {
					t.Fatalf("a refused bake taken: root %s", b.Root)
				}
			}
			if got := read(t, b1, "p/manifest.json"); got != string(v1["manifest.json"]) {
				t.Errorf("manifest served: %s", got)
			}
			lines := strings.Count(ts.log.String(), `msg="bake: not taken: the bake served is kept"`)
			if lines != 1 || !strings.Contains(ts.log.String(), tc.err) || !strings.Contains(ts.log.String(), "serving="+r1) {
				t.Errorf("%d lines, want 1 with %s:\n%s", lines, tc.err, ts.log)
			}
			// Once whole, it is taken.
			r4 := strings.Repeat("4", 64)
			testtool.SwapBake(t, out, "p", bakeFiles(r4, "DISK-FOUR"))
			if b := ts.get(t, "p"); b.Root != r4 || read(t, b, "p/disk.raw") != "DISK-FOUR" {
				t.Errorf("the next whole bake: root %s", b.Root)
			}
		})
	}
}

// TestNotBaked: a profile not baked yet makes nil, and its first bake is
// taken; a profile whose bake is removed makes nil again.
func TestNotBaked(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out") // not there yet either
	ts := newTestSet(t, out)
	if b := ts.get(t, "p"); b != nil {
		t.Fatalf("unbaked: %+v", b)
	}
	os.MkdirAll(out, 0o755)
	r1 := strings.Repeat("1", 64)
	testtool.SwapBake(t, out, "p", bakeFiles(r1, "DISK-ONE"))
	if b := ts.get(t, "p"); b == nil || b.Root != r1 {
		t.Fatalf("first bake: %+v", b)
	}
	if !strings.Contains(ts.log.String(), `msg="bake: new bake served" profile=p root="- → `+r1+`"`) {
		t.Errorf("log:\n%s", ts.log)
	}
	os.RemoveAll(filepath.Join(out, "p"))
	if b := ts.get(t, "p"); b != nil {
		t.Errorf("removed: %+v", b)
	}
}

// TestConcurrent: while bakes are swapped in one after the other,
// requests on other goroutines always read a disk of the bake whose
// manifest they got (run it with -race).
func TestConcurrent(t *testing.T) {
	out := t.TempDir()
	root := func(i int) string { return strings.Repeat(string(rune('a'+i%26)), 64) }
	testtool.SwapBake(t, out, "p", bakeFiles(root(0), "DISK-"+root(0)))
	s, err := New(Config{Dir: out, Manifest: "manifest.json", Files: []string{"disk.raw"}, Interval: time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		func(_ string, b *Bake) (*Bake, error) { return b, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomicCount
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				b, err := s.Get("p")
				if err != nil || b == nil {
					t.Errorf("get: no bake (%v)", err)
					return
				}
				f, err := b.Open("p/disk.raw")
				if err != nil {
					t.Errorf("open: %v", err)
					return
				}
				data, err := io.ReadAll(f)
				f.Close()
				if err != nil || string(data) != "DISK-"+b.Root {
					t.Errorf("bake %s: disk %q, %v", b.Root[:1], data, err)
					return
				}
				reads.add()
			}
		})
	}
	for i := 1; i <= 30; i++ {
		testtool.SwapBake(t, out, "p", bakeFiles(root(i), "DISK-"+root(i)))
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	time.Sleep(5 * time.Millisecond)
	if b, _ := s.Get("p"); b.Root != root(30) || reads.get() == 0 {
		t.Errorf("last bake %s, want %s; %d reads", b.Root, root(30), reads.get())
	}
}

type atomicCount struct{ n atomic.Int64 }

func (c *atomicCount) add()       { c.n.Add(1) }
func (c *atomicCount) get() int64 { return c.n.Load() }
