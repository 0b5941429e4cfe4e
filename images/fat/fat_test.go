package fat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/testvm/testtool"
	"github.com/google/go-cmp/cmp"
)

const epoch = 1700000000

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(t, "%s not installed (Debian packages dosfstools, mtools): %v", tool, err)
		}
	}
}

// sampleTree has what an ESP and a config volume hold, plus the cases that
// stress the writer: a multi-cluster file, an empty file, a directory of
// hundreds of entries (several clusters), long and non-ASCII names, names
// whose aliases collide, a deep path and a hardlink.
func sampleTree(t *testing.T) *fstree.Tree {
	t.Helper()
	tr := fstree.New()
	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 3<<20+123)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	tr.AddFile("EFI/BOOT/BOOTX64.EFI", big[:100000], 0o644, 0, 0)
	tr.AddFile("loader/loader.conf", []byte("timeout 0\ndefault bellbuild.conf\n"), 0o644, 0, 0)
	tr.AddFile("loader/entries/bellbuild.conf", []byte("title bellbuild\nlinux /vmlinuz\n"), 0o644, 0, 0)
	tr.AddFile("vmlinuz", big, 0o644, 0, 0)
	tr.AddFile("empty", nil, 0o644, 0, 0)
	tr.AddFile("bellbuild/node.json", []byte(`{"node":"n1"}`), 0o600, 0, 0)
	tr.AddFile("Ünïcödé name with spaces.txt", []byte("u"), 0o644, 0, 0)
	tr.AddFile("a/b/c/d/e/f/g/h/deep.file", []byte("deep"), 0o644, 0, 0)
	for i := range 300 {
		tr.AddFile("many/file-with-a-long-name-"+strings.Repeat("x", i%40)+"-"+string(rune('a'+i%26))+itoa(i)+".conf", []byte(itoa(i)), 0o644, 0, 0)
	}
	tr.Add(fstree.Entry{Path: "many/linked.conf", Type: fstree.Regular, Mode: 0o644, LinkTo: "many/file-with-a-long-name--a0.conf"})
	tr.Add(fstree.Entry{Path: "emptydir", Type: fstree.Dir, Mode: 0o755})
	tr.Reproducible(epoch)
	return tr
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

func writeImage(t *testing.T, tr *fstree.Tree, opts Options) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fat.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Sparse {
		// The contract of Sparse: the destination already reads as zeros.
		size, err := Size(tr, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
	}
	if err := Write(f, tr, opts); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// Fsck runs fsck.vfat -n on an image and fails the test on any complaint.
func fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("fsck.vfat", "-n", "-v", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.vfat -n %s: %v\n%s", img, err, out)
	}
}

// extract copies the whole volume out with mtools and returns path ->
// content of every regular file, plus the list of directories.
func extract(t *testing.T, img string) (map[string]string, []string) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("mcopy", "-s", "-n", "-m", "-i", img, "::/", dir)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "LC_ALL=C.UTF-8")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mcopy: %v\n%s", err, out)
	}
	files := map[string]string{}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if rel != "." {
				dirs = append(dirs, rel)
			}
			return nil
		}
		b, err := os.ReadFile(p)
		files[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(dirs)
	return files, dirs
}

func want(t *testing.T, tr *fstree.Tree) (map[string]string, []string) {
	t.Helper()
	files := map[string]string{}
	var dirs []string
	for _, e := range tr.Walk() {
		switch {
		case e.Path == ".":
		case e.Type == fstree.Dir:
			dirs = append(dirs, e.Path)
		default:
			src := e
			if e.LinkTo != "" {
				src = tr.Get(e.LinkTo)
			}
			var b []byte
			if src.Data != nil {
				r, err := src.Data.Open()
				if err != nil {
					t.Fatal(err)
				}
				var buf bytes.Buffer
				buf.ReadFrom(r)
				r.Close()
				b = buf.Bytes()
			}
			files[e.Path] = string(b)
		}
	}
	sort.Strings(dirs)
	return files, dirs
}

func TestWriteReadBack(t *testing.T) {
	need(t, "fsck.vfat", "mcopy", "mdir")
	tests := []struct {
		name string
		opts Options
	}{
		{"smallest", Options{Label: "BELLCONF"}},
		{"no label", Options{}},
		{"64MiB", Options{Label: "ESP", Size: 64 << 20}},
		{"300MiB 4K clusters", Options{Label: "ESP", Size: 300 << 20, Sparse: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := sampleTree(t)
			img := writeImage(t, tr, tc.opts)
			fsck(t, img)
			gotFiles, gotDirs := extract(t, img)
			wantFiles, wantDirs := want(t, tr)
			if d := cmp.Diff(wantDirs, gotDirs); d != "" {
				t.Errorf("directories (-want +got):\n%s", d)
			}
			if len(gotFiles) != len(wantFiles) {
				t.Errorf("got %d files, want %d", len(gotFiles), len(wantFiles))
			}
			for p, w := range wantFiles {
				if g, ok := gotFiles[p]; !ok {
					t.Errorf("%s missing from the image", p)
				} else if g != w {
					t.Errorf("%s: content differs (%d bytes, want %d)", p, len(g), len(w))
				}
			}
			st, err := os.Stat(img)
			if err != nil {
				t.Fatal(err)
			}
			size, err := Size(tr, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != size || (tc.opts.Size != 0 && size != tc.opts.Size) {
				t.Errorf("image is %d bytes, Size says %d, asked %d", st.Size(), size, tc.opts.Size)
			}
		})
	}
}

func TestLabelAndSerial(t *testing.T) {
	need(t, "mdir")
	tr := sampleTree(t)
	img := writeImage(t, tr, Options{Label: "bellconf"})
	cmd := exec.Command("mdir", "-i", img, "::/")
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mdir: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Volume in drive : is BELLCONF") {
		t.Errorf("mdir does not show the label BELLCONF:\n%s", out)
	}
	if strings.Contains(string(out), "0000-0000") {
		t.Errorf("volume serial is 0000-0000:\n%s", out)
	}

	fixed := writeImage(t, tr, Options{Label: "BELLCONF", VolumeID: 0x12345678})
	b, err := os.ReadFile(fixed)
	if err != nil {
		t.Fatal(err)
	}
	if got := b[67:71]; !bytes.Equal(got, []byte{0x78, 0x56, 0x34, 0x12}) {
		t.Errorf("serial bytes = % x, want 78 56 34 12", got)
	}
}

func TestReproducible(t *testing.T) {
	a := writeImage(t, sampleTree(t), Options{Label: "ESP"})
	b := writeImage(t, sampleTree(t), Options{Label: "ESP"})
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ba, bb) {
		t.Fatal("two writes of the same tree differ")
	}
	changed := sampleTree(t)
	changed.AddFile("bellbuild/node.json", []byte(`{"node":"n2"}`), 0o600, 0, 0)
	changed.Reproducible(epoch)
	bc, _ := os.ReadFile(writeImage(t, changed, Options{Label: "ESP"}))
	if bytes.Equal(ba[67:71], bc[67:71]) {
		t.Errorf("serial %x did not change with the content", ba[67:71])
	}
}

func TestRejects(t *testing.T) {
	tests := []struct {
		name  string
		build func(*fstree.Tree)
		opts  Options
		want  error
		msg   string
	}{
		{"symlink", func(tr *fstree.Tree) {
			tr.Add(fstree.Entry{Path: "EFI/link", Type: fstree.Symlink, Target: "BOOT"})
		}, Options{}, ErrUnsupported, "fat: EFI/link: a symlink: not representable on FAT"},
		{"device", func(tr *fstree.Tree) {
			tr.Add(fstree.Entry{Path: "dev/null", Type: fstree.CharDev, Major: 1, Minor: 3})
		}, Options{}, ErrUnsupported, "fat: dev/null: a chardev: not representable on FAT"},
		{"case collision", func(tr *fstree.Tree) {
			tr.AddFile("conf/Node.json", nil, 0o644, 0, 0)
			tr.AddFile("conf/node.JSON", nil, 0o644, 0, 0)
		}, Options{}, ErrUnsupported, `fat: conf: "Node.json" and "node.JSON" are the same name on FAT: not representable on FAT`},
		{"bad char", func(tr *fstree.Tree) {
			tr.AddFile("a:b", nil, 0o644, 0, 0)
		}, Options{}, ErrUnsupported, `fat: a:b: name "a:b" has character ':': not representable on FAT`},
		{"label too long", func(tr *fstree.Tree) {}, Options{Label: "ABCDEFGHIJKL"}, ErrUnsupported,
			`fat: label "ABCDEFGHIJKL" is longer than 11 characters: not representable on FAT`},
		{"too small", func(tr *fstree.Tree) {
			tr.Add(fstree.Entry{Path: "huge", Type: fstree.Regular, Size: 40 << 20, Data: fstree.Bytes(nil)})
		}, Options{Size: MinSize}, ErrTooSmall, "fat: huge does not fit in 66496 clusters of 512 bytes: filesystem too small for its content"},
		{"below minimum", func(tr *fstree.Tree) {}, Options{Size: 32 << 20}, ErrTooSmall,
			"fat: size 33554432 is below the FAT32 minimum 34603008: filesystem too small for its content"},
		{"short content", func(tr *fstree.Tree) {
			tr.Add(fstree.Entry{Path: "short", Type: fstree.Regular, Size: 10, Data: fstree.Bytes("abc")})
		}, Options{}, nil, "fat: short: content is 3 bytes, not its declared 10 (changed after the tree was read)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := fstree.New()
			tr.AddFile("EFI/BOOT/BOOTX64.EFI", []byte("x"), 0o644, 0, 0)
			tc.build(tr)
			err := Write(&bytes.Buffer{}, tr, tc.opts)
			if err == nil {
				t.Fatal("Write succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v is not %v", err, tc.want)
			}
			if err.Error() != tc.msg {
				t.Errorf("error:\n got %s\nwant %s", err, tc.msg)
			}
		})
	}
}

func TestShortNames(t *testing.T) {
	tr := fstree.New()
	for _, n := range []string{"BOOTX64.EFI", "loader.conf", "loader.cfg", "LOADER~1.CON", ".hidden", "a b.c d", "x.tar.gz"} {
		tr.AddFile("d/"+n, nil, 0o644, 0, 0)
	}
	root, err := buildTree(tr, "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range root.children[0].children {
		got[c.name] = string(c.short[:]) + map[bool]string{true: " +lfn", false: ""}[c.lfn]
	}
	wantNames := map[string]string{
		"BOOTX64.EFI":  "BOOTX64 EFI",
		"LOADER~1.CON": "LOADER~1CON",
		".hidden":      "HIDDEN~1    +lfn",
		"a b.c d":      "AB~1    CD  +lfn",
		"loader.cfg":   "LOADER~1CFG +lfn",
		"loader.conf":  "LOADER~2CON +lfn",
		"x.tar.gz":     "XTAR~1  GZ  +lfn",
	}
	if d := cmp.Diff(wantNames, got); d != "" {
		t.Errorf("short names (-want +got):\n%s", d)
	}
}

// TestRandomTrees writes random trees — deep and wide, names that differ
// only after the alias's first six characters, non-ASCII names, sizes
// around sector and cluster boundaries — and checks each image with
// fsck.vfat and by extracting every file with mtools.
func TestRandomTrees(t *testing.T) {
	need(t, "fsck.vfat", "mcopy")
	sizes := []int{0, 1, 31, 32, 511, 512, 513, 4095, 4096, 4097, 65536 + 7}
	alphabet := []rune("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 -_~.+,;=[]éßЖ日")
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			tr := fstree.New()
			dirs := []string{"."}
			used := map[string]bool{}
			name := func(dir string) string {
				for {
					n := make([]rune, 1+rng.IntN(20))
					for i := range n {
						n[i] = alphabet[rng.IntN(len(alphabet))]
					}
					s := string(n)
					if rng.IntN(3) == 0 {
						s = "same-long-prefix-" + s // aliases collide on SAME-L~N
					}
					if checkName(s) != nil {
						continue
					}
					key := dir + "/" + strings.ToUpper(s)
					if used[key] {
						continue
					}
					used[key] = true
					if dir == "." {
						return s
					}
					return dir + "/" + s
				}
			}
			for range 150 {
				dir := dirs[rng.IntN(len(dirs))]
				if rng.IntN(4) == 0 && strings.Count(dir, "/") < 12 {
					p := name(dir)
					tr.Add(fstree.Entry{Path: p, Type: fstree.Dir, Mode: 0o755})
					dirs = append(dirs, p)
					continue
				}
				size := sizes[rng.IntN(len(sizes))]
				data := make([]byte, size)
				for i := range data {
					data[i] = byte(rng.Uint32())
				}
				tr.AddFile(name(dir), data, 0o644, 0, 0)
			}
			tr.Reproducible(epoch)
			img := writeImage(t, tr, Options{Label: "RANDOM"})
			fsck(t, img)
			gotFiles, gotDirs := extract(t, img)
			wantFiles, wantDirs := want(t, tr)
			if d := cmp.Diff(wantDirs, gotDirs); d != "" {
				t.Errorf("directories (-want +got):\n%s", d)
			}
			for p, w := range wantFiles {
				if g, ok := gotFiles[p]; !ok {
					t.Errorf("%q missing from the image", p)
				} else if g != w {
					t.Errorf("%q: content differs (%d bytes, want %d)", p, len(g), len(w))
				}
			}
			if len(gotFiles) != len(wantFiles) || len(wantFiles) < 80 {
				t.Errorf("got %d files, want %d (at least 80)", len(gotFiles), len(wantFiles))
			}
		})
	}
}

// TestChangedFile: a file that grew or shrank on disk after the tree was
// read fails the write with an error naming it and both sizes, whether
// the serial number is derived (the content is read before anything is
// written) or set (the content is read as it is written), instead of
// being cut short or padded with zeros.
func TestChangedFile(t *testing.T) {
	const p = "EFI/BOOT/grub.cfg"
	for _, c := range fixture.Changes {
		for _, opts := range []struct {
			name string
			opts Options
		}{
			{"derived serial", Options{}},
			{"fixed serial", Options{VolumeID: 0x1234abcd}},
		} {
			t.Run(c.Name+"/"+opts.name, func(t *testing.T) {
				tr := c.Tree(t, p)
				err := Write(io.Discard, tr, opts.opts)
				c.Check(t, err, p)
				if !strings.HasPrefix(err.Error(), "fat: ") {
					t.Errorf("error %q does not say which writer failed", err)
				}
			})
		}
	}
}
