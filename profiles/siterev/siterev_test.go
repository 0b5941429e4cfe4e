package siterev

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

type tarEntry struct {
	name, body, link string
	typ              byte
	size             int64
}

func tarOf(t *testing.T, entries ...tarEntry) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link, Size: int64(len(e.body))}
		if e.size > 0 {
			h.Size = e.size
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			body := e.body
			if e.size > 0 {
				body = strings.Repeat("x", int(e.size))
			}
			if _, err := tw.Write([]byte(body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &b
}

// TestUnpack: files, directories and links go in the directory and only
// there; a file bigger than a site file may be is skipped; a FIFO or
// device is not made; a path out of the directory is refused.
func TestUnpack(t *testing.T) {
	out := t.TempDir()
	err := unpack(tarOf(t,
		tarEntry{name: "profiles/", typ: tar.TypeDir},
		tarEntry{name: "profiles/a.yaml", typ: tar.TypeReg, body: "stage: {busybox: {}}\n"},
		tarEntry{name: "big.tar", typ: tar.TypeReg, size: profiles.MaxFileSize + 1},
		tarEntry{name: "fifo", typ: tar.TypeFifo},
		tarEntry{name: "nodes.yaml", typ: tar.TypeSymlink, link: "/etc/passwd"},
	), out)
	if err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(out, "profiles/a.yaml")); err != nil || string(data) != "stage: {busybox: {}}\n" {
		t.Errorf("profiles/a.yaml: %q, %v", data, err)
	}
	for _, name := range []string{"big.tar", "fifo"} {
		if _, err := os.Lstat(filepath.Join(out, name)); err == nil {
			t.Errorf("%s was unpacked", name)
		}
	}
	if target, err := os.Readlink(filepath.Join(out, "nodes.yaml")); err != nil || target != "/etc/passwd" {
		t.Errorf("link: %q, %v", target, err)
	}
	// Load refuses the link out of the site, as it does in a work tree.
	_, err = profiles.Load(out)
	if err == nil || !strings.Contains(err.Error(), "nodes.yaml: a symbolic link to /etc/passwd, outside the site") {
		t.Errorf("Load: %v", err)
	}

	for _, name := range []string{"../escape", "/abs"} {
		out := t.TempDir()
		if err := unpack(tarOf(t, tarEntry{name: name, typ: tar.TypeReg, body: "x"}), out); err == nil {
			t.Errorf("%s: unpacked", name)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(out), "escape")); err == nil {
			t.Errorf("%s: written outside", name)
		}
	}
}

// TestDescribe: the commit of the site's work tree and the files of the
// site (not of the rest of the repository, not ignored ones) that differ
// from it — changed, new, deleted — relative to the site, sorted; a
// directory outside git is ErrNotGit.
func TestDescribe(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		testtool.Skipf(t, "git not found (apt-get install git)")
	}
	repo := t.TempDir()
	site := filepath.Join(repo, "sites", "a")
	write := func(rel, body string) {
		t.Helper()
		p := filepath.Join(repo, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("git", append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.org"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	write("sites/a/profiles/p.yaml", "conf: {}\n")
	write("sites/a/nodes.yaml", "nodes: []\n")
	write("sites/a/.gitignore", "private/\n")
	write("sites/b/profiles/p.yaml", "conf: {}\n")
	git("init", "-q")
	git("add", ".")
	git("commit", "-q", "-m", "sites")
	commit := git("rev-parse", "HEAD")
	rev, err := Describe(t.Context(), site)
	if err != nil || rev.Commit != commit || rev.Dirty || rev.Changed != nil {
		t.Fatalf("clean: %+v, %v; want %s, clean", rev, err, commit)
	}
	write("sites/a/profiles/p.yaml", "conf: {sysctl: {a: 1}}\n")
	write("sites/a/profiles/new dir/q.yaml", "conf: {}\n")
	write("sites/a/private/key", "secret\n")
	write("sites/b/profiles/p.yaml", "conf: {sysctl: {b: 1}}\n")
	if err := os.Remove(filepath.Join(site, "nodes.yaml")); err != nil {
		t.Fatal(err)
	}
	rev, err = Describe(t.Context(), site)
	want := []string{"nodes.yaml", "profiles/new dir/q.yaml", "profiles/p.yaml"}
	if err != nil || rev.Commit != commit || !rev.Dirty || strings.Join(rev.Changed, "|") != strings.Join(want, "|") {
		t.Errorf("dirty: %+v, %v; want %s, dirty, %q", rev, err, commit, want)
	}
	outside := t.TempDir()
	t.Setenv("GIT_CEILING_DIRECTORIES", filepath.Dir(outside))
	if _, err := Describe(t.Context(), outside); !errors.Is(err, ErrNotGit) {
		t.Errorf("outside git: %v, want ErrNotGit", err)
	}
}
