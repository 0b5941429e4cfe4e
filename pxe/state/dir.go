package state

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"golang.org/x/sys/unix"
)

// Dir is a Store in a local directory: each key is a file (its value),
// beside it a lock file (KEY.lock) that Update holds with flock(2), so
// that serve and the `bellbuild node` commands can change the same
// directory at once. A value is replaced by a temporary file in the same
// directory, fsynced and renamed over it, and the directory fsynced, before
// Update returns. Files are 0600 and directories 0700: a pending CSR is
// public, but what else a key holds may not be.
type Dir struct {
	dir string
}

// OpenDir opens the store in dir. Nothing is made until the first
// Update (a store that was never written reads as empty), so that reading
// one changes nothing.
func OpenDir(dir string) (*Dir, error) {
	if dir == "" {
		return nil, errors.New("state: no directory")
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("state: %s is not a directory", dir)
	}
	return &Dir{dir: dir}, nil
}

// Path is the directory.
func (d *Dir) Path() string { return d.dir }

func (d *Dir) file(key string) (string, error) {
	if err := CheckKey(key); err != nil {
		return "", err
	}
	return filepath.Join(d.dir, filepath.FromSlash(key)), nil
}

// Get implements Store: a plain read (a rename is atomic, so it sees the
// old value or the new one).
func (d *Dir) Get(_ context.Context, key string) ([]byte, error) {
	p, err := d.file(key)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", key, err)
	}
	return data, nil
}

// Update implements Store.
func (d *Dir) Update(ctx context.Context, key string, f func(old []byte) ([]byte, error)) error {
	p, err := d.file(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("state %s: %w", key, err)
	}
	unlock, err := lock(ctx, p+".lock")
	if err != nil {
		return fmt.Errorf("state %s: %w", key, err)
	}
	defer unlock()
	old, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		old, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("state %s: %w", key, err)
	}
	val, err := f(old)
	switch {
	case errors.Is(err, ErrUnchanged):
		return nil
	case err != nil:
		return err
	case val == nil:
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("state %s: %w", key, err)
		}
		return atomicfile.SyncDir(filepath.Dir(p))
	}
	if err := atomicfile.WriteHeld(p, val, 0o600); err != nil {
		return fmt.Errorf("state %s: %w", key, err)
	}
	return nil
}

// List implements Store.
func (d *Dir) List(_ context.Context, prefix string) ([]string, error) {
	base := strings.TrimSuffix(prefix, "/")
	root := d.dir
	if base != "" {
		if err := CheckKey(base); err != nil {
			return nil, err
		}
		root = filepath.Join(d.dir, filepath.FromSlash(base))
	}
	var out []string
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasSuffix(name, ".lock") || strings.HasPrefix(name, ".") {
			return nil
		}
		rel, err := filepath.Rel(d.dir, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if CheckKey(key) == nil && (base == "" || key == base || strings.HasPrefix(key, base+"/")) {
			out = append(out, key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

// lock takes an exclusive flock on file, trying again every few
// milliseconds until ctx is done.
func lock(ctx context.Context, file string) (func(), error) {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	wait := 200 * time.Microsecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}
