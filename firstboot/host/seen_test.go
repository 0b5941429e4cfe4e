package host

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSeen: a file is recorded with its identity only once its ctime is
// behind the racy window; a rerun then trusts it, a rewrite forgets the
// identity, and a change made after the record (even restoring the
// mtime) is read and seen.
func TestSeen(t *testing.T) {
	root := t.TempDir()
	h := openHost(t, root)
	spec := FileSpec{Path: "/etc/x", Data: []byte("one\n"), Mode: 0o644}
	seen := func() string {
		rec, _ := h.Ledger.Get("files", "/etc/x")
		return rec.Seen
	}
	steps := []struct {
		name        string
		before      func()
		data        string
		wantChanged bool
		wantErr     bool
		wantSeen    bool
	}{
		{name: "first write", data: "one\n", wantChanged: true},
		{name: "at once: too recent to record", data: "one\n"},
		{name: "after the window: recorded", before: func() { time.Sleep(racyWindow + 20*time.Millisecond) }, data: "one\n", wantSeen: true},
		{name: "trusted", data: "one\n", wantSeen: true},
		{name: "rewritten: identity forgotten", data: "two\n", wantChanged: true},
		{name: "recorded again", before: func() { time.Sleep(racyWindow + 20*time.Millisecond) }, data: "two\n", wantSeen: true},
		{name: "changed by hand, same size, mtime put back: a conflict", before: func() {
			full := filepath.Join(root, "etc/x")
			fi, _ := os.Stat(full)
			os.WriteFile(full, []byte("TWO\n"), 0o644)
			os.Chtimes(full, fi.ModTime(), fi.ModTime())
		}, data: "two\n", wantErr: true, wantSeen: true},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		spec.Data = []byte(s.data)
		changed, err := h.EnsureFile("files", "/etc/x", spec)
		if changed != s.wantChanged || (err != nil) != s.wantErr {
			t.Errorf("%s: changed %v, error %v; want %v, error %v", s.name, changed, err, s.wantChanged, s.wantErr)
		}
		if got := seen() != ""; got != s.wantSeen {
			t.Errorf("%s: identity recorded %v (%q), want %v", s.name, got, seen(), s.wantSeen)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(root, "etc/x")); string(data) != "TWO\n" {
		t.Errorf("etc/x = %q, want the hand's %q", data, "TWO\n")
	}
}

// TestReloadLedgerSeesAnotherRun: a ledger read while its files were
// settled is not read again after the lock, unless another run saved
// something meanwhile: a journal entry, or a new snapshot.
func TestReloadLedgerSeesAnotherRun(t *testing.T) {
	for _, tc := range []struct {
		name string
		save func(h *Host) error
	}{
		{"a journal entry", func(h *Host) error { return h.SaveLedger() }},
		{"a new snapshot", func(h *Host) error {
			if err := h.SaveLedger(); err != nil {
				return err
			}
			return h.Checkpoint()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			h0 := openHost(t, root)
			h0.Ledger.Put("m", "before", Record{Hash: "1"})
			must(t, h0.SaveLedger())
			must(t, h0.Checkpoint())
			time.Sleep(racyWindow + 20*time.Millisecond)

			h1 := openHost(t, root)
			if h1.js.seen == "" {
				t.Fatal("a settled ledger has no identity: the case would not test the shortcut")
			}
			other := openHost(t, root)
			other.Ledger.Put("m", "other", Record{Hash: "2"})
			must(t, tc.save(other))
			must(t, h1.ReloadLedger())
			if _, ok := h1.Ledger.Get("m", "other"); !ok {
				t.Errorf("the reloaded ledger lacks the other run's record")
			}
			if _, ok := h1.Ledger.Get("m", "before"); !ok {
				t.Errorf("the reloaded ledger lacks the earlier record")
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
