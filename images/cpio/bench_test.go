package cpio

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// removeOld deletes the previous iteration's output before the clock
// starts: freeing 120 MB of page cache takes ~30 ms, which belongs to
// neither bake (and would otherwise fall on whichever overwrites it).
func removeOld(b *testing.B, out string) {
	if err := os.Remove(out); err != nil && !os.IsNotExist(err) {
		b.Fatal(err)
	}
}

type benchRun struct {
	wall, cpu time.Duration
	size      int64
}

// BenchmarkInitramfs bakes the same root into a zstd newc initramfs two
// ways, side by side in every iteration (alternating which goes first):
// this package — FromDir, Write, compress.Zstd — and the shell pipeline
// `find . | sort | cpio -o -H newc | zstd -3 -T2`. It reports wall time,
// CPU time (user+system, the steadier figure on a shared machine) and
// size of each, and the ratios ours/pipeline.
//
//	BELLBUILD_BENCH_ROOT=/path/to/root go test -run '^$' -bench Initramfs -benchtime 5x ./images/cpio
func BenchmarkInitramfs(b *testing.B) {
	for _, tool := range []string{"cpio", "zstd", "find", "sort", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(b, "%s not installed: no pipeline to compare with", tool)
		}
	}
	root := fixture.BenchRoot()
	dir := b.TempDir()
	// Warm the page cache: both read from memory. (Not with tar to
	// /dev/null: GNU tar then skips reading the contents.)
	if tr, err := fstree.FromDir(root); err != nil {
		b.Fatal(err)
	} else if err := Write(io.Discard, tr, Options{}); err != nil {
		b.Fatal(err)
	}
	var ours, pipe benchRun
	bakeOurs := func() {
		out := filepath.Join(dir, "ours.cpio.zst")
		removeOld(b, out)
		start, cpu := time.Now(), rusage(syscall.RUSAGE_SELF)
		tr, err := fstree.FromDir(root)
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(out)
		if err != nil {
			b.Fatal(err)
		}
		z, err := compress.Zstd(f)
		if err != nil {
			b.Fatal(err)
		}
		if err := Write(z, tr, Options{MTime: epoch(1_700_000_000)}); err != nil {
			b.Fatal(err)
		}
		if err := z.Close(); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		ours.wall += time.Since(start)
		ours.cpu += rusage(syscall.RUSAGE_SELF) - cpu
		fi, _ := os.Stat(out)
		ours.size = fi.Size()
	}
	bakePipe := func() {
		out := filepath.Join(dir, "pipe.cpio.zst")
		removeOld(b, out)
		start, cpu := time.Now(), rusage(syscall.RUSAGE_CHILDREN)
		cmd := exec.Command("bash", "-o", "pipefail", "-c", `find . | sort | cpio -o -H newc --quiet | zstd -3 -T2 -q -f -o "$1"`, "bash", out)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			panic(fmt.Sprintf("pipeline: %v\n%s", err, b))
		}
		pipe.wall += time.Since(start)
		pipe.cpu += rusage(syscall.RUSAGE_CHILDREN) - cpu
		fi, _ := os.Stat(out)
		pipe.size = fi.Size()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			bakeOurs()
			bakePipe()
		} else {
			bakePipe()
			bakeOurs()
		}
	}
	b.StopTimer()
	n := time.Duration(b.N)
	b.ReportMetric((ours.wall / n).Seconds(), "ours-s/op")
	b.ReportMetric((pipe.wall / n).Seconds(), "pipeline-s/op")
	b.ReportMetric(float64(ours.wall)/float64(pipe.wall), "wall-ratio")
	b.ReportMetric(float64(ours.cpu)/float64(pipe.cpu), "cpu-ratio")
	b.ReportMetric(float64(ours.size)/float64(pipe.size), "size-ratio")
	fmt.Printf("initramfs of %s (%d iterations):\n", root, b.N)
	fmt.Printf("  %-44s wall %6.3fs  cpu %6.3fs  size %7.1f MB\n", "bellbuild (FromDir + cpio.Write + zstd)", (ours.wall / n).Seconds(), (ours.cpu / n).Seconds(), float64(ours.size)/1e6)
	fmt.Printf("  %-44s wall %6.3fs  cpu %6.3fs  size %7.1f MB\n", "find | sort | cpio -o -H newc | zstd -3 -T2", (pipe.wall / n).Seconds(), (pipe.cpu / n).Seconds(), float64(pipe.size)/1e6)
	fmt.Printf("  ratio ours/pipeline: wall %.2f  cpu %.2f  size %.3f\n", float64(ours.wall)/float64(pipe.wall), float64(ours.cpu)/float64(pipe.cpu), float64(ours.size)/float64(pipe.size))
}
