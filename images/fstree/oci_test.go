package fstree_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/fstree"
)

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid              int
}

func layerTar(t *testing.T, es []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Linkname: e.link, ModTime: time.Unix(1, 0)}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ociLayout writes an OCI image layout: blobs under blobs/sha256, an
// index.json. It returns the digest of each blob it stores.
type ociLayout struct {
	t   *testing.T
	dir string
}

func (l *ociLayout) blob(b []byte) map[string]any {
	sum := sha256.Sum256(b)
	d := hex.EncodeToString(sum[:])
	p := filepath.Join(l.dir, "blobs", "sha256", d)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		l.t.Fatal(err)
	}
	return map[string]any{"digest": "sha256:" + d, "size": len(b)}
}

func (l *ociLayout) json(v any, mediaType string) map[string]any {
	b, err := json.Marshal(v)
	if err != nil {
		l.t.Fatal(err)
	}
	d := l.blob(b)
	d["mediaType"] = mediaType
	return d
}

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w, _ := compress.Gzip(&buf)
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w, err := compress.Zstd(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// makeOCI builds a two-layer image (gzip then zstd) behind an index that
// lists an arm64 and an amd64 manifest, the amd64 one through a nested
// index, as multi-platform builds write them.
func makeOCI(t *testing.T) string {
	l := &ociLayout{t: t, dir: t.TempDir()}
	lower := layerTar(t, []tarEntry{
		{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/passwd", typ: tar.TypeReg, body: "root:x:0:0\n"},
		{name: "etc/group", typ: tar.TypeReg, body: "root:x:0:\n"},
		{name: "usr/bin/a", typ: tar.TypeReg, body: "AAA", mode: 0o755},
		{name: "usr/bin/b", typ: tar.TypeLink, link: "usr/bin/a"},
		{name: "opt/app/", typ: tar.TypeDir, mode: 0o750, uid: 33},
		{name: "opt/app/old1", typ: tar.TypeReg, body: "1"},
		{name: "opt/app/old2", typ: tar.TypeReg, body: "2"},
		{name: "var/cache/junk/", typ: tar.TypeDir, mode: 0o755},
		{name: "var/cache/junk/x", typ: tar.TypeReg, body: "x"},
		{name: "bin", typ: tar.TypeSymlink, link: "usr/bin"},
	})
	upper := layerTar(t, []tarEntry{
		{name: "etc/.wh.group", typ: tar.TypeReg},
		{name: "opt/app/.wh..wh..opq", typ: tar.TypeReg},
		{name: "opt/app/new", typ: tar.TypeReg, body: "new"},
		{name: "usr/bin/a", typ: tar.TypeReg, body: "A2", mode: 0o755},
		{name: "var/cache/.wh.junk", typ: tar.TypeReg},
		{name: "etc/passwd2", typ: tar.TypeLink, link: "etc/passwd"},
		{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
	})
	config := l.json(map[string]any{"architecture": "amd64", "os": "linux"}, "application/vnd.oci.image.config.v1+json")
	l1 := l.blob(gzipped(t, lower))
	l1["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
	l2 := l.blob(zstded(t, upper))
	l2["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
	amd64 := l.json(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": config, "layers": []any{l1, l2},
	}, "application/vnd.oci.image.manifest.v1+json")
	amd64["platform"] = map[string]string{"os": "linux", "architecture": "amd64"}
	arm := l.json(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": config, "layers": []any{l1},
	}, "application/vnd.oci.image.manifest.v1+json")
	arm["platform"] = map[string]string{"os": "linux", "architecture": "arm64"}
	nested := l.json(map[string]any{"schemaVersion": 2, "manifests": []any{arm, amd64}}, "application/vnd.oci.image.index.v1+json")
	top, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{nested}})
	if err := os.WriteFile(filepath.Join(l.dir, "index.json"), top, 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(l.dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return l.dir
}

// TestFromOCI applies two layers with whiteouts, an opaque directory, a
// replaced hardlinked file and a hardlink into the lower layer.
func TestFromOCI(t *testing.T) {
	tr, err := fstree.FromOCI(makeOCI(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		". dir 0755 0:0",
		"bin symlink 0777 0:0 -> usr/bin",
		"dev dir 0755 0:0",
		"dev/null chardev 0666 0:0 dev=0,0",
		"etc dir 0755 0:0",
		"etc/passwd file 0644 0:0 size=11 sha256=" + sha("root:x:0:0\n") + " links=etc/passwd,etc/passwd2",
		"etc/passwd2 file 0644 0:0 size=11 sha256=" + sha("root:x:0:0\n") + " links=etc/passwd,etc/passwd2",
		// the opaque directory keeps its own metadata, loses its old files
		"opt dir 0755 0:0",
		"opt/app dir 0750 33:0",
		"opt/app/new file 0644 0:0 size=3 sha256=" + sha("new"),
		"usr dir 0755 0:0",
		"usr/bin dir 0755 0:0",
		// a replaced in the upper layer; b, its lower hardlink, keeps the old bytes
		"usr/bin/a file 0755 0:0 size=2 sha256=" + sha("A2"),
		"usr/bin/b file 0755 0:0 size=3 sha256=" + sha("AAA"),
		"var dir 0755 0:0",
		"var/cache dir 0755 0:0",
	}
	if d := cmp.Diff(want, summary(t, tr)); d != "" {
		t.Errorf("image (-want +got):\n%s", d)
	}
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:16]
}

func TestFromOCIErrors(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(t *testing.T, dir string)
		want    string
	}{
		{
			name: "corrupt layer",
			breakIt: func(t *testing.T, dir string) {
				// Flip the last byte of the largest blob (a layer).
				var big string
				var size int64
				filepath.Walk(filepath.Join(dir, "blobs"), func(p string, fi os.FileInfo, err error) error {
					if fi.Mode().IsRegular() && fi.Size() > size && !strings.HasSuffix(p, ".json") {
						big, size = p, fi.Size()
					}
					return nil
				})
				b, _ := os.ReadFile(big)
				b = append(b, 0)
				os.WriteFile(big, b, 0o644)
			},
			want: "content does not match its digest",
		},
		{
			name:    "no index",
			breakIt: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "index.json")) },
			want:    "index.json: no such file or directory",
		},
		{
			name: "two platforms, no amd64",
			breakIt: func(t *testing.T, dir string) {
				os.WriteFile(filepath.Join(dir, "index.json"), []byte(`{"manifests":[{"digest":"sha256:`+strings.Repeat("0", 64)+`"},{"digest":"sha256:`+strings.Repeat("1", 64)+`"}]}`), 0o644)
			},
			want: "index lists 2 manifests, 0 for linux/amd64: bad OCI image layout",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := makeOCI(t)
			tc.breakIt(t, dir)
			_, err := fstree.FromOCI(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "oci "+dir+": ") {
				t.Errorf("error %q does not name the layout", err)
			}
		})
	}
	_, err := fstree.FromOCI(t.TempDir())
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("empty dir: %v, want ErrNotExist", err)
	}
}
