package host

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// dirsModule is the ledger's record of the directories bellbuild created
// to hold a file or link it wrote (key "dir:PATH", root-relative): a
// directory that held only bellbuild's items goes with the last of them
// (PruneDirs), so a configuration item that leaves takes away the /etc/app
// it brought, and the root is as it was before.
const dirsModule = "host"

// mkdirAll is os.Root.MkdirAll of dir (root-relative, 0755) that records
// each directory it creates, before it does. A record whose directory was
// never made (a kill in between) is forgotten by PruneDirs; a directory
// made but not recorded (a kill before the ledger's next save) is left, as
// an empty directory is harmless.
func (h *Host) mkdirAll(dir string) error {
	var missing []string
	for d := dir; d != "." && d != "/" && d != ""; d = path.Dir(d) {
		if _, err := h.root.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, d)
	}
	for _, d := range missing {
		if d != stateDir && !strings.HasPrefix(d, stateDir+"/") {
			h.Ledger.Put(dirsModule, "dir:"+d, Record{})
		}
	}
	return h.root.MkdirAll(dir, 0o755)
}

// PruneDirs removes, deepest first, the directories bellbuild created
// (mkdirAll) that are empty again, and forgets them and those that no
// longer exist; a directory that holds anything stays (and stays
// recorded). Apply calls it after every module has run. The removals are
// not reported as changes: the items that left were.
func (h *Host) PruneDirs() []error {
	if h.Plan {
		return nil
	}
	keys := h.Ledger.Keys(dirsModule)
	// Deepest first: a/b/c before a/b.
	sort.Slice(keys, func(i, j int) bool {
		if a, b := strings.Count(keys[i], "/"), strings.Count(keys[j], "/"); a != b {
			return a > b
		}
		return keys[i] > keys[j]
	})
	var errs []error
	parents := map[string]bool{}
	for _, k := range keys {
		d := strings.TrimPrefix(k, "dir:")
		fi, err := h.root.Lstat(d)
		switch {
		case errors.Is(err, fs.ErrNotExist) || err == nil && !fi.IsDir():
			h.Ledger.Delete(dirsModule, k)
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("/%s: %w", d, err))
			continue
		}
		f, err := h.root.Open(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("/%s: %w", d, err))
			continue
		}
		names, err := f.Readdirnames(1)
		f.Close()
		if len(names) > 0 {
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			errs = append(errs, fmt.Errorf("/%s: %w", d, err))
			continue
		}
		// Housekeeping, not a change of its own: the item that left was
		// the change (and --plan, which creates nothing, agrees).
		h.Log.Debug("removing a directory bellbuild made, now empty", "dir", "/"+d)
		if err := h.root.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove /%s: %w", d, err))
			continue
		}
		parents[path.Dir(d)] = true
		h.Ledger.Delete(dirsModule, k)
	}
	// The directories that lost an entry, once: those that are still
	// there (a parent may have gone too).
	for p := range parents {
		if fi, err := h.root.Lstat(p); err == nil && fi.IsDir() {
			h.deferSync(p)
		}
	}
	if h.Ledger.dirty() {
		if err := h.SaveLedger(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}
