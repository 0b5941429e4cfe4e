package host

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// stateDir is the applier's own directory (0700): ledger, journal, report,
// lock. Its temporary files are looked for at the start of every run.
const stateDir = "var/lib/bellbuild"

// journalCompactAt is the journal size past which SaveLedger folds it into
// a new snapshot (when it is also more than twice the snapshot's size), so
// that reading the ledger stays proportional to the ledger, whatever a run
// saved. A variable for the tests.
var journalCompactAt int64 = 1 << 20

// SaveLedger makes every change put in the ledger since the last save
// durable before it returns: one line appended to the journal and an fsync,
// whatever the size of the ledger. Directories holding renames not yet
// synced are synced first, so that whatever was written before the save (a
// backup a record names) is durable before the records. It is a no-op
// under Plan or when nothing changed.
//
// The rule for modules: put the records of a batch of items, save once,
// then change the items. A run killed at any point of the batch finds each
// item either as it was (the record's Prev, or its original) or as
// wanted (its Hash), and carries on.
func (h *Host) SaveLedger() error {
	if h.Plan {
		return nil
	}
	if err := h.appendJournal(false); err != nil {
		return err
	}
	if h.unsynced {
		if err := h.journal.Sync(); err != nil {
			return fmt.Errorf("ledger journal: %w", err)
		}
		h.unsynced = false
	}
	if h.js.size > journalCompactAt && h.js.size > 2*h.snapSize {
		return h.Checkpoint()
	}
	return nil
}

// FlushLedger writes the changes put since the last save to the journal
// without waiting for the disk: for the record of something that already
// happened (a script's exit status), which a kill -9 must not lose but no
// later change depends on. The next SaveLedger makes it durable.
func (h *Host) FlushLedger() error {
	if h.Plan {
		return nil
	}
	return h.appendJournal(false)
}

// appendJournal appends the pending changes as one journal line (with
// force, an empty line when nothing is pending: it marks the journal as
// not empty). Nothing reaches the journal before the renames written ahead
// of it are durable.
func (h *Host) appendJournal(force bool) error {
	if !h.Ledger.dirty() && !force {
		return nil
	}
	if err := h.syncPending(); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	line, err := encodeEntry(h.Ledger.pending)
	if err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if err := h.openJournal(); err != nil {
		return err
	}
	if _, err := h.journal.Write(line); err != nil {
		// Cut a partial line off, so that the next entry starts a line.
		h.journal.Truncate(h.js.size)
		return fmt.Errorf("ledger journal: %w", err)
	}
	h.js.size += int64(len(line))
	h.js.valid = h.js.size
	h.unsynced = true
	h.Ledger.pending = nil
	return nil
}

// openJournal opens the journal for appending, cutting off a torn last
// entry of a killed run, and makes a new journal's name durable.
func (h *Host) openJournal() error {
	if h.journal != nil {
		return nil
	}
	if err := MkdirState(h); err != nil {
		return fmt.Errorf("ledger journal: %w", err)
	}
	_, statErr := h.Lstat(JournalPath)
	f, err := h.root.OpenFile(JournalPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("ledger journal: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() != h.js.valid {
		err = f.Truncate(h.js.valid)
	}
	if err == nil && statErr != nil {
		err = h.syncDir(stateDir)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("ledger journal: %w", err)
	}
	h.journal = f
	h.js.size = h.js.valid
	return nil
}

// Checkpoint writes the whole ledger as a new snapshot (atomically, like
// every file) and empties the journal. Apply calls it at the end of a run,
// so that the next run reads one file and finds an empty journal; a run
// killed between the two replays entries the snapshot already holds,
// which changes nothing. It is a no-op under Plan or when the journal is
// empty and nothing changed.
func (h *Host) Checkpoint() error {
	if h.Plan {
		return nil
	}
	if !h.Ledger.dirty() && h.js.size == 0 {
		return h.syncPending()
	}
	if err := h.syncPending(); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	data, err := h.Ledger.snapshot()
	if err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if err := MkdirState(h); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if err := h.WriteFile(LedgerPath, data, 0o600, 0, 0); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	h.Ledger.pending = nil
	h.snapSize = int64(len(data))
	if h.js.size == 0 {
		return nil
	}
	if err := h.openJournal(); err != nil {
		return err
	}
	if err := h.journal.Truncate(0); err != nil {
		return fmt.Errorf("ledger journal: %w", err)
	}
	h.js = journalState{}
	h.unsynced = false
	return nil
}

// TempName is the name of the temporary file (or directory) under which
// bellbuild prepares base in the same directory before renaming it.
func TempName(base string) string { return "." + base + ".bellbuild-tmp" }

// isTempName reports whether name is one of bellbuild's temporary names:
// TempName's, or a sudoers fragment's checked copy (".bellbuild-check-").
func isTempName(name string) bool {
	return strings.HasPrefix(name, ".bellbuild-check-") ||
		len(name) > len(".bellbuild-tmp")+1 && name[0] == '.' && strings.HasSuffix(name, ".bellbuild-tmp")
}

// NoteTempDir says that a temporary file is about to be created in dir (an
// in-root path), for writers outside this package (a user's ~/.ssh, a home
// built aside). See CleanTemps.
func (h *Host) NoteTempDir(dir string) error { return h.noteTemp(rel(dir)) }

// noteTemp registers dir (root-relative) as a place where this run makes a
// temporary file, before it does: a new directory is written to the
// journal (without waiting for the disk: a kill -9 keeps it), and so is an
// empty entry when the journal is empty, so that the next run, finding a
// journal that is not empty, knows this one did not finish and looks for
// what it left. The state directory is always looked at.
func (h *Host) noteTemp(dir string) error {
	if h.Plan || dir == stateDir {
		return nil
	}
	if h.Ledger.addTempDir(dir) || h.js.size == 0 {
		return h.appendJournal(true)
	}
	return nil
}

// CleanTemps removes the temporary files a killed run left behind (a
// write's ".NAME.bellbuild-tmp", a home built under that name, a sudoers
// fragment's ".bellbuild-check-NAME" copy): always in the state
// directory; in every other directory bellbuild made one in
// (Ledger.TempDirs) when the journal shows that the last run did not
// finish (every finished run empties it). A directory that is gone, or is
// no longer a directory, is forgotten. A temporary directory is removed
// whole only where only root can create one (a directory owned by root,
// not writable by group or others); elsewhere only files and links are
// removed. Apply calls it once it holds the lock; errors name the path.
func (h *Host) CleanTemps() []error {
	if h.Plan {
		return nil
	}
	dirs := []string{stateDir}
	if h.js.size > 0 {
		dirs = append(dirs, sortedSet(h.Ledger.tempDirs)...)
	}
	var errs []error
	for _, dir := range dirs {
		if err := h.cleanDir(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if h.Ledger.dirty() {
		if err := h.SaveLedger(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func (h *Host) cleanDir(dir string) error {
	fi, err := h.root.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !fi.IsDir() {
		h.Ledger.dropTempDir(dir)
		return nil
	}
	if err != nil {
		return fmt.Errorf("temp files in /%s: %w", dir, err)
	}
	d, err := h.root.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("temp files in /%s: %w", dir, err)
	}
	defer d.Close()
	f, err := d.Open(".")
	if err != nil {
		return fmt.Errorf("temp files in /%s: %w", dir, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("temp files in /%s: %w", dir, err)
	}
	rootOnly := metaOf(fi).UID == 0 && fi.Mode().Perm()&0o022 == 0
	var errs []error
	removed := false
	for _, name := range names {
		if !isTempName(name) {
			continue
		}
		efi, err := d.Lstat(name)
		if err != nil {
			continue
		}
		switch {
		case efi.IsDir() && rootOnly:
			err = d.RemoveAll(name)
		case efi.IsDir():
			continue
		default:
			err = d.Remove(name)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("stale temp %s: %w", path.Join("/", dir, name), err))
			continue
		}
		removed = true
		h.Log.Info("removed a temporary file a killed run left", "path", path.Join("/", dir, name))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if !removed {
		return nil
	}
	return h.syncDir(dir)
}
