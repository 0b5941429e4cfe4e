package kmod

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bellbuild/bellbuild/testvm/testtool"
	"github.com/google/go-cmp/cmp"
)

const fixture = "testdata/lib/modules/6.1.0-test"

func TestClosure(t *testing.T) {
	d, err := Open(fixture)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		names []string
		want  []string
	}{
		{"no dependencies", []string{"virtio_blk"}, []string{"kernel/drivers/block/virtio_blk.ko.xz"}},
		{"dependencies first, last listed loads first", []string{"virtio_pci"}, []string{
			"kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz",
			"kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz",
			"kernel/drivers/virtio/virtio_pci.ko.xz",
		}},
		{"transitive, each once", []string{"ata_piix", "sr_mod"}, []string{
			"kernel/drivers/scsi/scsi_common.ko.xz",
			"kernel/drivers/scsi/scsi_mod.ko.xz",
			"kernel/drivers/ata/libata.ko.xz",
			"kernel/drivers/ata/ata_piix.ko.xz",
			"kernel/drivers/cdrom/cdrom.ko.xz",
			"kernel/drivers/scsi/sr_mod.ko.xz",
		}},
		{"already loaded as a dependency", []string{"vfat", "fat"}, []string{"kernel/fs/fat/fat.ko.xz", "kernel/fs/fat/vfat.ko.xz"}},
		{"dash and underscore are the same", []string{"nls_test", "virtio-blk"}, []string{"kernel/fs/nls/nls-test.ko", "kernel/drivers/block/virtio_blk.ko.xz"}},
		{"built-in skipped", []string{"squashfs", "virtio", "fat"}, []string{"kernel/fs/fat/fat.ko.xz"}},
		{"none", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := d.Closure(tc.names...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Closure(%q) (-want +got):\n%s", tc.names, diff)
			}
		})
	}
}

func TestClosureUnknown(t *testing.T) {
	d, err := Open(fixture)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Closure("fat", "nosuch", "squashfs", "btrfs")
	if !errors.Is(err, ErrUnknown) {
		t.Fatalf("err = %v, want ErrUnknown", err)
	}
	if want := "kmod: " + fixture + ": no such module: nosuch, btrfs"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

// TestPlan: what a loader that loads what it can gets: the order for the
// known names, and the unknown ones (built-in names are neither).
func TestPlan(t *testing.T) {
	d, err := Open(fixture)
	if err != nil {
		t.Fatal(err)
	}
	order, unknown := d.Plan("nosuch", "vfat", "squashfs", "btrfs")
	if diff := cmp.Diff([]string{"kernel/fs/fat/fat.ko.xz", "kernel/fs/fat/vfat.ko.xz"}, order); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"nosuch", "btrfs"}, unknown); diff != "" {
		t.Errorf("unknown (-want +got):\n%s", diff)
	}
}

// TestParse: Parse reads what Open reads from a directory.
func TestParse(t *testing.T) {
	dep, err := os.ReadFile(filepath.Join(fixture, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	builtin, err := os.ReadFile(filepath.Join(fixture, "modules.builtin"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse("stage:/lib/modules/x", bytes.NewReader(dep), builtin)
	if err != nil {
		t.Fatal(err)
	}
	o, err := Open(fixture)
	if err != nil {
		t.Fatal(err)
	}
	for _, names := range [][]string{{"ata_piix", "sr_mod"}, {"squashfs", "vfat"}} {
		a, _ := d.Closure(names...)
		b, _ := o.Closure(names...)
		if diff := cmp.Diff(b, a); diff != "" {
			t.Errorf("Closure(%q) from Parse (-Open +Parse):\n%s", names, diff)
		}
	}
	if _, err := Parse("x", bytes.NewReader([]byte("no colon here\n")), nil); err == nil || err.Error() != `kmod: x/modules.dep:1: want "module: dependencies...", got "no colon here"` {
		t.Errorf("Parse of a bad line: %v", err)
	}
}

func TestBuiltin(t *testing.T) {
	d, err := Open(fixture)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"squashfs": true, "virtio-ring": true, "fat": false, "nosuch": false} {
		if got := d.Builtin(name); got != want {
			t.Errorf("Builtin(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestOpenBad(t *testing.T) {
	for _, tc := range []struct{ dir, want string }{
		{"testdata/bad/nocolon", `kmod: testdata/bad/nocolon/modules.dep:2: want "module: dependencies...", got "kernel/fs/fat/vfat.ko kernel/fs/fat/fat.ko"`},
		{"testdata/bad/missing", "kmod: open testdata/bad/missing/modules.dep: no such file or directory"},
	} {
		t.Run(filepath.Base(tc.dir), func(t *testing.T) {
			_, err := Open(tc.dir)
			if err == nil || err.Error() != tc.want {
				t.Errorf("Open(%s) = %v, want %q", tc.dir, err, tc.want)
			}
		})
	}
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/fs/fat/vfat.ko":               "vfat",
		"kernel/fs/nls/nls-utf8.ko.xz":        "nls_utf8",
		"kernel/drivers/a/b-c.ko.zst":         "b_c",
		"kernel/drivers/a/gz.ko.gz":           "gz",
		"virtio-pci":                          "virtio_pci",
		"kernel/drivers/virtio/virtio.ko":     "virtio",
		"kernel/drivers/net/e1000e/e1000e.ko": "e1000e",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}

// bzImage returns the start of an x86 boot image whose header says
// release.
func bzImage(release string) []byte {
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20e:], 0x100) // version string at 0x300
	copy(b[0x300:], release+" (debian-kernel@lists.debian.org) #1 SMP\x00")
	return b
}

func TestKernelVersion(t *testing.T) {
	for _, tc := range []struct {
		name, want, err string
		data            []byte
	}{
		{"bzImage", "6.1.0-56-amd64", "", bzImage("6.1.0-56-amd64")},
		{"no header", "", "not an x86 bzImage (no HdrS boot header)", make([]byte, 0x400)},
		{"short", "", "reading boot header: EOF", []byte("MZ")},
		{"empty version", "", "empty kernel version in boot header", bzImage("")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := KernelVersion(bytes.NewReader(tc.data))
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("KernelVersion = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestHostFixture runs Host against made-up roots.
func TestHostFixture(t *testing.T) {
	write := func(t *testing.T, p string, data []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, root string)
		kernel   string // relative to root
		modDir   string
		noKernel bool
	}{
		{
			name: "newest by number, release from file name",
			setup: func(t *testing.T, root string) {
				for _, v := range []string{"6.1.0-9-amd64", "6.1.0-10-amd64"} {
					write(t, filepath.Join(root, "boot/vmlinuz-"+v), []byte("not a bzImage"))
					write(t, filepath.Join(root, "lib/modules", v, "modules.dep"), nil)
				}
			},
			kernel: "boot/vmlinuz-6.1.0-10-amd64", modDir: "lib/modules/6.1.0-10-amd64",
		},
		{
			name: "/vmlinuz wins, release from boot header",
			setup: func(t *testing.T, root string) {
				write(t, filepath.Join(root, "boot/vmlinuz-6.1.0-10-amd64"), []byte("not a bzImage"))
				write(t, filepath.Join(root, "boot/vmlinuz-6.1.0-9-amd64"), bzImage("6.1.0-9-custom"))
				write(t, filepath.Join(root, "lib/modules/6.1.0-9-custom/modules.dep"), nil)
				if err := os.Symlink("boot/vmlinuz-6.1.0-9-amd64", filepath.Join(root, "vmlinuz")); err != nil {
					t.Fatal(err)
				}
			},
			kernel: "boot/vmlinuz-6.1.0-9-amd64", modDir: "lib/modules/6.1.0-9-custom",
		},
		{
			name:     "no kernel",
			setup:    func(t *testing.T, root string) {},
			noKernel: true,
		},
		{
			name: "kernel without modules",
			setup: func(t *testing.T, root string) {
				write(t, filepath.Join(root, "boot/vmlinuz-6.1.0-9-amd64"), []byte("x"))
			},
			noKernel: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.setup(t, root)
			old := hostRoot
			hostRoot = root
			defer func() { hostRoot = old }()
			kernel, modDir, err := Host()
			if tc.noKernel {
				if !errors.Is(err, ErrNoKernel) {
					t.Fatalf("Host() = %q, %q, %v; want ErrNoKernel", kernel, modDir, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := [2]string{filepath.Join(root, tc.kernel), filepath.Join(root, tc.modDir)}
			if diff := cmp.Diff(want, [2]string{kernel, modDir}); diff != "" {
				t.Errorf("Host() (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHost reads this machine's own kernel and modules: the modules every
// boot test of images/... loads resolve, dependencies first.
func TestHost(t *testing.T) {
	kernel, modDir, err := Host()
	if err != nil {
		testtool.Skipf(t, "%v (Debian package linux-image-amd64)", err)
	}
	f, err := os.Open(kernel)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	release, err := KernelVersion(f)
	if err != nil {
		t.Fatalf("%s: %v", kernel, err)
	}
	if filepath.Base(modDir) != release {
		t.Errorf("modDir %s, want release %s from the boot header", modDir, release)
	}
	d, err := Open(modDir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := d.Closure("virtio_pci", "virtio_blk", "squashfs", "vfat", "nls_utf8", "isofs", "sr_mod", "ata_piix")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no module files")
	}
	pos := map[string]int{}
	for i, f := range files {
		if _, dup := pos[f]; dup {
			t.Errorf("%s twice", f)
		}
		pos[f] = i
		if _, err := os.Stat(filepath.Join(modDir, f)); err != nil {
			t.Error(err)
		}
	}
	// Every module comes after what it depends on.
	for _, f := range files {
		for _, dep := range d.deps[f] {
			if p, ok := pos[dep]; !ok || p > pos[f] {
				t.Errorf("%s needs %s, which is not loaded before it", f, dep)
			}
		}
	}
}
