package state

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// DirPollInterval is how often a Dir's Watch looks at its files.
const DirPollInterval = time.Second

// Watch implements Watcher by looking at the files under prefix every
// DirPollInterval (another process, `bellbuild node approve`, writes the
// same directory): a key whose file changed (its inode, size or
// modification time) is read again and told.
func (d *Dir) Watch(ctx context.Context, prefix string, f func(key string, value []byte)) error {
	seen := map[string]fileID{}
	look := func() error {
		keys, err := d.List(ctx, prefix)
		if err != nil {
			return err
		}
		now := make(map[string]bool, len(keys))
		for _, k := range keys {
			now[k] = true
			id, ok := d.fileID(k)
			if !ok {
				continue
			}
			if old, ok := seen[k]; ok && old == id {
				continue
			}
			v, err := d.Get(ctx, k)
			if err != nil || v == nil {
				continue
			}
			seen[k] = id
			f(k, v)
		}
		for k := range seen {
			if !now[k] {
				delete(seen, k)
				f(k, nil)
			}
		}
		return nil
	}
	if err := look(); err != nil {
		return err
	}
	go func() {
		t := time.NewTicker(DirPollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				look()
			}
		}
	}()
	return nil
}

// fileID tells a file's versions apart: a rename gives a new inode.
type fileID struct {
	ino, size int64
	mtime     time.Time
}

func (d *Dir) fileID(key string) (fileID, bool) {
	fi, err := os.Stat(filepath.Join(d.dir, filepath.FromSlash(key)))
	if err != nil {
		return fileID{}, false
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino = int64(st.Ino)
	}
	return id, true
}
