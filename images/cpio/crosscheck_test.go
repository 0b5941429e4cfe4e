package cpio

import (
	"bytes"
	"io"
	"io/fs"
	"strings"
	"testing"

	refcpio "github.com/cavaliergopher/cpio"
	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/fstree"
)

// TestReferenceReaderAgrees reads Write's output with an independent newc
// implementation (github.com/cavaliergopher/cpio) and checks every entry's
// name, type, permission bits, owner, link target and bytes against the
// tree. (The library cannot write device numbers, so bellbuild writes newc
// itself; reading is where it serves as a second opinion.)
func TestReferenceReaderAgrees(t *testing.T) {
	tr := fstree.New()
	tr.AddFile("etc/hostname", []byte("node1\n"), 0o644, 0, 0)
	tr.AddFile("etc/shadow", []byte("root:*:1::::::\n"), 0o640, 0, 42)
	tr.AddFile("home/eve/notes", []byte("eve's\n"), 0o600, 1000, 1000)
	tr.AddFile("usr/bin/passwd", []byte("\x7fELF setuid"), fs.ModeSetuid|0o755, 0, 0)
	tr.AddFile("var/empty", nil, 0o644, 0, 0)
	tr.Add(fstree.Entry{Path: "tmp", Type: fstree.Dir, Mode: fs.ModeSticky | 0o777})
	tr.Add(fstree.Entry{Path: "bin/sh", Type: fstree.Symlink, Target: "busybox", Mode: 0o777})
	tr.AddFile("bin/busybox", []byte("#!busybox"), 0o755, 0, 0)
	tr.Add(fstree.Entry{Path: "bin/ls", Type: fstree.Regular, LinkTo: "bin/busybox", Mode: 0o755, Size: 9, Data: fstree.Bytes("#!busybox")})
	tr.Add(fstree.Entry{Path: "run/fifo", Type: fstree.FIFO, Mode: 0o600})

	type entry struct {
		Mode           string
		UID, GID       int
		Link, Contents string
	}
	want := map[string]entry{}
	for _, e := range tr.Walk() {
		var w entry
		w.UID, w.GID = int(e.UID), int(e.GID)
		switch e.Type {
		case fstree.Dir:
			w.Mode = "d" + e.Mode.String()
		case fstree.Symlink:
			w.Mode, w.Link = "L", e.Target
		case fstree.FIFO:
			w.Mode = "p" + e.Mode.String()
		default:
			w.Mode = "-" + e.Mode.String()
			if e.Data != nil {
				r, _ := e.Data.Open()
				b, _ := io.ReadAll(r)
				w.Contents = string(b)
			}
		}
		want[e.Path] = w
	}

	got := map[string]entry{}
	rd := refcpio.NewReader(bytes.NewReader(write(t, tr, Options{MTime: epoch(1)})))
	data := map[int64]string{} // inode → the bytes one of its names carried
	names := map[string]int64{}
	for {
		h, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reference reader: %v", err)
		}
		b, err := io.ReadAll(rd)
		if err != nil {
			t.Fatalf("reference reader: %s: %v", h.Name, err)
		}
		fi := h.FileInfo()
		var g entry
		g.UID, g.GID = h.Uid, h.Guid
		m := fi.Mode()
		switch {
		case m&fs.ModeSymlink != 0:
			g.Mode, g.Link = "L", h.Linkname
			if g.Link == "" {
				g.Link = string(b)
			}
		case m.IsDir():
			g.Mode = "d" + (m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)).String()
		case m&fs.ModeNamedPipe != 0:
			g.Mode = "p" + (m & fs.ModePerm).String()
		default:
			g.Mode = "-" + (m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)).String()
			if len(b) > 0 {
				data[h.Inode] = string(b)
			}
			names[strings.TrimPrefix(h.Name, "./")] = h.Inode
		}
		got[fstree.Clean(h.Name)] = g
	}
	// newc carries a hardlink group's bytes once: give every name of the
	// inode the bytes it has.
	for n, ino := range names {
		g := got[fstree.Clean(n)]
		g.Contents = data[ino]
		got[fstree.Clean(n)] = g
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reference reader sees (-tree +archive):\n%s", diff)
	}
}
