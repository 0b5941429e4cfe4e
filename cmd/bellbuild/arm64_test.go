package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// arm64Debs is where the arm64 tests keep the Debian packages they fetch,
// across tests and runs (the kernel package is 60 MB); the build tests
// use it too.
const arm64Debs = "/var/cache/bellbuild-test/debs"

// needARM64 skips unless apt knows arm64 packages and qemu-user is there.
func needARM64(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("apt-cache", "show", "--no-all-versions", "busybox-static:arm64").Output(); err != nil || len(out) == 0 {
		testtool.Skipf(t, "apt knows no arm64 packages: dpkg --add-architecture arm64 && apt-get update (make deps does it): %v", err)
	}
	testtool.LookPath(t, "qemu-aarch64-static", "qemu-user-static")
}

// arm64Cache is a fresh bake cache whose Debian packages are arm64Debs.
func arm64Cache(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(arm64Debs, 0o755); err != nil {
		testtool.Skipf(t, "no shared package cache: %v", err)
	}
	if err := os.Symlink(arm64Debs, filepath.Join(dir, "debs")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// bakeARM64 runs `bellbuild image PROFILE` for an arm64 profile with the
// cross-built applier and the shared package cache.
func bakeARM64(t testing.TB, bin, out, profile string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"image", profile, "-o", out, "--cache", arm64Cache(t), "--applier-arm64", testtool.BinaryArch(t, "arm64")}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image %s: %v\n%s", profile, err, b)
	}
}

// TestRunARM64Demo: the embedded demo profile for arm64 (demo-arm64)
// bakes on this x86-64 host and boots in qemu-system-aarch64 with
// `bellbuild run --arch arm64` to the applier's summary line, its report
// script's values before it; --arch amd64 on it is refused.
func TestRunARM64Demo(t *testing.T) {
	testtool.SkipVMArch(t, testvm.ARM64)
	needARM64(t)
	bin := testtool.Binary(t)
	out := t.TempDir()
	bakeARM64(t, bin, out, "demo-arm64")

	start := time.Now()
	cmd := exec.Command(bin, "run", "demo-arm64", "-o", out, "--arch", "arm64", "--timeout", "300s", "--expect", "bellbuild: node=")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bellbuild run --arch arm64: %v\nconsole:\n%s\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("arm64 TCG boot to the summary line: %s", time.Since(start).Round(100*time.Millisecond))
	for _, re := range []string{
		`(?m)^\[010-report.sh\] demo: domainname=demo\.bellbuild\r?$`,
		`(?m)^\[010-report.sh\] demo: swappiness=30\r?$`,
		`(?m)^bellbuild: node=\S+ profile=demo-arm64 changes=[1-9]\d* errors=0\r?$`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout.String()) {
			t.Errorf("console lacks %s:\n%s", re, stdout.String())
		}
	}
	if !strings.Contains(stderr.String(), "(arm64, kernel ") {
		t.Errorf("run did not say it boots arm64:\n%s", stderr.String())
	}

	b, err := exec.Command(bin, "run", "demo-arm64", "-o", out, "--arch", "amd64", "--timeout", "10s", "--expect", "x").CombinedOutput()
	if err == nil || !strings.Contains(string(b), "was baked for arm64 (its manifest says arch arm64)") {
		t.Errorf("--arch amd64 on an arm64 image: %v\n%s", err, b)
	}
}
