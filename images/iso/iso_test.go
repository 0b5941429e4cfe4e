package iso

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

const epoch = 1700000000

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func sampleFiles() *fstree.Tree {
	t := fstree.New()
	t.AddFile("bellbuild/root.squashfs", randomBytes(1, 3<<20+5), 0o644, 0, 0)
	t.AddFile("bellbuild/node.json", []byte(`{"node":"iso"}`+"\n"), 0o644, 0, 0)
	t.AddFile("bellbuild/empty", nil, 0o644, 0, 0)
	t.AddFile("a/b/c/d/e/f/leaf.txt", []byte("deep\n"), 0o644, 0, 0)
	for i := range 120 {
		t.AddFile(fmt.Sprintf("many/file_%03d.conf", i), []byte(fmt.Sprint(i)), 0o644, 0, 0)
	}
	t.Add(fstree.Entry{Path: "emptydir", Type: fstree.Dir, Mode: 0o755})
	// Mapped to MIXED_CASE_NAME.TXT;1, seen by Linux as mixed_case_name.txt.
	t.AddFile("Mixed-Case.Name.txt", []byte("mapped\n"), 0o644, 0, 0)
	t.Reproducible(epoch)
	return t
}

func sampleESP() *fstree.Tree {
	t := fstree.New()
	t.AddFile("EFI/BOOT/BOOTX64.EFI", randomBytes(2, 150000), 0o644, 0, 0)
	t.AddFile("loader/loader.conf", []byte("timeout 0\n"), 0o644, 0, 0)
	t.Reproducible(epoch)
	return t
}

func writeISO(t *testing.T, files *fstree.Tree, opts Options) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "image.iso")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(f, files, opts); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// readBack lists every file of the image with go-diskfs's ISO 9660 reader:
// path (as Linux shows it: lower case, no ";1") -> content.
func readBack(t *testing.T, img string) map[string]string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	fsys, err := iso9660.Read(file.New(f, true), st.Size(), 0, 2048)
	if err != nil {
		t.Fatalf("go-diskfs cannot read the image: %v", err)
	}
	got := map[string]string{}
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := strings.ToLower(strings.TrimSuffix(p, ";1"))
		if d.IsDir() {
			if p != "." {
				got[name+"/"] = ""
			}
			return nil
		}
		r, err := fsys.Open(p)
		if err != nil {
			return err
		}
		defer r.Close()
		b, err := io.ReadAll(r)
		got[name] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func want(t *testing.T, tr *fstree.Tree) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, e := range tr.Walk() {
		switch {
		case e.Path == ".":
		case e.Type == fstree.Dir:
			out[e.Path+"/"] = ""
		default:
			var b []byte
			if e.Data != nil {
				r, _ := e.Data.Open()
				b, _ = io.ReadAll(r)
				r.Close()
			}
			out[e.Path] = string(b)
		}
	}
	return out
}

func TestReadBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"plain", Options{Epoch: epoch}},
		{"bootable", Options{Epoch: epoch, ESP: sampleESP(), VolumeID: "BELL_TEST"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := sampleFiles()
			img := writeISO(t, files, tc.opts)
			got := readBack(t, img)
			w := want(t, files)
			w["mixed_case_name.txt"] = w["Mixed-Case.Name.txt"]
			delete(w, "Mixed-Case.Name.txt")
			if tc.opts.ESP != nil {
				w["efi/"] = ""
				w["efi/efiboot.img"] = got["efi/efiboot.img"] // checked below
			}
			if d := cmp.Diff(w, got, cmp.Transformer("len", func(s string) string {
				if len(s) > 64 {
					return fmt.Sprintf("%d bytes %x", len(s), s[:16])
				}
				return s
			})); d != "" {
				t.Errorf("image content (-want +got):\n%s", d)
			}
			st, _ := os.Stat(img)
			if size, _ := Size(files, tc.opts); size != st.Size() {
				t.Errorf("Size says %d, image is %d", size, st.Size())
			}
		})
	}
}

// TestElTorito follows the boot record to the catalog and the catalog to
// the EFI image, which must be a clean FAT32 volume with the ESP's files;
// the MBR partition must point at the same bytes.
func TestElTorito(t *testing.T) {
	for _, tool := range []string{"fsck.vfat", "mtype"} {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(t, "%s not installed (Debian packages dosfstools, mtools): %v", tool, err)
		}
	}
	esp := sampleESP()
	img := writeISO(t, sampleFiles(), Options{Epoch: epoch, ESP: esp})
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	testtool.LookPath(t, "file", "file")
	if out, err := exec.Command("file", "-b", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "ISO 9660 CD-ROM filesystem data") || !strings.Contains(string(out), "'BELLBUILD' (bootable)") {
		t.Errorf("file: %v: %s", err, out)
	}
	br := b[17*2048:]
	if string(br[1:6]) != "CD001" || !strings.HasPrefix(string(br[7:39]), "EL TORITO SPECIFICATION") {
		t.Fatalf("sector 17 is not an El Torito boot record: % x", br[:40])
	}
	cat := b[int(binary.LittleEndian.Uint32(br[71:]))*2048:]
	var sum uint16
	for i := 0; i < 32; i += 2 {
		sum += binary.LittleEndian.Uint16(cat[i:])
	}
	if cat[0] != 1 || cat[1] != 0xEF || cat[30] != 0x55 || cat[31] != 0xAA || sum != 0 {
		t.Errorf("validation entry % x (checksum sum %#x)", cat[:32], sum)
	}
	if cat[32] != 0x88 || cat[33] != 0 {
		t.Errorf("default entry is not bootable without emulation: % x", cat[32:64])
	}
	off := int64(binary.LittleEndian.Uint32(cat[40:])) * 2048
	mbrOff := int64(binary.LittleEndian.Uint32(b[446+8:])) * 512
	if b[446+4] != 0xEF || mbrOff != off || b[510] != 0x55 || b[511] != 0xAA {
		t.Errorf("MBR partition type %#x at %d, El Torito image at %d", b[446+4], mbrOff, off)
	}
	efi := readBack(t, img)["efi/efiboot.img"]
	if !bytes.Equal(b[off:off+int64(len(efi))], []byte(efi)) {
		t.Fatal("the catalog does not point at EFI/EFIBOOT.IMG")
	}
	if n := int64(binary.LittleEndian.Uint16(cat[38:])); n != 0 && n != (int64(len(efi))+511)/512 {
		t.Errorf("sector count %d for a %d-byte image", n, len(efi))
	}
	efiPath := filepath.Join(t.TempDir(), "efiboot.img")
	if err := os.WriteFile(efiPath, []byte(efi), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("fsck.vfat", "-n", efiPath).CombinedOutput(); err != nil {
		t.Errorf("fsck.vfat -n: %v\n%s", err, out)
	}
	cmd := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", img, off), "::/EFI/BOOT/BOOTX64.EFI")
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	got, err := cmd.Output()
	if err != nil || !bytes.Equal(got, randomBytes(2, 150000)) {
		t.Errorf("BOOTX64.EFI through the catalog's offset: %v (%d bytes)", err, len(got))
	}
}

// TestElToritoBIOS: with a BIOS boot image, the catalog's default entry
// loads it (x86 platform, four 512-byte sectors) and a final EFI section
// holds the EFI image; the image is patched with the boot information
// table ISOLINUX reads, and nothing else of it changes.
func TestElToritoBIOS(t *testing.T) {
	loader := randomBytes(9, 5001) // not a multiple of 4: the sum pads with zeros
	files := sampleFiles()
	files.AddFile("isolinux/isolinux.bin", loader, 0o444, 0, 0)
	files.Reproducible(epoch)
	img := writeISO(t, files, Options{Epoch: epoch, ESP: sampleESP(), BIOS: "isolinux/isolinux.bin"})
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	cat := b[int(binary.LittleEndian.Uint32(b[17*2048+71:]))*2048:]
	var sum uint16
	for i := 0; i < 32; i += 2 {
		sum += binary.LittleEndian.Uint16(cat[i:])
	}
	if cat[0] != 1 || cat[1] != 0 || sum != 0 {
		t.Errorf("validation entry % x: want platform 0 (x86), checksum sum %#x", cat[:32], sum)
	}
	if cat[32] != 0x88 || cat[33] != 0 || binary.LittleEndian.Uint16(cat[38:]) != 4 {
		t.Errorf("default entry % x: want bootable, no emulation, 4 sectors", cat[32:64])
	}
	if cat[64] != 0x91 || cat[65] != 0xEF || binary.LittleEndian.Uint16(cat[66:]) != 1 {
		t.Errorf("section header % x: want the final one, EFI, one entry", cat[64:96])
	}
	if cat[96] != 0x88 || cat[97] != 0 {
		t.Errorf("EFI entry % x", cat[96:128])
	}
	back := readBack(t, img)
	efiOff := int(binary.LittleEndian.Uint32(cat[104:])) * 2048
	if efi := back["efi/efiboot.img"]; string(b[efiOff:efiOff+len(efi)]) != efi {
		t.Error("the EFI section does not point at EFI/EFIBOOT.IMG")
	}
	lba := binary.LittleEndian.Uint32(cat[40:])
	got := b[int(lba)*2048 : int(lba)*2048+len(loader)]
	if got := back["isolinux/isolinux.bin"]; len(got) != len(loader) {
		t.Fatalf("isolinux.bin read back as %d bytes", len(got))
	}
	if string(got) != back["isolinux/isolinux.bin"] {
		t.Error("the default entry does not point at isolinux/isolinux.bin")
	}
	var want uint32
	padded := append(slices.Clone(loader[64:]), 0, 0, 0)
	for i := 0; i+4 <= len(loader)-64+3; i += 4 {
		want += binary.LittleEndian.Uint32(padded[i:])
	}
	table := []uint32{16, lba, uint32(len(loader)), want}
	for i, w := range table {
		if g := binary.LittleEndian.Uint32(got[8+4*i:]); g != w {
			t.Errorf("boot info table word %d = %d, want %d", i, g, w)
		}
	}
	if !bytes.Equal(got[:8], loader[:8]) || !bytes.Equal(got[64:], loader[64:]) || !bytes.Equal(got[24:64], make([]byte, 40)) {
		t.Error("the loader changed outside bytes 8 to 63")
	}
}

func TestReproducible(t *testing.T) {
	a, _ := os.ReadFile(writeISO(t, sampleFiles(), Options{Epoch: epoch, ESP: sampleESP()}))
	b, _ := os.ReadFile(writeISO(t, sampleFiles(), Options{Epoch: epoch, ESP: sampleESP()}))
	if !bytes.Equal(a, b) {
		t.Fatal("two writes differ")
	}
	c, _ := os.ReadFile(writeISO(t, sampleFiles(), Options{Epoch: epoch + 3600, ESP: sampleESP()}))
	if bytes.Equal(a, c) {
		t.Error("the epoch does not reach the image")
	}
	if got := string(a[16*2048+813 : 16*2048+829]); got != "2023111422132000" {
		t.Errorf("creation date %q, want 2023111422132000 (epoch %d)", got, epoch)
	}
}

func TestRejects(t *testing.T) {
	tests := []struct {
		name  string
		build func(*fstree.Tree)
		opts  Options
		msg   string
	}{
		{"symlink", func(tr *fstree.Tree) {
			tr.Add(fstree.Entry{Path: "link", Type: fstree.Symlink, Target: "x"})
		}, Options{}, "iso: link: a symlink: not representable in ISO 9660"},
		{"collision", func(tr *fstree.Tree) {
			tr.AddFile("d/a-b.txt", nil, 0o644, 0, 0)
			tr.AddFile("d/A_B.TXT", nil, 0o644, 0, 0)
		}, Options{}, "iso: d/A_B.TXT and d/a-b.txt are both A_B.TXT;1 in ISO 9660: not representable in ISO 9660"},
		{"long name", func(tr *fstree.Tree) {
			tr.AddFile(strings.Repeat("n", 28)+".conf", nil, 0o644, 0, 0)
		}, Options{}, "iso: " + strings.Repeat("n", 28) + ".conf: file name longer than 30 characters: not representable in ISO 9660"},
		{"too deep", func(tr *fstree.Tree) {
			tr.AddFile("1/2/3/4/5/6/7/8/f", nil, 0o644, 0, 0)
		}, Options{}, "iso: 1/2/3/4/5/6/7/8: deeper than 8 directories: not representable in ISO 9660"},
		{"volume id", func(tr *fstree.Tree) {}, Options{VolumeID: "bell build"}, `iso: volume ID "bell build": want at most 32 of A-Z 0-9 _: not representable in ISO 9660`},
		{"BIOS image missing", func(tr *fstree.Tree) {}, Options{ESP: sampleESP(), BIOS: "isolinux/isolinux.bin"},
			"iso: BIOS boot image isolinux/isolinux.bin: not a file of the tree: not representable in ISO 9660"},
		{"BIOS without EFI", func(tr *fstree.Tree) {
			tr.AddFile("isolinux/isolinux.bin", make([]byte, 2048), 0o644, 0, 0)
		}, Options{BIOS: "isolinux/isolinux.bin"}, "iso: BIOS boot image isolinux/isolinux.bin: needs the EFI image too (Options.ESP): not representable in ISO 9660"},
		{"BIOS image too small", func(tr *fstree.Tree) {
			tr.AddFile("isolinux/isolinux.bin", make([]byte, 63), 0o644, 0, 0)
		}, Options{ESP: sampleESP(), BIOS: "isolinux/isolinux.bin"}, "iso: BIOS boot image isolinux/isolinux.bin: 63 bytes, want 64 to 1048576: not representable in ISO 9660"},
		{"reserved path", func(tr *fstree.Tree) {
			tr.AddFile(EFIImagePath, nil, 0o644, 0, 0)
		}, Options{ESP: sampleESP()}, "iso: EFI/EFIBOOT.IMG is reserved for the EFI image: not representable in ISO 9660"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := fstree.New()
			tc.build(tr)
			err := Write(io.Discard, tr, tc.opts)
			if !errors.Is(err, ErrUnsupported) || err.Error() != tc.msg {
				t.Errorf("error:\n got %v\nwant %s", err, tc.msg)
			}
		})
	}
}

func TestIdentifierOrder(t *testing.T) {
	ids := []string{"B.TXT;1", "A.TXT;1", "A_B.TXT;1", "A.T;1", "AB", "A"}
	sort.Slice(ids, func(i, j int) bool { return lessID(ids[i], ids[j]) })
	if d := cmp.Diff([]string{"A", "A.T;1", "A.TXT;1", "AB", "A_B.TXT;1", "B.TXT;1"}, ids); d != "" {
		t.Errorf("order (-want +got):\n%s", d)
	}
}

// setMaxExtent makes files larger than n bytes multi-extent for one test.
func setMaxExtent(t *testing.T, n int64) {
	t.Helper()
	old := maxExtent
	maxExtent = n
	t.Cleanup(func() { maxExtent = old })
}

// TestMultiExtent reads the root directory's records the way ECMA-119
// lays them out: a file larger than one extent is several records of the
// same name, contiguous, all but the last flagged multi-extent, whose
// extents together hold the file's bytes.
func TestMultiExtent(t *testing.T) {
	setMaxExtent(t, 5*2048)
	content := randomBytes(5, 5*2048*3+100) // three full extents and a bit
	files := fstree.New()
	files.AddFile("big.bin", content, 0o644, 0, 0)
	files.AddFile("small.txt", []byte("small"), 0o644, 0, 0)
	files.Reproducible(epoch)
	img := writeISO(t, files, Options{Epoch: epoch})
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	rootRec := b[16*2048+156:]
	rootLBA := binary.LittleEndian.Uint32(rootRec[2:])
	dir := b[int(rootLBA)*2048 : int(rootLBA)*2048+2048]
	type rec struct {
		ID    string
		Size  uint32
		Flags byte
	}
	var got []rec
	var joined []byte
	for off := 0; off < len(dir) && dir[off] != 0; off += int(dir[off]) {
		r := dir[off:]
		id := string(r[33 : 33+int(r[32])])
		if id == "\x00" || id == "\x01" {
			continue
		}
		lba, size := binary.LittleEndian.Uint32(r[2:]), binary.LittleEndian.Uint32(r[10:])
		got = append(got, rec{id, size, r[25]})
		if id == "BIG.BIN;1" {
			joined = append(joined, b[int64(lba)*2048:int64(lba)*2048+int64(size)]...)
		}
	}
	want := []rec{
		{"BIG.BIN;1", 10240, 0x80}, {"BIG.BIN;1", 10240, 0x80}, {"BIG.BIN;1", 10240, 0x80}, {"BIG.BIN;1", 100, 0},
		{"SMALL.TXT;1", 5, 0},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("root directory records (-want +got):\n%s", d)
	}
	if !bytes.Equal(joined, content) {
		t.Error("the extents do not hold big.bin's bytes in order")
	}
	if _, err := Size(files, Options{Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	setMaxExtent(t, 2048)
	huge := fstree.New()
	huge.Add(fstree.Entry{Path: "huge", Type: fstree.Regular, Size: 2048*1024 + 1, Data: fstree.Bytes(nil)})
	if err := Write(io.Discard, huge, Options{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("a file of 1025 extents: %v, want ErrUnsupported", err)
	}
}

// TestChangedFile: a file that grew or shrank on disk after the tree was
// read fails the write with an error naming it and both sizes, instead of
// being cut short or padded with zeros: a file of the ISO, the BIOS boot
// image (read into memory to be patched) and a file of the EFI image.
func TestChangedFile(t *testing.T) {
	tests := []struct {
		name string
		path string
		// opts makes the options and files of the image around the
		// changed tree.
		opts func(changed *fstree.Tree) (*fstree.Tree, Options)
	}{
		{"file", "bellbuild/root.squashfs", func(changed *fstree.Tree) (*fstree.Tree, Options) {
			return changed, Options{Epoch: epoch, ESP: sampleESP()}
		}},
		{"BIOS image", "isolinux/isolinux.bin", func(changed *fstree.Tree) (*fstree.Tree, Options) {
			return changed, Options{Epoch: epoch, ESP: sampleESP(), BIOS: "isolinux/isolinux.bin"}
		}},
		{"EFI image", "EFI/BOOT/BOOTX64.EFI", func(changed *fstree.Tree) (*fstree.Tree, Options) {
			return sampleFiles(), Options{Epoch: epoch, ESP: changed}
		}},
	}
	for _, tc := range tests {
		for _, c := range fixture.Changes {
			t.Run(tc.name+"/"+c.Name, func(t *testing.T) {
				files, opts := tc.opts(c.Tree(t, tc.path))
				err := Write(io.Discard, files, opts)
				c.Check(t, err, tc.path)
				if !strings.HasPrefix(err.Error(), "iso: ") {
					t.Errorf("error %q does not say which writer failed", err)
				}
			})
		}
	}
}
