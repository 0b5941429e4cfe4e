package secrets

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/bellbuild/bellbuild/images/atomicfile"
)

// tmpMark is in the name of every temp file the store writes (a dot file
// next to its target, so List never sees it).
const tmpMark = atomicfile.TempMark

// rename is os.Rename; tests make it fail to interrupt a rekey.
var rename = os.Rename

// writeTemp writes data to a new temp file in dir named after base, with
// mode perm, fsynced and closed; it returns its path.
func writeTemp(dir, base string, data []byte, perm fs.FileMode) (string, error) {
	return atomicfile.Temp(dir, base, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// writeFile replaces file with data whole or not at all: temp file in the
// same directory, fsync, rename, directory fsync.
func writeFile(file string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(file)
	tmp, err := writeTemp(dir, filepath.Base(file), data, perm)
	if err != nil {
		return err
	}
	if err := rename(tmp, file); err != nil {
		os.Remove(tmp)
		return err
	}
	return atomicfile.SyncDir(dir)
}

// lock takes the store's lock: an exclusive flock on the secrets directory
// itself (no lock file to commit or ignore), held by every command that
// writes. It then removes temp files a crashed writer left (no writer can
// be running). The directory must exist.
func (s *Store) lock() (unlock func(), err error) {
	d, err := os.Open(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: no secret store here (create the directory with %s listing who may decrypt): %w", s.dir, RecipientsFile, ErrNoRecipients)
	}
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX); err != nil {
		d.Close()
		return nil, fmt.Errorf("lock %s: %w", s.dir, err)
	}
	entries, err := d.ReadDir(-1)
	if err != nil {
		d.Close()
		return nil, err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), Ext+tmpMark) {
			os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
	return func() { d.Close() }, nil // closing the descriptor drops the lock
}
