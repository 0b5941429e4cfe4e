package host

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func openHost(t *testing.T, root string) *Host {
	t.Helper()
	h, err := Open(Options{RootDir: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestConfined: a symlink planted in the target cannot send a read or a
// write outside the root, whichever path component it is.
func TestConfined(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("outside\n"), 0o644)
	for _, tc := range []struct {
		name  string
		plant func(root string)
		path  string
	}{
		{"final component", func(root string) {
			os.MkdirAll(filepath.Join(root, "etc"), 0o755)
			os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "etc/motd"))
		}, "/etc/motd"},
		{"directory", func(root string) {
			os.Symlink(outside, filepath.Join(root, "etc"))
		}, "/etc/secret"},
		{"relative escape", func(root string) {
			os.MkdirAll(filepath.Join(root, "etc"), 0o755)
			os.Symlink("../../../../../../../"+outside, filepath.Join(root, "etc/x"))
		}, "/etc/x/secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.plant(root)
			h := openHost(t, root)
			if data, err := h.ReadFile(tc.path); err == nil {
				t.Errorf("ReadFile(%s) escaped the root: %q", tc.path, data)
			}
			h.WriteFile(tc.path, []byte("written\n"), 0o644, 0, 0)
			h.EnsureFile("files", tc.path, FileSpec{Path: tc.path, Data: []byte("ensured\n"), Mode: 0o644})
			if data, _ := os.ReadFile(filepath.Join(outside, "secret")); string(data) != "outside\n" {
				t.Errorf("a write through %s changed a file outside the root: %q", tc.path, data)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Errorf("a write through %s created files outside the root: %v", tc.path, ents)
			}
		})
	}
}

// TestWriteFilePlantedTemp: a link planted at the temp name, even one that
// stays inside the root, cannot redirect the write (or its chown) onto
// another file: someone who can write to a directory bellbuild writes into
// (a user's home) must not be able to take over /etc/shadow that way.
func TestWriteFilePlantedTemp(t *testing.T) {
	for _, link := range []string{"../../etc/shadow", "/etc/shadow"} {
		t.Run(link, func(t *testing.T) {
			root := t.TempDir()
			os.MkdirAll(filepath.Join(root, "etc"), 0o755)
			os.MkdirAll(filepath.Join(root, "home/eve"), 0o755)
			shadow := filepath.Join(root, "etc/shadow")
			os.WriteFile(shadow, []byte("root:*:1::::::\n"), 0o640)
			os.Symlink(link, filepath.Join(root, "home/eve/.authorized_keys.bellbuild-tmp"))
			h := openHost(t, root)
			if err := h.WriteFile("/home/eve/authorized_keys", []byte("ssh-ed25519 AAAA\n"), 0o600, 1000, 1000); err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(shadow)
			fi, _ := os.Stat(shadow)
			if string(data) != "root:*:1::::::\n" || metaOf(fi).String() != "0640 0:0" {
				t.Errorf("/etc/shadow changed through a planted temp link: %q %s", data, metaOf(fi))
			}
			if got, _ := os.ReadFile(filepath.Join(root, "home/eve/authorized_keys")); string(got) != "ssh-ed25519 AAAA\n" {
				t.Errorf("the file itself = %q", got)
			}
			if _, err := os.Lstat(filepath.Join(root, "home/eve/.authorized_keys.bellbuild-tmp")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("temp left behind: %v", err)
			}
		})
	}
}

// TestWriteFile: content, mode and owner land together, in a file that
// replaced the old one (new inode), with no temp file left.
func TestWriteFile(t *testing.T) {
	root := t.TempDir()
	h := openHost(t, root)
	if err := h.WriteFile("/etc/a/b/c.conf", []byte("one\n"), 0o600, 12, 34); err != nil {
		t.Fatal(err)
	}
	fi1, _ := os.Stat(filepath.Join(root, "etc/a/b/c.conf"))
	if err := h.WriteFile("/etc/a/b/c.conf", []byte("two\n"), FileMode(0o4750), 56, 78); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "etc/a/b/c.conf")
	data, _ := os.ReadFile(p)
	fi2, _ := os.Stat(p)
	m := metaOf(fi2)
	if string(data) != "two\n" || m.String() != "4750 56:78" {
		t.Errorf("got %q %s, want \"two\\n\" 4750 56:78", data, m)
	}
	if os.SameFile(fi1, fi2) {
		t.Errorf("the file was rewritten in place, not replaced")
	}
	ents, _ := os.ReadDir(filepath.Join(root, "etc/a/b"))
	if len(ents) != 1 {
		t.Errorf("directory holds %v, want only c.conf", ents)
	}
	if fi, _ := os.Stat(filepath.Join(root, "etc/a")); fi.Mode().Perm() != 0o755 {
		t.Errorf("parent created %v, want 0755", fi.Mode().Perm())
	}
}

// TestEnsureReleaseFile: an original is backed up with its mode and owner
// and comes back exactly; a file bellbuild created is removed; the ledger
// ends empty.
func TestEnsureReleaseFile(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	orig := filepath.Join(root, "etc/orig")
	os.WriteFile(orig, []byte("original\n"), 0o640)
	os.Chown(orig, 7, 8)
	h := openHost(t, root)
	for _, p := range []string{"/etc/orig", "/etc/new"} {
		changed, err := h.EnsureFile("files", p, FileSpec{Path: p, Data: []byte("managed\n"), Mode: 0o644})
		if err != nil || !changed {
			t.Fatalf("EnsureFile(%s) = %v, %v", p, changed, err)
		}
		if changed, err := h.EnsureFile("files", p, FileSpec{Path: p, Data: []byte("managed\n"), Mode: 0o644}); err != nil || changed {
			t.Fatalf("EnsureFile(%s) again = %v, %v; want no change", p, changed, err)
		}
	}
	for _, p := range []string{"/etc/orig", "/etc/new"} {
		if _, err := h.ReleaseFile("files", p, p); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(orig)
	fi, _ := os.Stat(orig)
	if string(data) != "original\n" || metaOf(fi).String() != "0640 7:8" {
		t.Errorf("restored %q %s, want \"original\\n\" 0640 7:8", data, metaOf(fi))
	}
	if _, err := os.Stat(filepath.Join(root, "etc/new")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("/etc/new still there after release: %v", err)
	}
	if len(h.Ledger.Modules) != 0 {
		t.Errorf("ledger not empty: %v", h.Ledger.Modules)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, backupDir)); len(ents) != 0 {
		t.Errorf("backups left: %v", ents)
	}
}

// TestSymlinks: EnsureSymlink replaces a foreign link and ReleaseSymlink
// restores it; RemoveSymlink's removal is undone by ReleaseSymlink; a link
// repointed by someone else is a conflict.
func TestSymlinks(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/w"), 0o755)
	os.Symlink("/old", filepath.Join(root, "etc/w/a"))
	os.Symlink("/theirs", filepath.Join(root, "etc/w/b"))
	h := openHost(t, root)
	read := func(p string) string { s, _ := os.Readlink(filepath.Join(root, p)); return s }

	if _, err := h.EnsureSymlink("units", "a", "/etc/w/a", "/new"); err != nil || read("etc/w/a") != "/new" {
		t.Fatalf("EnsureSymlink: %v, link %q", err, read("etc/w/a"))
	}
	if changed, _ := h.EnsureSymlink("units", "a", "/etc/w/a", "/new"); changed {
		t.Errorf("EnsureSymlink again changed something")
	}
	if _, err := h.RemoveSymlink("units", "b", "/etc/w/b", "/theirs"); err != nil || read("etc/w/b") != "" {
		t.Fatalf("RemoveSymlink: %v, link %q", err, read("etc/w/b"))
	}
	for _, k := range []string{"a", "b"} {
		if _, err := h.ReleaseSymlink("units", k, "/etc/w/"+k); err != nil {
			t.Fatal(err)
		}
	}
	if read("etc/w/a") != "/old" || read("etc/w/b") != "/theirs" {
		t.Errorf("after release: a -> %q, b -> %q; want /old, /theirs", read("etc/w/a"), read("etc/w/b"))
	}

	h.EnsureSymlink("units", "c", "/etc/w/c", "/mine")
	os.Remove(filepath.Join(root, "etc/w/c"))
	os.Symlink("/someone-else", filepath.Join(root, "etc/w/c"))
	if _, err := h.EnsureSymlink("units", "c", "/etc/w/c", "/mine"); !errors.Is(err, ErrConflict) {
		t.Errorf("EnsureSymlink on a repointed link: %v, want ErrConflict", err)
	}
	if _, err := h.ReleaseSymlink("units", "c", "/etc/w/c"); !errors.Is(err, ErrConflict) || read("etc/w/c") != "/someone-else" {
		t.Errorf("ReleaseSymlink on a repointed link: %v, link %q", err, read("etc/w/c"))
	}
}

// TestLookupIDs reads the root's databases, sees a rewrite, and never
// falls back to the build host's.
func TestLookupIDs(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/:/bin/sh\napp:x:1234:1234::/:/bin/sh\nbad:x:zz:1::/:/bin/sh\n"), 0o644)
	h := openHost(t, root)
	for _, tc := range []struct {
		name string
		want int
		err  string
	}{
		{"app", 1234, ""},
		{"root", 0, ""},
		{"42", 42, ""},
		{"www-data", 0, `user "www-data": not found in /etc/passwd`},
		{"bad", 0, `user "bad": bad id "zz" in /etc/passwd`},
	} {
		id, err := h.LookupUser(tc.name)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("LookupUser(%s) = %d, %v; want error %q", tc.name, id, err, tc.err)
			}
			continue
		}
		if err != nil || id != tc.want {
			t.Errorf("LookupUser(%s) = %d, %v; want %d", tc.name, id, err, tc.want)
		}
	}
	// A rewrite (as uamlite does, by rename) is seen at once.
	if err := h.WriteFile("/etc/passwd", []byte("root:x:0:0::/:/bin/sh\napp:x:999:999::/:/bin/sh\n"), 0o644, 0, 0); err != nil {
		t.Fatal(err)
	}
	if id, _ := h.LookupUser("app"); id != 999 {
		t.Errorf("after a rewrite LookupUser(app) = %d, want 999", id)
	}
	if _, err := h.LookupGroup("root"); err == nil || !strings.Contains(err.Error(), "not found in /etc/group") {
		t.Errorf("LookupGroup without /etc/group: %v", err)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]string{"0644": "0644 0:0", "4755": "4755 0:0", "1777": "1777 0:0", "600": "0600 0:0"} {
		m, err := ParseMode(in)
		if err != nil || (Meta{Mode: m}).String() != want {
			t.Errorf("ParseMode(%s) = %v, %v; want %s", in, m, err, want)
		}
	}
	for _, bad := range []string{"", "0999", "17777", "rwx", "-1"} {
		if _, err := ParseMode(bad); err == nil {
			t.Errorf("ParseMode(%q) accepted", bad)
		}
	}
}

// TestEnsureFileAdopts: a file already exactly as wanted (shipped by the
// base image) is taken over without a rewrite, and released without one.
func TestEnsureFileAdopts(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	p := filepath.Join(root, "etc/motd")
	os.WriteFile(p, []byte("same\n"), 0o644)
	before, _ := os.Stat(p)
	h := openHost(t, root)
	spec := FileSpec{Path: "/etc/motd", Data: []byte("same\n"), Mode: 0o644}
	if changed, err := h.EnsureFile("files", "/etc/motd", spec); err != nil || changed {
		t.Fatalf("EnsureFile = %v, %v; want no change", changed, err)
	}
	if _, owned := h.Ledger.Get("files", "/etc/motd"); !owned {
		t.Errorf("the file was not adopted")
	}
	if changed, err := h.ReleaseFile("files", "/etc/motd", "/etc/motd"); err != nil || changed {
		t.Fatalf("ReleaseFile = %v, %v; want no change", changed, err)
	}
	after, err := os.Stat(p)
	if err != nil || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the file was rewritten or removed: %v", err)
	}
	if len(h.Changes()) != 0 || len(h.Ledger.Modules) != 0 {
		t.Errorf("changes %v, ledger %v; want none", h.Changes(), h.Ledger.Modules)
	}
}

// TestEnsureFilesBatch: one conflicting file is reported by name and left
// alone, the others of the batch are still written; a rerun changes nothing.
func TestEnsureFilesBatch(t *testing.T) {
	root := t.TempDir()
	h := openHost(t, root)
	items := func(v string) []FileItem {
		var out []FileItem
		for _, n := range []string{"a", "b", "c"} {
			p := "/etc/batch/" + n
			out = append(out, FileItem{Key: n, Spec: FileSpec{Path: p, Data: []byte(v + n), Mode: 0o644}})
		}
		return out
	}
	if n, errs := h.EnsureFiles("files", items("1")); len(n) != 3 || len(errs) != 0 {
		t.Fatalf("first batch: %d changed, %v", len(n), errs)
	}
	os.WriteFile(filepath.Join(root, "etc/batch/b"), []byte("theirs"), 0o644)
	n, errs := h.EnsureFiles("files", items("2"))
	if len(n) != 2 || len(errs) != 1 || !errors.Is(errs[0], ErrConflict) || !strings.Contains(errs[0].Error(), "/etc/batch/b") {
		t.Fatalf("second batch: %d changed, %v; want 2 and a conflict on /etc/batch/b", len(n), errs)
	}
	for name, want := range map[string]string{"a": "2a", "b": "theirs", "c": "2c"} {
		if data, _ := os.ReadFile(filepath.Join(root, "etc/batch", name)); string(data) != want {
			t.Errorf("%s = %q, want %q", name, data, want)
		}
	}
	os.WriteFile(filepath.Join(root, "etc/batch/b"), []byte("1b"), 0o644) // the admin puts it back
	if n, errs := h.EnsureFiles("files", items("2")); len(n) != 1 || len(errs) != 0 {
		t.Fatalf("third batch: %d changed, %v; want only b", len(n), errs)
	}
	if n, errs := h.EnsureFiles("files", items("2")); len(n) != 0 || len(errs) != 0 {
		t.Fatalf("rerun: %d changed, %v; want nothing", len(n), errs)
	}
}

// TestSetMetaOneLink changes a file with one name and a directory, and
// refuses a symbolic link and a file with another hard link (whose other
// name is outside the root), leaving them as they were.
func TestSetMetaOneLink(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "d"), 0o755)
	os.WriteFile(filepath.Join(root, "f"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "outside"), nil, 0o600)
	os.Link(filepath.Join(dir, "outside"), filepath.Join(root, "hard"))
	os.Symlink("f", filepath.Join(root, "sym"))
	h := openHost(t, root)
	m := Meta{Mode: 0o640, UID: 7, GID: 8}
	for _, p := range []string{"/f", "/d"} {
		if err := h.SetMetaOneLink(p, m); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		if got, _ := h.StatMeta(p); got != m {
			t.Errorf("%s is %s, want %s", p, got, m)
		}
	}
	if err := h.SetMetaOneLink("/hard", m); !errors.Is(err, ErrHardLinked) {
		t.Errorf("hard link: %v, want ErrHardLinked", err)
	}
	if err := h.SetMetaOneLink("/sym", Meta{Mode: 0o600}); err == nil {
		t.Error("a symlink was followed")
	}
	fi, _ := os.Stat(filepath.Join(dir, "outside"))
	if got := metaOf(fi); got.String() != "0600 0:0" {
		t.Errorf("the file outside the root is %s, want 0600 0:0", got)
	}
	if got, _ := h.StatMeta("/f"); got != m {
		t.Errorf("through the symlink, f became %s", got)
	}
}
