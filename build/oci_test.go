package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// ociLayout writes an OCI image layout whose layers (gzip tarballs) hold
// the files given — a ".wh.NAME" file is a whiteout — and returns its
// directory.
func ociLayout(t testing.TB, layers ...[]tarFile) string {
	t.Helper()
	dir := t.TempDir()
	blob := func(data []byte) map[string]any {
		sum := sha256.Sum256(data)
		d := "sha256:" + hex.EncodeToString(sum[:])
		p := filepath.Join(dir, "blobs", "sha256", hex.EncodeToString(sum[:]))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return map[string]any{"digest": d, "size": len(data)}
	}
	var descs []map[string]any
	for _, files := range layers {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for _, f := range files {
			hdr := &tar.Header{Name: f.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(f.data))}
			if f.dir {
				hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
			}
			if err := tw.WriteHeader(hdr); err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write([]byte(f.data)); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		d := blob(buf.Bytes())
		d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
		descs = append(descs, d)
	}
	cfg := blob([]byte(`{"architecture":"amd64","os":"linux"}`))
	cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
	manifest, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": descs})
	md := blob(manifest)
	md["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{md}})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

type tarFile struct {
	name, data string
	dir        bool
}

// TestOCIStage bakes an OCI layout of two layers, the second deleting a
// file of the first: the initramfs has the merged tree, and a conf-only
// re-bake reuses the stage segment without reading a layer.
func TestOCIStage(t *testing.T) {
	needHost(t)
	layout := ociLayout(t,
		[]tarFile{{name: "etc/", dir: true}, {name: "etc/os-release", data: "ID=oci\n"}, {name: "usr/", dir: true}, {name: "usr/bin/", dir: true}, {name: "usr/bin/old", data: "old"}},
		[]tarFile{{name: "usr/bin/.wh.old"}, {name: "etc/new", data: "new\n"}},
	)
	sp := &profiles.ImageSpec{
		Profile: "oci", Chain: []string{"oci"},
		Stage:   profiles.Stage{OCI: layout},
		Kernel:  profiles.Kernel{Path: testKernel},
		Outputs: []string{"initramfs"},
		Bundle:  &nodeconf.Bundle{Profile: "oci", Default: nodeconf.Node{Profile: "oci", Conf: nodeconf.Conf{Sysctl: map[string]string{"vm.swappiness": "1"}}}},
	}
	opts := testOptions(t)
	for i, want := range []Stats{{StageRead: true}, {StageCached: true, ApplierCached: true, InitramfsReused: true, StageTaken: true}} {
		sp.Bundle.Default.Conf.Sysctl["vm.swappiness"] = string(rune('1' + i))
		m, err := Image(context.Background(), sp, opts)
		if err != nil {
			t.Fatal(err)
		}
		want.Dir = m.Stats.Dir
		if diff := cmp.Diff(want, m.Stats); diff != "" {
			t.Errorf("bake %d: stats (-want +got):\n%s", i+1, diff)
		}
		if m.Inputs[0].Kind != "oci" || len(m.Inputs[0].SHA256) != 64 {
			t.Errorf("bake %d: stage input %+v", i+1, m.Inputs[0])
		}
		tree := unpack(t, filepath.Join(opts.OutDir, "oci", InitramfsFile))
		for p, want := range map[string]string{"etc/os-release": "ID=oci\n", "etc/new": "new\n"} {
			if e := tree.Get(p); e == nil || string(readAll(t, e.Data)) != want {
				t.Errorf("bake %d: /%s missing or wrong", i+1, p)
			}
		}
		if tree.Get("usr/bin/old") != nil || tree.Get("usr/bin/.wh.old") != nil {
			t.Errorf("bake %d: the whiteout was not honoured", i+1)
		}
	}
}
