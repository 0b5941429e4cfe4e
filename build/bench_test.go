package build

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// benchSpec bakes the real root the benchmarks bake: $BELLBUILD_BENCH_ROOT (a
// directory), else the Debian root the issue names, made once with
// debootstrap through the bake's own cached debootstrap stage.
func benchSpec(b *testing.B) *profiles.ImageSpec {
	b.Helper()
	needHost(b)
	sp := &profiles.ImageSpec{
		Profile: "bench",
		Chain:   []string{"bench"},
		Kernel:  profiles.Kernel{Path: testKernel},
		Cmdline: []string{"console=ttyS0"},
		Outputs: []string{"initramfs"},
		Bundle: &nodeconf.Bundle{Profile: "bench", Nodes: []nodeconf.Node{},
			Default: nodeconf.Node{Profile: "bench", Conf: nodeconf.Conf{Sysctl: map[string]string{"vm.swappiness": "10"}}}},
	}
	if dir := os.Getenv("BELLBUILD_BENCH_ROOT"); dir != "" {
		sp.Stage.Dir = dir
		return sp
	}
	if os.Geteuid() != 0 {
		testtool.Skipf(b, "debootstrap needs root (or set BELLBUILD_BENCH_ROOT to a root directory)")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		testtool.Skipf(b, "debootstrap not installed (or set BELLBUILD_BENCH_ROOT)")
	}
	sp.Stage.Debootstrap = &profiles.Debootstrap{Suite: "bookworm", Variant: "minbase", Include: []string{"systemd", "systemd-sysv", "openssh-server"}}
	return sp
}

func benchOptions(b *testing.B) Options {
	o := Options{Applier: testtool.Binary(b), Log: discardLog()}
	if err := o.defaults(); err != nil {
		b.Fatal(err)
	}
	return o
}

// BenchmarkBake measures, side by side on one real root:
//
//   - cold: a bake with an empty segment cache (the stage is compressed);
//   - conf-only: the first re-bake after a change to the configuration
//     only, into an OUT a bake just filled: the stage and applier
//     segments come from the cache, and the bake takes the cached stage's
//     file over (reuse.go);
//   - conf-only-busy: re-bakes one after the other while another bake
//     holds the cache, so none can take the stage over: from the second
//     on, each takes over the spare initramfs the one before kept;
//   - conf-only-copy: a re-bake with nothing to take over (the reuse
//     records removed before each): the segments are copied;
//   - pipeline: `find | sort | cpio -o -H newc | zstd -3 -T2` of the same
//     root, the shell way to make an initramfs.
//
// Run: make bench, or
// go test -run '^$' -bench BenchmarkBake -benchtime 5x -count 2 ./build
func BenchmarkBake(b *testing.B) {
	sp := benchSpec(b)
	base := benchOptions(b)
	// One untimed bake first: it debootstraps the root when the cache
	// does not have it yet, and warms the segment cache for conf-only.
	base.OutDir = b.TempDir()
	if _, err := Image(context.Background(), sp, base); err != nil {
		b.Fatal(err)
	}
	b.Run("cold", func(b *testing.B) {
		var size int64
		var cpu time.Duration
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			o := base
			o.OutDir = b.TempDir()
			o.CacheDir = filepath.Join(b.TempDir(), "cache")
			if sp.Stage.Debootstrap != nil {
				// Reuse the debootstrapped root: link its cache entry.
				if err := linkDebootstrap(base.CacheDir, o.CacheDir); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
			c := cpuTime(syscall.RUSAGE_SELF)
			m, err := Image(context.Background(), sp, o)
			if err != nil {
				b.Fatal(err)
			}
			cpu += cpuTime(syscall.RUSAGE_SELF) - c
			if m.Stats.StageCached {
				b.Fatal("cold bake hit the cache")
			}
			size = m.Artifacts[1].Size
		}
		b.ReportMetric(float64(size)/1e6, "MB")
		b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	})
	for _, name := range []string{"conf-only", "conf-only-busy", "conf-only-copy"} {
		b.Run(name, func(b *testing.B) {
			o := base
			if name == "conf-only-busy" {
				o.OutDir = b.TempDir()
				busy, err := lockCache(o.CacheDir, false)
				if err != nil {
					b.Fatal(err)
				}
				defer busy.unlock()
			}
			var cpu time.Duration
			reused := 0
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				switch name {
				case "conf-only":
					// A bake into a new OUT (from the cache), then the
					// timed re-bake.
					o.OutDir = b.TempDir()
					if _, err := Image(context.Background(), sp, o); err != nil {
						b.Fatal(err)
					}
				case "conf-only-copy":
					if err := os.RemoveAll(reuseDir(filepath.Join(o.OutDir, sp.Profile))); err != nil {
						b.Fatal(err)
					}
				}
				sp.Bundle.Default.Conf.Sysctl["vm.swappiness"] = fmt.Sprint(20 + i)
				b.StartTimer()
				c := cpuTime(syscall.RUSAGE_SELF)
				m, err := Image(context.Background(), sp, o)
				if err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime(syscall.RUSAGE_SELF) - c
				if !m.Stats.StageCached || !m.Stats.ApplierCached {
					b.Fatalf("conf-only rebake recompressed: %+v", m.Stats)
				}
				if m.Stats.InitramfsReused {
					reused++
				}
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
			b.ReportMetric(float64(reused)/float64(b.N), "reused")
		})
	}
	b.Run("pipeline", func(b *testing.B) {
		dir := sp.Stage.Dir
		if dir == "" {
			dir = filepath.Join(base.CacheDir, "debootstrap", debootstrapKey(sp.Stage.Debootstrap, "amd64"), "root")
		}
		out := filepath.Join(b.TempDir(), "initramfs.cpio.zst")
		var size int64
		c := cpuTime(syscall.RUSAGE_CHILDREN)
		for i := 0; i < b.N; i++ {
			cmd := exec.Command("bash", "-c", "set -o pipefail; find . | sort | cpio -o -H newc --quiet | zstd -3 -T2 -q -f -o "+out)
			cmd.Dir = dir
			if msg, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("pipeline: %v\n%s", err, msg)
			}
			st, err := os.Stat(out)
			if err != nil {
				b.Fatal(err)
			}
			size = st.Size()
		}
		b.ReportMetric(float64(size)/1e6, "MB")
		b.ReportMetric((cpuTime(syscall.RUSAGE_CHILDREN)-c).Seconds()/float64(b.N), "cpu-s/op")
	})
}

// linkDebootstrap makes the debootstrapped roots of the cache from visible
// in the cache to, so that a cold segment cache does not mean a new
// debootstrap.
func linkDebootstrap(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	return os.Symlink(filepath.Join(from, "debootstrap"), filepath.Join(to, "debootstrap"))
}

// cpuTime is the CPU time (user + system) this process (who =
// RUSAGE_SELF) or its waited-for children (RUSAGE_CHILDREN) used so far.
func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(who, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
