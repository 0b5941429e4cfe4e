package squashfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/fstree"
)

// benchRoot is the tree the benchmark compresses: $BELLBUILD_BENCH_ROOT, or
// a finished debootstrap root under /var/cache/bellbuild-test, or
// /usr/bin of this machine.
func benchRoot(b *testing.B) string {
	if r := os.Getenv("BELLBUILD_BENCH_ROOT"); r != "" {
		return r
	}
	roots, _ := filepath.Glob("/var/cache/bellbuild-test/debootstrap-*")
	for _, r := range roots {
		if !strings.HasSuffix(r, ".tmp") {
			if _, err := os.Stat(filepath.Join(r, "usr/bin")); err == nil {
				return r
			}
		}
	}
	return "/usr/bin"
}

// BenchmarkVsMksquashfs writes the same root with this package and with
// mksquashfs (zstd level 3, two processors) side by side, and reports the
// time and size ratios (ours / mksquashfs's).
//
//	go test -run '^$' -bench VsMksquashfs -benchtime 3x ./images/squashfs
func BenchmarkVsMksquashfs(b *testing.B) {
	mk := needTool(b, "mksquashfs")
	root := benchRoot(b)
	tr, err := fstree.FromDir(root)
	if err != nil {
		b.Fatal(err)
	}
	tr.Reproducible(1700000000)
	var raw int64
	for _, e := range tr.Walk() {
		if e.Type == fstree.Regular && e.LinkTo == "" {
			raw += e.Size
		}
	}
	dir := b.TempDir()
	ours, theirs := filepath.Join(dir, "ours.sqfs"), filepath.Join(dir, "mksquashfs.sqfs")
	// Warm the page cache so that both read from memory.
	if _, err := exec.Command("tar", "-cf", "/dev/null", "-C", root, ".").CombinedOutput(); err != nil {
		b.Logf("warming the cache: %v", err)
	}
	var oursTime, theirsTime time.Duration
	var oursSize, theirsSize int64
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		f, err := os.Create(ours)
		if err != nil {
			b.Fatal(err)
		}
		if oursSize, err = Write(f, tr, Options{MkfsTime: 1700000000, Workers: 2}); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		oursTime += time.Since(start)

		os.Remove(theirs)
		start = time.Now()
		out, err := exec.Command(mk, root, theirs, "-comp", "zstd", "-Xcompression-level", "3",
			"-processors", "2", "-no-progress", "-quiet", "-mkfs-time", "1700000000", "-all-time", "1700000000").CombinedOutput()
		if err != nil {
			b.Fatalf("mksquashfs: %v\n%s", err, out)
		}
		theirsTime += time.Since(start)
		st, err := os.Stat(theirs)
		if err != nil {
			b.Fatal(err)
		}
		theirsSize = st.Size()
	}
	b.StopTimer()
	n := time.Duration(b.N)
	b.ReportMetric(float64(oursTime)/float64(theirsTime), "time-ratio")
	b.ReportMetric(float64(oursSize)/float64(theirsSize), "size-ratio")
	b.ReportMetric(0, "ns/op")
	fmt.Printf("root %s: %d entries, %.1f MB of file data\n", root, tr.Len(), float64(raw)/1e6)
	fmt.Printf("  bellbuild squashfs: %7.3f s  %8.1f MB\n", (oursTime / n).Seconds(), float64(oursSize)/1e6)
	fmt.Printf("  mksquashfs        : %7.3f s  %8.1f MB\n", (theirsTime / n).Seconds(), float64(theirsSize)/1e6)
	fmt.Printf("  ratio (ours/theirs): time %.2fx  size %.3fx\n", float64(oursTime)/float64(theirsTime), float64(oursSize)/float64(theirsSize))
}
