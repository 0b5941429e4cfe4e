package squashfs

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/fstree"
)

// chooser is the source of a random tree's shape: a seeded PRNG for the
// property test, the fuzzer's bytes for FuzzWrite.
type chooser interface {
	IntN(n int) int
}

// bytesChooser takes choices from a byte string, then zeros once it runs
// out, so every input makes a valid (finite) tree.
type bytesChooser struct{ b []byte }

func (c *bytesChooser) IntN(n int) int {
	if n <= 1 {
		return 0
	}
	var v [4]byte
	k := copy(v[:], c.b)
	c.b = c.b[k:]
	return int(binary.LittleEndian.Uint32(v[:]) % uint32(n))
}

type shape struct {
	entries  int
	maxBytes int64 // total file content budget
	deep     bool  // favour nesting
	wide     bool  // favour one directory
}

// randomTree builds a tree of every entry type: deep or wide directories,
// empty, small, block-sized and multi-block files of random, compressible,
// zero and holey content, symlinks, hardlinks, devices, FIFOs, sockets,
// random modes with setuid/setgid/sticky, owners and xattrs.
func randomTree(c chooser, s shape) *fstree.Tree {
	tr := fstree.New()
	tr.Add(fstree.Entry{Path: ".", Type: fstree.Dir, Mode: fs.FileMode(0o700 | c.IntN(0o100)), MTime: int64(c.IntN(1 << 31))})
	dirs := []string{"."}
	var files []string
	budget := s.maxBytes
	owners := []uint32{0, 0, 1, 1000, 65534, 4294967294, 123456}
	owner := func() uint32 {
		if c.IntN(8) == 0 {
			return uint32(c.IntN(1 << 30))
		}
		return owners[c.IntN(len(owners))]
	}
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+@ "
	name := func() string {
		n := 1 + c.IntN(12)
		if c.IntN(30) == 0 {
			n = 200 + c.IntN(56)
		}
		var b strings.Builder
		for range n {
			b.WriteByte(alphabet[c.IntN(len(alphabet))])
		}
		return b.String()
	}
	for i := 0; i < s.entries; i++ {
		parent := dirs[c.IntN(len(dirs))]
		switch {
		case s.deep && c.IntN(2) == 0:
			parent = dirs[len(dirs)-1]
		case s.wide && c.IntN(4) != 0:
			parent = dirs[min(1, len(dirs)-1)]
		}
		p := name()
		if parent != "." {
			p = parent + "/" + p
		}
		if len(p) > 3000 || tr.Get(p) != nil || strings.TrimSpace(p) != p {
			continue
		}
		e := fstree.Entry{
			Path:  p,
			Mode:  fs.FileMode(c.IntN(0o1000)),
			UID:   owner(),
			GID:   owner(),
			MTime: int64(c.IntN(1<<31)) * int64(1+c.IntN(2)),
		}
		special := c.IntN(8)
		if special&1 != 0 {
			e.Mode |= fs.ModeSetuid
		}
		if special&2 != 0 {
			e.Mode |= fs.ModeSetgid
		}
		if special&4 != 0 {
			e.Mode |= fs.ModeSticky
		}
		switch k := c.IntN(100); {
		case k < 22:
			e.Type = fstree.Dir
		case k < 60:
			e.Type = fstree.Regular
			g := gen{kind: []string{"random", "text", "zeros", "holes"}[c.IntN(4)], seed: uint64(c.IntN(1 << 30))}
			switch r := c.IntN(10); {
			case r < 2:
			case r < 7:
				g.size = int64(1 + c.IntN(6000))
			case r < 9:
				g.size = int64((1+c.IntN(3))*(128<<10) + c.IntN(3) - 1)
			default:
				g.size = int64(200<<10 + c.IntN(3<<20))
			}
			if g.size > budget {
				g.size = 0
			}
			budget -= g.size
			e.Size = g.size
			if g.size > 0 {
				e.Data = g
			}
		case k < 70:
			e.Type = fstree.Symlink
			e.Mode = 0o777 // Linux has no other symlink mode to extract
			e.Target = name()
			if c.IntN(3) == 0 {
				e.Target = "/" + strings.Repeat("../", c.IntN(5)) + name()
			}
		case k < 78:
			if len(files) == 0 {
				continue
			}
			e = fstree.Entry{Path: p, Type: fstree.Regular, LinkTo: files[c.IntN(len(files))]}
		case k < 84:
			e.Type = fstree.CharDev
			e.Major, e.Minor = uint32(c.IntN(4096)), uint32(c.IntN(1<<20))
		case k < 90:
			e.Type = fstree.BlockDev
			e.Major, e.Minor = uint32(c.IntN(4096)), uint32(c.IntN(256))
		case k < 95:
			e.Type = fstree.FIFO
		default:
			e.Type = fstree.Socket
		}
		if e.LinkTo == "" && c.IntN(6) == 0 {
			e.Xattrs = map[string][]byte{}
			for range 1 + c.IntN(3) {
				ns := []string{"trusted.", "security."}
				if e.Type == fstree.Regular || e.Type == fstree.Dir {
					ns = append(ns, "user.")
				}
				v := make([]byte, c.IntN(300))
				for i := range v {
					v[i] = byte(c.IntN(256))
				}
				key := strings.ReplaceAll(name(), " ", "_")
				e.Xattrs[ns[c.IntN(len(ns))]+key[:min(len(key), 40)]] = v
			}
		}
		tr.Add(e)
		switch e.Type {
		case fstree.Dir:
			dirs = append(dirs, p)
		case fstree.Regular:
			if e.LinkTo == "" {
				files = append(files, p)
			}
		}
	}
	return tr
}

// TestRandomTrees checks seeded random trees, deep, wide and mixed,
// against unsquashfs's listing and extracted bytes.
func TestRandomTrees(t *testing.T) {
	needTool(t, "unsquashfs")
	shapes := map[string]shape{
		"mixed": {entries: 400, maxBytes: 6 << 20},
		"deep":  {entries: 300, maxBytes: 2 << 20, deep: true},
		"wide":  {entries: 3000, maxBytes: 2 << 20, wide: true},
	}
	seeds := 3
	if testing.Short() {
		seeds = 1
	}
	for name, s := range shapes {
		for seed := range seeds {
			t.Run(fmt.Sprintf("%s/seed%d", name, seed), func(t *testing.T) {
				t.Parallel()
				tr := randomTree(rand.New(rand.NewPCG(uint64(seed), 42)), s)
				o := Options{BlockSize: []int{4096, 128 << 10, 64 << 10}[seed%3], Compression: []Compression{Zstd, Gzip}[seed%2], Level: 1 + seed%3}
				checkImage(t, tr, writeImage(t, tr, o))
			})
		}
	}
}

// FuzzWrite builds a tree from the fuzzer's bytes and checks the image
// against unsquashfs: go test -fuzz FuzzWrite ./images/squashfs
func FuzzWrite(f *testing.F) {
	needTool(f, "unsquashfs")
	f.Add([]byte("seed"))
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 200, 100, 50, 25, 12, 6, 3, 1, 0, 255, 254})
	f.Add([]byte(strings.Repeat("\x10\x20\x30\x40\x50\x60", 50)))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr := randomTree(&bytesChooser{b}, shape{entries: len(b) / 4, maxBytes: 1 << 20})
		checkImage(t, tr, writeImage(t, tr, Options{BlockSize: 4096}))
	})
}
