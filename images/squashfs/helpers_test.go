package squashfs

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/testvm/testtool"
	"github.com/google/go-cmp/cmp"
)

// needTool skips when a squashfs-tools binary is genuinely absent.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testtool.Skipf(t, "%s not installed (apt-get install squashfs-tools): %v", name, err)
	}
	return p
}

// writeImage writes tr to a file in a temporary directory.
func writeImage(t testing.TB, tr *fstree.Tree, o Options) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "root.squashfs")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Write(f, tr, o)
	if err != nil {
		f.Close()
		t.Fatalf("Write: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != n || n%4096 != 0 {
		t.Fatalf("Write returned %d, file is %d bytes (want equal, a multiple of 4096)", n, st.Size())
	}
	return img
}

// modeString is how ls (and unsquashfs -l) shows an entry's type and mode.
func modeString(e *fstree.Entry) string {
	typ := map[fstree.Type]byte{fstree.Regular: '-', fstree.Dir: 'd', fstree.Symlink: 'l',
		fstree.CharDev: 'c', fstree.BlockDev: 'b', fstree.FIFO: 'p', fstree.Socket: 's'}[e.Type]
	m := fstree.PermBits(e.Mode)
	s := []byte{typ}
	for i, c := range "rwxrwxrwx" {
		if m&(1<<(8-i)) != 0 {
			s = append(s, byte(c))
		} else {
			s = append(s, '-')
		}
	}
	special := func(bit uint32, at int, set, unset byte) {
		if m&bit == 0 {
			return
		}
		if s[at] == 'x' {
			s[at] = set
		} else {
			s[at] = unset
		}
	}
	special(0o4000, 3, 's', 'S')
	special(0o2000, 6, 's', 'S')
	special(0o1000, 9, 't', 'T')
	return string(s)
}

var lsLine = regexp.MustCompile(`^(\S{10}) (\d+)/(\d+) +(-?\d+, *-?\d+|\d+) (\d{4}-\d\d-\d\d \d\d:\d\d) squashfs-root(.*)$`)

// listImage runs unsquashfs -lln and returns one line per entry in a
// normalized form; wantListing renders the tree the same way.
func listImage(t testing.TB, img string) []string {
	t.Helper()
	cmd := exec.Command(needTool(t, "unsquashfs"), "-lln", img)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -lln: %v\n%s", err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		m := lsLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("unsquashfs -lln: unexpected line %q", l)
		}
		size := strings.ReplaceAll(m[4], " ", "")
		if m[1][0] == 'd' {
			size = "-" // a directory's size is its listing's, the format's business
		}
		p := m[6]
		if p == "" {
			p = "/"
		}
		lines = append(lines, fmt.Sprintf("%s %s/%s %s %s %s", m[1], m[2], m[3], size, m[5], p))
	}
	return lines
}

func wantListing(tr *fstree.Tree) []string {
	var lines []string
	links := tr.Links()
	for _, w := range tr.Walk() {
		e := w
		if g := links[w.Path]; g != nil {
			c := *g.Head
			c.Path = w.Path
			e = &c
		}
		size := "0"
		p := "/" + e.Path
		switch e.Type {
		case fstree.Dir:
			size = "-"
			if e.Path == "." {
				p = "/"
			}
		case fstree.Regular:
			size = strconv.FormatInt(e.Size, 10)
		case fstree.Symlink:
			size = strconv.Itoa(len(e.Target))
			p += " -> " + e.Target
		case fstree.CharDev, fstree.BlockDev:
			// unsquashfs 4.5 prints the encoded number's two low bytes
			// apart, which is the major and minor only for minors < 256.
			dev := int32(e.Minor&0xff | e.Major<<8 | (e.Minor&^0xff)<<12)
			size = fmt.Sprintf("%d,%d", dev>>8, dev&0xff)
		}
		mt := time.Unix(e.MTime, 0).UTC().Format("2006-01-02 15:04")
		lines = append(lines, fmt.Sprintf("%s %d/%d %s %s %s", modeString(e), e.UID, e.GID, size, mt, p))
	}
	return lines
}

// extract runs unsquashfs -d as root and returns the extracted root.
func extract(t testing.TB, img string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "x")
	out, err := exec.Command(needTool(t, "unsquashfs"), "-q", "-n", "-d", dir, img).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -d: %v\n%s", err, out)
	}
	return dir
}

// describe renders every entry of a tree with everything squashfs keeps:
// type, mode, owner, mtime, size and content hash, target, device,
// xattrs, and for hardlinks the first name of the group.
func describe(t testing.TB, tr *fstree.Tree) []string {
	t.Helper()
	links := tr.Links()
	var out []string
	for _, e := range tr.Walk() {
		src := e
		link := ""
		if g := links[e.Path]; g != nil {
			src = g.Head
			link = " link=" + g.Members[0].Path
		}
		s := fmt.Sprintf("%s %s %#o %d:%d t=%d", e.Path, e.Type, fstree.PermBits(src.Mode), src.UID, src.GID, src.MTime)
		switch e.Type {
		case fstree.Regular:
			s += fmt.Sprintf(" size=%d sha=%x", src.Size, contentHash(t, src))
		case fstree.Symlink:
			s += " -> " + e.Target
		case fstree.CharDev, fstree.BlockDev:
			s += fmt.Sprintf(" dev=%d,%d", e.Major, e.Minor)
		}
		if e.Path == "." {
			s = fmt.Sprintf(". dir %#o %d:%d", fstree.PermBits(src.Mode), src.UID, src.GID)
		}
		var xs []string
		for k, v := range src.Xattrs {
			xs = append(xs, fmt.Sprintf("%s=%x", k, v))
		}
		sort.Strings(xs)
		if len(xs) > 0 {
			s += " xattrs=" + strings.Join(xs, ",")
		}
		out = append(out, s+link)
	}
	return out
}

func contentHash(t testing.TB, e *fstree.Entry) []byte {
	t.Helper()
	h := sha256.New()
	if e.Data != nil {
		rc, err := e.Data.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if _, err := io.Copy(h, rc); err != nil {
			t.Fatal(err)
		}
	}
	return h.Sum(nil)
}

// checkImage proves img holds tr: unsquashfs's listing matches the tree
// entry by entry, and the extracted files match it in every attribute and
// byte.
func checkImage(t testing.TB, tr *fstree.Tree, img string) {
	t.Helper()
	if diff := cmp.Diff(wantListing(tr), listImage(t, img)); diff != "" {
		t.Errorf("unsquashfs -lln (-want +got):\n%s", diff)
	}
	dir := extract(t, img)
	got, err := fstree.FromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(describe(t, tr), describe(t, got)); diff != "" {
		t.Errorf("extracted tree (-want +got):\n%s", diff)
	}
}

// gen is lazily generated file content: size bytes of a kind, from a seed,
// never held in memory whole.
type gen struct {
	kind string // "random", "text", "zeros", "holes" (zero blocks between random ones)
	size int64
	seed uint64
}

func (g gen) Open() (io.ReadCloser, error) {
	return io.NopCloser(&genReader{g: g, r: rand.New(rand.NewPCG(g.seed, 7))}), nil
}

type genReader struct {
	g   gen
	r   *rand.Rand
	off int64
}

var words = strings.Fields("the quick brown fox jumps over lazy dogs squashfs block fragment inode directory table kernel zstd")

func (r *genReader) Read(p []byte) (int, error) {
	if r.off >= r.g.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.g.size-r.off)]
	for i := range p {
		pos := r.off + int64(i)
		switch r.g.kind {
		case "zeros":
			p[i] = 0
		case "holes":
			if (pos/(128<<10))%3 == 1 {
				p[i] = 0
			} else {
				p[i] = byte(r.r.Uint32())
			}
		case "text":
			k := uint64(pos/8)*0x9E3779B97F4A7C15 + r.g.seed
			w := words[(k>>40)%uint64(len(words))]
			if j := int(pos % 8); j < len(w) {
				p[i] = w[j]
			} else {
				p[i] = ' '
			}
		default:
			p[i] = byte(r.r.Uint32())
		}
	}
	r.off += int64(len(p))
	return len(p), nil
}

func addGen(tr *fstree.Tree, p string, g gen, mode fs.FileMode, uid, gid uint32) {
	tr.Add(fstree.Entry{Path: p, Type: fstree.Regular, Mode: mode, UID: uid, GID: gid, Size: g.size, Data: g, MTime: 1700000000})
}

// capNetRaw is a valid security.capability value (v2, cap_net_raw+ep).
var capNetRaw = []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func imageBytes(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
