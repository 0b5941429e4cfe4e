package build

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// benchRootsDir keeps the debootstrap roots BenchmarkBakeArch bakes as dir
// stages, made once (first stage only: the packages unpacked, which needs
// no emulator for arm64 and gives both architectures the same shape).
const benchRootsDir = "/var/cache/bellbuild-test/bench-roots"

// benchRoot returns a bookworm minbase root of architecture a:
// $BELLBUILD_BENCH_ROOT_AMD64 / _ARM64 when set, else one made once with
// debootstrap --foreign --arch=a into benchRootsDir.
func benchRoot(b *testing.B, a string) string {
	b.Helper()
	if d := os.Getenv("BELLBUILD_BENCH_ROOT_" + map[string]string{"amd64": "AMD64", "arm64": "ARM64"}[a]); d != "" {
		return d
	}
	dir := filepath.Join(benchRootsDir, "minbase-"+a)
	if _, err := os.Stat(dir + ".done"); err == nil {
		return dir
	}
	if os.Geteuid() != 0 {
		testtool.Skipf(b, "debootstrap needs root (or set BELLBUILD_BENCH_ROOT_%s)", a)
	}
	testtool.LookPath(b, "debootstrap", "debootstrap")
	os.RemoveAll(dir)
	if err := os.MkdirAll(benchRootsDir, 0o755); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command("debootstrap", "--foreign", "--arch="+a, "--variant=minbase", "bookworm", dir).CombinedOutput()
	if err != nil {
		b.Fatalf("debootstrap --foreign --arch=%s: %v\n%s", a, err, tail(string(out), 20))
	}
	if err := os.WriteFile(dir+".done", nil, 0o644); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkBakeArch measures cold bakes (an empty segment cache: the stage
// compressed, the initramfs assembled) for each architecture side by side,
// with the inputs fetched or made beforehand (untimed): the arm64 packages
// in the shared package cache, bellbuild cross-built for arm64.
//
//   - busybox/amd64 and busybox/arm64: the embedded demo and demo-arm64
//     profiles (the host's busybox and kernel; busybox-static:arm64 and
//     linux-image-arm64);
//   - minbase/amd64 and minbase/arm64: a bookworm minbase root of each
//     architecture (benchRoot) as a dir stage, with the host's kernel and
//     linux-image-arm64 — trees of about the same size (stage-MB says).
func BenchmarkBakeArch(b *testing.B) {
	needHost(b)
	needARM64(b)
	site := profiles.Default()
	cases := []struct {
		name    string
		arch    string
		profile string // an embedded profile, or
		root    bool   // the minbase root as a dir stage
	}{
		{"busybox/amd64", "amd64", "demo", false},
		{"busybox/arm64", "arm64", "demo-arm64", false},
		{"minbase/amd64", "amd64", "demo", true},
		{"minbase/arm64", "arm64", "demo-arm64", true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			sp := spec(b, site, c.profile)
			if c.root {
				sp.Stage = profiles.Stage{Dir: benchRoot(b, c.arch)}
			}
			base := arm64Options(b)
			base.Log = discardLog()
			base.Site = site
			// Fill the package cache and build the applier, untimed.
			if _, err := Image(context.Background(), sp, base); err != nil {
				b.Fatal(err)
			}
			var stageBytes int64
			if t, err := fstree.FromDir(sp.Stage.Dir); c.root && err == nil {
				for _, e := range t.Walk() {
					stageBytes += e.Size
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				o := arm64Options(b)
				o.Log, o.Site, o.Appliers = base.Log, site, base.Appliers
				b.StartTimer()
				m, err := Image(context.Background(), sp, o)
				if err != nil {
					b.Fatal(err)
				}
				if m.Stats.StageCached {
					b.Fatal("the cold bake found its stage cached")
				}
			}
			if stageBytes > 0 {
				b.ReportMetric(float64(stageBytes)/1e6, "stage-MB")
			}
		})
	}
}

// BenchmarkTCGBoot records, for reference, how long each architecture's
// baked demo takes under QEMU TCG from power-on (kernel and initramfs
// handed to QEMU) to the applier's summary line.
func BenchmarkTCGBoot(b *testing.B) {
	needHost(b)
	needARM64(b)
	site := profiles.Default()
	for _, c := range []struct{ arch, profile string }{{"amd64", "demo"}, {"arm64", "demo-arm64"}} {
		b.Run(c.arch, func(b *testing.B) {
			testtool.SkipVMArch(b, c.arch)
			o := arm64Options(b)
			o.Log, o.Site = discardLog(), site
			m, err := Image(context.Background(), spec(b, site, c.profile), o)
			if err != nil {
				b.Fatal(err)
			}
			summary := regexp.MustCompile(`^bellbuild: node=`)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				vm, err := testvm.Start(context.Background(), testvm.Config{Arch: c.arch,
					Kernel: filepath.Join(m.Stats.Dir, KernelFile), Initrd: filepath.Join(m.Stats.Dir, InitramfsFile),
					Cmdline: m.Cmdline + " panic=-1"})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), testtool.BootTimeout)
				_, err = vm.WaitFor(ctx, summary)
				cancel()
				vm.Close()
				if err != nil {
					b.Fatalf("%s: %v\n%s", c.arch, err, vm.Console())
				}
			}
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "boot-s")
		})
	}
}
