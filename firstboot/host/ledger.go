package host

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"
)

// LedgerPath is where, under the target root, bellbuild records what it
// owns: the snapshot, rewritten whole at the end of a run.
const LedgerPath = "var/lib/bellbuild/ledger.json"

// JournalPath is the ledger's write-ahead journal: every save between two
// snapshots appends one line to it (see Host.SaveLedger), so that a save
// costs what it records, not the size of the whole ledger.
const JournalPath = "var/lib/bellbuild/ledger.journal"

// Record is what the ledger knows of one managed item.
type Record struct {
	// HadOriginal is true when something existed before bellbuild first
	// managed the item; Original then holds it (a value, a mode, or for a
	// replaced file the name of its backup under var/lib/bellbuild/backup).
	HadOriginal bool   `json:"had_original,omitempty"`
	Original    string `json:"original,omitempty"`
	// Hash is the sha256 (hex) of what bellbuild last wrote, so that a later
	// change by someone else is seen as a conflict.
	Hash string `json:"hash,omitempty"`
	// Prev is the hash of what the last write replaced: a run killed after
	// the ledger was saved but before the write leaves that content, which
	// is bellbuild's own and not a conflict.
	Prev string `json:"prev,omitempty"`
	// Seen is the identity of the file (see fileSeen) when a run last
	// read it whole and found it holding Hash, as it was wanted: while the
	// file keeps that identity and Hash is still wanted, a run trusts it
	// without reading it. Any write clears it.
	Seen string `json:"seen,omitempty"`
	// Extra holds module-specific state (exec's last run, apt's installed
	// version, ...).
	Extra map[string]string `json:"extra,omitempty"`
}

// Ledger maps module → item key → record. Modules must Put (and
// Host.SaveLedger) a record before they change the item it describes
// (write-ahead), so a run killed between the two still knows the original
// on the next run.
//
// On disk it is a snapshot (LedgerPath) and a journal (JournalPath) of the
// saves made since: the ledger is the snapshot with the journal's entries
// replayed in order. Each entry sets or deletes records, so replaying an
// entry the snapshot already holds changes nothing, and a run killed while
// it writes a snapshot loses nothing.
type Ledger struct {
	Modules map[string]map[string]Record `json:"modules"`
	// TempDirs are the directories (root-relative) bellbuild has written
	// temporary files in: where a killed run may have left one (see
	// Host.CleanTemps).
	TempDirs []string `json:"temp_dirs,omitempty"`

	tempDirs map[string]bool
	// pending are the changes not yet in the journal, in order.
	pending []journalOp
}

// journalOp is one change of a journal entry: a record set (Record non-nil)
// or deleted, or a temp directory added or dropped.
type journalOp struct {
	Module string  `json:"m,omitempty"`
	Key    string  `json:"k,omitempty"`
	Record *Record `json:"r,omitempty"`
	// TempDir is set for a temp directory; Drop forgets it.
	TempDir string `json:"t,omitempty"`
	Drop    bool   `json:"drop,omitempty"`
}

// journalEntry is one line of the journal: a checksum, a space, the JSON of
// the ops, a newline. A line cut short (a run killed while appending, or a
// power loss before the line reached the disk) fails its checksum.
type journalEntry struct {
	Ops []journalOp `json:"ops"`
}

func newLedger() *Ledger {
	return &Ledger{Modules: map[string]map[string]Record{}, tempDirs: map[string]bool{}}
}

// journalState is what loading found of the journal.
type journalState struct {
	// valid is the length of its whole entries; a torn last entry (never
	// acknowledged: its save did not return) lies beyond and is cut off
	// before the next append.
	valid int64
	// size is its length on disk (0 when there is none).
	size int64
	// seen is the identity of the snapshot and the journal as they were
	// read (ledgerSeen), "" when not known: while they keep it,
	// Host.ReloadLedger need not read them again.
	seen string
}

func loadLedger(h *Host) (*Ledger, journalState, error) {
	l := newLedger()
	// The stat goes first: a change after it changes the identity.
	js := journalState{seen: h.ledgerSeen()}
	data, err := h.ReadFile(LedgerPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, js, fmt.Errorf("ledger: %w", err)
	default:
		if err := json.Unmarshal(data, l); err != nil {
			return nil, js, fmt.Errorf("ledger %s: %w", LedgerPath, err)
		}
		if l.Modules == nil {
			l.Modules = map[string]map[string]Record{}
		}
		for _, d := range l.TempDirs {
			l.tempDirs[d] = true
		}
	}
	jdata, err := h.ReadFile(JournalPath)
	if errors.Is(err, fs.ErrNotExist) {
		return l, js, nil
	}
	if err != nil {
		return nil, js, fmt.Errorf("ledger journal: %w", err)
	}
	js.size = int64(len(jdata))
	js.valid, err = l.replay(jdata)
	return l, js, err
}

// ledgerSeen is the identity (seen.go) of the ledger's snapshot and
// journal ("-" for one that is missing), or "" when one of them changed
// too recently to tell from a later change. Another run that saves
// anything changes it: a snapshot is replaced by a new file, a journal
// entry is appended (a new size) and an emptied journal follows a new
// snapshot.
func (h *Host) ledgerSeen() string {
	start := time.Now() // the file system's clock, not h.Now
	var ids []string
	for _, p := range []string{LedgerPath, JournalPath} {
		fi, err := h.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			ids = append(ids, "-")
		case err != nil || identity(fi) == "" || !settled(fi, start):
			return ""
		default:
			ids = append(ids, identity(fi))
		}
	}
	return strings.Join(ids, " / ")
}

// replay applies the journal's whole entries and returns their length. An
// entry that is cut short or fails its checksum ends the journal, unless a
// good entry follows it: then the journal is corrupt (entries are appended
// one after the other and each is synced before the next is written, so a
// torn entry is always the last one).
func (l *Ledger) replay(data []byte) (int64, error) {
	off := 0
	line := 1
	for off < len(data) {
		nl := bytes.IndexByte(data[off:], '\n')
		var e journalEntry
		ok := nl >= 0 && decodeEntry(data[off:off+nl], &e)
		if !ok {
			if goodEntryAfter(data[off:]) {
				return 0, fmt.Errorf("ledger journal %s: line %d is corrupt and later entries follow it", JournalPath, line)
			}
			return int64(off), nil
		}
		for _, op := range e.Ops {
			l.apply(op)
		}
		off += nl + 1
		line++
	}
	return int64(off), nil
}

func goodEntryAfter(data []byte) bool {
	for {
		nl := bytes.IndexByte(data, '\n')
		if nl < 0 {
			return false
		}
		data = data[nl+1:]
		n := bytes.IndexByte(data, '\n')
		var e journalEntry
		if n >= 0 && decodeEntry(data[:n], &e) {
			return true
		}
	}
}

// encodeEntry renders ops as one journal line.
func encodeEntry(ops []journalOp) ([]byte, error) {
	payload, err := json.Marshal(journalEntry{Ops: ops})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(payload)
	out := make([]byte, 0, len(payload)+18)
	out = append(out, hex.EncodeToString(sum[:8])...)
	out = append(out, ' ')
	out = append(out, payload...)
	return append(out, '\n'), nil
}

func decodeEntry(line []byte, e *journalEntry) bool {
	if len(line) < 18 || line[16] != ' ' {
		return false
	}
	sum := sha256.Sum256(line[17:])
	if hex.EncodeToString(sum[:8]) != string(line[:16]) {
		return false
	}
	return json.Unmarshal(line[17:], e) == nil
}

// apply makes one op's change in memory.
func (l *Ledger) apply(op journalOp) {
	switch {
	case op.TempDir != "" && op.Drop:
		delete(l.tempDirs, op.TempDir)
	case op.TempDir != "":
		l.tempDirs[op.TempDir] = true
	case op.Record != nil:
		m := l.Modules[op.Module]
		if m == nil {
			m = map[string]Record{}
			l.Modules[op.Module] = m
		}
		m[op.Key] = *op.Record
	default:
		delete(l.Modules[op.Module], op.Key)
		if len(l.Modules[op.Module]) == 0 {
			delete(l.Modules, op.Module)
		}
	}
}

// dirty reports whether some change is not yet in the journal.
func (l *Ledger) dirty() bool { return len(l.pending) > 0 }

// Get returns the record of key in module.
func (l *Ledger) Get(module, key string) (Record, bool) {
	r, ok := l.Modules[module][key]
	return r, ok
}

// Put stores a record; call Host.SaveLedger before changing the item.
func (l *Ledger) Put(module, key string, r Record) {
	op := journalOp{Module: module, Key: key, Record: &r}
	l.apply(op)
	l.pending = append(l.pending, op)
}

// Delete forgets key in module.
func (l *Ledger) Delete(module, key string) {
	if _, ok := l.Modules[module][key]; !ok {
		return
	}
	op := journalOp{Module: module, Key: key}
	l.apply(op)
	l.pending = append(l.pending, op)
}

// Keys returns the keys module owns, sorted.
func (l *Ledger) Keys(module string) []string {
	keys := make([]string, 0, len(l.Modules[module]))
	for k := range l.Modules[module] {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// addTempDir registers dir; it reports whether dir is new.
func (l *Ledger) addTempDir(dir string) bool {
	if l.tempDirs[dir] {
		return false
	}
	op := journalOp{TempDir: dir}
	l.apply(op)
	l.pending = append(l.pending, op)
	return true
}

func (l *Ledger) dropTempDir(dir string) {
	if !l.tempDirs[dir] {
		return
	}
	op := journalOp{TempDir: dir, Drop: true}
	l.apply(op)
	l.pending = append(l.pending, op)
}

// snapshot renders the whole ledger (TempDirs sorted).
func (l *Ledger) snapshot() ([]byte, error) {
	l.TempDirs = sortedSet(l.tempDirs)
	return jsonMarshalIndent(l)
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil
	}
	return out
}

// ReadLedger returns the ledger of the root at dir as a run would see it
// (the snapshot with the journal replayed), without taking the lock.
func ReadLedger(dir string) (*Ledger, error) {
	h, err := Open(Options{RootDir: dir})
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return h.Ledger, nil
}
