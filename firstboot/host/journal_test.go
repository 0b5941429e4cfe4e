package host

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// records puts n records in module m of h's ledger.
func putRecords(h *Host, m string, from, n int) {
	for i := from; i < from+n; i++ {
		h.Ledger.Put(m, string(rune('a'+i)), Record{Hash: strings.Repeat("h", i+1)})
	}
}

func reopen(t *testing.T, root string) *Ledger {
	t.Helper()
	l, err := ReadLedger(root)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestJournal: a save appends one line to the journal (the snapshot is
// not rewritten) and a reader sees snapshot + journal; a checkpoint
// writes the snapshot and empties the journal; a snapshot written by a
// run killed before it emptied the journal reads the same (replaying
// entries the snapshot holds changes nothing).
func TestJournal(t *testing.T) {
	root := t.TempDir()
	h := openHost(t, root)
	putRecords(h, "files", 0, 3)
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	h.Ledger.Delete("files", "b")
	putRecords(h, "limits", 5, 1)
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, LedgerPath)); !os.IsNotExist(err) {
		t.Errorf("a save wrote the snapshot: %v", err)
	}
	j, _ := os.ReadFile(filepath.Join(root, JournalPath))
	if n := strings.Count(string(j), "\n"); n != 2 {
		t.Errorf("journal has %d lines, want 2 (one per save):\n%s", n, j)
	}
	want := map[string]map[string]Record{
		"files":  {"a": {Hash: "h"}, "c": {Hash: "hhh"}},
		"limits": {"f": {Hash: "hhhhhh"}},
	}
	if diff := cmp.Diff(want, reopen(t, root).Modules); diff != "" {
		t.Errorf("snapshot + journal (-want +got):\n%s", diff)
	}

	if err := h.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, JournalPath)); err != nil || fi.Size() != 0 {
		t.Errorf("journal after a checkpoint: %v, %v; want empty", fi, err)
	}
	if diff := cmp.Diff(want, reopen(t, root).Modules); diff != "" {
		t.Errorf("after a checkpoint (-want +got):\n%s", diff)
	}

	// A checkpoint whose journal was not emptied (killed in between).
	putRecords(h, "files", 1, 1)
	h.Ledger.Delete("limits", "f")
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	j, _ = os.ReadFile(filepath.Join(root, JournalPath))
	if err := h.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, JournalPath), j, 0o600)
	want = map[string]map[string]Record{"files": {"a": {Hash: "h"}, "b": {Hash: "hh"}, "c": {Hash: "hhh"}}}
	if diff := cmp.Diff(want, reopen(t, root).Modules); diff != "" {
		t.Errorf("snapshot + the journal it holds (-want +got):\n%s", diff)
	}
}

// TestJournalTornTail: an entry cut short (a run killed while appending,
// so its save never returned) is ignored, and cut off before the next
// entry is appended, so that it cannot hide that entry.
func TestJournalTornTail(t *testing.T) {
	root := t.TempDir()
	h := openHost(t, root)
	putRecords(h, "files", 0, 1)
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	h.Close()
	jp := filepath.Join(root, JournalPath)
	good, _ := os.ReadFile(jp)
	for name, tail := range map[string]string{
		"cut short":    string(good[:len(good)/2]),
		"bad checksum": "0000000000000000" + string(good[16:]),
		"zeros":        strings.Repeat("\x00", 40),
	} {
		t.Run(name, func(t *testing.T) {
			os.WriteFile(jp, append(append([]byte{}, good...), tail...), 0o600)
			if diff := cmp.Diff(map[string]map[string]Record{"files": {"a": {Hash: "h"}}}, reopen(t, root).Modules); diff != "" {
				t.Errorf("with a torn tail (-want +got):\n%s", diff)
			}
			h := openHost(t, root)
			putRecords(h, "files", 1, 1)
			if err := h.SaveLedger(); err != nil {
				t.Fatal(err)
			}
			want := map[string]map[string]Record{"files": {"a": {Hash: "h"}, "b": {Hash: "hh"}}}
			if diff := cmp.Diff(want, reopen(t, root).Modules); diff != "" {
				t.Errorf("an entry appended after a torn tail (-want +got):\n%s", diff)
			}
			h.Close()
		})
	}
}

// TestJournalCorrupt: a bad entry followed by good ones is not a torn
// tail but damage: reading the ledger fails (and names the line) rather
// than silently dropping what bellbuild owns.
func TestJournalCorrupt(t *testing.T) {
	root := t.TempDir()
	h := openHost(t, root)
	for i := range 2 {
		putRecords(h, "files", i, 1)
		if err := h.SaveLedger(); err != nil {
			t.Fatal(err)
		}
	}
	h.Close()
	jp := filepath.Join(root, JournalPath)
	data, _ := os.ReadFile(jp)
	data[20] ^= 1
	os.WriteFile(jp, data, 0o600)
	if _, err := ReadLedger(root); err == nil || !strings.Contains(err.Error(), "line 1 is corrupt") {
		t.Errorf("ReadLedger = %v, want line 1 corrupt", err)
	}
}

// TestCleanTemps: the temporary files a killed run left are removed at the
// start of the next run, in every directory bellbuild wrote in, when the
// journal shows the last run did not finish; after a finished run only
// the state directory is looked at. A temporary directory is removed
// only where only root could have made it.
func TestCleanTemps(t *testing.T) {
	root := t.TempDir()
	h := openHost(t, root)
	for _, p := range []string{"/etc/app/a", "/home/u/.ssh/x"} {
		if err := h.WriteFile(p, []byte("x"), 0o644, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	os.Chown(filepath.Join(root, "home/u/.ssh"), 1000, 1000)
	os.Chmod(filepath.Join(root, "home/u/.ssh"), 0o700)
	if err := h.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	// What a run killed after its first write leaves.
	if err := h.WriteFile("/etc/app/b", []byte("x"), 0o644, 0, 0); err != nil {
		t.Fatal(err)
	}
	h.Close()
	left := []string{
		"etc/app/.c.bellbuild-tmp", "etc/app/.bellbuild-check-c", "var/lib/bellbuild/.last-run.json.bellbuild-tmp",
		"home/u/.ssh/.authorized_keys.bellbuild-tmp",
	}
	for _, p := range left {
		os.WriteFile(filepath.Join(root, p), []byte("partial"), 0o600)
	}
	os.MkdirAll(filepath.Join(root, "etc/app/.home.bellbuild-tmp/sub"), 0o700)
	os.MkdirAll(filepath.Join(root, "home/u/.ssh/.users.bellbuild-tmp"), 0o700)
	os.WriteFile(filepath.Join(root, "etc/app/.keep"), nil, 0o644)

	h = openHost(t, root)
	if errs := h.CleanTemps(); len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, p := range append(left, "etc/app/.home.bellbuild-tmp") {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", p, err)
		}
	}
	for _, p := range []string{"etc/app/.keep", "etc/app/a", "etc/app/b", "home/u/.ssh/.users.bellbuild-tmp"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}

	// After a finished run, only the state directory is looked at.
	if err := h.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	h.Close()
	for _, p := range []string{"etc/app/.c.bellbuild-tmp", "var/lib/bellbuild/.ledger.json.bellbuild-tmp"} {
		os.WriteFile(filepath.Join(root, p), nil, 0o600)
	}
	h = openHost(t, root)
	h.CleanTemps()
	if _, err := os.Lstat(filepath.Join(root, "var/lib/bellbuild/.ledger.json.bellbuild-tmp")); !os.IsNotExist(err) {
		t.Errorf("state directory temp not removed: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/app/.c.bellbuild-tmp")); err != nil {
		t.Errorf("after a finished run, /etc/app was looked at: %v", err)
	}
}

// TestJournalCompacts: a journal grown past journalCompactAt and twice the
// snapshot is folded into a new snapshot by the save that grew it, so a
// run with many saves does not leave a reader a long journal to replay.
func TestJournalCompacts(t *testing.T) {
	defer func(n int64) { journalCompactAt = n }(journalCompactAt)
	journalCompactAt = 4 << 10
	root := t.TempDir()
	h := openHost(t, root)
	want := map[string]Record{}
	maxJournal := int64(0)
	for i := range 200 {
		k := fmt.Sprintf("k%03d", i%50)
		r := Record{Hash: strings.Repeat("x", 64), Extra: map[string]string{"n": fmt.Sprint(i)}}
		h.Ledger.Put("exec", k, r)
		want[k] = r
		if err := h.SaveLedger(); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(root, JournalPath))
		maxJournal = max(maxJournal, fi.Size())
	}
	snap, _ := os.Stat(filepath.Join(root, LedgerPath))
	if snap == nil || maxJournal > 2*snap.Size()+4<<10 {
		t.Errorf("journal grew to %d bytes beside a snapshot of %v", maxJournal, snap)
	}
	if diff := cmp.Diff(map[string]map[string]Record{"exec": want}, reopen(t, root).Modules); diff != "" {
		t.Errorf("after compactions (-want +got):\n%s", diff)
	}
}
