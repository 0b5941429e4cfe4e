package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/pxe/bakes"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/pxe/internal/pxetest"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
)

type installs map[string]bool

func (i installs) Installed(_ context.Context, n string) (bool, error) { return i[n], nil }

// TestInstallScripts: a node that installs gets the installer until it is
// installed, then a boot from its disk; others boot as before.
func TestInstallScripts(t *testing.T) {
	s := pxetest.New(t)
	alpha := *s.Backend[pxetest.MACA.String()]
	alpha.Install = true
	s.Backend[pxetest.MACA.String()] = &alpha
	done := installs{}
	c, err := New(Config{Artifacts: s.Artifacts, Files: s.Files, Installs: done, ServeURL: "http://192.0.2.1:8080"}, s.Backend, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	script := func(mac string) (string, string) {
		f, err := c.Open(context.Background(), "ipxe/"+mac, ipX, "http://192.0.2.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		return string(b), f.Mode
	}
	got, mode := script(pxetest.MACA.String())
	if mode != "installer" || !strings.Contains(got, " bellbuild.install=1 bellbuild.serve=http://192.0.2.1:8080 ") {
		t.Errorf("not installed (%s):\n%s", mode, got)
	}
	done["alpha"] = true
	got, mode = script(pxetest.MACA.String())
	if mode != "local-disk" || !strings.Contains(got, "exit") || strings.Contains(got, "kernel") {
		t.Errorf("installed (%s):\n%s", mode, got)
	}
	if _, mode := script(pxetest.MACB.String()); mode != "network" {
		t.Errorf("beta: %s", mode)
	}
}

// TestImageFiles: /image/MAC/ hands out the files of the image MAC
// installs, the root as the manifest's range of the disk; a machine
// without an image, or a manifest that names no root, gets nothing.
func TestImageFiles(t *testing.T) {
	s := pxetest.New(t)
	dir := filepath.Join(s.Artifacts, "img")
	os.MkdirAll(dir, 0o755)
	disk := []byte(strings.Repeat("d", 4096) + "ROOT-IMAGE" + strings.Repeat("z", 100))
	os.WriteFile(filepath.Join(dir, "disk.raw"), disk, 0o600)
	h := strings.Repeat("ab", 32)
	m := wire.ImageManifest{Profile: "worker", Disk: &wire.ManifestDisk{Arch: "x86_64", Size: 2 << 20, SlotSize: 1 << 20,
		Root: wire.ManifestRoot{SHA256: h, Offset: 4096, Size: 10},
		Partitions: []wire.DiskPartition{
			{Name: "esp", Offset: 0, Size: 4096, Used: 4096, SHA256: h},
			{Name: "root-a", Offset: 4096, Size: 1 << 20, Used: 10, SHA256: h},
			{Name: "root-b", Offset: 4096 + 1<<20, Size: 4096, SHA256: h},
			{Name: "bellconf", Offset: 8192 + 1<<20, Size: 4096, SHA256: h},
		}}}
	data, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o644)
	alpha := *s.Backend[pxetest.MACA.String()]
	alpha.Image = &node.Image{Manifest: "img/manifest.json", Disk: "img/disk.raw", Kernel: "worker/vmlinuz", Initrd: "worker/initramfs.cpio.zst"}
	s.Backend[pxetest.MACA.String()] = &alpha
	c, err := New(Config{Artifacts: s.Artifacts}, s.Backend, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		file, want string
		err        error
	}{
		{"image/52:54:00:00:00:0a/root", "ROOT-IMAGE", nil},
		{"image/52:54:00:00:00:0a/kernel", "KERNEL worker", nil},
		{"image/52:54:00:00:00:0a/manifest.json", string(data), nil},
		{"image/52:54:00:00:00:0a/disk", string(disk), nil},
		{"image/52:54:00:00:00:0a/secret", "", fs.ErrNotExist},
		{"image/52:54:00:00:00:0b/root", "", fs.ErrNotExist},
		{"image/52:54:00:00:00:ff/root", "", fs.ErrNotExist},
	} {
		f, err := c.Open(context.Background(), tc.file, ipX, "")
		if tc.err != nil {
			if err == nil || !errors.Is(err, tc.err) {
				t.Errorf("%s: %v, want %v", tc.file, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if string(b) != tc.want || f.Size != int64(len(tc.want)) || f.Phase != metrics.PhaseImage || f.Node != "alpha" {
			t.Errorf("%s: %q (size %d, phase %s)", tc.file, b, f.Size, f.Phase)
		}
	}
	// A manifest whose root lies past the disk names no root.
	m.Disk.Root.Size = 1 << 20
	m.Disk.Partitions[1].Used = 1 << 20
	data, _ = json.Marshal(m)
	os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o644)
	if _, err := c.Open(context.Background(), "image/52:54:00:00:00:0a/root", ipX, ""); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a root past the disk: %v", err)
	}
}

// TestImageFromBake: a machine with a Bake gets its kernel and its image
// from that bake, the root as the range its own manifest names, whatever
// is in the artifacts directory since; without one, by name.
func TestImageFromBake(t *testing.T) {
	s := pxetest.New(t)
	h := strings.Repeat("ab", 32)
	writeBake := func(kernel, disk string, rootAt int64) {
		t.Helper()
		dir := filepath.Join(s.Artifacts, "img")
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(dir, 0o755)
		m := wire.ImageManifest{Profile: "img", Disk: &wire.ManifestDisk{Arch: "x86_64", Size: 2 << 20, SlotSize: 1 << 20,
			Root: wire.ManifestRoot{SHA256: h, Offset: rootAt, Size: 10},
			Partitions: []wire.DiskPartition{
				{Name: "esp", Offset: 0, Size: rootAt, Used: rootAt, SHA256: h},
				{Name: "root-a", Offset: rootAt, Size: 1 << 20, Used: 10, SHA256: h},
				{Name: "root-b", Offset: rootAt + 1<<20, Size: 4096, SHA256: h},
				{Name: "bellconf", Offset: rootAt + 4096 + 1<<20, Size: 4096, SHA256: h},
			}}}
		data, _ := json.Marshal(m)
		os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o644)
		os.WriteFile(filepath.Join(dir, "disk.raw"), []byte(disk), 0o644)
		os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte(kernel), 0o644)
	}
	writeBake("KERNEL one", strings.Repeat("d", 4096)+"ROOT-ONE-1", 4096)
	set, err := bakes.New(bakes.Config{Dir: s.Artifacts, Manifest: "manifest.json", Files: []string{"vmlinuz", "disk.raw"}},
		func(_ string, b *bakes.Bake) (*bakes.Bake, error) { return b, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	bake, err := set.Get("img")
	if err != nil || bake == nil {
		t.Fatalf("bake: %v", err)
	}
	alpha := *s.Backend[pxetest.MACA.String()]
	alpha.Kernel = "img/vmlinuz"
	alpha.Image = &node.Image{Manifest: "img/manifest.json", Disk: "img/disk.raw", Kernel: "img/vmlinuz", Initrd: "img/initrd"}
	alpha.Bake = bake
	s.Backend[pxetest.MACA.String()] = &alpha
	beta := alpha
	beta.Bake = nil
	s.Backend[pxetest.MACB.String()] = &beta
	c, err := New(Config{Artifacts: s.Artifacts}, s.Backend, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Baked again since: another root, at another offset.
	writeBake("KERNEL two", strings.Repeat("e", 8192)+"ROOT-TWO-2", 8192)
	for _, tc := range []struct{ file, want string }{
		{"image/52:54:00:00:00:0a/root", "ROOT-ONE-1"},
		{"boot/52:54:00:00:00:0a/kernel", "KERNEL one"},
		{"image/52:54:00:00:00:0a/kernel", "KERNEL one"},
		{"image/52:54:00:00:00:0b/root", "ROOT-TWO-2"},
		{"boot/52:54:00:00:00:0b/kernel", "KERNEL two"},
	} {
		f, err := c.Open(context.Background(), tc.file, ipX, "")
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if string(b) != tc.want || f.Size != int64(len(tc.want)) {
			t.Errorf("%s: %q (size %d), want %q", tc.file, b, f.Size, tc.want)
		}
	}
	if _, err := c.Open(context.Background(), "image/52:54:00:00:00:0a/initrd", ipX, ""); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file the bake does not hold: %v", err)
	}
}
