package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/squashfs"
	"github.com/bellbuild/bellbuild/testvm/testtool"
	"github.com/google/go-cmp/cmp"
)

const epoch = 1700000000

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(t, "%s not installed (Debian packages gdisk, dosfstools, mtools, squashfs-tools): %v", tool, err)
		}
	}
	if _, err := os.Stat(SystemdBoot); err != nil {
		testtool.Skipf(t, "%s missing (Debian package systemd-boot-efi): %v", SystemdBoot, err)
	}
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// fixture is a disk's inputs with fake kernel, initramfs and root bytes:
// this test is about the layout, the boot test below boots a real kernel.
type fixture struct {
	kernel, initrd, root []byte
	config               *fstree.Tree
}

func newFixture(node string) fixture {
	conf := fstree.New()
	conf.AddFile("bellbuild/node.json", []byte(`{"node":"`+node+`"}`), 0o644, 0, 0)
	conf.Reproducible(epoch)
	return fixture{
		kernel: randomBytes(1, 2<<20+17),
		initrd: randomBytes(2, 5<<20+3),
		root:   randomBytes(3, 3<<20+511),
		config: conf,
	}
}

func (fx fixture) spec(t *testing.T) Spec {
	t.Helper()
	esp, err := ESP(Boot{
		Kernel: fstree.Bytes(fx.kernel), KernelSize: int64(len(fx.kernel)),
		Initrd: fstree.Bytes(fx.initrd), InitrdSize: int64(len(fx.initrd)),
		Cmdline: "root=PARTLABEL=bellroot ro console=ttyS0", Epoch: epoch,
	})
	if err != nil {
		t.Fatal(err)
	}
	return Spec{ESP: esp, Root: bytes.NewReader(fx.root), RootSize: int64(len(fx.root)), Config: fx.config}
}

func build(t *testing.T, spec Spec) (string, *Layout) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	l, err := WriteFile(p, spec)
	if err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	return p, l
}

func mtools(t *testing.T, tool, img string, off int64, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool, append([]string{"-i", fmt.Sprintf("%s@@%d", img, off)}, args...)...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
	}
	return string(out)
}

// section copies a partition out of the disk into its own file.
func section(t *testing.T, img string, p *Partition) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := filepath.Join(t.TempDir(), p.Name+".img")
	o, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(o, io.NewSectionReader(f, p.Offset, p.Size)); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDisk(t *testing.T) {
	need(t, "sgdisk", "fsck.vfat", "mtype", "mdir")
	fx := newFixture("n1")
	img, l := build(t, fx.spec(t))

	t.Run("sgdisk -v", func(t *testing.T) {
		out, err := exec.Command("sgdisk", "-v", img).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "No problems found") {
			t.Fatalf("sgdisk -v: %v\n%s", err, out)
		}
	})

	t.Run("partitions", func(t *testing.T) {
		out, err := exec.Command("sgdisk", "-p", img).CombinedOutput()
		if err != nil {
			t.Fatalf("sgdisk -p: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "Disk identifier (GUID): "+l.GUID) {
			t.Errorf("disk GUID %s not in:\n%s", l.GUID, out)
		}
		type row struct{ Name, Code, GUID string }
		wantRows := []row{
			{ESPName, "EF00", l.Partitions[0].GUID},
			{RootName, "8304", l.Partitions[1].GUID},
			{ConfigName, "8300", l.Partitions[2].GUID},
		}
		var got []row
		for i, p := range l.Partitions {
			info, err := exec.Command("sgdisk", "-i", fmt.Sprint(i+1), img).CombinedOutput()
			if err != nil {
				t.Fatalf("sgdisk -i: %v\n%s", err, info)
			}
			s := string(info)
			got = append(got, row{
				Name: regexp.MustCompile(`Partition name: '([^']*)'`).FindStringSubmatch(s)[1],
				Code: map[string]string{
					"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EF00",
					"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "8304",
					"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "8300",
				}[regexp.MustCompile(`Partition GUID code: (\S+)`).FindStringSubmatch(s)[1]],
				GUID: regexp.MustCompile(`Partition unique GUID: (\S+)`).FindStringSubmatch(s)[1],
			})
			first := regexp.MustCompile(`First sector: (\d+)`).FindStringSubmatch(s)[1]
			if first != fmt.Sprint(p.Offset/512) {
				t.Errorf("partition %d starts at sector %s, want %d", i+1, first, p.Offset/512)
			}
		}
		if d := cmp.Diff(wantRows, got); d != "" {
			t.Errorf("partitions (-want +got):\n%s", d)
		}
	})

	t.Run("fsck.vfat", func(t *testing.T) {
		for _, name := range []string{ESPName, ConfigName} {
			part := section(t, img, l.Partition(name))
			out, err := exec.Command("fsck.vfat", "-n", part).CombinedOutput()
			if err != nil {
				t.Errorf("fsck.vfat -n %s: %v\n%s", name, err, out)
			}
		}
	})

	t.Run("ESP files", func(t *testing.T) {
		off := l.Partition(ESPName).Offset
		dir := mtools(t, "mdir", img, off, "-/", "-b", "::/")
		for _, p := range []string{BootLoaderPath, LoaderConfPath, EntryPath, KernelPath, InitrdPath} {
			if !strings.Contains(dir, "::/"+p) {
				t.Errorf("%s missing from the ESP:\n%s", p, dir)
			}
		}
		if got := mtools(t, "mtype", img, off, "::/"+EntryPath); got != "title bellbuild\nlinux /bellbuild/vmlinuz\ninitrd /bellbuild/initrd.img\noptions root=PARTLABEL=bellroot ro console=ttyS0\n" {
			t.Errorf("loader entry:\n%s", got)
		}
		want, err := os.ReadFile(SystemdBoot)
		if err != nil {
			t.Fatal(err)
		}
		if got := mtools(t, "mtype", img, off, "::/"+BootLoaderPath); got != string(want) {
			t.Errorf("BOOTX64.EFI differs from %s", SystemdBoot)
		}
		if got := mtools(t, "mtype", img, off, "::/"+KernelPath); got != string(fx.kernel) {
			t.Errorf("kernel differs (%d bytes, want %d)", len(got), len(fx.kernel))
		}
		if out := mtools(t, "minfo", img, off, "::"); !regexp.MustCompile(`disk label="ESP +"`).MatchString(out) {
			t.Errorf("ESP label:\n%s", out)
		}
	})

	t.Run("config volume", func(t *testing.T) {
		off := l.Partition(ConfigName).Offset
		if got := mtools(t, "mtype", img, off, "::/bellbuild/node.json"); got != `{"node":"n1"}` {
			t.Errorf("node.json = %q", got)
		}
		if out := mtools(t, "minfo", img, off, "::"); !regexp.MustCompile(`disk label="BELLCONF +"`).MatchString(out) {
			t.Errorf("config label:\n%s", out)
		}
	})

	t.Run("root bytes", func(t *testing.T) {
		b, err := os.ReadFile(section(t, img, l.Partition(RootName)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b[:len(fx.root)], fx.root) {
			t.Error("root partition does not start with the root image")
		}
		if bytes.ContainsFunc(b[len(fx.root):], func(r rune) bool { return r != 0 }) {
			t.Error("root partition has non-zero bytes after the image")
		}
		sum := sha256.Sum256(fx.root)
		if got := l.Partition(RootName).SHA256; got != hex.EncodeToString(sum[:]) {
			t.Errorf("layout hash %s, want %x", got, sum)
		}
	})
}

func TestReproducible(t *testing.T) {
	need(t)
	fx := newFixture("n1")
	a, la := build(t, fx.spec(t))
	b, _ := build(t, fx.spec(t))
	ha, hb := fileHash(t, a), fileHash(t, b)
	if ha != hb {
		t.Fatalf("two builds differ: %s vs %s", ha, hb)
	}
	// Another node's config changes the config partition's GUID and the
	// disk's, and nothing else.
	fx2 := fx
	fx2.config = newFixture("n2").config
	_, lc := build(t, fx2.spec(t))
	type ids struct{ Disk, ESP, Root, Conf string }
	got := ids{lc.GUID, lc.Partitions[0].GUID, lc.Partitions[1].GUID, lc.Partitions[2].GUID}
	if got.ESP != la.Partitions[0].GUID || got.Root != la.Partitions[1].GUID {
		t.Errorf("ESP or root GUID changed with the config: %+v vs %+v", got, la)
	}
	if got.Conf == la.Partitions[2].GUID || got.Disk == la.GUID {
		t.Errorf("config or disk GUID did not change with the config: %+v", got)
	}
}

func fileHash(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestRootSizeMismatch(t *testing.T) {
	need(t)
	fx := newFixture("n1")
	for _, tc := range []struct {
		name string
		size int64
		msg  string
	}{
		{"short", int64(len(fx.root)) + 1, "disk: root: read 3146239 bytes, want 3146240: root content size mismatch"},
		{"long", int64(len(fx.root)) - 1, "disk: root: read 3146239 bytes, want 3146238: root content size mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := fx.spec(t)
			spec.RootSize = tc.size
			dst := filepath.Join(t.TempDir(), "disk.raw")
			_, err := WriteFile(dst, spec)
			if !errors.Is(err, ErrRootSize) || err.Error() != tc.msg {
				t.Fatalf("error %v, want %s", err, tc.msg)
			}
			if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed build left %s behind (%v)", dst, err)
			}
			left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), "*"))
			if len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
}

// TestRootFunc writes a real squashfs straight into the root partition and
// checks that the disk is byte-identical to one made from the same image
// staged as a reader, and that unsquashfs reads the partition.
func TestRootFunc(t *testing.T) {
	need(t, "unsquashfs", "sgdisk")
	tree := fstree.New()
	tree.AddFile("etc/hostname", []byte("node\n"), 0o644, 0, 0)
	tree.AddFile("usr/bin/tool", randomBytes(9, 700000), 0o755, 0, 0)
	tree.Add(fstree.Entry{Path: "bin", Type: fstree.Symlink, Mode: 0o777, Target: "usr/bin"})
	tree.Reproducible(epoch)
	fx := newFixture("n1")

	direct := fx.spec(t)
	direct.Root = nil
	direct.RootFunc = func(w io.WriteSeeker) (int64, error) {
		return squashfs.Write(w, tree, squashfs.Options{MkfsTime: epoch})
	}
	a, la := build(t, direct)

	var staged bytes.Buffer
	sq := filepath.Join(t.TempDir(), "root.squashfs")
	f, err := os.Create(sq)
	if err != nil {
		t.Fatal(err)
	}
	n, err := squashfs.Write(f, tree, squashfs.Options{MkfsTime: epoch})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, _ := os.ReadFile(sq)
	staged.Write(b)
	viaReader := fx.spec(t)
	viaReader.Root, viaReader.RootSize = &staged, n
	bPath, _ := build(t, viaReader)
	if fileHash(t, a) != fileHash(t, bPath) {
		t.Error("RootFunc and Root give different disks for the same squashfs")
	}
	if out, err := exec.Command("sgdisk", "-v", a).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Errorf("sgdisk -v: %v\n%s", err, out)
	}
	out, err := exec.Command("unsquashfs", "-lln", "-o", fmt.Sprint(la.Partition(RootName).Offset), a).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs on the root partition: %v\n%s", err, out)
	}
	for _, want := range []string{"squashfs-root/etc/hostname", "squashfs-root/bin -> usr/bin", "-rwxr-xr-x 0/0                  700000 2023-11-14 22:13 squashfs-root/usr/bin/tool"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("unsquashfs -lln lacks %q:\n%s", want, out)
		}
	}
}
