package siterev

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/profiles"
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
