package host

import (
	"fmt"
	"path"
)

// EnsureSymlink makes link (an in-root path) a symlink to target, recording
// ownership under module/key. A link that already existed with another
// target is remembered (Record.Original) so ReleaseSymlink puts it back; a
// managed link someone repointed is a conflict. It reports whether anything
// changed. Like every write it is atomic: a temporary link renamed over.
func (h *Host) EnsureSymlink(module, key, link, target string) (bool, error) {
	changed, errs := h.EnsureSymlinks(module, []LinkItem{{Key: key, Link: link, Target: target}})
	if len(errs) > 0 {
		return len(changed) > 0, errs[0]
	}
	return len(changed) > 0, nil
}

// LinkItem is one symlink of an EnsureSymlinks batch.
type LinkItem struct {
	Key, Link, Target string
}

// EnsureSymlinks is EnsureSymlink for many links of one module at once:
// every record is written ahead in one ledger save, then the links are
// made and each directory synced once. It returns the keys of the links
// that changed and the errors, each naming its link; the other links are
// still done.
func (h *Host) EnsureSymlinks(module string, items []LinkItem) (map[string]bool, []error) {
	var errs []error
	var todo []LinkItem
	for _, it := range items {
		write, err := h.prepareSymlink(module, it)
		if err != nil {
			errs = append(errs, &ItemError{Key: it.Key, Err: err})
		} else if write {
			todo = append(todo, it)
		}
	}
	changed := map[string]bool{}
	if h.Plan {
		for _, it := range todo {
			changed[it.Key] = true
		}
		return changed, errs
	}
	if err := h.SaveLedger(); err != nil {
		return changed, append(errs, err)
	}
	for _, it := range todo {
		if err := h.symlink(it.Target, it.Link, false); err != nil {
			errs = append(errs, &ItemError{Key: it.Key, Err: err})
			continue
		}
		changed[it.Key] = true
	}
	if err := h.syncPending(); err != nil {
		errs = append(errs, err)
	}
	return changed, errs
}

// prepareSymlink decides what EnsureSymlink does for one link, recording
// the change and putting its record (not yet saved); true means make it.
func (h *Host) prepareSymlink(module string, it LinkItem) (bool, error) {
	key, link, target := it.Key, it.Link, it.Target
	cur, err := h.readlink(link)
	exists := err == nil
	if !exists && h.Exists(link) {
		return false, fmt.Errorf("%s: exists and is not a symlink", link)
	}
	rec, owned := h.Ledger.Get(module, key)
	want := Hash([]byte(target))
	if owned && exists && cur != target && Hash([]byte(cur)) != rec.Hash && Hash([]byte(cur)) != rec.Prev {
		return false, fmt.Errorf("%s: %w", link, ErrConflict)
	}
	if owned && exists && cur == target && rec.Hash == want {
		return false, nil
	}
	action := "create"
	if exists {
		action = "update"
	}
	h.Record(Change{Module: module, Item: link, Action: action, From: cur, To: target})
	if h.Plan {
		return true, nil
	}
	if !owned {
		rec = Record{}
		if exists {
			rec.HadOriginal, rec.Original = true, cur
		}
	}
	rec.Prev = ""
	if exists {
		rec.Prev = Hash([]byte(cur))
	}
	rec.Hash = want
	h.Ledger.Put(module, key, rec)
	return true, nil
}

func (h *Host) symlink(target, link string, syncDir bool) error {
	r := rel(link)
	dir := path.Dir(r)
	if err := h.mkdirAll(dir); err != nil {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	if err := h.noteTemp(dir); err != nil {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	d, base := h.at(r)
	tmp := TempName(path.Base(r))
	if d == h.root {
		tmp = path.Join(dir, tmp)
	}
	d.Remove(tmp)
	if err := d.Symlink(target, tmp); err != nil {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	if err := d.Rename(tmp, base); err != nil {
		d.Remove(tmp)
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	if !syncDir {
		h.deferSync(dir)
		return nil
	}
	return h.syncDir(dir)
}

// ReleaseSymlink undoes EnsureSymlink: the link that was there before comes
// back, else the link is removed. A link someone repointed is a conflict.
func (h *Host) ReleaseSymlink(module, key, link string) (bool, error) {
	rec, owned := h.Ledger.Get(module, key)
	if !owned {
		return false, nil
	}
	cur, err := h.readlink(link)
	exists := err == nil
	if exists && Hash([]byte(cur)) != rec.Hash && Hash([]byte(cur)) != rec.Prev && !(rec.HadOriginal && cur == rec.Original) {
		return false, fmt.Errorf("%s: %w; not reverted", link, ErrConflict)
	}
	if !exists {
		if _, err := h.Lstat(link); err == nil {
			return false, fmt.Errorf("%s: %w (no longer a symlink); not reverted", link, ErrConflict)
		}
	}
	action := "remove"
	if rec.HadOriginal {
		action = "revert"
	}
	if exists || rec.HadOriginal {
		h.Record(Change{Module: module, Item: link, Action: action, From: cur, To: rec.Original})
	}
	if h.Plan {
		return true, nil
	}
	if rec.HadOriginal {
		if err := h.symlink(rec.Original, link, true); err != nil {
			return false, err
		}
	} else if exists {
		if err := h.Remove(link); err != nil {
			return false, err
		}
	}
	h.Ledger.Delete(module, key)
	return true, h.SaveLedger()
}

// RemoveSymlink removes link when it points at target, remembering it under
// module/key so ReleaseSymlink restores it (used to disable a unit that
// something else enabled). A missing link is nothing to do.
func (h *Host) RemoveSymlink(module, key, link, target string) (bool, error) {
	cur, err := h.readlink(link)
	if err != nil {
		return false, nil
	}
	if cur != target {
		return false, nil
	}
	rec, owned := h.Ledger.Get(module, key)
	if !owned {
		rec = Record{HadOriginal: true, Original: cur}
	}
	// Hash "" means "bellbuild wants no link here".
	rec.Hash, rec.Prev = "", Hash([]byte(cur))
	h.Record(Change{Module: module, Item: link, Action: "remove", From: cur})
	if h.Plan {
		return true, nil
	}
	h.Ledger.Put(module, key, rec)
	if err := h.SaveLedger(); err != nil {
		return false, err
	}
	return true, h.Remove(link)
}

// readlink reads the symlink p inside the root.
func (h *Host) readlink(p string) (string, error) {
	d, name := h.at(p)
	return d.Readlink(name)
}

// Readlink returns the target of the symlink p inside the root.
func (h *Host) Readlink(p string) (string, error) { return h.readlink(p) }
