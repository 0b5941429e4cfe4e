package build

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles"
)

// What a cold bake does at the same time.
//
// A cold bake of a real root is mostly the stage segment's compression,
// which keeps both cores busy; what comes before it (walking the stage)
// keeps about one busy. So everything that does not need the stage's tree
// is done while the stage is walked (prepare): the host kernel is hashed
// and its modules listed, the applier is checked and hashed, and, for a
// dir stage, the applier segment is compressed into the cache with the
// metadata the stage's directories have on disk (speculate). Once the
// stage is read, that segment is used if its key is the one the stage's
// tree gives (it always is unless a directory changed in between), else
// dropped. The applier segment of other stages is compressed while the
// stage segment is (baker.segments). A stage segment goes into the
// initramfs as it is written, and into the cache, whose copy is fsynced
// and renamed while the rest of the initramfs is appended; the kernel is
// copied meanwhile. None of it changes a byte of the output:
// TestOverlapSameBytes bakes each case both ways.

// future is the result of a function running on another goroutine, or of
// one deferred until its result is asked for.
type future[T any] struct {
	once sync.Once
	run  func() // nil when running on its own goroutine
	done chan struct{}
	v    T
	err  error
}

// async runs f on another goroutine.
func async[T any](f func() (T, error)) *future[T] {
	fu := &future[T]{done: make(chan struct{})}
	go func() {
		defer close(fu.done)
		fu.v, fu.err = f()
	}()
	return fu
}

// later is async for a sequential bake: f runs on the first wait.
func later[T any](sequential bool, f func() (T, error)) *future[T] {
	if !sequential {
		return async(f)
	}
	fu := &future[T]{done: make(chan struct{})}
	fu.run = func() {
		defer close(fu.done)
		fu.v, fu.err = f()
	}
	return fu
}

// wait returns f's result once it is there; it may be called any number
// of times.
func (f *future[T]) wait() (T, error) {
	if f.run != nil {
		f.once.Do(f.run)
	}
	<-f.done
	return f.v, f.err
}

// settle waits for f if it runs on its own goroutine; a deferred f that
// nobody waited for is not run.
func (f *future[T]) settle() {
	if f.run == nil {
		<-f.done
	}
}

// hostKernelModules is a host kernel, hashed, with the tree of its
// modules.
type hostKernelModules struct {
	k     *kernel
	added *fstree.Tree
}

// readHostKernel resolves, hashes and lists the modules (for
// architecture a) of kernel.path.
func (b *baker) readHostKernel(p, a string) (hostKernelModules, error) {
	k, err := hostKernel(p)
	if err != nil {
		return hostKernelModules{}, err
	}
	if k.sum, err = b.sumFile(k.file); err != nil {
		return hostKernelModules{}, fmt.Errorf("kernel: %w", err)
	}
	var added *fstree.Tree
	if k.modules != "" {
		if added, err = moduleTree(k.modules, k.version, b.modules(a)); err != nil {
			return hostKernelModules{}, err
		}
	}
	return hostKernelModules{k, added}, nil
}

// applierFile is the static bellbuild an image embeds.
type applierFile struct {
	path string // symlinks resolved
	size int64
	sum  string
}

// readApplier finds (applierFor: it is a static bellbuild for
// architecture a), checks and hashes the applier of an image of profile.
func (b *baker) readApplier(ctx context.Context, a, profile string) (applierFile, error) {
	app, err := b.applierFor(ctx, a, profile)
	if err != nil {
		return applierFile{}, err
	}
	st, err := os.Stat(app)
	if err != nil {
		return applierFile{}, fmt.Errorf("applier: %w", err)
	}
	sum, err := b.sumFile(app)
	if err != nil {
		return applierFile{}, fmt.Errorf("applier: %w", err)
	}
	return applierFile{path: app, size: st.Size(), sum: sum}, nil
}

// applierTree is segment 2, bellbuild and /init, with the stage's
// metadata for its directories (dirs), and its key.
func applierTree(a applierFile, dirs map[string]dirMeta, epoch int64) (*fstree.Tree, string, error) {
	t := fstree.New()
	t.Add(fstree.Entry{Path: path.Dir(applierPath), Type: fstree.Dir, Mode: 0o755})
	t.Add(fstree.Entry{Path: applierPath, Type: fstree.Regular, Mode: 0o755, Size: a.size, Data: fstree.File(a.path)})
	t.Add(fstree.Entry{Path: layout.Init, Type: fstree.Symlink, Mode: 0o777, Target: applierPath})
	// The kernel opens /dev/console for init before anything mounts /dev.
	t.Add(fstree.Entry{Path: "dev/console", Type: fstree.CharDev, Mode: 0o600, Major: 5, Minor: 1})
	t.Add(fstree.Entry{Path: "dev/null", Type: fstree.CharDev, Mode: 0o666, Major: 1, Minor: 3})
	if err := keepParents(t, dirs); err != nil {
		return nil, "", err
	}
	key, _ := treeKey(t, segmentFormat, fmt.Sprint(epoch), "sha256:"+a.sum)
	return t, key, nil
}

// early is what prepare starts before it reads the stage.
type early struct {
	// kernel is the host kernel with its modules (nil for a kernel from
	// the stage).
	kernel  *future[hostKernelModules]
	applier *future[applierFile]
	// specKey and specSeg are, for a dir stage, the key of the applier
	// segment made with its directories' metadata as read on disk, and
	// that segment (nil for other stages, and in a sequential bake).
	specKey *future[string]
	specSeg *future[*segment]
	cancel  context.CancelFunc
}

// start begins reading the host kernel and the applier (for architecture
// a) on other goroutines; and, when speculate is set and the stage is a directory,
// making the applier segment (see "What a cold bake does at the same
// time").
func (b *baker) start(ctx context.Context, spec *profiles.ImageSpec, a string, speculate bool) *early {
	ctx, cancel := context.WithCancel(ctx)
	e := &early{cancel: cancel}
	seq := b.opts.sequential
	if spec.Kernel.From != "stage" && spec.Kernel.Path != "" {
		e.kernel = later(seq, func() (hostKernelModules, error) { return b.readHostKernel(spec.Kernel.Path, a) })
	}
	e.applier = later(seq, func() (applierFile, error) { return b.readApplier(ctx, a, spec.Profile) })
	if !speculate || seq || spec.Stage.Dir == "" {
		return e
	}
	var tree *fstree.Tree
	e.specKey = async(func() (string, error) {
		a, err := e.applier.wait()
		if err != nil {
			return "", err
		}
		dirs, err := diskDirs(spec.Stage.Dir)
		if err != nil {
			return "", err
		}
		t, key, err := applierTree(a, dirs, b.epoch())
		tree = t
		return key, err
	})
	e.specSeg = async(func() (*segment, error) {
		key, err := e.specKey.wait()
		if err != nil {
			return nil, err
		}
		lock, err := lockCache(b.opts.CacheDir, false)
		if err != nil {
			return nil, err
		}
		defer lock.unlock()
		return makeSegment(ctx, b.opts.CacheDir, "", "applier", key, treeOf(tree), nil, b.epoch(), applierInode, newProgress(nil, b.log, 0), nil)
	})
	return e
}

// applierSegment returns the applier segment being made early when key,
// the key of the applier segment the stage's tree gives, is its key; else
// it stops making it and returns nil.
func (e *early) applierSegment(key string) *future[*segment] {
	if e.specKey == nil {
		return nil
	}
	if k, err := e.specKey.wait(); err == nil && k == key {
		return e.specSeg
	}
	e.cancel()
	return nil
}

// stop ends whatever is still running and waits for it (an applier
// segment made early writes into the cache).
func (e *early) stop() {
	e.cancel()
	if e.specSeg != nil {
		e.specSeg.settle()
	}
	if e.kernel != nil {
		e.kernel.settle()
	}
	e.applier.settle()
}

// diskDirs is stageDirs for a dir stage, read from the disk with lstat as
// fstree.FromDir reads each directory (the root through its symlinks).
func diskDirs(dir string) (map[string]dirMeta, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]dirMeta{}
	for _, p := range upperDirs {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, p), &st); err != nil {
			continue
		}
		typ, mode, err := fstree.FromUnixMode(st.Mode)
		if err != nil || typ != fstree.Dir {
			continue
		}
		out[p] = dirMeta{Mode: mode, UID: st.Uid, GID: st.Gid}
	}
	return out, nil
}
