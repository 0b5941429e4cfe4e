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
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/cpio"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/kmod"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// testKernel is the kernel the test profiles boot (linux-image-amd64).
const testKernel = "/vmlinuz"

// needHost skips a test that bakes when the host lacks what a bake reads:
// a Debian kernel with its modules and a static busybox.
func needHost(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(testKernel); err != nil {
		testtool.Skipf(t, "no kernel at %s (apt-get install linux-image-amd64)", testKernel)
	}
	found := false
	for _, p := range BusyboxPaths {
		if _, err := os.Stat(p); err == nil {
			found = true
		}
	}
	if !found {
		testtool.Skipf(t, "no busybox (apt-get install busybox-static)")
	}
}

// testOptions bakes into fresh output and cache directories with the
// static bellbuild of this checkout as the applier.
func testOptions(t testing.TB) Options {
	t.Helper()
	return Options{
		OutDir:   filepath.Join(t.TempDir(), "out"),
		CacheDir: filepath.Join(t.TempDir(), "cache"),
		Applier:  testtool.Binary(t),
	}
}

func testSite(t testing.TB) *profiles.Site {
	t.Helper()
	s, err := profiles.Load("testdata/site")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func spec(t testing.TB, s *profiles.Site, profile string) *profiles.ImageSpec {
	t.Helper()
	sp, err := s.Image(profile)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// unpack reads an initramfs the way the kernel does: every concatenated
// zstd frame, every concatenated archive, later entries over earlier ones.
func unpack(t testing.TB, file string) *fstree.Tree {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, format, err := compress.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	if format != compress.Zst {
		t.Fatalf("%s: compression %q, want zstd", file, format)
	}
	tree, err := cpio.Read(zr)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return tree
}

func readAll(t testing.TB, c fstree.Content) []byte {
	t.Helper()
	rc, err := c.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileSum(t testing.TB, file string) (int64, string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return int64(len(b)), hex.EncodeToString(s[:])
}

// TestBootModules: every module the images carry is one this kernel has
// (as a module or built in), and the tree of an image holds each with its
// dependencies and a modules.dep naming just them.
func TestBootModules(t *testing.T) {
	needHost(t)
	k, err := hostKernel(testKernel)
	if err != nil {
		t.Fatal(err)
	}
	if k.modules == "" {
		testtool.Skipf(t, "no /lib/modules/%s", k.version)
	}
	if _, err := moduleTree(k.modules, k.version, []string{"virtio_net", "no_such_module"}); !errors.Is(err, kmod.ErrUnknown) || !strings.Contains(err.Error(), "no_such_module") {
		t.Errorf("an unknown module: err = %v, want kmod.ErrUnknown naming it", err)
	}
	tree, err := moduleTree(k.modules, k.version, BootModules)
	if err != nil {
		t.Fatalf("BootModules in kernel %s: %v", k.version, err)
	}
	dep := tree.Get("lib/modules/" + k.version + "/modules.dep")
	if dep == nil {
		t.Fatal("no modules.dep in the module tree")
	}
	var names []string
	for _, e := range tree.Walk() {
		if strings.HasSuffix(e.Path, ".ko") || strings.Contains(e.Path, ".ko.") {
			names = append(names, kmod.Name(e.Path))
		}
	}
	for _, want := range []string{"virtio_net", "virtio", "virtio_ring", "net_failover", "failover", "vfat", "fat", "squashfs", "overlay"} {
		if !slices.Contains(names, want) {
			t.Errorf("module tree %v: %s (a boot module or a dependency) missing", names, want)
		}
	}
}

func TestBusyboxStage(t *testing.T) {
	needHost(t)
	tree, bin, err := busyboxStage(context.Background(), "", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if e := tree.Get("bin/busybox"); e == nil || e.Type != fstree.Regular || e.Mode != 0o755 || string(e.Data.(fstree.File)) != bin {
		t.Errorf("bin/busybox = %+v, want the host's %s, 0755", e, bin)
	}
	for _, p := range []string{"bin/sh", "sbin/init", "bin/mount", "sbin/poweroff"} {
		if e := tree.Get(p); e == nil || e.Type != fstree.Symlink || e.Target != "/bin/busybox" {
			t.Errorf("%s = %+v, want a symlink to /bin/busybox", p, e)
		}
	}
	if e := tree.Get("tmp"); e == nil || e.Mode != 0o777|os.ModeSticky {
		t.Errorf("tmp = %+v, want 1777", e)
	}
	inittab := string(tree.Get("etc/inittab").Data.(fstree.Bytes))
	if !strings.Contains(inittab, "ttyS0::respawn:-/bin/sh") {
		t.Errorf("inittab has no shell on ttyS0:\n%s", inittab)
	}
	if _, _, err := busyboxStage(context.Background(), "/bin/sh", "amd64"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		// /bin/sh is dash, dynamically linked, on Debian.
		t.Errorf("busybox stage from a dynamic binary: err = %v, want dynamically linked", err)
	}
}

// TestImage bakes the embedded minimal profile and checks every artifact
// against the manifest and the initramfs's content against what the boot
// needs.
func TestImage(t *testing.T) {
	needHost(t)
	opts := testOptions(t)
	m, err := Image(context.Background(), spec(t, profiles.Default(), "minimal"), opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(opts.OutDir, "minimal")
	if m.Stats.Dir != dir {
		t.Errorf("Stats.Dir = %q, want %q", m.Stats.Dir, dir)
	}
	// The manifest on disk is the one returned.
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk Manifest
	if err := json.Unmarshal(data, &onDisk); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, &onDisk, cmpIgnoreStats); diff != "" {
		t.Errorf("manifest.json differs from the returned manifest (-want +got):\n%s", diff)
	}
	// Every artifact is there with its size and sha256; nothing else is.
	var names []string
	for _, a := range m.Artifacts {
		names = append(names, a.Name)
		size, sum := fileSum(t, filepath.Join(dir, a.Name))
		if size != a.Size || sum != a.SHA256 {
			t.Errorf("%s: %d bytes sha256 %s, manifest says %d %s", a.Name, size, sum, a.Size, a.SHA256)
		}
	}
	if diff := cmp.Diff([]string{KernelFile, InitramfsFile}, names); diff != "" {
		t.Errorf("artifacts (-want +got):\n%s", diff)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Errorf("%s has %d files, want vmlinuz, initramfs and manifest", dir, len(ents))
	}
	checkModes(t, dir)
	// The segments add up to the initramfs.
	var total int64
	for _, s := range m.Segments {
		total += s.Size
	}
	if total != m.Artifacts[1].Size {
		t.Errorf("segments sum to %d bytes, initramfs is %d", total, m.Artifacts[1].Size)
	}
	if m.Cmdline != "console=ttyS0" || m.SourceDateEpoch != DefaultSourceDateEpoch || m.KernelVersion == "" {
		t.Errorf("manifest cmdline %q, epoch %d, kernel %q", m.Cmdline, m.SourceDateEpoch, m.KernelVersion)
	}

	tree := unpack(t, filepath.Join(dir, InitramfsFile))
	check := func(p string, typ fstree.Type, mode os.FileMode) *fstree.Entry {
		t.Helper()
		e := tree.Get(p)
		if e == nil {
			t.Errorf("initramfs has no /%s", p)
			return nil
		}
		if e.Type != typ || e.Mode != mode {
			t.Errorf("/%s: %s %o, want %s %o", p, e.Type, e.Mode, typ, mode)
		}
		if e.MTime != DefaultSourceDateEpoch {
			t.Errorf("/%s: mtime %d, want the source date %d", p, e.MTime, DefaultSourceDateEpoch)
		}
		return e
	}
	if e := check("init", fstree.Symlink, 0o777); e != nil && e.Target != "bellbuild/bellbuild" {
		t.Errorf("/init -> %q, want bellbuild/bellbuild", e.Target)
	}
	if e := check("bellbuild/bellbuild", fstree.Regular, 0o755); e != nil {
		size, sum := fileSum(t, opts.Applier)
		got := readAll(t, e.Data)
		gs := sha256.Sum256(got)
		if int64(len(got)) != size || hex.EncodeToString(gs[:]) != sum {
			t.Errorf("/bellbuild/bellbuild is not the applier %s", opts.Applier)
		}
	}
	if e := check("dev/console", fstree.CharDev, 0o600); e != nil && (e.Major != 5 || e.Minor != 1) {
		t.Errorf("/dev/console is %d:%d, want 5:1", e.Major, e.Minor)
	}
	check("bin/busybox", fstree.Regular, 0o755)
	check("etc/bellbuild", fstree.Dir, 0o755)
	if e := check(bundlePath, fstree.Regular, 0o600); e != nil {
		// The bundle verifies, as the init reads it.
		if _, b, err := nodeconf.Decode(readAll(t, e.Data)); err != nil || b == nil || b.Profile != "minimal" {
			t.Errorf("bundle: %+v, %v", b, err)
		}
	}
	mods := base(t, tree, "lib/modules/"+m.KernelVersion)
	for _, want := range []string{"virtio_net.ko", "virtio_pci.ko", "squashfs.ko", "overlay.ko", "modules.dep"} {
		if !slices.Contains(mods, want) {
			t.Errorf("lib/modules/%s has no %s", m.KernelVersion, want)
		}
	}
	list := string(readAll(t, tree.Get("etc/bellbuild/modules").Data))
	for _, n := range BootModules {
		if !strings.Contains(list, "\n"+n+"\n") {
			t.Errorf("/etc/bellbuild/modules does not list %s", n)
		}
	}
}

var cmpIgnoreStats = cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Stats" }, cmp.Ignore())

// base lists the base names of the files under dir in a tree.
// checkModes fails t unless every artifact in the output directory dir
// has its mode: owner only for those that carry the image's files (the
// bundle's password hashes, the stage's 0600 files), world-readable for
// the kernel and the manifest.
func checkModes(t testing.TB, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if e.Name() == KernelFile || e.Name() == ManifestFile {
			want = 0o644
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", filepath.Join(dir, e.Name()), fi.Mode(), want)
		}
	}
}

func base(t testing.TB, tree *fstree.Tree, dir string) []string {
	var out []string
	for _, e := range tree.Walk() {
		if strings.HasPrefix(e.Path, dir+"/") && e.Type == fstree.Regular {
			out = append(out, filepath.Base(e.Path))
		}
	}
	return out
}

// TestReproducible bakes the same profile twice, into different output
// directories with different (cold) caches at different times: every
// artifact and the manifest are byte-identical. Another source date
// changes the initramfs.
func TestReproducible(t *testing.T) {
	needHost(t)
	s := testSite(t)
	bake := func(epoch *int64) (Options, *Manifest) {
		opts := testOptions(t)
		opts.SourceDateEpoch = epoch
		m, err := Image(context.Background(), spec(t, s, "fleet"), opts)
		if err != nil {
			t.Fatal(err)
		}
		if m.Stats.StageCached {
			t.Fatal("a cold cache gave a cached stage")
		}
		return opts, m
	}
	o1, m1 := bake(nil)
	o2, m2 := bake(nil)
	if o1.OutDir == o2.OutDir {
		t.Fatal("same output directory")
	}
	for _, name := range []string{KernelFile, InitramfsFile, ManifestFile} {
		a, err := os.ReadFile(filepath.Join(o1.OutDir, "fleet", name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(o2.OutDir, "fleet", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two bakes of the same inputs", name)
		}
	}
	if diff := cmp.Diff(m1, m2, cmpIgnoreStats); diff != "" {
		t.Errorf("manifests differ (-first +second):\n%s", diff)
	}
	other := int64(DefaultSourceDateEpoch + 86400)
	_, m3 := bake(&other)
	if m3.Artifacts[1].SHA256 == m1.Artifacts[1].SHA256 {
		t.Error("another SOURCE_DATE_EPOCH gave the same initramfs")
	}
}

// TestConfOnlyRebake changes only the configuration between two bakes with
// one cache: the stage and applier segments are reused, not recompressed,
// and the new initramfs carries the new configuration.
func TestConfOnlyRebake(t *testing.T) {
	needHost(t)
	s := testSite(t)
	opts := testOptions(t)
	sp := spec(t, s, "fleet")
	m1, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	if m1.Stats.StageCached || m1.Stats.ApplierCached {
		t.Fatalf("first bake: stats %+v, want nothing cached", m1.Stats)
	}
	cached := filepath.Join(opts.CacheDir, "segments")
	before := segmentFiles(t, cached)

	sp.Bundle.Nodes[0].Conf.Sysctl["vm.swappiness"] = "77"
	m2, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !m2.Stats.StageCached || !m2.Stats.ApplierCached {
		t.Errorf("conf-only rebake: stats %+v, want stage and applier cached", m2.Stats)
	}
	// The cache is as it was: nothing rewritten, nothing added.
	if diff := cmp.Diff(before, segmentFiles(t, cached)); diff != "" {
		t.Errorf("cache changed (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(m1.Segments[:2], m2.Segments[:2]); diff != "" {
		t.Errorf("stage/applier segments changed (-first +second):\n%s", diff)
	}
	if m1.Segments[2].SHA256 == m2.Segments[2].SHA256 {
		t.Error("the configuration segment did not change")
	}
	// The new initramfs starts with the cached stage segment's bytes.
	stageSeg, err := os.ReadFile(findSegment(t, cached, m2.Segments[0].Size))
	if err != nil {
		t.Fatal(err)
	}
	initramfs := filepath.Join(opts.OutDir, "fleet", InitramfsFile)
	got, err := os.ReadFile(initramfs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, stageSeg) {
		t.Error("the initramfs does not start with the cached stage segment")
	}
	tree := unpack(t, initramfs)
	if !strings.Contains(string(readAll(t, tree.Get(bundlePath).Data)), `"vm.swappiness": "77"`) {
		t.Error("the rebaked bundle does not have the new value")
	}
}

// segmentFiles maps each file of the segment cache to its size and mtime.
func segmentFiles(t testing.TB, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(e.Name(), ".json") {
			// Its mtime marks the segment's last use (for pruning).
			out[e.Name()] = fmt.Sprintf("%d bytes", info.Size())
			continue
		}
		out[e.Name()] = fmt.Sprintf("%d bytes, modified %s", info.Size(), info.ModTime())
	}
	return out
}

// findSegment names the cached segment of size bytes.
func findSegment(t testing.TB, dir string, size int64) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dir, "*.cpio.zst"))
	for _, m := range matches {
		if st, err := os.Stat(m); err == nil && st.Size() == size {
			return m
		}
	}
	t.Fatalf("no cached segment of %d bytes in %s", size, dir)
	return ""
}

// TestFailedBakeLeavesNothing: a bake that fails while writing leaves the
// previous artifacts in place and no temporary directory behind; a first
// bake that fails leaves nothing at the final path.
func TestFailedBakeLeavesNothing(t *testing.T) {
	needHost(t)
	s := testSite(t)
	opts := testOptions(t)
	opts.defaults()
	fail := func() error {
		b := &baker{opts: opts, log: opts.Log, p: newProgress(nil, opts.Log, 8)}
		im, err := b.prepare(context.Background(), spec(t, s, "fleet"))
		if err != nil {
			t.Fatal(err)
		}
		// A file that cannot be read when the segment is written.
		im.config.Add(fstree.Entry{Path: "etc/broken", Type: fstree.Regular, Mode: 0o644, Size: 10, Data: fstree.File(filepath.Join(t.TempDir(), "gone"))})
		_, err = b.write(context.Background(), im)
		return err
	}
	final := filepath.Join(opts.OutDir, "fleet")
	if err := fail(); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want the missing file", err)
	}
	if _, err := os.Lstat(final); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a failed first bake, %s: %v; want nothing", final, err)
	}
	m, err := Image(context.Background(), spec(t, s, "fleet"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := fail(); err == nil {
		t.Fatal("second broken bake succeeded")
	}
	for _, a := range m.Artifacts {
		size, sum := fileSum(t, filepath.Join(final, a.Name))
		if size != a.Size || sum != a.SHA256 {
			t.Errorf("%s changed after a failed bake", a.Name)
		}
	}
	// No temporary directory is left: only the output and what the
	// next bake may reuse (reuse.go).
	ents, _ := os.ReadDir(opts.OutDir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{".fleet.reuse", "fleet"}, names); diff != "" {
		t.Errorf("%s holds (-want +got):\n%s", opts.OutDir, diff)
	}
}

func TestNodeFilter(t *testing.T) {
	needHost(t)
	s := testSite(t)
	opts := testOptions(t)
	opts.Nodes = []string{"n2"}
	m, err := Image(context.Background(), spec(t, s, "fleet"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"n2"}, m.Nodes); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	opts.Nodes = []string{"n9"}
	_, err = Image(context.Background(), spec(t, s, "fleet"), opts)
	if err == nil || !strings.Contains(err.Error(), "--node n9: no such node boots profile fleet (nodes: n1, n2)") {
		t.Errorf("unknown node: err = %v", err)
	}
}

// TestProfileStageAndTar bakes a profile whose stage is another profile's
// baked tree, with a stage tarball as an output: the tarball holds the
// lower profile's tree with this profile's configuration over it.
func TestProfileStageAndTar(t *testing.T) {
	needHost(t)
	s := testSite(t)
	opts := testOptions(t)
	opts.Site = s
	m, err := Image(context.Background(), spec(t, s, "layered"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if m.Inputs[0].Kind != "profile" || m.Inputs[0].Path != "fleet" {
		t.Errorf("stage input %+v, want profile fleet", m.Inputs[0])
	}
	checkModes(t, m.Stats.Dir)
	tarFile := filepath.Join(opts.OutDir, "layered", TarFile)
	size, sum := fileSum(t, tarFile)
	if a := m.Artifacts[len(m.Artifacts)-1]; a.Name != TarFile || a.Size != size || a.SHA256 != sum {
		t.Errorf("tar artifact %+v, file has %d bytes sha256 %s", a, size, sum)
	}
	tree, err := fstree.OpenTar(tarFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"bin/busybox", "init", "bellbuild/bellbuild", "etc/inittab"} {
		if tree.Get(p) == nil {
			t.Errorf("rootfs.tar has no /%s", p)
		}
	}
	var b struct{ Profile string }
	if err := json.Unmarshal(readAll(t, tree.Get(bundlePath).Data), &b); err != nil || b.Profile != "layered" {
		t.Errorf("rootfs.tar bundle: profile %q (%v), want layered", b.Profile, err)
	}
	// The tarball is itself reproducible.
	opts2 := testOptions(t)
	opts2.Site = s
	if _, err := Image(context.Background(), spec(t, s, "layered"), opts2); err != nil {
		t.Fatal(err)
	}
	if _, sum2 := fileSum(t, filepath.Join(opts2.OutDir, "layered", TarFile)); sum2 != sum {
		t.Error("rootfs.tar differs between two bakes")
	}
}

// TestDirStageCache: a dir stage is keyed by its entries' metadata and
// file identities, so an unchanged directory is a cache hit and a changed
// file (same size, new content) or a new entry is a miss that bakes the
// new content.
func TestDirStageCache(t *testing.T) {
	needHost(t)
	root := t.TempDir()
	write := func(p, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/version", "one\n")
	sp := &profiles.ImageSpec{
		Profile: "dir", Chain: []string{"dir"},
		Stage:   profiles.Stage{Dir: root},
		Kernel:  profiles.Kernel{Path: testKernel},
		Outputs: []string{"initramfs"},
	}
	opts := testOptions(t)
	steps := []struct {
		name       string
		change     func()
		wantCached bool
		wantFile   string
		wantText   string
	}{
		{"first", func() {}, false, "etc/version", "one\n"},
		{"unchanged", func() {}, true, "etc/version", "one\n"},
		{"same size, new content", func() { write("etc/version", "two\n") }, false, "etc/version", "two\n"},
		{"new file", func() { write("etc/extra", "x") }, false, "etc/extra", "x"},
	}
	for _, st := range steps {
		st.change()
		m, err := Image(context.Background(), sp, opts)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if m.Stats.StageCached != st.wantCached {
			t.Errorf("%s: stage cached = %v, want %v", st.name, m.Stats.StageCached, st.wantCached)
		}
		tree := unpack(t, filepath.Join(opts.OutDir, "dir", InitramfsFile))
		e := tree.Get(st.wantFile)
		if e == nil {
			t.Errorf("%s: no /%s in the initramfs", st.name, st.wantFile)
			continue
		}
		if got := string(readAll(t, e.Data)); got != st.wantText {
			t.Errorf("%s: /%s = %q, want %q", st.name, st.wantFile, got, st.wantText)
		}
	}
}

func TestDebootstrapKey(t *testing.T) {
	d := func(inc ...string) *profiles.Debootstrap {
		return &profiles.Debootstrap{Suite: "bookworm", Variant: "minbase", Include: inc}
	}
	if debootstrapKey(d("a", "b"), "amd64") != debootstrapKey(d("b", "a"), "amd64") {
		t.Error("the package list's order changes the debootstrap cache key")
	}
	if debootstrapKey(d("a", "b"), "amd64") == debootstrapKey(d("a"), "amd64") {
		t.Error("another package list has the same debootstrap cache key")
	}
	other := d("a", "b")
	other.Suite = "trixie"
	if debootstrapKey(other, "amd64") == debootstrapKey(d("a", "b"), "amd64") {
		t.Error("another suite has the same debootstrap cache key")
	}
	if debootstrapKey(d("a"), "arm64") == debootstrapKey(d("a"), "amd64") {
		t.Error("arm64 has amd64's debootstrap cache key")
	}
	if debootstrapKey(d("a"), "") != debootstrapKey(d("a"), "amd64") {
		t.Error(`arch "" is not amd64's debootstrap cache key`)
	}
}

func TestProgress(t *testing.T) {
	var term bytes.Buffer
	p := newProgress(&term, nil, 2)
	p.begin("stage segment")
	p.bytes(3<<20, 1<<20)
	p.end("")
	p.begin("assemble")
	p.end("cached")
	got := term.String()
	for _, want := range []string{"\r\033[K[1/2] stage segment", "3.0 MiB → 1.0 MiB", "\r\033[K[2/2] assemble  (cached, "} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
}

// TestTarballRebakeSkipsStage: a tarball stage is named by its sha256, so
// a conf-only re-bake takes its segment from the cache without reading the
// tarball at all — and the upper segments still carry the stage's own
// directory modes (kept with the cached segment).
func TestTarballRebakeSkipsStage(t *testing.T) {
	needHost(t)
	if _, err := exec.LookPath("tar"); err != nil {
		testtool.Skipf(t, "tar not installed")
	}
	src := filepath.Join(t.TempDir(), "src")
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{"etc", 0o750}, {"dev", 0o711}} {
		if err := os.MkdirAll(filepath.Join(src, d.path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(src, d.path), d.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "etc/os-release"), []byte("ID=test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(t.TempDir(), "stage.tar.gz")
	if out, err := exec.Command("tar", "--numeric-owner", "-czf", tarball, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	sp := &profiles.ImageSpec{
		Profile: "tarred", Chain: []string{"tarred"},
		Stage:   profiles.Stage{Tarball: tarball},
		Kernel:  profiles.Kernel{Path: testKernel},
		Outputs: []string{"initramfs"},
		Bundle:  &nodeconf.Bundle{Profile: "tarred", Default: nodeconf.Node{Profile: "tarred", Conf: nodeconf.Conf{Sysctl: map[string]string{"vm.swappiness": "1"}}}},
	}
	opts := testOptions(t)
	for i, want := range []Stats{
		{StageCached: false, ApplierCached: false, StageRead: true},
		// A conf-only re-bake takes the cached stage's file over.
		{StageCached: true, ApplierCached: true, StageRead: false, InitramfsReused: true, StageTaken: true},
	} {
		sp.Bundle.Default.Conf.Sysctl["vm.swappiness"] = fmt.Sprint(i + 1)
		m, err := Image(context.Background(), sp, opts)
		if err != nil {
			t.Fatal(err)
		}
		want.Dir = m.Stats.Dir
		if diff := cmp.Diff(want, m.Stats); diff != "" {
			t.Errorf("bake %d: stats (-want +got):\n%s", i+1, diff)
		}
		tree := unpack(t, filepath.Join(opts.OutDir, "tarred", InitramfsFile))
		if e := tree.Get("etc/os-release"); e == nil || string(readAll(t, e.Data)) != "ID=test\n" {
			t.Errorf("bake %d: /etc/os-release from the tarball missing", i+1)
		}
		for p, mode := range map[string]os.FileMode{"etc": 0o750, "dev": 0o711} {
			if e := tree.Get(p); e == nil || e.Mode != mode {
				t.Errorf("bake %d: /%s after every segment = %+v, want mode %o (the stage's)", i+1, p, e, mode)
			}
		}
		if !strings.Contains(string(readAll(t, tree.Get(bundlePath).Data)), fmt.Sprintf(`"vm.swappiness": "%d"`, i+1)) {
			t.Errorf("bake %d: bundle does not have this bake's value", i+1)
		}
	}
}

func TestResolveParents(t *testing.T) {
	tree := fstree.New()
	tree.Add(fstree.Entry{Path: "usr/lib", Type: fstree.Dir, Mode: 0o755})
	tree.Add(fstree.Entry{Path: "lib", Type: fstree.Symlink, Target: "usr/lib"})
	tree.Add(fstree.Entry{Path: "usr/lib64", Type: fstree.Symlink, Target: "/usr/lib"})
	tree.Add(fstree.Entry{Path: "opt/up", Type: fstree.Symlink, Target: "../usr"})
	tree.Add(fstree.Entry{Path: "loop", Type: fstree.Symlink, Target: "loop"})
	tests := []struct{ in, want string }{
		{"lib/modules/6.1/kernel/a.ko", "usr/lib/modules/6.1/kernel/a.ko"},
		{"usr/lib64/x", "usr/lib/x"},
		{"opt/up/lib64/y", "usr/lib/y"},
		{"lib", "lib"}, // the last component is not followed
		{"etc/bellbuild/modules", "etc/bellbuild/modules"},
		{"loop/z", "loop/z"}, // gives up after 40 hops
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := resolveParents(tree, tt.in); got != tt.want {
				t.Errorf("resolveParents(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestMergedUsrStage: the kernel modules of a bake go where a merged-/usr
// stage's /lib symlink leads, and the symlink stays a symlink (replacing
// it with a directory hides the dynamic loader: nothing in the stage could
// run).
func TestMergedUsrStage(t *testing.T) {
	needHost(t)
	root := t.TempDir()
	for _, d := range []string{"usr/lib/x86_64-linux-gnu", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "usr/lib/x86_64-linux-gnu/libc.so.6"), []byte("libc"), 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"lib": "usr/lib", "bin": "usr/bin"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	sp := &profiles.ImageSpec{Profile: "usrmerge", Chain: []string{"usrmerge"}, Stage: profiles.Stage{Dir: root},
		Kernel: profiles.Kernel{Path: testKernel}, Outputs: []string{"initramfs"}}
	opts := testOptions(t)
	m, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	tree := unpack(t, filepath.Join(opts.OutDir, "usrmerge", InitramfsFile))
	if e := tree.Get("lib"); e == nil || e.Type != fstree.Symlink || e.Target != "usr/lib" {
		t.Errorf("/lib = %+v, want the stage's symlink to usr/lib", e)
	}
	if tree.Get("usr/lib/x86_64-linux-gnu/libc.so.6") == nil {
		t.Error("the stage's libraries are gone")
	}
	if mods := base(t, tree, "usr/lib/modules/"+m.KernelVersion); !slices.Contains(mods, "virtio_net.ko") {
		t.Errorf("no virtio_net.ko under /usr/lib/modules/%s (through /lib): %v", m.KernelVersion, mods)
	}
}

// TestKernelFromStage: kernel {from: stage} takes the newest
// /boot/vmlinuz-* of the stage (its modules are the stage's own): the
// artifact is that file, its version read from its boot header.
func TestKernelFromStage(t *testing.T) {
	needHost(t)
	host, err := filepath.EvalSymlinks(testKernel)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	// An older kernel name that sorts after the newer one as a string.
	if err := os.WriteFile(filepath.Join(root, "boot/vmlinuz-6.1.0-9-amd64"), []byte("old kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	copyFile(t, host, filepath.Join(root, "boot", filepath.Base(host)), 0o644)
	sp := &profiles.ImageSpec{Profile: "own", Chain: []string{"own"}, Stage: profiles.Stage{Dir: root},
		Kernel: profiles.Kernel{From: "stage"}, Outputs: []string{"initramfs"}}
	opts := testOptions(t)
	m, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimPrefix(filepath.Base(host), "vmlinuz-"); m.KernelVersion != want {
		t.Errorf("kernel version %q, want %q", m.KernelVersion, want)
	}
	_, want := fileSum(t, host)
	if m.Artifacts[0].Name != KernelFile || m.Artifacts[0].SHA256 != want {
		t.Errorf("vmlinuz artifact %+v, want the stage's %s (sha256 %s)", m.Artifacts[0], filepath.Base(host), want)
	}
	if _, got := fileSum(t, filepath.Join(opts.OutDir, "own", KernelFile)); got != want {
		t.Error("vmlinuz on disk is not the stage's kernel")
	}
	tree := unpack(t, filepath.Join(opts.OutDir, "own", InitramfsFile))
	if tree.Get("etc/bellbuild/modules") == nil {
		t.Error("no /etc/bellbuild/modules for the init")
	}
	if got := base(t, tree, "lib/modules"); len(got) != 0 {
		t.Errorf("host modules added to a stage with its own kernel: %v", got)
	}
}

// TestManifestAcrossCheckouts bakes one site from two directories (two
// checkouts of it): the manifests and the artifacts are byte-identical,
// and the manifest names the site's files relative to the site.
func TestManifestAcrossCheckouts(t *testing.T) {
	needHost(t)
	files := map[string]string{
		"profiles/tiny.yaml": "stage: {dir: stage}\nkernel: {path: /vmlinuz}\ncmdline: [console=ttyS0]\noutputs: [initramfs, tar]\nconf: {sysctl: {vm.swappiness: 12}}\n",
		"nodes.yaml":         "nodes:\n- {name: t1, mac: '52:54:00:00:09:01', profile: tiny}\n",
		"stage/etc/hostname": "tiny\n",
		"stage/bin/hello":    "#!/bin/sh\necho hello\n",
	}
	// One cache: the second bake reuses the first one's segments only if
	// their content keys (which a path in them would change) agree.
	cache := filepath.Join(t.TempDir(), "cache")
	bake := func() (site string, out string) {
		site = filepath.Join(t.TempDir(), "checkout", "site")
		for p, c := range files {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(site, p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(site, p), []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		s, err := profiles.Load(site)
		if err != nil {
			t.Fatal(err)
		}
		opts := testOptions(t)
		opts.Site, opts.CacheDir = s, cache
		// Each checkout embeds its own build of the applier (the same
		// bytes at another path).
		applier := filepath.Join(filepath.Dir(site), "bin", "bellbuild")
		if err := os.MkdirAll(filepath.Dir(applier), 0o755); err != nil {
			t.Fatal(err)
		}
		copyFile(t, opts.Applier, applier, 0o755)
		opts.Applier = applier
		if _, err := Image(context.Background(), spec(t, s, "tiny"), opts); err != nil {
			t.Fatal(err)
		}
		return site, filepath.Join(opts.OutDir, "tiny")
	}
	site1, out1 := bake()
	site2, out2 := bake()
	for _, name := range []string{ManifestFile, KernelFile, InitramfsFile, TarFile} {
		a, err := os.ReadFile(filepath.Join(out1, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(out2, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between the bakes from %s and %s", name, site1, site2)
			if name == ManifestFile {
				t.Logf("first:\n%s\nsecond:\n%s", a, b)
			}
		}
	}
	var m Manifest
	data, err := os.ReadFile(filepath.Join(out1, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, in := range m.Inputs {
		if in.Name == "site" || in.Name == "stage" {
			paths = append(paths, in.Name+" "+in.Path)
		}
	}
	want := []string{"stage site:stage", "site site:profiles/tiny.yaml", "site site:nodes.yaml"}
	if diff := cmp.Diff(want, paths); diff != "" {
		t.Errorf("the manifest's site inputs (-want +got):\n%s", diff)
	}
}
