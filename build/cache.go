package build

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultCacheLimit bounds the segment cache when Options.CacheLimit is 0:
// room for a few dozen stages of a real root (about 110 MB each).
const DefaultCacheLimit = 8 << 30

// staleTemp is how old a temporary file in the cache must be before a
// prune takes it for the leftover of a killed bake.
const staleTemp = 24 * time.Hour

// cacheLock is held shared by every bake that uses the segment cache and
// taken exclusively, without waiting, to prune it: a prune never removes
// a segment another bake is reading (it skips pruning instead). A bake
// that may take a cached segment file over (reuse.go) tries to hold it
// exclusively from the start, and other bakes wait for it.
type cacheLock struct {
	f    *os.File
	excl bool
}

// lockCache locks the cache in dir: exclusively when tryExclusive is set
// and no other bake holds it, else shared (waiting for an exclusive
// holder).
func lockCache(dir string, tryExclusive bool) (*cacheLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	l := &cacheLock{f: f}
	if tryExclusive && unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		l.excl = true
		return l, nil
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("cache: lock %s: %w", f.Name(), err)
	}
	return l, nil
}

// exclusive turns the shared lock into an exclusive one if no other bake
// holds it; false means the cache is in use. (Linux drops the shared lock
// when the upgrade fails: call it only when done with the cache.)
func (l *cacheLock) exclusive() bool {
	if !l.excl {
		l.excl = unix.Flock(int(l.f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
	}
	return l.excl
}

func (l *cacheLock) unlock() { l.f.Close() }

// touchSegment marks a cached segment as just used: its info file's mtime
// orders the entries for pruning.
func touchSegment(file string) {
	now := time.Now()
	os.Chtimes(file+".json", now, now)
}

// pruneSegments removes the least recently used segments (with their
// info files) from dir until the rest take at most limit bytes, never one
// of keep (the segments of the bake that just finished), and temporary
// files older than staleTemp (left by killed bakes). It returns how many
// segments and bytes went, and the bytes that stay.
func pruneSegments(dir string, limit int64, keep []string) (n int, freed, total int64, err error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, 0, nil
	}
	if err != nil {
		return 0, 0, 0, err
	}
	type entry struct {
		file string
		size int64
		used time.Time
	}
	var segs []entry
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		fi, err := e.Info()
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".tmp-"):
			if time.Since(fi.ModTime()) > staleTemp {
				os.Remove(p)
			}
		case strings.HasSuffix(e.Name(), ".cpio.zst"):
			used := fi.ModTime()
			if ji, err := os.Stat(p + ".json"); err == nil {
				used = ji.ModTime()
			}
			segs = append(segs, entry{p, fi.Size(), used})
			total += fi.Size()
		}
	}
	// Oldest use first; the name breaks ties so that the order is stable.
	slices.SortFunc(segs, func(a, b entry) int {
		if c := a.used.Compare(b.used); c != 0 {
			return c
		}
		return strings.Compare(a.file, b.file)
	})
	for _, s := range segs {
		if total <= limit {
			break
		}
		if slices.Contains(keep, s.file) {
			continue
		}
		if err := os.Remove(s.file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n, freed, total, err
		}
		os.Remove(s.file + ".json")
		n++
		freed += s.size
		total -= s.size
	}
	return n, freed, total, nil
}

// prune runs pruneSegments after a bake when no other bake uses the cache.
func (b *baker) prune(l *cacheLock, keep []string) {
	limit := b.opts.CacheLimit
	if limit == 0 {
		limit = DefaultCacheLimit
	}
	if limit < 0 || !l.exclusive() {
		return
	}
	n, freed, total, err := pruneSegments(filepath.Join(b.opts.CacheDir, "segments"), limit, keep)
	if err != nil {
		b.log.Warn("cache: prune", "err", err)
	}
	if n > 0 {
		b.log.Info("cache: pruned the least recently used segments", "segments", n, "freed_MiB", freed>>20, "kept_MiB", total>>20, "limit_MiB", limit>>20)
	}
}
