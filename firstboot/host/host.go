// Package host is the applier's only way to touch a target root: every file
// operation goes through an os.Root, so a symlink planted in the target
// cannot send a write outside it; every write is atomic (temp file in the
// same directory, fsync, rename, fsync of the directory); and every change
// is recorded, so that `--plan` and the run report say exactly what happened.
//
// Modules (package firstboot) get a *Host, and an item they manage follows
// one rule: record first (Ledger.Put + SaveLedger), then change.
package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options say how to treat the target root.
type Options struct {
	// RootDir is the target root: "/" for the live host, else a mounted
	// host root.
	RootDir string
	// Live allows touching the running kernel and services (sysctl values,
	// mounts, ethtool, apparmor loads, systemctl). The apply command sets it
	// for --root / (or --live) unless --offline.
	Live bool
	// Boot says the apply runs in the init, before the system's own init
	// and udev: network devices do not have their final names yet (udev
	// renames eth0 to ens3 later), so a device that is missing is left to
	// its unit, which applies the settings when the device appears,
	// instead of being an error.
	Boot bool
	// LoadModules, set by the init (with Boot), loads the kernel modules
	// the root's modules-load.d names, as systemd-modules-load would later,
	// and returns what failed. A module that finds something of the
	// running kernel missing (a sysctl key) calls it before it looks again.
	LoadModules func() []error
	// Plan records changes without making them.
	Plan bool
	// Log receives progress; secrets are never passed to it.
	Log *slog.Logger
	// Now is the clock (tests set it); time.Now when nil.
	Now func() time.Time
}

// Change is one thing a module did (or, under Plan, would do).
type Change struct {
	Module string `json:"module"`
	Item   string `json:"item"`
	// Action is "create", "update", "remove", "revert", "run", ...
	Action string `json:"action"`
	From   string `json:"from,omitempty"`
	To     string `json:"to,omitempty"`
}

// Host is an open target root.
type Host struct {
	Options
	root    *os.Root
	Ledger  *Ledger
	changes []Change
	// journal is the ledger's journal, open for appending once this run
	// saved something; js is what loading found of it.
	journal  *os.File
	js       journalState
	unsynced bool // appended to the journal since its last fsync
	snapSize int64
	// unsyncedDirs hold renames not yet made durable by a directory fsync
	// (see syncPending).
	unsyncedDirs map[string]bool
	// dirs caches an os.Root per directory already opened, so that an
	// operation on /etc/systemd/system/x costs one confined system call,
	// not one per path component (os.Root walks every component).
	dirs map[string]*os.Root
	ids  map[string]idCache
	// Hold, when set, says which ledger keys of a module belong to items
	// this run holds: it neither applies nor reverts them (their
	// configuration waits for a secret value). See Holds.
	Hold func(module, key string) bool
}

// Holds reports whether the item the ledger key of module belongs to is
// held by this run (see Host.Hold).
func (h *Host) Holds(module, key string) bool { return h.Hold != nil && h.Hold(module, key) }

// Open opens dir as a target root and loads its ledger.
func Open(opts Options) (*Host, error) {
	if opts.RootDir == "" {
		return nil, errors.New("host: no root directory")
	}
	abs, err := filepath.Abs(opts.RootDir)
	if err != nil {
		return nil, err
	}
	opts.RootDir = abs
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	h := &Host{Options: opts, root: r}
	if h.Ledger, h.js, err = loadLedger(h); err != nil {
		r.Close()
		return nil, err
	}
	if fi, err := h.Lstat(LedgerPath); err == nil {
		h.snapSize = fi.Size()
	}
	return h, nil
}

// ReloadLedger rereads the ledger from disk (after taking the lock, so that
// a run that finished meanwhile is seen); not when its files still have
// the identity they had when it was read. It is an error to call it with
// unsaved records.
func (h *Host) ReloadLedger() error {
	if h.Ledger.dirty() {
		return errors.New("ledger: reload with unsaved changes")
	}
	if h.js.seen != "" && h.ledgerSeen() == h.js.seen {
		return nil
	}
	l, js, err := loadLedger(h)
	if err != nil {
		return err
	}
	h.Ledger, h.js = l, js
	if fi, err := h.Lstat(LedgerPath); err == nil {
		h.snapSize = fi.Size()
	}
	return nil
}

// Close releases the root.
func (h *Host) Close() error {
	h.ForgetDirs()
	if h.journal != nil {
		h.journal.Close()
		h.journal = nil
	}
	return h.root.Close()
}

// ForgetDirs drops the cached directory handles: after something outside
// this package (a script, dpkg) may have replaced a directory, so that a
// later write cannot land in a directory that was unlinked. Apply calls it
// between modules, and Command before running anything.
func (h *Host) ForgetDirs() {
	for _, d := range h.dirs {
		d.Close()
	}
	h.dirs = nil
}

// at returns the confined handle of p's directory and p's base name in it
// (the root itself for a top-level name). A directory that cannot be opened
// yet falls back to the root, so errors read as they would from it.
func (h *Host) at(p string) (*os.Root, string) {
	r := rel(p)
	dir, base := path.Split(r)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		return h.root, r
	}
	d, err := h.dirRoot(dir)
	if err != nil {
		return h.root, r
	}
	return d, base
}

// dirRoot is the os.Root of dir (root-relative, cleaned), from the cache,
// else opened from its parent's (one openat rather than a walk from the
// root), else from the root (a symlink that leaves the parent but not
// the root).
func (h *Host) dirRoot(dir string) (*os.Root, error) {
	if d, ok := h.dirs[dir]; ok {
		return d, nil
	}
	var d *os.Root
	err := errors.ErrUnsupported
	if parent, base := path.Split(dir); parent != "" {
		if pr, perr := h.dirRoot(strings.TrimSuffix(parent, "/")); perr == nil {
			d, err = pr.OpenRoot(base)
		}
	}
	if err != nil {
		if d, err = h.root.OpenRoot(dir); err != nil {
			return nil, err
		}
	}
	if h.dirs == nil {
		h.dirs = map[string]*os.Root{}
	}
	h.dirs[dir] = d
	return d, nil
}

// Root is the confined handle, for modules that need an operation this
// package does not wrap.
func (h *Host) Root() *os.Root { return h.root }

// Record notes a change. Under Plan it is all that happens.
func (h *Host) Record(c Change) {
	h.changes = append(h.changes, c)
	h.Log.Info("change", "module", c.Module, "item", c.Item, "action", c.Action)
}

// Changes returns what was recorded so far.
func (h *Host) Changes() []Change { return h.changes }

// rel turns an absolute in-root path ("/etc/passwd") into a root-relative one.
func rel(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return strings.TrimPrefix(p, "/")
}

// ReadFile reads p (absolute or root-relative) inside the root.
func (h *Host) ReadFile(p string) ([]byte, error) {
	d, name := h.at(p)
	return d.ReadFile(name)
}

// Lstat stats p inside the root without following a final symlink.
func (h *Host) Lstat(p string) (fs.FileInfo, error) {
	d, name := h.at(p)
	return d.Lstat(name)
}

// Stat stats p inside the root.
func (h *Host) Stat(p string) (fs.FileInfo, error) {
	d, name := h.at(p)
	return d.Stat(name)
}

// Exists reports whether p exists (without following a final symlink).
func (h *Host) Exists(p string) bool {
	_, err := h.Lstat(p)
	return err == nil
}

// Hash is the hex sha256 of data: what the ledger stores.
func Hash(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// WriteFile atomically replaces p with data, owned by uid:gid with mode:
// temp file in the same directory, fsync, chown/chmod, rename, fsync of the
// directory. Parent directories are created 0755. A reader sees the old
// file or the new one, never a part.
func (h *Host) WriteFile(p string, data []byte, mode fs.FileMode, uid, gid int) error {
	return h.writeFile(p, data, mode, uid, gid, true)
}

// writeFile is WriteFile; syncDir false leaves the directory's fsync to the
// caller (EnsureFiles syncs each directory once).
func (h *Host) writeFile(p string, data []byte, mode fs.FileMode, uid, gid int, syncDir bool) error {
	t, err := h.createTemp(p, data, mode, uid, gid)
	if err != nil {
		return err
	}
	if err := t.f.Sync(); err != nil {
		t.abort()
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := t.commit(); err != nil {
		return err
	}
	if !syncDir {
		h.deferSync(t.dir)
		return nil
	}
	return h.syncDir(t.dir)
}

// tempFile is a file written whole under its temporary name in the
// directory of the file it will replace, neither synced nor renamed yet.
type tempFile struct {
	p, dir, tmp, base string
	d                 *os.Root
	f                 *os.File
}

// createTemp writes data to p's temporary name, with owner and mode.
func (h *Host) createTemp(p string, data []byte, mode fs.FileMode, uid, gid int) (*tempFile, error) {
	r := rel(p)
	dir := path.Dir(r)
	if err := h.mkdirAll(dir); err != nil {
		return nil, fmt.Errorf("write %s: %w", p, err)
	}
	// One applier runs at a time (the lock), so a fixed temp name is
	// enough, and a run killed mid-write leaves at most one stale temp per
	// file (the next run removes it, see CleanTemps). That stale name is
	// removed (a symlink is removed, never followed) and the temp is
	// created exclusively without following links: someone who can write
	// to the directory (a user's home) must not be able to plant a link
	// that turns this root-owned write, and the chown after it, onto
	// another file such as /etc/shadow.
	if err := h.noteTemp(dir); err != nil {
		return nil, fmt.Errorf("write %s: %w", p, err)
	}
	d, base := h.at(r)
	tmp := TempName(path.Base(r))
	if d == h.root {
		tmp = path.Join(dir, tmp)
	}
	if err := d.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("write %s: stale temp: %w", p, err)
	}
	f, err := d.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", p, err)
	}
	t := &tempFile{p: p, dir: dir, tmp: tmp, base: base, d: d, f: f}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		err = f.Chmod(mode)
	}
	if err != nil {
		t.abort()
		return nil, fmt.Errorf("write %s: %w", p, err)
	}
	return t, nil
}

// abort drops the temporary file.
func (t *tempFile) abort() {
	t.f.Close()
	t.d.Remove(t.tmp)
}

// commit closes the (synced) temporary file and renames it over the file:
// a reader sees the old file or the new one, never a part.
func (t *tempFile) commit() error {
	err := t.f.Close()
	if err == nil {
		err = t.d.Rename(t.tmp, t.base)
	}
	if err != nil {
		t.d.Remove(t.tmp)
		return fmt.Errorf("write %s: %w", t.p, err)
	}
	return nil
}

// SyncParallel is how many temporary files a batch writes before it syncs
// them, all at once (SyncAll): the file system commits concurrent fsyncs
// together, so a batch of files waits for the disk a few times instead of
// once per file.
const SyncParallel = 32

// SyncAll fsyncs files concurrently and returns each one's error (nil
// entries are skipped).
func SyncAll(files []*os.File) []error {
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, f := range files {
		if f != nil {
			wg.Go(func() { errs[i] = f.Sync() })
		}
	}
	wg.Wait()
	return errs
}

// writeFiles writes items, each like WriteFile (temporary file, fsync,
// rename), syncing SyncParallel files at a time concurrently; the
// directories are left to syncPending. It returns the keys written and
// the errors, each naming its file.
func (h *Host) writeFiles(items []FileItem) (map[string]bool, []error) {
	written := map[string]bool{}
	var errs []error
	for chunk := range slices.Chunk(items, SyncParallel) {
		temps := make([]*tempFile, len(chunk))
		files := make([]*os.File, len(chunk))
		for i, it := range chunk {
			s := it.Spec
			t, err := h.createTemp(s.Path, s.Data, s.Mode, s.UID, s.GID)
			if err != nil {
				errs = append(errs, &ItemError{Key: it.Key, Err: err})
				continue
			}
			temps[i], files[i] = t, t.f
		}
		serrs := SyncAll(files)
		for i, t := range temps {
			if t == nil {
				continue
			}
			err := serrs[i]
			if err != nil {
				t.abort()
				err = fmt.Errorf("write %s: %w", t.p, err)
			} else {
				err = t.commit()
			}
			if err != nil {
				errs = append(errs, &ItemError{Key: chunk[i].Key, Err: err})
				continue
			}
			h.deferSync(t.dir)
			written[chunk[i].Key] = true
		}
	}
	return written, errs
}

// deferSync notes that dir holds a rename not yet made durable; the next
// syncPending (before any ledger save, and at the end of a batch) syncs it.
func (h *Host) deferSync(dir string) {
	if h.unsyncedDirs == nil {
		h.unsyncedDirs = map[string]bool{}
	}
	h.unsyncedDirs[dir] = true
}

// syncPending fsyncs every directory deferSync noted, in order.
func (h *Host) syncPending() error {
	var errs []error
	for _, dir := range sortedSet(h.unsyncedDirs) {
		if err := h.syncDir(dir); err != nil {
			errs = append(errs, fmt.Errorf("sync /%s: %w", dir, err))
		}
	}
	h.unsyncedDirs = nil
	return errors.Join(errs...)
}

func (h *Host) syncDir(dir string) error {
	d, err := h.root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// Remove deletes p; a missing p is not an error.
func (h *Host) Remove(p string) error {
	d, name := h.at(p)
	err := d.Remove(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return h.syncDir(path.Dir(rel(p)))
}

// MkdirState creates ROOT/var/lib/bellbuild/backup (0700), and /var and
// /var/lib as a root filesystem has them (0755) when they are missing.
func MkdirState(h *Host) error {
	if err := h.root.MkdirAll("var/lib", 0o755); err != nil {
		return err
	}
	for _, d := range []string{"var/lib/bellbuild", backupDir} {
		if err := h.root.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return nil
}

// backupDir holds the original contents of files bellbuild replaced.
const backupDir = "var/lib/bellbuild/backup"

// ErrConflict means a managed item was changed by someone else since
// bellbuild wrote it; bellbuild leaves it alone.
var ErrConflict = errors.New("changed outside bellbuild")

// FileSpec is a whole file a module wants in place.
type FileSpec struct {
	Path     string
	Data     []byte
	Mode     fs.FileMode
	UID, GID int
	// Secret hides the content from plans and logs.
	Secret bool
}

// EnsureFile makes spec.Path hold spec.Data with the given owner and mode,
// recording ownership under module/key. A file that already exists and is
// not bellbuild's is backed up first so that ReleaseFile can restore it. A
// managed file someone else changed is a conflict (ErrConflict) and is left
// as it is. A file already exactly as wanted is adopted without a rewrite.
// It reports whether anything changed.
func (h *Host) EnsureFile(module, key string, spec FileSpec) (bool, error) {
	changed, errs := h.EnsureFiles(module, []FileItem{{Key: key, Spec: spec}})
	if len(errs) > 0 {
		return len(changed) > 0, errs[0]
	}
	return len(changed) > 0, nil
}

// ItemError is the error of one item of a batch (EnsureFiles,
// EnsureSymlinks): it reads as Err and names the item's ledger key.
type ItemError struct {
	Key string
	Err error
}

func (e *ItemError) Error() string { return e.Err.Error() }
func (e *ItemError) Unwrap() error { return e.Err }

// FileItem is one file of an EnsureFiles batch: its ledger key and spec.
type FileItem struct {
	Key  string
	Spec FileSpec
}

// EnsureFiles is EnsureFile for many files of one module at once: the
// originals are backed up, every record is written ahead in one ledger
// save, then the files are written and each directory synced once,
// instead of a ledger save and a directory sync per file. It returns the
// keys of the files that changed (under Plan: would change) and the
// errors, each naming its file; the other files are still done.
func (h *Host) EnsureFiles(module string, items []FileItem) (map[string]bool, []error) {
	var errs []error
	var writes []FileItem
	start := time.Now() // the file system's clock, not h.Now
	for _, it := range items {
		write, err := h.prepareFile(module, it.Key, it.Spec, start)
		if err != nil {
			errs = append(errs, &ItemError{Key: it.Key, Err: err})
		} else if write {
			writes = append(writes, it)
		}
	}
	changed := map[string]bool{}
	if h.Plan {
		for _, it := range writes {
			changed[it.Key] = true
		}
		return changed, errs
	}
	// Write-ahead: the ledger learns every new hash (and the one each
	// write replaces, Prev) before any file changes, so a run killed
	// in between finds either content and does not take its own file
	// for a conflict. The backups written above are synced first.
	if err := h.SaveLedger(); err != nil {
		return changed, append(errs, err)
	}
	changed, werrs := h.writeFiles(writes)
	errs = append(errs, werrs...)
	if err := h.syncPending(); err != nil {
		errs = append(errs, err)
	}
	return changed, errs
}

// prepareFile decides what EnsureFile does for one file: nothing, adopt it,
// or write it (reported true), recording the change and putting the ledger
// record (not yet saved) and any backup of an original. A file that still
// has the identity a run recorded when it found it as wanted (Record.Seen,
// seen.go) is not read; start is a time taken before any stat of the batch.
func (h *Host) prepareFile(module, key string, spec FileSpec, start time.Time) (bool, error) {
	want := Hash(spec.Data)
	rec, owned := h.Ledger.Get(module, key)
	// The stat goes first: a change after it changes the identity it
	// gives, so what the read then finds can never be recorded under an
	// identity the file no longer has.
	fi, statErr := h.Lstat(spec.Path)
	if statErr == nil && owned && rec.Hash == want && rec.Seen != "" &&
		fileSeen(fi, want) == rec.Seen && metaIs(fi, spec) {
		return false, nil
	}
	if statErr == nil && owned && !fi.Mode().IsRegular() {
		// bellbuild only ever renames a regular file into place.
		return false, fmt.Errorf("%s: %w (now %s)", spec.Path, ErrConflict, kindOf(fi))
	}
	cur, err := h.ReadFile(spec.Path)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("%s: %w", spec.Path, err)
	}
	if owned && exists && rec.Hash != "" && Hash(cur) != rec.Hash && Hash(cur) != want && Hash(cur) != rec.Prev {
		return false, fmt.Errorf("%s: %w", spec.Path, ErrConflict)
	}
	contentOK := exists && Hash(cur) == want
	metaOK := exists && statErr == nil && metaIs(fi, spec)
	if contentOK && metaOK && owned && rec.Hash == want {
		// As wanted: record its identity, so the next run need not read
		// it (the record is saved with the batch, or at the end of the run).
		if seen := settledSeen(fi, want, start); seen != rec.Seen && !h.Plan {
			rec.Seen = seen
			h.Ledger.Put(module, key, rec)
		}
		return false, nil
	}
	if contentOK && metaOK {
		// Already exactly as wanted (a base image that ships it): adopt it
		// without rewriting it; releasing it later restores this original.
		if h.Plan {
			return false, nil
		}
		if !owned {
			var err error
			if rec, err = h.backup(module, key, spec.Path, cur); err != nil {
				return false, err
			}
		}
		rec.Hash, rec.Prev, rec.Seen = want, "", settledSeen(fi, want, start)
		h.Ledger.Put(module, key, rec)
		return false, nil
	}
	action := "create"
	if exists {
		action = "update"
	}
	c := Change{Module: module, Item: spec.Path, Action: action}
	if !spec.Secret && len(spec.Data) < 200 && exists && len(cur) < 200 {
		c.From, c.To = string(cur), string(spec.Data)
	}
	h.Record(c)
	if h.Plan {
		return true, nil
	}
	if !owned {
		rec = Record{}
		if exists {
			var err error
			if rec, err = h.backup(module, key, spec.Path, cur); err != nil {
				return false, err
			}
		}
	}
	rec.Prev = ""
	if exists {
		rec.Prev = Hash(cur)
	}
	rec.Hash, rec.Seen = want, ""
	h.Ledger.Put(module, key, rec)
	return true, nil
}

// kindOf names what fi is, for a message.
func kindOf(fi fs.FileInfo) string {
	switch t := fi.Mode().Type(); {
	case t&fs.ModeSymlink != 0:
		return "a symbolic link"
	case t.IsDir():
		return "a directory"
	default:
		return "a " + t.String()
	}
}

// metaIs reports whether fi has spec's mode, owner and group.
func metaIs(fi fs.FileInfo, spec FileSpec) bool {
	st, _ := fi.Sys().(*syscall.Stat_t)
	return fi.Mode().Perm()|(fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)) == spec.Mode &&
		st != nil && int(st.Uid) == spec.UID && int(st.Gid) == spec.GID
}

// backup saves cur, the original content of p (with its mode and owner),
// under var/lib/bellbuild/backup and returns the record that names it.
func (h *Host) backup(module, key, p string, cur []byte) (Record, error) {
	name := Hash([]byte(module+"\x00"+key)) + ".orig"
	if err := MkdirState(h); err != nil {
		return Record{}, err
	}
	// The directory is synced before the ledger names the backup (see
	// SaveLedger), once for a whole batch.
	if err := h.writeFile(path.Join(backupDir, name), cur, 0o600, 0, 0, false); err != nil {
		return Record{}, err
	}
	rec := Record{HadOriginal: true, Original: name}
	if fi, err := h.Lstat(p); err == nil {
		rec.Extra = map[string]string{origMetaKey: formatMeta(fi)}
	}
	return rec, nil
}

// ReleaseFile undoes EnsureFile for module/key at p: the original (if there
// was one) comes back, else the file is removed. A file someone changed
// since bellbuild wrote it is a conflict and is left in place.
func (h *Host) ReleaseFile(module, key, p string) (bool, error) {
	rec, owned := h.Ledger.Get(module, key)
	if !owned {
		return false, nil
	}
	cur, err := h.ReadFile(p)
	exists := err == nil
	if exists && rec.Hash != "" && Hash(cur) != rec.Hash && Hash(cur) != rec.Prev {
		if !rec.HadOriginal {
			return false, fmt.Errorf("%s: %w; not removed", p, ErrConflict)
		}
		if orig, err := h.ReadFile(path.Join(backupDir, rec.Original)); err != nil || !bytes.Equal(orig, cur) {
			return false, fmt.Errorf("%s: %w; not reverted", p, ErrConflict)
		}
	}
	if rec.HadOriginal && exists {
		if orig, err := h.ReadFile(path.Join(backupDir, rec.Original)); err == nil && bytes.Equal(orig, cur) {
			if m, ok := parseMeta(rec.Extra[origMetaKey]); ok {
				if fi, err := h.Lstat(p); err == nil && metaOf(fi) == m {
					// Already the original (an adopted file): just forget it.
					if h.Plan {
						return false, nil
					}
					h.Ledger.Delete(module, key)
					if err := h.SaveLedger(); err != nil {
						return false, err
					}
					return false, h.Remove(path.Join(backupDir, rec.Original))
				}
			}
		}
	}
	h.Record(Change{Module: module, Item: p, Action: "revert"})
	if h.Plan {
		return true, nil
	}
	if rec.HadOriginal {
		bp := path.Join(backupDir, rec.Original)
		orig, err := h.ReadFile(bp)
		if err != nil {
			return false, fmt.Errorf("revert %s: backup: %w", p, err)
		}
		mode, uid, gid := fs.FileMode(0o644), 0, 0
		if m, ok := parseMeta(rec.Extra[origMetaKey]); ok {
			mode, uid, gid = m.Mode, m.UID, m.GID
		} else if fi, err := h.Lstat(p); err == nil {
			m := metaOf(fi)
			mode, uid, gid = m.Mode, m.UID, m.GID
		}
		if err := h.WriteFile(p, orig, mode, uid, gid); err != nil {
			return false, err
		}
		// Forget the item before dropping its backup: a run killed in
		// between leaves an orphan backup, never a record without one.
		h.Ledger.Delete(module, key)
		if err := h.SaveLedger(); err != nil {
			return false, err
		}
		return true, h.Remove(bp)
	}
	if exists {
		if err := h.Remove(p); err != nil {
			return false, err
		}
	}
	h.Ledger.Delete(module, key)
	return true, h.SaveLedger()
}

// Command runs name with args in the target: directly when the root is
// "/", else under chroot(ROOT). Stdout and stderr are returned together.
func (h *Host) Command(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	h.ForgetDirs()
	var cmd *exec.Cmd
	if h.RootDir == "/" {
		cmd = exec.CommandContext(ctx, name, args...)
	} else {
		cmd = exec.CommandContext(ctx, "chroot", append([]string{h.RootDir, name}, args...)...)
	}
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}, env...)
	return cmd
}
