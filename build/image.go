// Package build is the bake pipeline: from a profile's image specification
// (package profiles) it resolves the stage into an in-memory tree, adds the
// kernel's modules, the applier and the node configurations, and writes
// the boot artifacts — kernel, zstd newc initramfs, optionally a stage
// tarball — with a manifest, atomically and reproducibly.
//
// The initramfs is three concatenated cpio.zst segments (the kernel unpacks
// them in turn): the stage with its kernel modules, the applier, and the
// configuration. The first two are cached by content under the cache
// directory, so a change to a profile's conf or inventory recompresses only
// the small last one.
package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// DefaultSourceDateEpoch is the timestamp every file of an image gets when
// no source date is given: fixed, so two bakes of the same inputs are
// byte-identical (2024-01-01T00:00:00Z).
const DefaultSourceDateEpoch = 1704067200

// Artifact names inside OUT/PROFILE.
const (
	KernelFile    = "vmlinuz"
	InitramfsFile = "initramfs.cpio.zst"
	ManifestFile  = "manifest.json"
	TarFile       = "rootfs.tar"
)

// artifactMode is the mode of the artifacts that carry the image's files
// (initramfs.cpio.zst, rootfs.tar, image.iso and disk.raw): owner only, as
// they hold the bundle (password hashes) and the stage's 0600 files. The
// kernel and the manifest stay world-readable. `bellbuild serve` reads
// them as the same user that baked them.
const artifactMode = 0o600

// Paths inside the image, where the init (package firstboot/boot) looks
// for them: both sides take them from images/layout.
const (
	applierPath = layout.Applier
	bundlePath  = layout.Bundle
)

// Inode numbers of each segment start apart, so that no two entries of the
// unpacked initramfs ever share one (the kernel only pairs hardlinks within
// one archive, but tools reading the whole stream may not).
const (
	stageInode   = 1
	applierInode = 1 << 30
	configInode  = 1<<30 + 1<<29
)

// ErrUnsupportedOutput means a profile asks for an artifact this build
// cannot make.
var ErrUnsupportedOutput = errors.New("unsupported output")

// Options configure a bake. The zero value bakes into ./out with the
// default cache, the fixed source date and the running bellbuild as the
// applier.
type Options struct {
	// OutDir is OUT: artifacts go to OUT/PROFILE (default "out").
	OutDir string
	// CacheDir holds cached segments and debootstrap roots (default
	// $BELLBUILD_CACHE, else ~/.cache/bellbuild).
	CacheDir string
	// CacheLimit bounds the cached segments' bytes: after a bake, the
	// least recently used ones go until the rest fit (never the bake's
	// own). 0 means DefaultCacheLimit, a negative value no limit.
	// Debootstrap roots are not counted.
	CacheLimit int64
	// SourceDateEpoch is every file's mtime, in seconds since 1970
	// (SOURCE_DATE_EPOCH); nil means DefaultSourceDateEpoch, never the
	// current time. A pointer, so that 0 (1970-01-01) can be asked for.
	SourceDateEpoch *int64
	// Applier is the static bellbuild binary to embed in images of the
	// running architecture (default $BELLBUILD_BIN, else the running
	// executable).
	Applier string
	// Appliers are the static bellbuild binaries to embed in images of
	// an architecture ("arm64"), ahead of Applier; an image of another
	// architecture than the running one without one gets
	// $BELLBUILD_BIN_ARM64, else bellbuild cross-built from the source
	// checkout (applier.go).
	Appliers map[string]string
	// Nodes, when set, keeps only these inventory nodes in the bundle.
	Nodes []string
	// Site resolves {profile: NAME} stages.
	Site *profiles.Site
	// Busybox overrides the host busybox a busybox stage is made from.
	Busybox string
	// Modules overrides BootModules (BootModulesARM64 for arm64).
	Modules []string
	// Log receives one line per step when Progress is nil.
	Log *slog.Logger
	// Progress, when set, gets a live progress line (a terminal).
	Progress io.Writer

	// sequential (tests) makes the segments one after the other and
	// copies a new stage segment into the initramfs afterwards, as
	// bellbuild did before overlapping them: the bytes must not change.
	sequential bool
}

func (o *Options) defaults() error {
	if o.OutDir == "" {
		o.OutDir = "out"
	}
	if o.CacheDir == "" {
		o.CacheDir = os.Getenv("BELLBUILD_CACHE")
	}
	if o.CacheDir == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return fmt.Errorf("cache directory: %w (set BELLBUILD_CACHE)", err)
		}
		o.CacheDir = filepath.Join(dir, "bellbuild")
	}
	if o.SourceDateEpoch == nil {
		e := int64(DefaultSourceDateEpoch)
		o.SourceDateEpoch = &e
	}
	if o.Applier == "" {
		o.Applier = os.Getenv("BELLBUILD_BIN")
	}
	if o.Applier == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("applier: %w (pass --applier)", err)
		}
		o.Applier = exe
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return nil
}

// Manifest describes a bake; it is written as OUT/PROFILE/manifest.json.
// Everything in it derives from the inputs, so two bakes of the same inputs
// write the same manifest.
type Manifest struct {
	Profile string   `json:"profile"`
	Chain   []string `json:"chain"`
	// Arch is the image's architecture (amd64, arm64): its kernel,
	// stage and applier are all built for it.
	Arch string `json:"arch"`
	// Environment is the site's environment the image was baked for
	// (absent for a site without environments).
	Environment string `json:"environment,omitempty"`
	// Site is the site's git revision: its commit, and whether (and
	// where) the work tree differed from it (absent when unknown).
	Site            *profiles.Revision `json:"site,omitempty"`
	SourceDateEpoch int64              `json:"source_date_epoch"`
	// Cmdline is the kernel command line to boot with.
	Cmdline       string     `json:"cmdline"`
	KernelVersion string     `json:"kernel_version"`
	Nodes         []string   `json:"nodes"`
	Inputs        []Input    `json:"inputs"`
	Segments      []Artifact `json:"segments"`
	Artifacts     []Artifact `json:"artifacts"`
	// Disk describes disk.raw (outputs: [raw]) for an installer and an
	// upgrader; nil without one.
	Disk *DiskInfo `json:"disk,omitempty"`

	// Stats says what this particular run did; it is not written.
	Stats Stats `json:"-"`
}

// Input is something a bake read.
type Input struct {
	Name string `json:"name"`
	Kind string `json:"kind,omitempty"`
	// Path is where it was read: "site:REL" for a file or directory of
	// the site (REL relative to the site's directory, which the manifest
	// does not record, so that the same site baked from another checkout
	// gives the same manifest), else an absolute path on the build host
	// (none for the applier, which its sha256 names),
	// "embedded:..." for the built-in site, "stage:/..." for a file of the
	// stage, or a name (a profile, a debootstrap recipe).
	Path string `json:"path,omitempty"`
	// SHA256 of the input's bytes, when it is one file.
	SHA256 string `json:"sha256,omitempty"`
	// Key names an input that is not one file (a debootstrap recipe, a
	// stage baked from another profile).
	Key string `json:"key,omitempty"`
}

// Artifact is a file a bake wrote.
type Artifact struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Stats is what one run did, for tests and benchmarks.
type Stats struct {
	// StageCached and ApplierCached are true when those segments came from
	// the cache instead of being compressed again.
	StageCached, ApplierCached bool
	// StageRead is false when the bake never read the stage's tree (its
	// input named its cached segment).
	StageRead bool
	// InitramfsReused is true when the initramfs was made by extending a
	// file that already held its cached segments, instead of copying them
	// (reuse.go).
	InitramfsReused bool
	// StageTaken is true when that initramfs was the cached stage
	// segment's file, taken over and given back (reuse.go).
	StageTaken bool
	// Dir is OUT/PROFILE.
	Dir string
}

// Image bakes spec's artifacts into OUT/PROFILE:
//
//  1. resolve the stage into a tree;
//  2. find the kernel and add the modules the boot needs;
//  3. add the applier (bellbuild, static) and /init;
//  4. render the configuration (the bundle of this profile's nodes);
//  5. write the stage segment, or reuse it from the cache;
//  6. the same for the applier segment;
//  7. write the configuration segment;
//  8. assemble vmlinuz, initramfs.cpio.zst (and rootfs.tar) in a temporary
//     directory beside OUT/PROFILE — the initramfs from the one an earlier
//     bake replaced when it starts with the same segments (reuse.go) —
//     write manifest.json, and swap it in;
//     outputs raw and iso add disk.raw and image.iso there (media.go).
//
// Steps overlap where they do not depend on each other (overlap.go): the
// kernel and the applier are read while the stage is, the applier and
// configuration segments are made while the stage segment is, a stage
// segment goes into the initramfs as it is compressed, and the kernel is
// copied meanwhile. The bytes are those of doing the steps in order.
//
// A failure at any step leaves OUT/PROFILE as it was.
func Image(ctx context.Context, spec *profiles.ImageSpec, opts Options) (*Manifest, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	for _, o := range spec.Outputs {
		if !slices.Contains(profiles.Outputs, o) {
			return nil, fmt.Errorf("profile %s: output %q: %w (this build makes %s)", spec.Profile, o, ErrUnsupportedOutput, strings.Join(profiles.Outputs, ", "))
		}
	}
	total := 8 // and one for each boot medium
	for _, o := range spec.Outputs {
		if o == "raw" || o == "iso" {
			total++
		}
	}
	b := &baker{opts: opts, log: opts.Log, p: newProgress(opts.Progress, opts.Log, total)}
	defer b.p.end("")

	im, err := b.prepare(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", spec.Profile, err)
	}
	defer im.early.stop()
	m, err := b.write(ctx, im)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", spec.Profile, err)
	}
	return m, nil
}

// baker carries one bake's settings through its steps.
type baker struct {
	opts Options
	log  *slog.Logger
	p    *progress
	// depth is the chain of {profile: NAME} stages being baked.
	depth []string
}

// epoch is the source date (defaults filled it in).
func (b *baker) epoch() int64 { return *b.opts.SourceDateEpoch }

// image is a profile's prepared content, before anything is written.
type image struct {
	spec   *profiles.ImageSpec
	arch   string
	kernel *kernel
	// src is the stage; added is what the bake adds to it (the kernel's
	// modules); together they are segment 1, stageKey its cache key.
	src      *stage
	added    *fstree.Tree
	stage    *fstree.Tree // src + added, once read (see stageTree)
	stageKey string
	// stageDirs are the stage's directories the upper segments also
	// carry (from the tree, or from the cached segment's info).
	stageDirs map[string]dirMeta
	// applier is bellbuild and /init (segment 2).
	applier    *fstree.Tree
	applierKey string
	// config is the bundle (segment 3).
	config    *fstree.Tree
	configKey string
	bundle    *nodeconf.Bundle
	inputs    []Input
	// early is what was started while the stage was read; applierSeg,
	// when set, is the applier segment made then (see overlap.go).
	early      *early
	applierSeg *future[*segment]
}

// stageTree returns the stage with what the bake adds, reading the stage
// on first use.
func (im *image) stageTree() (*fstree.Tree, error) {
	if im.stage != nil {
		return im.stage, nil
	}
	if im.src.tree == nil {
		t, err := im.src.load()
		if err != nil {
			return nil, err
		}
		if err := checkStageArch(t, im.arch, im.spec.Profile); err != nil {
			return nil, err
		}
		im.src.tree = t
	}
	addInto(im.src.tree, im.added)
	im.stage = im.src.tree
	return im.stage, nil
}

// addInto adds the entries of added to the stage t at the paths the
// stage's own symlinks lead to: a merged-/usr root has lib -> usr/lib, so
// lib/modules/... must go to usr/lib/modules/..., not replace the link
// with a directory (which would hide the dynamic loader and every library).
// Directories (or symlinks) that already exist there are left as they are.
func addInto(t, added *fstree.Tree) {
	for _, e := range added.Walk() {
		if e.Path == "." {
			continue
		}
		ne := *e
		ne.Path = resolveParents(t, e.Path)
		if ne.Type == fstree.Dir {
			// An existing directory, or a symlink its entries will be
			// put through, stays.
			if old := t.Get(ne.Path); old != nil && (old.Type == fstree.Dir || old.Type == fstree.Symlink) {
				continue
			}
		}
		t.Add(ne)
	}
}

// resolveParents follows the symlinks among p's parent directories inside
// the tree (absolute targets from the tree's root), as the kernel would
// when unpacking p over it; the last component is not followed.
func resolveParents(t *fstree.Tree, p string) string {
	dir, name := path.Split(fstree.Clean(p))
	parts := strings.Split(strings.TrimSuffix(dir, "/"), "/")
	cur := ""
	for hops := 0; len(parts) > 0 && hops < 40; {
		part := parts[0]
		parts = parts[1:]
		if part == "" || part == "." {
			continue
		}
		next := fstree.Clean(path.Join(cur, part))
		if e := t.Get(next); e != nil && e.Type == fstree.Symlink {
			hops++
			target := e.Target
			if !path.IsAbs(target) {
				target = path.Join(cur, target)
			}
			// Resolve the target's own components next.
			parts = append(strings.Split(fstree.Clean(target), "/"), parts...)
			cur = ""
			continue
		}
		cur = next
	}
	// Past 40 links (a loop), the rest is taken as it is.
	return fstree.Clean(path.Join(append(append([]string{cur}, parts...), name)...))
}

// fullTree is everything the initramfs unpacks to. The stage is read in
// prepare whenever an output needs the whole tree (see needTree).
func (im *image) fullTree() *fstree.Tree {
	t, err := im.tree()
	if err != nil {
		// prepare read the stage for every output that gets here.
		panic(err)
	}
	return t
}

// tree is fullTree with the error of reading the stage.
func (im *image) tree() (*fstree.Tree, error) {
	st, err := im.stageTree()
	if err != nil {
		return nil, err
	}
	t := fstree.New()
	t.Merge(st)
	t.Merge(im.applier)
	if e := st.Get("dev/console"); e != nil {
		// The applier brings /dev/console for stages without one; a
		// stage's own stays as it is.
		t.Add(*e)
	}
	t.Merge(im.config)
	return t, nil
}

// contentKey names the whole unpacked tree.
func (im *image) contentKey() string {
	return keyOf(im.stageKey, im.applierKey, im.configKey)
}

// needTree reports whether a bake of spec needs the stage's whole tree
// whatever the cache holds: a kernel from the stage, a tarball, a disk or
// an ISO, or a profile baked as another's stage (inner).
func needTree(spec *profiles.ImageSpec, inner bool) bool {
	if inner || spec.Kernel.From == "stage" {
		return true
	}
	for _, o := range spec.Outputs {
		if o != "initramfs" {
			return true
		}
	}
	return false
}

// prepare does steps 1–4 for spec.
func (b *baker) prepare(ctx context.Context, spec *profiles.ImageSpec) (*image, error) {
	b.depth = append(b.depth, spec.Profile)
	defer func() { b.depth = b.depth[:len(b.depth)-1] }()
	im := &image{spec: spec, arch: specArch(spec)}
	epoch := fmt.Sprint(b.epoch())
	// The host kernel and the applier are read while the stage is, and
	// for the image being baked (not a stage of another) the applier
	// segment may be made too (overlap.go).
	outer := len(b.depth) == 1
	pre := b.start(ctx, spec, im.arch, outer && wantsInitramfs(spec))
	defer func() {
		if im.early == nil {
			pre.stop()
		}
	}()

	// 1. Stage: read now only when its content has no other name (or an
	// output needs it); else a cache hit never reads it.
	b.p.begin("stage " + spec.Profile)
	st, err := b.resolveStage(ctx, spec)
	if err != nil {
		return nil, err
	}
	im.src = st
	im.inputs = append(im.inputs, st.input)
	if st.tree == nil && (st.key == "" || needTree(spec, len(b.depth) > 1)) {
		if st.tree, err = st.load(); err != nil {
			return nil, err
		}
	}
	// A stage read now is checked now; one named by its input is read
	// (and checked) whenever its segment is not cached for this
	// architecture (the key below names it).
	if st.tree != nil {
		if err := checkStageArch(st.tree, im.arch, spec.Profile); err != nil {
			return nil, err
		}
	}

	// 2. Kernel and modules.
	b.p.begin("kernel and modules")
	var pkgInputs []Input
	switch {
	case spec.Kernel.From == "stage":
		im.kernel, err = stageKernel(st.tree)
	case spec.Kernel.Path != "":
		var hk hostKernelModules
		hk, err = pre.kernel.wait()
		im.kernel, im.added = hk.k, hk.added
	case spec.Kernel.Package != "":
		im.kernel, pkgInputs, err = b.packageKernel(ctx, spec.Kernel.Package, im.arch)
	default:
		err = fmt.Errorf("%w: set kernel.path, kernel.from: stage or kernel.package", ErrNoKernel)
	}
	if err != nil {
		return nil, err
	}
	if err := checkKernelArch(im.kernel, im.arch, spec.Profile); err != nil {
		return nil, err
	}
	im.inputs = append(im.inputs, pkgInputs...)
	kin := Input{Name: "kernel", Kind: "vmlinuz", Path: im.kernel.file}
	if im.kernel.display != "" {
		kin.Path = im.kernel.display
	}
	switch {
	case im.kernel.file == "":
		kin.Path = "stage:/boot/vmlinuz-" + im.kernel.version
	case im.kernel.sum == "": // a package's kernel (a host kernel was hashed early)
		if im.kernel.sum, err = b.sumFile(im.kernel.file); err != nil {
			return nil, fmt.Errorf("kernel: %w", err)
		}
	}
	kin.SHA256 = im.kernel.sum
	im.inputs = append(im.inputs, kin)
	if im.added == nil && im.kernel.modules != "" {
		if im.added, err = moduleTree(im.kernel.modules, im.kernel.version, b.modules(im.arch)); err != nil {
			return nil, err
		}
	}
	if im.added == nil {
		// A kernel from the stage has its modules in the stage: only the
		// list of what to load is added.
		im.added = fstree.New()
		im.added.AddFile(layout.Modules, []byte(strings.Join(b.modules(im.arch), "\n")+"\n"), 0o644, 0, 0)
	}
	if st.key == "" {
		stageTree, err := im.stageTree()
		if err != nil {
			return nil, err
		}
		k, ok := treeKey(stageTree, segmentFormat, epoch)
		if !ok {
			return nil, fmt.Errorf("stage %s: cannot name its content for the cache", st.input.Kind)
		}
		im.stageKey = k
	} else {
		// The stage is named by its input; what was added (host files,
		// small generated ones) is keyed as a tree.
		ak, ok := treeKey(im.added)
		if !ok {
			return nil, fmt.Errorf("stage %s: cannot name the kernel modules for the cache", st.input.Kind)
		}
		im.stageKey = keyOf(segmentFormat, epoch, st.key, ak)
		if im.arch != profiles.DefaultArch {
			// Never the segment of another architecture's bake of the
			// same input: this one reads the stage and checks it.
			im.stageKey = keyOf(im.stageKey, "arch="+im.arch)
		}
	}
	// The upper segments repeat some of the stage's directories: take
	// their metadata from the cached segment, else read the stage.
	if st.tree == nil {
		if info, err := readInfo(cachedSegmentFile(b.opts.CacheDir, im.stageKey)); err == nil && info.Dirs != nil {
			im.stageDirs = info.Dirs
		}
	}
	if im.stageDirs == nil {
		stageTree, err := im.stageTree()
		if err != nil {
			return nil, err
		}
		im.stageDirs = stageDirs(stageTree)
	}

	// 3. The applier and /init.
	b.p.begin("applier")
	app, err := pre.applier.wait()
	if err != nil {
		return nil, err
	}
	// Named by its bytes alone: where this checkout built it is not part
	// of the image.
	im.inputs = append(im.inputs, Input{Name: "applier", Kind: "bellbuild", SHA256: app.sum})
	if im.applier, im.applierKey, err = applierTree(app, im.stageDirs, b.epoch()); err != nil {
		return nil, err
	}
	im.applierSeg = pre.applierSegment(im.applierKey)

	// 4. Configuration.
	b.p.begin("configuration")
	bundle, err := filterBundle(spec, b.opts.Nodes)
	if err != nil {
		return nil, err
	}
	im.bundle = bundle
	data, err := nodeconf.Marshal(bundle, nodeconf.JSON)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	im.config = fstree.New()
	im.config.Add(fstree.Entry{Path: path.Dir(bundlePath), Type: fstree.Dir, Mode: 0o755})
	// The bundle holds password hashes: root only.
	im.config.AddFile(bundlePath, data, 0o600, 0, 0)
	if err := keepParents(im.config, im.stageDirs); err != nil {
		return nil, err
	}
	im.configKey, _ = treeKey(im.config, segmentFormat, epoch)
	im.inputs = append(im.inputs, Input{Name: "bundle", Kind: "json", SHA256: sha256Hex(data)})
	for _, src := range spec.Sources {
		in := Input{Name: "site", Path: src}
		if filepath.IsAbs(src) {
			if in.SHA256, err = fileSHA256(src); err != nil {
				return nil, fmt.Errorf("site: %w", err)
			}
		}
		im.inputs = append(im.inputs, in)
	}
	if outer {
		// Image stops it after the bake.
		im.early = pre
	}
	return im, nil
}

// siteRelative returns inputs with the paths inside the site directory dir
// (or where its symlinks lead) written "site:REL".
func siteRelative(dir string, inputs []Input) []Input {
	if dir == "" {
		return inputs
	}
	dirs := []string{dir}
	if real, err := filepath.EvalSymlinks(dir); err == nil && real != dir {
		dirs = append(dirs, real)
	}
	out := slices.Clone(inputs)
	for i, in := range out {
		if !filepath.IsAbs(in.Path) {
			continue
		}
		for _, d := range dirs {
			if rel, err := filepath.Rel(d, in.Path); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
				out[i].Path = "site:" + filepath.ToSlash(rel)
				break
			}
		}
	}
	return out
}

// upperDirs are the directories the applier and configuration segments
// hold; the stage's metadata for them is kept with its cached segment.
var upperDirs = []string{".", path.Dir(applierPath), "dev", "etc", path.Dir(bundlePath)}

// dirMeta is a stage directory's metadata.
type dirMeta struct {
	Mode fs.FileMode `json:"mode"`
	UID  uint32      `json:"uid"`
	GID  uint32      `json:"gid"`
}

// stageDirs records the stage's metadata for upperDirs.
func stageDirs(t *fstree.Tree) map[string]dirMeta {
	out := map[string]dirMeta{}
	for _, p := range upperDirs {
		if e := t.Get(p); e != nil && e.Type == fstree.Dir {
			out[p] = dirMeta{Mode: e.Mode, UID: e.UID, GID: e.GID}
		}
	}
	return out
}

// keepParents gives directories of an upper segment the metadata the stage
// has for them: the kernel applies a directory entry's mode and owner to
// an existing directory, so an implicit 0755 root "etc" must not change
// the stage's own.
// Every directory of an upper segment must be one of upperDirs (whose
// metadata a cached stage segment keeps).
func keepParents(upper *fstree.Tree, dirs map[string]dirMeta) error {
	for _, e := range upper.Walk() {
		if e.Type != fstree.Dir {
			continue
		}
		if !slices.Contains(upperDirs, e.Path) {
			return fmt.Errorf("build: upper segment directory /%s is not in upperDirs", e.Path)
		}
		if d, ok := dirs[e.Path]; ok {
			e.Mode, e.UID, e.GID = d.Mode, d.UID, d.GID
		}
	}
	return nil
}

// filterBundle returns spec's bundle, with only the named nodes when names
// is set (each must exist).
func filterBundle(spec *profiles.ImageSpec, names []string) (*nodeconf.Bundle, error) {
	b := &nodeconf.Bundle{Profile: spec.Profile, Nodes: []nodeconf.Node{}}
	if spec.Bundle != nil {
		c := *spec.Bundle
		b = &c
		if b.Nodes == nil {
			b.Nodes = []nodeconf.Node{}
		}
	}
	if len(names) == 0 {
		return b, nil
	}
	var kept []nodeconf.Node
	for _, n := range names {
		i := slices.IndexFunc(b.Nodes, func(x nodeconf.Node) bool { return x.Node == n })
		if i < 0 {
			var have []string
			for _, x := range b.Nodes {
				have = append(have, x.Node)
			}
			return nil, fmt.Errorf("--node %s: no such node boots profile %s (nodes: %s)", n, spec.Profile, strings.Join(have, ", "))
		}
		if !slices.ContainsFunc(kept, func(x nodeconf.Node) bool { return x.Node == n }) {
			kept = append(kept, b.Nodes[i])
		}
	}
	slices.SortFunc(kept, func(a, b nodeconf.Node) int { return strings.Compare(a.Node, b.Node) })
	b.Nodes = kept
	return b, nil
}

// write does steps 5–8.
func (b *baker) write(ctx context.Context, im *image) (*Manifest, error) {
	spec := im.spec
	epoch := b.epoch()
	if err := os.MkdirAll(b.opts.OutDir, 0o755); err != nil {
		return nil, err
	}
	final := filepath.Join(b.opts.OutDir, spec.Profile)
	tmp, err := os.MkdirTemp(b.opts.OutDir, "."+spec.Profile+".tmp-")
	if err != nil {
		return nil, err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}

	m := &Manifest{
		Profile:         spec.Profile,
		Chain:           slices.Clone(spec.Chain),
		Arch:            im.arch,
		Environment:     spec.Environment,
		Site:            spec.Revision,
		SourceDateEpoch: epoch,
		Cmdline:         strings.Join(spec.Cmdline, " "),
		KernelVersion:   im.kernel.version,
		Nodes:           []string{},
		Inputs:          siteRelative(spec.SiteDir, im.inputs),
		Segments:        []Artifact{},
		Artifacts:       []Artifact{},
	}
	for _, n := range im.bundle.Nodes {
		m.Nodes = append(m.Nodes, n.Node)
	}

	// What a later bake may reuse of the initramfs (reuse.go), and the
	// cached stage segment this one took over.
	var prefix []Artifact
	var prefixState []byte
	var taken *segment

	if wantsInitramfs(spec) {
		// A re-bake whose replaced output starts with the cached stage
		// may take the stage's cache file over (reuse.go) if it gets the
		// cache to itself.
		mayTake := mayTakeStage(final, b.opts.CacheDir, im.stageKey)
		if mayTake && im.applierSeg != nil {
			// It holds the cache shared while it makes the applier
			// segment (or finds it cached): let it finish, so that this
			// bake can have the cache to itself.
			im.applierSeg.wait()
		}
		lock, err := lockCache(b.opts.CacheDir, mayTake)
		if err != nil {
			return nil, err
		}
		defer lock.unlock()
		var keep []string
		defer func() {
			if done {
				b.prune(lock, keep)
			}
		}()
		// A stage segment taken over goes back to the cache if the bake
		// fails before the swap gives it back.
		defer func() {
			if taken != nil {
				if err := putBack(filepath.Join(tmp, InitramfsFile), taken); err != nil {
					b.log.Warn("cache: returning the stage segment", "err", err)
				}
			}
		}()
		// 5–7. The segments, while the kernel is copied.
		file := filepath.Join(tmp, InitramfsFile)
		kern := later(b.opts.sequential, func() (copied, error) {
			size, sum, err := copyKernel(im.kernel, filepath.Join(tmp, KernelFile))
			return copied{size, sum}, err
		})
		// On any return: nothing may go on writing into tmp.
		defer kern.settle()
		segs, direct, err := b.segments(ctx, im, tmp, file)
		if err != nil {
			return nil, err
		}
		stageSeg, appSeg, confSeg := segs[0], segs[1], segs[2]
		// A stage segment just written is put in place in the cache
		// while the initramfs is finished; before the cache is unlocked
		// on any return.
		defer stageSeg.settle()
		m.Stats.StageCached, m.Stats.ApplierCached = stageSeg.cached, appSeg.cached
		m.Stats.StageRead = im.src.tree != nil
		keep = []string{stageSeg.file, appSeg.file}
		for _, s := range segs {
			m.Segments = append(m.Segments, Artifact{Name: s.name, Size: s.Size, SHA256: s.SHA256})
		}

		// 8. Artifacts. A stage just compressed is in the initramfs
		// already: the rest is appended. Else the spare initramfs when it
		// can be taken over, else the cached stage's file, else a copy.
		b.p.begin("assemble " + final)
		var size int64
		var sum string
		var state []byte
		if direct != nil {
			size, sum, state, err = finish(direct, 1, segs)
		} else {
			size, sum, state, err = reuseSpare(final, file, segs)
			if errors.Is(err, errNoSpare) && mayTake && lock.excl && stageSeg.cached {
				size, sum, state, err = takeStage(file, segs)
				if err == nil {
					taken = stageSeg
					m.Stats.StageTaken = true
				}
			}
			m.Stats.InitramfsReused = err == nil
			if err != nil {
				// Reuse only saves time: whatever stopped it, copy.
				if !errors.Is(err, errNoSpare) {
					b.log.Warn("bake: could not extend the previous initramfs; copying", "err", err)
					os.Remove(file)
				}
				size, sum, state, err = concat(file, segs)
			}
		}
		prefix, prefixState = prefixOf(segs), state
		k, kerr := kern.wait()
		if err == nil {
			err = kerr
		}
		if serr := stageSeg.settle(); err == nil {
			err = serr
		}
		if err != nil {
			return nil, err
		}
		m.Artifacts = append(m.Artifacts, Artifact{Name: KernelFile, Size: k.size, SHA256: k.sum})
		m.Artifacts = append(m.Artifacts, Artifact{Name: InitramfsFile, Size: size, SHA256: sum})
		os.Remove(confSeg.file)
	} else {
		b.p.begin("assemble " + final)
	}
	if slices.Contains(spec.Outputs, "tar") {
		a, err := writeTar(ctx, im.fullTree(), filepath.Join(tmp, TarFile), epoch)
		if err != nil {
			return nil, err
		}
		m.Artifacts = append(m.Artifacts, a)
	}
	if wantsMedia(spec.Outputs) {
		if err := b.writeMedia(ctx, im, tmp, m); err != nil {
			return nil, err
		}
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileSync(filepath.Join(tmp, ManifestFile), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	keep := func(old string) {
		back := taken
		taken = nil // the swap is done: the output keeps its initramfs
		if err := keepSpare(final, old, prefix, prefixState, back); err != nil {
			b.log.Warn("bake: keeping the previous initramfs for reuse", "err", err)
		}
	}
	if err := swapIn(tmp, final, keep); err != nil {
		return nil, err
	}
	done = true
	b.p.end("")
	m.Stats.Dir = final
	return m, nil
}

// segments does steps 5–7: the stage, applier and configuration
// segments, each from the cache when it has it. The applier and
// configuration segments are made while the stage segment is (unless the
// applier's was made while the stage was read: overlap.go). A stage
// segment compressed now goes into the initramfs, file, as it is written,
// besides the cache: direct is then file, open, holding exactly the stage
// segment, and the assembly appends the rest instead of copying 100 MB
// again. Bakes with opts.sequential do one step after the other and never
// write file.
func (b *baker) segments(ctx context.Context, im *image, tmp, file string) (segs []*segment, direct *os.File, err error) {
	epoch := b.epoch()
	seq := b.opts.sequential
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		if err != nil && direct != nil {
			direct.Close()
			direct = nil
		}
	}()
	// The progress of a segment made on another goroutine goes nowhere:
	// the stage's has the line.
	quiet := func() *progress {
		if seq {
			return b.p
		}
		return newProgress(nil, b.log, 0)
	}
	app := later(seq, func() (*segment, error) {
		if im.applierSeg != nil {
			if s, err := im.applierSeg.wait(); err == nil {
				return s, nil
			}
			// Made again here, with this bake's own error if any.
		}
		return makeSegment(ctx, b.opts.CacheDir, tmp, "applier", im.applierKey, treeOf(im.applier), nil, epoch, applierInode, quiet(), nil)
	})
	conf := later(seq, func() (*segment, error) {
		return makeSegment(ctx, "", tmp, "config", "", treeOf(im.config), nil, epoch, configInode, quiet(), nil)
	})
	var also func() (io.Writer, error)
	var wb *writeback
	if !seq {
		defer func() {
			if err != nil {
				// They write into the cache and tmp: stop them, and wait.
				cancel()
				app.settle()
				conf.settle()
			}
		}()
		also = func() (io.Writer, error) {
			f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, artifactMode)
			if err != nil {
				return nil, err
			}
			direct, wb = f, &writeback{f: f}
			return wb, nil
		}
	}

	// 5. The stage segment, from the cache when possible.
	b.p.begin("stage segment")
	stageSeg, err := makeSegment(ctx, b.opts.CacheDir, tmp, "stage", im.stageKey, im.stageTree, im.stageDirs, epoch, stageInode, b.p, also)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			stageSeg.settle()
		}
	}()
	if direct != nil && wb.n != stageSeg.Size {
		return nil, nil, fmt.Errorf("%s: %d bytes of the stage segment, want %d", file, wb.n, stageSeg.Size)
	}
	b.p.end(cachedNote(stageSeg.cached))

	// 6. The applier segment, likewise.
	b.p.begin("applier segment")
	appSeg, err := app.wait()
	if err != nil {
		return nil, nil, err
	}
	switch {
	case appSeg.cached:
		b.p.end(cachedNote(true))
	case !seq:
		// This step's time is the time waited for it, not its own.
		b.p.end("made alongside the stage")
	default:
		b.p.end("")
	}

	// 7. The configuration segment: always written (it is small).
	b.p.begin("configuration segment")
	confSeg, err := conf.wait()
	if err != nil {
		return nil, nil, err
	}
	return []*segment{stageSeg, appSeg, confSeg}, direct, nil
}

// copied is a copied kernel.
type copied struct {
	size int64
	sum  string
}

// wantsInitramfs says whether a bake of spec makes an initramfs: disks
// and ISOs boot the same kernel and initramfs (media.go).
func wantsInitramfs(spec *profiles.ImageSpec) bool {
	return slices.Contains(spec.Outputs, "initramfs") || len(spec.Outputs) == 0 || wantsMedia(spec.Outputs)
}

func cachedNote(c bool) string {
	if c {
		return "cached"
	}
	return ""
}

// copyKernel writes the kernel image to file. A kernel from the host is
// copied file to file (copy_file_range) and keeps the sha256 its input
// already has; one from the stage is hashed as it is written.
func copyKernel(k *kernel, file string) (int64, string, error) {
	if k.file == "" {
		rc, err := k.content.Open()
		if err != nil {
			return 0, "", fmt.Errorf("kernel: %w", err)
		}
		defer rc.Close()
		return writeHashed(file, rc, 0o644)
	}
	in, err := os.Open(k.file)
	if err != nil {
		return 0, "", fmt.Errorf("kernel: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, "", err
	}
	n, err := io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != k.size {
		err = fmt.Errorf("kernel %s changed during the bake (%d bytes, was %d)", k.file, n, k.size)
	}
	if err != nil {
		return 0, "", err
	}
	return n, k.sum, nil
}

// writeTar writes the tree as a reproducible stage tarball.
func writeTar(ctx context.Context, t *fstree.Tree, file string, epoch int64) (Artifact, error) {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(fstree.WriteTar(&countWriter{w: pw, ctx: ctx}, t, epoch))
	}()
	size, sum, err := writeHashed(file, pr, artifactMode)
	pr.Close()
	if err != nil {
		return Artifact{}, fmt.Errorf("tar: %w", err)
	}
	return Artifact{Name: TarFile, Size: size, SHA256: sum}, nil
}

// writeHashed copies r to a new file of that mode, fsyncs it, and returns
// its size and sha256.
func writeHashed(file string, r io.Reader, mode os.FileMode) (int64, string, error) {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return 0, "", err
	}
	h := newSHA256()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, "", err
	}
	return n, h.hex(), nil
}

func writeFileSync(file string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// swapIn makes the directory tmp appear at final in one step: a rename
// when final does not exist, else an atomic exchange (renameat2
// RENAME_EXCHANGE) after which the old content, now at tmp, is removed.
// Readers see either the old set of artifacts or the new one, never a mix.
// In between, keep is called with where the old content is ("" when there
// was none), to take what it wants of it.
func swapIn(tmp, final string, keep func(old string)) error {
	if err := atomicfile.SyncDir(tmp); err != nil {
		return err
	}
	if _, err := os.Lstat(final); errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(tmp, final); err != nil {
			return err
		}
		keep("")
	} else {
		if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE); err != nil {
			return fmt.Errorf("replacing %s: %w", final, err)
		}
		keep(tmp)
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("removing the previous %s: %w", final, err)
		}
	}
	return atomicfile.SyncDir(path.Dir(final))
}
