package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
)

// LedgerPath is where, under the target root, bellbuild records what it owns.
const LedgerPath = "var/lib/bellbuild/ledger.json"

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
	// Extra holds module-specific state (exec's last run, apt's installed
	// version, ...).
	Extra map[string]string `json:"extra,omitempty"`
}

// Ledger maps module → item key → record. It is written atomically under
// the target root; modules must Put (and Save) a record before they change
// the item it describes (write-ahead), so a run killed between the two
// still knows the original on the next run.
type Ledger struct {
	Modules map[string]map[string]Record `json:"modules"`
	dirty   bool
}

func loadLedger(h *Host) (*Ledger, error) {
	l := &Ledger{Modules: map[string]map[string]Record{}}
	data, err := h.ReadFile(LedgerPath)
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	if err := json.Unmarshal(data, l); err != nil {
		return nil, fmt.Errorf("ledger %s: %w", LedgerPath, err)
	}
	if l.Modules == nil {
		l.Modules = map[string]map[string]Record{}
	}
	return l, nil
}

// Get returns the record of key in module.
func (l *Ledger) Get(module, key string) (Record, bool) {
	r, ok := l.Modules[module][key]
	return r, ok
}

// Put stores a record; call Host.SaveLedger before changing the item.
func (l *Ledger) Put(module, key string, r Record) {
	m := l.Modules[module]
	if m == nil {
		m = map[string]Record{}
		l.Modules[module] = m
	}
	m[key] = r
	l.dirty = true
}

// Delete forgets key in module.
func (l *Ledger) Delete(module, key string) {
	if _, ok := l.Modules[module][key]; !ok {
		return
	}
	delete(l.Modules[module], key)
	if len(l.Modules[module]) == 0 {
		delete(l.Modules, module)
	}
	l.dirty = true
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
