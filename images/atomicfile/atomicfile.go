// Package atomicfile replaces files whole or not at all.
//
// A file is written to a hidden temporary file in its own directory
// (".NAME.tmp-RANDOM", so that directory listings that skip dot files
// never see one), given its mode, fsynced, renamed over the target, and
// the directory fsynced. A reader sees the old file or the new one, never
// part of one; after a crash the new file is either whole or absent; on
// an error the target is untouched and the temporary file removed.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// TempMark is in the name of every temporary file this package makes.
const TempMark = ".tmp-"

// Write replaces path with data, with mode perm (the umask does not apply).
func Write(path string, data []byte, perm fs.FileMode) error {
	return WriteFrom(path, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// WriteFrom replaces path with what fill writes into the temporary file
// (which it may also seek in and read back), with mode perm. If fill
// fails, path is untouched and fill's error is returned as it is; other
// errors name path.
func WriteFrom(path string, perm fs.FileMode, fill func(*os.File) error) error {
	return replace(path, perm, fill, func() (*os.File, error) {
		return os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+TempMark+"*")
	})
}

// WriteHeld is Write for a writer that holds a lock on path, so that no
// other writes it at the same time: its temporary file has one name,
// ".NAME.tmp", and what a writer killed midway left there is written
// over by the next one instead of staying behind.
func WriteHeld(path string, data []byte, perm fs.FileMode) error {
	fill := func(f *os.File) error {
		_, err := f.Write(data)
		return err
	}
	return replace(path, perm, fill, func() (*os.File, error) {
		return os.OpenFile(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp"),
			os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, perm&0o600)
	})
}

// replace fills the temporary file create makes and renames it over path.
func replace(path string, perm fs.FileMode, fill func(*os.File) error, create func() (*os.File, error)) error {
	var fillErr error
	tmp, err := temp(perm, func(f *os.File) error {
		fillErr = fill(f)
		return fillErr
	}, create)
	if fillErr != nil {
		return fillErr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// Temp writes what fill writes to a new temporary file in dir named after
// base, with mode perm, fsynced and closed, and returns its path: for a
// caller that renames several files into place together. On an error
// nothing is left behind.
func Temp(dir, base string, perm fs.FileMode, fill func(*os.File) error) (string, error) {
	return temp(perm, fill, func() (*os.File, error) {
		return os.CreateTemp(dir, "."+base+TempMark+"*")
	})
}

func temp(perm fs.FileMode, fill func(*os.File) error, create func() (*os.File, error)) (string, error) {
	f, err := create()
	if err != nil {
		return "", err
	}
	name := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		err = fill(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// SyncDir makes dir's entries (a rename, a new or removed name) durable.
// File systems that cannot fsync a directory (EINVAL) are taken as done.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
