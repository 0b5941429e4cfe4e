package confvol

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fat"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

const epoch = 1700000000

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(t, "%s not installed (Debian packages gdisk, dosfstools, mtools): %v", tool, err)
		}
	}
}

func mtype(t *testing.T, img string, off int64, p string) string {
	t.Helper()
	cmd := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", img, off), "::/"+p)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mtype %s: %v\n%s", p, err, out)
	}
	return string(out)
}

func fsck(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command("fsck.vfat", "-n", img).CombinedOutput(); err != nil {
		t.Fatalf("fsck.vfat -n: %v\n%s", err, out)
	}
}

func node(name string) *fstree.Tree {
	return Tree([]byte(`{"node":"`+name+`","conf":{"sysctl":{"vm.swappiness":"10"}}}`+"\n"), epoch)
}

func TestWriteFile(t *testing.T) {
	need(t, "fsck.vfat", "mtype", "minfo")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, p := range []string{a, b} {
		if err := WriteFile(p, node("n1"), 0); err != nil {
			t.Fatal(err)
		}
	}
	fsck(t, a)
	if got := mtype(t, a, 0, NodePath); !strings.Contains(got, `"node":"n1"`) {
		t.Errorf("%s = %q", NodePath, got)
	}
	cmd := exec.Command("minfo", "-i", a, "::")
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !regexp.MustCompile(`disk label="BELLCONF +"`).Match(out) {
		t.Errorf("minfo: %v\n%s", err, out)
	}
	st, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := fat.Size(node("n1"), fat.Options{Label: Label}); st.Size() != want {
		t.Errorf("image is %d bytes, want %d", st.Size(), want)
	}
	if ha, hb := hashRange(t, a, 0, st.Size()), hashRange(t, b, 0, st.Size()); ha != hb {
		t.Error("two writes differ")
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func hashRange(t *testing.T, p string, off, n int64) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func makeDisk(t *testing.T, conf *fstree.Tree) (string, *disk.Layout) {
	t.Helper()
	esp := fstree.New()
	esp.AddFile("EFI/BOOT/BOOTX64.EFI", bytes.Repeat([]byte("efi"), 50000), 0o644, 0, 0)
	esp.Reproducible(epoch)
	root := bytes.Repeat([]byte("squashfs root "), 100000)
	p := filepath.Join(t.TempDir(), "disk.raw")
	l, err := disk.WriteFile(p, disk.Spec{ESP: esp, Root: bytes.NewReader(root), RootSize: int64(len(root)), Config: conf})
	if err != nil {
		t.Fatal(err)
	}
	return p, l
}

// outside hashes every byte of the disk that is not the config partition.
func outside(t *testing.T, img string, l *disk.Layout) [2]string {
	c := l.Partition(disk.ConfigName)
	return [2]string{hashRange(t, img, 0, c.Offset), hashRange(t, img, c.Offset+c.Size, l.Size-c.Offset-c.Size)}
}

func TestRewrite(t *testing.T) {
	need(t, "fsck.vfat", "mtype", "sgdisk")
	img, l := makeDisk(t, node("n1"))
	c := l.Partition(disk.ConfigName)
	before := outside(t, img, l)
	if got := mtype(t, img, c.Offset, NodePath); !strings.Contains(got, `"node":"n1"`) {
		t.Fatalf("before: %s = %q", NodePath, got)
	}

	if err := Rewrite(img, node("n2")); err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	if got := mtype(t, img, c.Offset, NodePath); !strings.Contains(got, `"node":"n2"`) {
		t.Errorf("after: %s = %q", NodePath, got)
	}
	if after := outside(t, img, l); after != before {
		t.Errorf("bytes outside the config partition changed: %v -> %v", before, after)
	}
	if out, err := exec.Command("sgdisk", "-v", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Errorf("sgdisk -v: %v\n%s", err, out)
	}
	part := filepath.Join(t.TempDir(), "conf.img")
	f, _ := os.Open(img)
	o, _ := os.Create(part)
	io.Copy(o, io.NewSectionReader(f, c.Offset, c.Size))
	f.Close()
	o.Close()
	fsck(t, part)

	// The rewritten partition is what a fresh build for n2 holds.
	fresh, fl := makeDisk(t, node("n2"))
	fc := fl.Partition(disk.ConfigName)
	if hashRange(t, fresh, fc.Offset, fc.Size) != hashRange(t, img, c.Offset, c.Size) {
		t.Error("rewritten config partition differs from a fresh build's")
	}
}

func TestRewriteRejects(t *testing.T) {
	need(t)
	huge := fstree.New()
	huge.Add(fstree.Entry{Path: "big", Type: fstree.Regular, Size: 200 << 20, Data: fstree.Bytes(nil)})
	symlink := node("n1")
	symlink.Add(fstree.Entry{Path: "bellbuild/link", Type: fstree.Symlink, Target: "node.json"})

	standalone := filepath.Join(t.TempDir(), "conf.img")
	if err := WriteFile(standalone, node("n1"), 0); err != nil {
		t.Fatal(err)
	}
	img, _ := makeDisk(t, node("n1"))
	tests := []struct {
		name  string
		path  string
		files *fstree.Tree
		is    error
		msg   string
	}{
		{"too big", img, huge, fat.ErrTooSmall, "big does not fit in"},
		{"symlink", img, symlink, fat.ErrUnsupported, "confvol: " + img + ": fat: bellbuild/link: a symlink: not representable on FAT"},
		{"no GPT", standalone, node("n2"), nil, "confvol: " + standalone + ": reading the GPT: "},
		{"missing", filepath.Join(t.TempDir(), "nope.raw"), node("n2"), os.ErrNotExist, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := os.Stat(tc.path)
			var before string
			if st != nil {
				before = hashRange(t, tc.path, 0, st.Size())
			}
			err := Rewrite(tc.path, tc.files)
			if err == nil {
				t.Fatal("Rewrite succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q lacks %q", err, tc.msg)
			}
			if st != nil && hashRange(t, tc.path, 0, st.Size()) != before {
				t.Error("a failed Rewrite changed the file")
			}
		})
	}
}

func TestNoConfigPartition(t *testing.T) {
	// A GPT disk whose only partition is not the config volume.
	p := filepath.Join(t.TempDir(), "other.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 8 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	table := testTable()
	if err := table.Write(f, size); err != nil {
		t.Fatal(err)
	}
	err = Rewrite(p, node("n1"))
	if !errors.Is(err, ErrNoConfigPartition) {
		t.Fatalf("error %v, want ErrNoConfigPartition", err)
	}
	if want := "confvol: " + p + `: no partition named "bellconf": no config partition`; err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
}

func TestWriteDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bellbuild"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keep.txt"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2"} {
		if err := WriteDir(dir, node(n)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(filepath.Join(dir, NodePath))
	if err != nil || !strings.Contains(string(got), `"node":"n2"`) {
		t.Errorf("%s = %q (%v)", NodePath, got, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "keep.txt")); err != nil || string(b) != "keep" {
		t.Errorf("keep.txt = %q (%v)", b, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "bellbuild", ".*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func testTable() *gpt.Table {
	return &gpt.Table{
		LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true,
		GUID: "11111111-2222-4333-8444-555555555555",
		Partitions: []*gpt.Partition{{
			Index: 1, Start: 2048, End: 4095, Type: gpt.LinuxFilesystem, Name: "data",
			GUID: "11111111-2222-4333-8444-666666666666",
		}},
	}
}

func TestWriteFileMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "conf.img")
	if err := WriteFile(p, node("n1"), 0); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 (the volume carries password hashes)", st.Mode().Perm())
	}
}

// TestChangedFile: a file of the volume that grew or shrank on disk after
// the tree was read fails every way of writing the volume with an error
// naming it and both sizes, and leaves nothing behind: no standalone
// image, a disk whose config partition is as it was, a mounted volume
// whose file is as it was, no temporary file.
func TestChangedFile(t *testing.T) {
	tests := []struct {
		name string
		// write writes tr and returns a check of what is left after the
		// failure, and the error.
		write func(t *testing.T, tr *fstree.Tree) (func(t *testing.T), error)
	}{
		{"Write", func(t *testing.T, tr *fstree.Tree) (func(t *testing.T), error) {
			return func(*testing.T) {}, Write(io.Discard, tr, 0)
		}},
		{"WriteFile", func(t *testing.T, tr *fstree.Tree) (func(t *testing.T), error) {
			dir := t.TempDir()
			p := filepath.Join(dir, "conf.img")
			check := func(t *testing.T) {
				if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) > 0 {
					t.Errorf("files left: %v", left)
				}
				if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
					t.Errorf("temporary files left: %v", left)
				}
			}
			return check, WriteFile(p, tr, 0)
		}},
		{"Rewrite", func(t *testing.T, tr *fstree.Tree) (func(t *testing.T), error) {
			img, l := makeDisk(t, node("n1"))
			before := hashRange(t, img, 0, l.Size)
			check := func(t *testing.T) {
				if hashRange(t, img, 0, l.Size) != before {
					t.Error("a failed Rewrite changed the disk")
				}
			}
			return check, Rewrite(img, tr)
		}},
		{"WriteDir", func(t *testing.T, tr *fstree.Tree) (func(t *testing.T), error) {
			dir := t.TempDir()
			if err := WriteDir(dir, node("n1")); err != nil {
				t.Fatal(err)
			}
			old, err := os.ReadFile(filepath.Join(dir, NodePath))
			if err != nil {
				t.Fatal(err)
			}
			check := func(t *testing.T) {
				if b, err := os.ReadFile(filepath.Join(dir, NodePath)); err != nil || !bytes.Equal(b, old) {
					t.Errorf("%s changed: %q (%v), was %q", NodePath, b, err, old)
				}
				if left, _ := filepath.Glob(filepath.Join(dir, "bellbuild", ".*")); len(left) > 0 {
					t.Errorf("temporary files left: %v", left)
				}
			}
			return check, WriteDir(dir, tr)
		}},
	}
	for _, tc := range tests {
		for _, c := range fixture.Changes {
			t.Run(tc.name+"/"+c.Name, func(t *testing.T) {
				after, err := tc.write(t, c.Tree(t, NodePath))
				c.Check(t, err, NodePath)
				if !strings.HasPrefix(err.Error(), "confvol: ") {
					t.Errorf("error %q does not say which writer failed", err)
				}
				after(t)
			})
		}
	}
}
