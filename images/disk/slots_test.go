package disk

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/fstree"
	imagelayout "github.com/bellbuild/bellbuild/images/layout"
)

// slotSpec is fx's disk with two root slots of slot bytes, its ESP made
// from the root's hash.
func (fx fixture) slotSpec(t *testing.T, slot int64) Spec {
	t.Helper()
	s := fx.spec(t)
	s.ESP = nil
	s.SlotSize = slot
	s.ESPFunc = func(sum string) (*fstree.Tree, error) {
		return ESP(Boot{
			Kernel: fstree.Bytes(fx.kernel), KernelSize: int64(len(fx.kernel)),
			Initrd: fstree.Bytes(fx.initrd), InitrdSize: int64(len(fx.initrd)),
			Cmdline: imagelayout.SlotCmdline("console=ttyS0", imagelayout.SlotA, sum), Epoch: epoch,
			Slot: imagelayout.SlotA, Tries: imagelayout.DefaultTries,
		})
	}
	s.DataSize = 8 << 20
	return s
}

// TestSlots: with SlotSize the disk has root-a (the image) and root-b
// (empty, not written) of that size, the ESP's one entry names the root's
// hash and counts its tries, and each partition's extent is exactly its
// data.
func TestSlots(t *testing.T) {
	need(t, "sgdisk", "fsck.vfat", "mtype", "mdir")
	fx := newFixture("n1")
	img, l := build(t, fx.slotSpec(t, 8<<20+1))
	if out, err := exec.Command("sgdisk", "-v", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Fatalf("sgdisk -v: %v\n%s", err, out)
	}
	var names []string
	for _, p := range l.Partitions {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, " "); got != "esp root-a root-b bellconf belldata" {
		t.Fatalf("partitions %s", got)
	}
	a, b := l.Partition(SlotA), l.Partition(SlotB)
	if a.Size != 9<<20 || b.Size != 9<<20 || b.Offset != a.Offset+a.Size {
		t.Errorf("slots %+v %+v, want 9 MiB each, one after the other", a, b)
	}
	sum := sha256.Sum256(fx.root)
	if a.SHA256 != hex.EncodeToString(sum[:]) || a.Used != int64(len(fx.root)) || a.Extent != a.SHA256 {
		t.Errorf("root-a: %+v", a)
	}
	if b.Used != 0 || b.Extent != emptyHash {
		t.Errorf("root-b: %+v", b)
	}
	for i, p := range l.Partitions {
		info, err := exec.Command("sgdisk", "-i", fmt.Sprint(i+1), img).CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		ro := strings.Contains(string(info), "Attribute flags: 1000000000000000")
		if want := p.Name == SlotA || p.Name == SlotB; ro != want {
			t.Errorf("%s: read-only attribute %v, want %v", p.Name, ro, want)
		}
	}

	esp := l.Partition(ESPName).Offset
	entry := "loader/entries/bellbuild-1-a+3.conf"
	want := "title bellbuild\nlinux /bellbuild/a/vmlinuz\ninitrd /bellbuild/a/initrd.img\noptions panic=10 console=ttyS0 " +
		"bellbuild.root=PARTLABEL=root-a bellbuild.config=LABEL=BELLCONF bellbuild.slot=a bellbuild.image=" + a.SHA256 + "\n"
	if got := mtools(t, "mtype", img, esp, "::/"+entry); got != want {
		t.Errorf("%s:\n%s\nwant:\n%s", entry, got, want)
	}
	if got := mtools(t, "mtype", img, esp, "::/loader/loader.conf"); got != "timeout 0\ndefault bellbuild-*\neditor no\nconsole-mode keep\n" {
		t.Errorf("loader.conf:\n%s", got)
	}
	if got := mtools(t, "mtype", img, esp, "::/bellbuild/a/vmlinuz"); got != string(fx.kernel) {
		t.Error("slot a's kernel differs")
	}
	part := section(t, img, l.Partition(ESPName))
	if out, err := exec.Command("fsck.vfat", "-n", part).CombinedOutput(); err != nil {
		t.Errorf("fsck.vfat -n esp: %v\n%s", err, out)
	}

	// Every byte outside the extents is zero, and each extent hashes as
	// the layout says.
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	covered := make([]bool, len(data))
	for _, p := range l.Partitions {
		h := sha256.Sum256(data[p.Offset : p.Offset+p.Used])
		if hex.EncodeToString(h[:]) != p.Extent {
			t.Errorf("%s: extent hash differs", p.Name)
		}
		for i := p.Offset; i < p.Offset+p.Used; i++ {
			covered[i] = true
		}
	}
	for i := int64(0); i < 34*512; i++ { // the protective MBR and the primary GPT
		covered[i] = true
	}
	for i := len(data) - 33*512; i < len(data); i++ { // the backup GPT
		covered[i] = true
	}
	for i, c := range covered {
		if !c && data[i] != 0 {
			t.Fatalf("byte %d is outside every extent and not zero", i)
		}
	}
}

// TestSlotTooSmall: a root larger than the slot size is refused and leaves
// nothing behind.
func TestSlotTooSmall(t *testing.T) {
	need(t)
	fx := newFixture("n1")
	dst := filepath.Join(t.TempDir(), "disk.raw")
	_, err := WriteFile(dst, fx.slotSpec(t, 1<<20))
	if err == nil || err.Error() != "disk: root image of 3146239 bytes is larger than the slot size 1048576" {
		t.Fatalf("error %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), "*")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestGrow lays the disk out on a bigger disk, as the installer does: the
// data partition fills the rest, the backup GPT is at the end, and
// sgdisk -v finds nothing wrong; a disk too small is refused.
func TestGrow(t *testing.T) {
	need(t, "sgdisk")
	fx := newFixture("n1")
	img, l := build(t, fx.slotSpec(t, 8<<20))
	const size = 200<<20 + 7*512 // not a whole MiB
	g, err := Grow(l, size)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "target.raw")
	f, err := os.Create(target)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, p := range l.Partitions {
		if _, err := io.Copy(io.NewOffsetWriter(f, p.Offset), io.NewSectionReader(src, p.Offset, p.Used)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range g.Partitions {
		g.Partitions[i].GUID = DeriveGUID("test", g.Partitions[i].Name)
	}
	if err := WriteGPT(f, g, ""); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sgdisk", "-v", target).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No problems found") {
		t.Fatalf("sgdisk -v: %v\n%s", err, out)
	}
	d := g.Partition(DataName)
	if d.Offset != l.Partition(DataName).Offset || d.Offset+d.Size != 200<<20-1<<20 {
		t.Errorf("data partition %+v", d)
	}
	p, _ := exec.Command("sgdisk", "-p", target).CombinedOutput()
	if !strings.Contains(string(p), "belldata") || !strings.Contains(string(p), "root-b") {
		t.Errorf("sgdisk -p:\n%s", p)
	}

	_, err = Grow(l, MinSize(l)-1)
	if !errors.Is(err, ErrTooSmall) {
		t.Errorf("a disk one byte too small: %v", err)
	}
	if _, err := Grow(l, MinSize(l)); err != nil {
		t.Errorf("the smallest disk: %v", err)
	}
}

// TestSlotDefault: without a size, each slot is twice the root image.
func TestSlotDefault(t *testing.T) {
	need(t, "sgdisk")
	fx := newFixture("n1")
	spec := fx.slotSpec(t, 0)
	spec.Slots = true
	_, l := build(t, spec)
	want := roundMiB(2 * int64(len(fx.root)))
	if a, b := l.Partition(SlotA), l.Partition(SlotB); a.Size != want || b.Size != want {
		t.Errorf("slots of %d and %d bytes, want %d", a.Size, b.Size, want)
	}
}
