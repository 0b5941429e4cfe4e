// Package bakes holds the bakes serve hands out: for each profile, the
// files of its current bake in OUT/PROFILE/, opened together when the bake
// is taken, and what the caller makes of it (the machines that boot it).
//
// A bake replaces OUT/PROFILE/ whole (package build writes a new
// directory and exchanges it with the old one in one rename), so a new
// manifest on disk is a new bake. Set looks at a profile's manifest (its
// device, inode, size and modification time) at most once per
// Config.Interval, when a request asks for the profile; when it changed,
// it takes the new bake: it opens the manifest and every file of
// Config.Files through the directory it read the manifest from, checks
// that the manifest is whole (JSON, and each artifact it lists of the
// size the file has), and only then swaps it in, with what the caller
// makes of it, in one step. So:
//
//   - a request is answered from one bake: a machine's command line, its
//     manifest and its disk never come from two;
//   - a request in flight keeps reading the files it opened, even after
//     the bake that held them was replaced and deleted;
//   - a manifest that is not whole (being written in place, or broken)
//     leaves the previous bake served, and is logged once.
//
// A replaced bake's files are closed after Config.Grace (the space of a
// replaced disk.raw is given back to the file system then, and when the
// last request reading it ends). Config.Live names files opened by name
// instead (a network boot's initramfs, which a re-bake reuses only while
// nobody holds it). Linux only: a held file is opened anew through
// /proc/self/fd, and the manifest served is a copy in memory (memfd) of
// the one checked.
package bakes

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/pxe/install/wire"
)

// Defaults of Config.
const (
	DefaultInterval = time.Second
	DefaultGrace    = time.Minute
	// MaxManifest bounds the manifest read.
	MaxManifest = 16 << 20
)

// Config says where the bakes are and what of each is held open.
type Config struct {
	// Dir is the directory of the bakes (OUT): a directory per profile.
	Dir string
	// Manifest is the name of a bake's manifest (manifest.json); Files
	// are the other names held open with it (those requests read). A name
	// a bake lacks is simply not served.
	Manifest string
	Files    []string
	// Live are names opened by name, from the profile's current
	// directory, when asked for, rather than held: a network boot's
	// initramfs, which a re-bake takes over and cuts for its cache only
	// when nothing holds it open (build/reuse.go). Within the interval
	// after a new bake, such a file may be the new bake's.
	Live []string
	// Interval is how long a profile's manifest is not looked at again
	// (DefaultInterval when 0); Grace how long a replaced bake's files
	// stay open for a request that took that bake just before
	// (DefaultGrace when 0).
	Interval, Grace time.Duration
	// Log gets a line for each bake taken or refused (slog.Default()
	// when nil).
	Log *slog.Logger
}

// Bake is one bake of a profile: its manifest, as read, and its files,
// held open.
type Bake struct {
	// Profile is the profile's name (its directory in OUT).
	Profile string
	// Manifest is the manifest's content.
	Manifest []byte
	// Root is the manifest's disk root hash ("" without a disk).
	Root  string
	files map[string]*os.File
	live  map[string]bool
	root  *os.Root // OUT, for the live files
	key   statKey
	mu    sync.RWMutex // held to read while opening, to write while closing
	shut  bool
}

// ID is the bake's manifest SHA-256, "sha256:HEX".
func (b *Bake) ID() string {
	sum := sha256.Sum256(b.Manifest)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Open opens the bake's file name, a path relative to OUT
// ("PROFILE/disk.raw"), anew: a descriptor of its own (its own offset)
// on the file as it was when the bake was taken, whatever was baked
// since. A name the bake does not hold wraps fs.ErrNotExist.
func (b *Bake) Open(name string) (*os.File, error) {
	dir, base := path.Split(name)
	f, ok := b.files[base]
	if dir != b.Profile+"/" || !ok && !b.live[base] {
		return nil, fmt.Errorf("%s: not in the bake of profile %s: %w", name, b.Profile, fs.ErrNotExist)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.shut {
		return nil, fmt.Errorf("%s: the bake was replaced: %w", name, fs.ErrNotExist)
	}
	if !ok {
		return b.root.Open(name)
	}
	return reopen(f)
}

// reopen opens f again through /proc/self/fd: a new open file (not a
// dup, whose offset would be shared), even when f's name was removed.
func reopen(f *os.File) (*os.File, error) {
	g, err := os.Open("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		return nil, fmt.Errorf("reopening %s: %w", f.Name(), err)
	}
	a, errA := f.Stat()
	c, errC := g.Stat()
	if errA != nil || errC != nil || !os.SameFile(a, c) {
		g.Close()
		return nil, fmt.Errorf("reopening %s: not the same file: %w", f.Name(), fs.ErrNotExist)
	}
	return g, nil
}

// close closes the bake's files.
func (b *Bake) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shut {
		return
	}
	b.shut = true
	for _, f := range b.files {
		f.Close()
	}
}

// statKey tells one manifest file from another: a new bake is a new
// inode; a manifest changed in place changes size or time.
type statKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

func keyOf(fi fs.FileInfo) statKey {
	k := statKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		k.dev, k.ino = uint64(st.Dev), st.Ino
	}
	return k
}

// Set is the current bake of each profile, and what the caller makes of
// it (a T). It is safe for concurrent use.
type Set[T any] struct {
	cfg  Config
	root *os.Root
	make func(profile string, b *Bake) (T, error)
	log  *slog.Logger
	now  func() time.Time

	profiles sync.Map // profile → *entry[T]

	mu       sync.Mutex
	replaced map[*Bake]*time.Timer // bakes closed after the grace
	closed   bool
}

// entry is one profile's.
type entry[T any] struct {
	mu     sync.Mutex   // held while the bake is looked at and taken
	next   atomic.Int64 // when to look again (Unix ns)
	cur    atomic.Pointer[current[T]]
	seen   statKey // the manifest last looked at (taken or refused)
	exists bool    // whether it existed then
	err    error   // why nothing is served, when nothing is
}

type current[T any] struct {
	bake *Bake // nil: not baked
	val  T
}

// New returns the set of the bakes in cfg.Dir (opened when first looked
// at, and looked for again while it does not exist). make makes a T of a
// profile's bake (nil when the profile is not baked): it is called once
// per bake taken, never for two bakes of one profile at once; when it
// fails, the bake is not taken (and looked at again after the interval).
func New[T any](cfg Config, make func(profile string, b *Bake) (T, error)) (*Set[T], error) {
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	s := &Set[T]{cfg: cfg, make: make, log: cfg.Log, now: time.Now, replaced: map[*Bake]*time.Timer{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s, nil
}

// Close closes every bake's files.
func (s *Set[T]) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for b, t := range s.replaced {
		t.Stop()
		b.close()
	}
	s.profiles.Range(func(_, v any) bool {
		if c := v.(*entry[T]).cur.Load(); c != nil && c.bake != nil {
			c.bake.close()
		}
		return true
	})
	if s.root != nil {
		return s.root.Close()
	}
	return nil
}

// dir is cfg.Dir, opened.
func (s *Set[T]) dir() (*os.Root, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.root == nil {
		r, err := os.OpenRoot(s.cfg.Dir)
		if err != nil {
			return nil, err
		}
		s.root = r
	}
	return s.root, nil
}

// Get returns what was made of profile's current bake. It looks at the
// profile's manifest when it was not looked at for the interval (the
// first call for a profile waits for that; later ones take the bake
// served meanwhile while one of them looks). The error is make's, when
// nothing was ever made for the profile.
func (s *Set[T]) Get(profile string) (T, error) {
	v, ok := s.profiles.Load(profile)
	if !ok {
		v, _ = s.profiles.LoadOrStore(profile, &entry[T]{})
	}
	e := v.(*entry[T])
	now := s.now().UnixNano()
	if c := e.cur.Load(); c == nil {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.cur.Load() == nil && now >= e.next.Load() {
			s.look(profile, e, now)
		}
		if c := e.cur.Load(); c == nil {
			var zero T
			return zero, fmt.Errorf("profile %s: %w", profile, e.err)
		}
	} else if now >= e.next.Load() && e.mu.TryLock() {
		if now >= e.next.Load() {
			s.look(profile, e, now)
		}
		e.mu.Unlock()
	}
	return e.cur.Load().val, nil
}

// look looks at profile's manifest and takes a new bake when it changed
// (a manifest that is not whole is refused once: it is not read again
// until it changes). e.mu is held.
func (s *Set[T]) look(profile string, e *entry[T], now int64) {
	e.next.Store(now + int64(s.cfg.Interval))
	cur := e.cur.Load()
	root, err := s.dir()
	var fi fs.FileInfo
	// A manifest not found may be one in a directory swapped out (and
	// being removed) while os.Root walked the path: looked for again.
	if err == nil {
		for try := 0; try < 3; try++ {
			if fi, err = root.Stat(path.Join(profile, s.cfg.Manifest)); !errors.Is(err, fs.ErrNotExist) {
				break
			}
		}
	}
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.err = err
		s.log.Error("bake: the manifest cannot be read: the bake served is kept", "profile", profile, "err", err, "serving", rootOf(cur))
		return
	}
	var k statKey
	if exists {
		k = keyOf(fi)
	}
	if cur != nil && exists == e.exists && k == e.seen {
		return
	}
	var b *Bake
	if exists {
		if b, err = s.load(root, profile); err != nil {
			s.log.Error("bake: not taken: the bake served is kept", "profile", profile, "err", err, "serving", rootOf(cur))
			e.seen, e.exists = k, true
			if cur != nil {
				return
			}
			// Nothing served yet: the profile is served unbaked.
		}
	}
	val, err := s.make(profile, b)
	if err != nil {
		if b != nil {
			b.close()
		}
		e.err, e.seen, e.exists = err, statKey{}, false // looked at again after the interval
		s.log.Error("bake: not taken: the bake served is kept", "profile", profile, "err", err, "serving", rootOf(cur))
		return
	}
	if b != nil {
		k = b.key
	}
	if b != nil || !exists {
		e.seen, e.exists = k, exists
	}
	e.cur.Store(&current[T]{bake: b, val: val})
	s.taken(profile, cur, b)
}

// taken logs a bake taken, and closes the one it replaced after the
// grace.
func (s *Set[T]) taken(profile string, old *current[T], b *Bake) {
	switch {
	case old == nil:
		if b != nil {
			s.log.Debug("bake: serving", "profile", profile, "root", b.Root, "image", b.ID())
		}
		return
	case b == nil:
		s.log.Warn("bake: no longer baked: its machines will not boot", "profile", profile, "root", rootOf(old)+" → -")
	case old.bake == nil:
		s.log.Info("bake: new bake served", "profile", profile, "root", "- → "+b.Root, "image", b.ID())
	case !bytes.Equal(old.bake.Manifest, b.Manifest):
		s.log.Info("bake: new bake served", "profile", profile, "root", old.bake.Root+" → "+b.Root, "image", b.ID())
	default:
		s.log.Debug("bake: baked again, the same image", "profile", profile, "root", b.Root)
	}
	if old.bake == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		old.bake.close()
		return
	}
	ob := old.bake
	s.replaced[ob] = time.AfterFunc(s.cfg.Grace, func() {
		ob.close()
		s.mu.Lock()
		delete(s.replaced, ob)
		s.mu.Unlock()
	})
}

func rootOf[T any](c *current[T]) string {
	if c == nil || c.bake == nil {
		return "-"
	}
	return c.bake.Root
}

// load takes profile's bake: its manifest and files, opened through the
// one directory, checked whole.
func (s *Set[T]) load(root *os.Root, profile string) (*Bake, error) {
	for try := 0; ; try++ {
		b, err := s.loadOnce(root, profile)
		if err != nil {
			b = nil
		}
		if !errors.Is(err, errSwapped) || try == 3 {
			return b, err
		}
	}
}

// errSwapped: the directory was replaced while it was read.
var errSwapped = errors.New("the bake was replaced while it was read")

func (s *Set[T]) loadOnce(root *os.Root, profile string) (_ *Bake, err error) {
	dir, err := root.OpenRoot(profile)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	b := &Bake{Profile: profile, files: map[string]*os.File{}, live: map[string]bool{}, root: root}
	for _, name := range s.cfg.Live {
		b.live[name] = true
	}
	defer func() {
		// Still the profile's directory: else a bake was swapped in
		// while this one was read (and it is being removed: what
		// failed may have failed for that).
		here, err1 := dir.Stat(".")
		there, err2 := root.Stat(profile)
		if err1 != nil || err2 != nil || !os.SameFile(here, there) {
			err = errSwapped
		}
		if err != nil {
			b.close()
		}
	}()
	mf, err := dir.Open(s.cfg.Manifest)
	if err != nil {
		return nil, err
	}
	b.files[s.cfg.Manifest] = mf
	fi, err := mf.Stat()
	if err != nil {
		return nil, err
	}
	b.key = keyOf(fi)
	if b.Manifest, err = io.ReadAll(io.LimitReader(mf, MaxManifest+1)); err != nil {
		return nil, fmt.Errorf("%s: %w", path.Join(profile, s.cfg.Manifest), err)
	}
	if len(b.Manifest) > MaxManifest {
		return nil, fmt.Errorf("%s: over %d bytes", path.Join(profile, s.cfg.Manifest), MaxManifest)
	}
	var m wire.ImageManifest
	if err := json.Unmarshal(b.Manifest, &m); err != nil {
		return nil, fmt.Errorf("%s: not whole: %w", path.Join(profile, s.cfg.Manifest), err)
	}
	// What is served of the manifest is what was read and checked here,
	// even if the file is then written over in place.
	mem, err := memFile(path.Join(profile, s.cfg.Manifest), b.Manifest, fi.ModTime())
	if err != nil {
		return nil, err
	}
	mf.Close()
	b.files[s.cfg.Manifest] = mem
	if m.Disk != nil {
		b.Root = m.Disk.Root.SHA256
	}
	for _, name := range s.cfg.Files {
		f, err := dir.Open(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		b.files[name] = f
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: not a regular file", path.Join(profile, name))
		}
	}
	// The manifest lists each artifact's size: a file of another size
	// is from another bake, or not written yet.
	for _, a := range m.Artifacts {
		f, ok := b.files[a.Name]
		if !ok {
			continue
		}
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if st.Size() != a.Size {
			return nil, fmt.Errorf("%s: %d bytes, the manifest says %d: not the manifest's bake", path.Join(profile, a.Name), st.Size(), a.Size)
		}
	}
	return b, nil
}

// memFile is a file in memory (memfd) holding data, modified at mtime.
func memFile(name string, data []byte, mtime time.Time) (*os.File, error) {
	fd, err := unix.MemfdCreate(path.Base(name), unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ts := []unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), ts, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return f, nil
}
