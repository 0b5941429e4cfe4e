package squashfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
)

// cpuTime is the user and system time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type benchRun struct {
	name      string
	wall, cpu time.Duration
	size      int64
}

// BenchmarkVsMksquashfs writes the same root with this package (at the
// default zstd level 3, and at level 1) and with mksquashfs (zstd level 3,
// two processors), side by side in each iteration, and prints wall time,
// CPU time and size with the ratios to mksquashfs. The machine is shared:
// CPU time is the steadier measure of the work each does.
//
//	go test -run '^$' -bench VsMksquashfs -benchtime 3x ./images/squashfs
func BenchmarkVsMksquashfs(b *testing.B) {
	mk := needTool(b, "mksquashfs")
	root := fixture.BenchRoot()
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
	// Warm the page cache so that every writer reads from memory.
	if out, err := exec.Command("tar", "-cf", "/dev/null", "-C", root, ".").CombinedOutput(); err != nil {
		b.Logf("warming the cache: %v\n%s", err, out)
	}
	runs := []*benchRun{{name: "bellbuild zstd level 3 (default)"}, {name: "bellbuild zstd level 1"}, {name: "mksquashfs zstd level 3"}}
	ours := func(r *benchRun, level int) {
		img := filepath.Join(dir, "ours.sqfs")
		start, cpu := time.Now(), cpuTime()
		f, err := os.Create(img)
		if err != nil {
			b.Fatal(err)
		}
		if r.size, err = Write(f, tr, Options{MkfsTime: 1700000000, Workers: 2, Level: level}); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		r.wall += time.Since(start)
		r.cpu += cpuTime() - cpu
	}
	b.ResetTimer()
	for range b.N {
		ours(runs[0], 3)
		ours(runs[1], 1)

		img := filepath.Join(dir, "mksquashfs.sqfs")
		os.Remove(img)
		start := time.Now()
		cmd := exec.Command(mk, root, img, "-comp", "zstd", "-Xcompression-level", "3",
			"-processors", "2", "-no-progress", "-quiet", "-mkfs-time", "1700000000", "-all-time", "1700000000")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("mksquashfs: %v\n%s", err, out)
		}
		runs[2].wall += time.Since(start)
		runs[2].cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		st, err := os.Stat(img)
		if err != nil {
			b.Fatal(err)
		}
		runs[2].size = st.Size()
	}
	b.StopTimer()
	ref := runs[2]
	b.ReportMetric(float64(runs[0].wall)/float64(ref.wall), "time-ratio")
	b.ReportMetric(float64(runs[0].cpu)/float64(ref.cpu), "cpu-ratio")
	b.ReportMetric(float64(runs[0].size)/float64(ref.size), "size-ratio")
	n := float64(b.N)
	fmt.Printf("\nroot %s: %d entries, %.1f MB of file data, %d runs each, 2 cores\n", root, tr.Len(), float64(raw)/1e6, b.N)
	fmt.Printf("  %-34s %9s %9s %10s   %s\n", "writer", "wall s", "cpu s", "MB", "ratio to mksquashfs (wall cpu size)")
	for _, r := range runs {
		fmt.Printf("  %-34s %9.3f %9.3f %10.1f   %.2fx %.2fx %.3fx\n", r.name, r.wall.Seconds()/n, r.cpu.Seconds()/n, float64(r.size)/1e6,
			float64(r.wall)/float64(ref.wall), float64(r.cpu)/float64(ref.cpu), float64(r.size)/float64(ref.size))
	}
}
