package build

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/profiles"
)

// filler is n bytes of seeded, compressible text (about 3:1 with zstd),
// the same for the same seed.
func filler(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	words := []string{"kernel ", "module ", "initramfs ", "bellbuild ", "zstd ", "frame ", "cpio ", "stage ", "\n"}
	var b bytes.Buffer
	for b.Len() < n {
		if r.IntN(4) == 0 {
			fmt.Fprintf(&b, "%08x ", r.Uint32())
			continue
		}
		b.WriteString(words[r.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

// bakeFiles reads every file a bake left: OUT/PROFILE's artifacts and the
// cached segments with their info, by name (temporary files included, so
// that one left behind is a difference).
func bakeFiles(t *testing.T, o Options, profile string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, dir := range []string{filepath.Join(o.OutDir, profile), filepath.Join(o.CacheDir, "segments")} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			out[filepath.Join(filepath.Base(dir), e.Name())] = b
		}
	}
	return out
}

// sameFiles reports the files that differ between two bakes.
func sameFiles(t *testing.T, what string, want, got map[string][]byte) {
	t.Helper()
	var names []string
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		w, inWant := want[n]
		g, inGot := got[n]
		switch {
		case !inWant:
			t.Errorf("%s: %s only in the overlapped bake", what, n)
		case !inGot:
			t.Errorf("%s: %s only in the sequential bake", what, n)
		case !bytes.Equal(w, g):
			t.Errorf("%s: %s differs (%d bytes sequential, %d overlapped)", what, n, len(w), len(g))
		}
	}
}

// TestOverlapSameBytes bakes each case twice over, once as bellbuild did
// before its steps overlapped (Options.sequential: one segment after the
// other, the stage copied into the initramfs afterwards, nothing made
// while the stage is read) and once as it does now, each into its own
// output and cache, through the same series of bakes: every artifact, the
// manifest and every cached segment and its info must be the same bytes.
func TestOverlapSameBytes(t *testing.T) {
	needHost(t)
	// A dir stage of 40 MB (several zstd frames, one file big enough for
	// a frame of its own), whose directories the applier and
	// configuration segments repeat have modes and owners of their own.
	bigRoot := func(t *testing.T) string {
		root := t.TempDir()
		for _, d := range []string{"dev", "etc/bellbuild", "bellbuild", "usr/lib"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for i, size := range []int{3 << 20, 20 << 20, 5 << 20, 12 << 20} {
			if err := os.WriteFile(filepath.Join(root, "usr/lib", fmt.Sprintf("f%d", i)), filler(uint64(i), size), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []struct {
			p        string
			mode     os.FileMode
			uid, gid int
		}{{".", 0o750, 0, 5}, {"dev", 0o711, 3, 4}, {"bellbuild", 0o700, 7, 7}, {"etc", 0o755, 0, 0}} {
			if err := os.Chmod(filepath.Join(root, c.p), c.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(filepath.Join(root, c.p), c.uid, c.gid); err != nil {
				t.Fatal(err)
			}
		}
		return root
	}
	dirSpec := func(root string, outputs ...string) *profiles.ImageSpec {
		return &profiles.ImageSpec{
			Profile: "dir", Chain: []string{"dir"},
			Stage:   profiles.Stage{Dir: root},
			Kernel:  profiles.Kernel{Path: testKernel},
			Outputs: outputs,
		}
	}
	site := testSite(t)
	cases := []struct {
		name string
		// spec makes the spec; steps change something before each bake
		// after the first (the same change in both series).
		spec  func(t *testing.T) *profiles.ImageSpec
		steps []func(t *testing.T, sp *profiles.ImageSpec)
	}{
		{"busybox stage, then a conf-only re-bake", func(t *testing.T) *profiles.ImageSpec { return spec(t, site, "fleet") },
			[]func(*testing.T, *profiles.ImageSpec){func(t *testing.T, sp *profiles.ImageSpec) { sp.Bundle.Nodes[0].Conf.Sysctl["vm.swappiness"] = "66" }}},
		{"dir stage of several frames, then its dev directory changed", func(t *testing.T) *profiles.ImageSpec { return dirSpec(bigRoot(t), "initramfs") },
			[]func(*testing.T, *profiles.ImageSpec){func(t *testing.T, sp *profiles.ImageSpec) {
				if err := os.Chmod(filepath.Join(sp.Stage.Dir, "dev"), 0o755); err != nil {
					t.Fatal(err)
				}
			}}},
		{"dir stage with a tarball", func(t *testing.T) *profiles.ImageSpec {
			root := t.TempDir()
			if err := os.WriteFile(filepath.Join(root, "hello"), []byte("hello\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			return dirSpec(root, "initramfs", "tar")
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sp := c.spec(t)
			seq, ovl := testOptions(t), testOptions(t)
			seq.sequential = true
			for i := 0; i <= len(c.steps); i++ {
				if i > 0 {
					c.steps[i-1](t, sp)
				}
				what := fmt.Sprintf("bake %d", i+1)
				for _, o := range []Options{seq, ovl} {
					if _, err := Image(context.Background(), sp, o); err != nil {
						t.Fatalf("%s (sequential %v): %v", what, o.sequential, err)
					}
				}
				sameFiles(t, what, bakeFiles(t, seq, sp.Profile), bakeFiles(t, ovl, sp.Profile))
			}
		})
	}
}

// gated is content whose first read waits until gate is closed.
type gated struct {
	gate <-chan struct{}
	data string
}

func (g gated) Open() (io.ReadCloser, error) {
	return io.NopCloser(&gatedReader{g: g, r: strings.NewReader(g.data)}), nil
}

type gatedReader struct {
	g gated
	r io.Reader
}

func (r *gatedReader) Read(b []byte) (int, error) {
	<-r.g.gate
	return r.r.Read(b)
}

// TestBakeOverlaps holds a cold bake inside the stage segment (one of the
// stage's last files cannot be read yet) and looks at the disk meanwhile:
// the kernel must be in the new output already, the applier segment in
// the cache, and the initramfs must hold the stage's first frames (the
// stage goes into it as it is compressed, not copied after). Then the
// bake must finish with the bytes of a sequential bake.
func TestBakeOverlaps(t *testing.T) {
	needHost(t)
	s := testSite(t)
	gate := make(chan struct{})
	var opened bool
	release := func() {
		if !opened {
			opened = true
			close(gate)
		}
	}
	defer release()
	// bake prepares the fleet profile with two more stage files, a big one
	// and a last one that reads through content, and writes it.
	bake := func(o Options, content fstree.Content, during func(*image)) {
		t.Helper()
		if err := o.defaults(); err != nil {
			t.Fatal(err)
		}
		b := &baker{opts: o, log: o.Log, p: newProgress(nil, o.Log, 8)}
		im, err := b.prepare(context.Background(), spec(t, s, "fleet"))
		if err != nil {
			t.Fatal(err)
		}
		defer im.early.stop()
		st, err := im.stageTree()
		if err != nil {
			t.Fatal(err)
		}
		big := filler(9, 8<<20)
		st.Add(fstree.Entry{Path: "aa-big", Type: fstree.Regular, Mode: 0o644, Size: int64(len(big)), Data: fstree.Bytes(big)})
		st.Add(fstree.Entry{Path: "zz-last", Type: fstree.Regular, Mode: 0o644, Size: 10, Data: content})
		done := make(chan error, 1)
		go func() {
			_, err := b.write(context.Background(), im)
			done <- err
		}()
		if during != nil {
			during(im)
		}
		release()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	ovl := testOptions(t)
	bake(ovl, gated{gate, "0123456789"}, func(im *image) {
		kst, err := os.Stat(testKernel)
		if err != nil {
			t.Fatal(err)
		}
		tmpFile := func(name string) int64 {
			m, _ := filepath.Glob(filepath.Join(ovl.OutDir, ".fleet.tmp-*", name))
			if len(m) != 1 {
				return -1
			}
			st, err := os.Stat(m[0])
			if err != nil {
				return -1
			}
			return st.Size()
		}
		checks := []struct {
			what string
			ok   func() bool
		}{
			{"the kernel copied into the new output", func() bool { return tmpFile(KernelFile) == kst.Size() }},
			{"the applier segment in the cache", func() bool {
				_, err := readInfo(cachedSegmentFile(ovl.CacheDir, im.applierKey))
				return err == nil
			}},
			{"the stage's first frames in the initramfs", func() bool { return tmpFile(InitramfsFile) > 0 }},
		}
		deadline := time.Now().Add(20 * time.Second)
		for _, c := range checks {
			for !c.ok() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if !c.ok() {
				t.Errorf("while the stage segment was being written, %s: not yet", c.what)
			}
		}
	})
	seq := testOptions(t)
	seq.sequential = true
	bake(seq, fstree.Bytes("0123456789"), nil)
	sameFiles(t, "held bake", bakeFiles(t, seq, "fleet"), bakeFiles(t, ovl, "fleet"))
}

// TestOverlapFailureLeavesNothing: a stage segment that fails while the
// applier segment and the kernel are being made at the same time leaves
// no output, no temporary file in the output directory or the cache, and
// nothing writing after the bake returned.
func TestOverlapFailureLeavesNothing(t *testing.T) {
	needHost(t)
	opts := testOptions(t)
	if err := opts.defaults(); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "big"), filler(3, 6<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sp := &profiles.ImageSpec{Profile: "dir", Chain: []string{"dir"}, Stage: profiles.Stage{Dir: root}, Kernel: profiles.Kernel{Path: testKernel}}
	b := &baker{opts: opts, log: opts.Log, p: newProgress(nil, opts.Log, 8)}
	im, err := b.prepare(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	// A stage file gone after the walk: the stage segment fails at its end.
	st, _ := im.stageTree()
	st.Add(fstree.Entry{Path: "zz-gone", Type: fstree.Regular, Mode: 0o644, Size: 10, Data: fstree.File(filepath.Join(t.TempDir(), "gone"))})
	_, err = b.write(context.Background(), im)
	im.early.stop()
	if err == nil {
		t.Fatal("the bake of a stage with a missing file succeeded")
	}
	list := func() []string {
		var out []string
		for _, dir := range []string{opts.OutDir, filepath.Join(opts.CacheDir, "segments")} {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				out = append(out, filepath.Join(filepath.Base(dir), e.Name()))
			}
		}
		return out
	}
	after := list()
	for _, n := range after {
		if strings.Contains(n, ".tmp-") || strings.HasPrefix(n, "out/") {
			t.Errorf("left behind: %s", n)
		}
	}
	// Nothing still running writes there later.
	time.Sleep(200 * time.Millisecond)
	if diff := cmp.Diff(after, list()); diff != "" {
		t.Errorf("files changed after the bake returned (-then +now):\n%s", diff)
	}
}

// TestDiskDirs: the metadata of a dir stage's directories as read with
// lstat (with which the applier segment is made while the stage is still
// being walked) is what the walk finds.
func TestDiskDirs(t *testing.T) {
	type dir struct {
		p        string
		mode     os.FileMode
		uid, gid int
	}
	cases := []struct {
		name    string
		dirs    []dir
		symlink map[string]string // name → target
		files   []string
		// want is the applier's directories' metadata expected.
		want map[string]dirMeta
	}{
		{"plain", []dir{{".", 0o755, 0, 0}, {"dev", 0o755, 0, 0}, {"etc", 0o755, 0, 0}, {"etc/bellbuild", 0o755, 0, 0}},
			nil, nil, map[string]dirMeta{".": {0o755, 0, 0}, "dev": {0o755, 0, 0}, "etc": {0o755, 0, 0}, "etc/bellbuild": {0o755, 0, 0}}},
		{"modes and owners of their own", []dir{{".", 0o750, 0, 5}, {"dev", 0o711, 3, 4}, {"bellbuild", 0o700 | os.ModeSetgid, 7, 7}},
			nil, nil, map[string]dirMeta{".": {0o750, 0, 5}, "dev": {0o711, 3, 4}, "bellbuild": {0o700 | os.ModeSetgid, 7, 7}}},
		{"not directories", []dir{{".", 0o755, 0, 0}}, map[string]string{"dev": "/dev", "etc": "usr/etc"}, []string{"bellbuild"},
			map[string]dirMeta{".": {0o755, 0, 0}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range c.dirs {
				p := filepath.Join(root, d.p)
				if err := os.MkdirAll(p, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, d.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chown(p, d.uid, d.gid); err != nil {
					t.Fatal(err)
				}
			}
			for name, target := range c.symlink {
				if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range c.files {
				if err := os.WriteFile(filepath.Join(root, f), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// Given through a symlink, as a site may name it.
			link := filepath.Join(t.TempDir(), "root")
			if err := os.Symlink(root, link); err != nil {
				t.Fatal(err)
			}
			got, err := diskDirs(link)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("diskDirs (-want +got):\n%s", diff)
			}
			tree, err := fstree.FromDir(link)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(stageDirs(tree), got); diff != "" {
				t.Errorf("diskDirs differs from the walk's (-walk +lstat):\n%s", diff)
			}
		})
	}
}

// TestApplierMadeWhileStageRead: for a dir stage, the applier segment is
// made while the stage is walked, with the metadata its directories have
// on disk; the bake uses it (its key is the one the walked tree gives)
// and reports it as made by this bake, not found in the cache.
func TestApplierMadeWhileStageRead(t *testing.T) {
	needHost(t)
	root := t.TempDir()
	for _, d := range []string{"dev", "bellbuild"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o710); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(root, "dev"), 2, 3); err != nil {
		t.Fatal(err)
	}
	sp := &profiles.ImageSpec{Profile: "dir", Chain: []string{"dir"}, Stage: profiles.Stage{Dir: root}, Kernel: profiles.Kernel{Path: testKernel}}
	opts := testOptions(t)
	if err := opts.defaults(); err != nil {
		t.Fatal(err)
	}
	b := &baker{opts: opts, log: opts.Log, p: newProgress(nil, opts.Log, 8)}
	im, err := b.prepare(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	defer im.early.stop()
	if im.applierSeg == nil {
		t.Fatal("no applier segment made while the stage was read")
	}
	seg, err := im.applierSeg.wait()
	if err != nil {
		t.Fatal(err)
	}
	if want := cachedSegmentFile(opts.CacheDir, im.applierKey); seg.file != want {
		t.Errorf("applier segment made early is %s, want %s", seg.file, want)
	}
	if _, err := readInfo(seg.file); err != nil {
		t.Errorf("applier segment made early: %v", err)
	}
	m, err := b.write(context.Background(), im)
	if err != nil {
		t.Fatal(err)
	}
	if m.Stats.ApplierCached {
		t.Error("a cold bake reports its applier segment as cached")
	}
	tree := unpack(t, filepath.Join(opts.OutDir, "dir", InitramfsFile))
	if e := tree.Get("dev"); e == nil || e.Mode != 0o710 || e.UID != 2 || e.GID != 3 {
		t.Errorf("/dev in the initramfs: %+v, want the stage's 0710 2:3", e)
	}
}
