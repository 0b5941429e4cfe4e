package host

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestPruneDirs: the directories a write made go with the last item they
// held, deepest first; one that held something before, or got something
// of someone else's since, stays.
func TestPruneDirs(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	h := openHost(t, root)
	for _, p := range []string{"/etc/app/conf.d/a.conf", "/etc/app/b.conf", "/srv/x/y/z.conf", "/etc/keep.conf"} {
		if _, err := h.EnsureFile("files", p, FileSpec{Path: p, Data: []byte("x\n"), Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
	}
	if errs := h.PruneDirs(); len(errs) > 0 {
		t.Fatal(errs)
	}
	// Someone else's file in one of the directories bellbuild made.
	os.WriteFile(filepath.Join(root, "srv/x/other"), []byte("theirs\n"), 0o644)
	for _, p := range []string{"/etc/app/conf.d/a.conf", "/etc/app/b.conf", "/srv/x/y/z.conf", "/etc/keep.conf"} {
		if _, err := h.ReleaseFile("files", p, p); err != nil {
			t.Fatal(err)
		}
	}
	if errs := h.PruneDirs(); len(errs) > 0 {
		t.Fatal(errs)
	}
	for p, want := range map[string]bool{"etc": true, "etc/app": false, "etc/app/conf.d": false, "srv": true, "srv/x": true, "srv/x/y": false, "srv/x/other": true} {
		_, err := os.Lstat(filepath.Join(root, p))
		if got := err == nil; got != want {
			t.Errorf("%s exists: %v, want %v (%v)", p, got, want, err)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Error(err)
		}
	}
	// srv and srv/x stay recorded: once empty again, they go too.
	os.Remove(filepath.Join(root, "srv/x/other"))
	if errs := h.PruneDirs(); len(errs) > 0 {
		t.Fatal(errs)
	}
	if _, err := os.Lstat(filepath.Join(root, "srv")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("srv after its last entry went: %v", err)
	}
	if keys := h.Ledger.Keys(dirsModule); len(keys) != 0 {
		t.Errorf("still recorded: %v", keys)
	}
}
