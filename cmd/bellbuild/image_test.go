package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// TestImageAndRun is `make demo` in a temporary directory: the real binary
// bakes the embedded demo profile, then `run --node demo-1 --expect` boots
// it and returns as soon as the applier's summary names the node.
func TestImageAndRun(t *testing.T) {
	testtool.SkipVM(t)
	if _, err := os.Stat("/vmlinuz"); err != nil {
		testtool.Skipf(t, "no host kernel at /vmlinuz (apt-get install linux-image-amd64)")
	}
	bin := testtool.Binary(t)
	out := filepath.Join(t.TempDir(), "out")
	env := append(os.Environ(), "BELLBUILD_CACHE="+filepath.Join(t.TempDir(), "cache"))

	image := exec.Command(bin, "image", "demo", "-o", out, "--applier", bin)
	image.Env = env
	b, err := image.CombinedOutput()
	if err != nil {
		t.Fatalf("bellbuild image demo: %v\n%s", err, b)
	}
	for _, want := range []string{out + "/demo/vmlinuz\t", out + "/demo/initramfs.cpio.zst\t", "cmdline: console=ttyS0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("image output lacks %q:\n%s", want, b)
		}
	}

	run := exec.Command(bin, "run", "demo", "-o", out, "--node", "demo-1", "--timeout", "180s", "--expect", "bellbuild: node=demo-1 profile=demo")
	run.Env = env
	b, err = run.CombinedOutput()
	if err != nil {
		t.Fatalf("bellbuild run: %v\n%s", err, b)
	}
	for _, want := range []string{"bellbuild.node=demo-1", "[010-report.sh] demo: swappiness=30", `found "bellbuild: node=demo-1 profile=demo"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("run output lacks %q:\n%s", want, b)
		}
	}

	// A text that never comes: status 1 once the VM is gone or the time
	// is up (a bad kernel command line makes the VM panic and stop).
	fail := exec.Command(bin, "run", "demo", "-o", out, "--timeout", "180s", "--append", "rdinit=/nonexistent", "--expect", "never printed")
	fail.Env = env
	b, err = fail.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("run --expect of a missing text: %v, want exit status 1\n%s", err, b)
	}
}

func TestRunWithoutImage(t *testing.T) {
	var stdout strings.Builder
	err := runVM(t.Context(), runFlags{out: t.TempDir(), profile: "demo"}, nil, &stdout)
	if err == nil || !strings.Contains(err.Error(), "bake it first: bellbuild image demo") {
		t.Errorf("err = %v, want a hint to bake first", err)
	}
}

// TestRunMedia bakes a disk and an ISO of a busybox profile and boots each
// with `run --boot`, the node chosen by MAC: the disk under UEFI, the ISO
// under BIOS. The disk file is unchanged afterwards (the guest wrote to an
// overlay). Bad --boot uses are refused before a VM starts.
func TestRunMedia(t *testing.T) {
	testtool.SkipVM(t)
	for _, p := range []string{"/vmlinuz", testvm.OVMF, "/usr/lib/ISOLINUX/isolinux.bin"} {
		if _, err := os.Stat(p); err != nil {
			testtool.Skipf(t, "%v (Debian packages linux-image-amd64, ovmf, isolinux)", err)
		}
	}
	bin := testtool.Binary(t)
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "profiles/media.yaml"), `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0]
outputs: [raw, iso]
conf:
  sysctl:
    vm.swappiness: 31
`)
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), "nodes:\n- name: m1\n  mac: 52:54:00:00:07:01\n  profile: media\n")
	out := filepath.Join(t.TempDir(), "out")
	env := append(os.Environ(), "BELLBUILD_CACHE="+filepath.Join(t.TempDir(), "cache"))
	image := exec.Command(bin, "image", "media", "-C", site, "-o", out, "--applier", bin)
	image.Env = env
	if b, err := image.CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image: %v\n%s", err, b)
	}
	disk := filepath.Join(out, "media", "disk.raw")
	before := fileSum(t, disk)
	for _, boot := range []string{"disk", "iso-bios"} {
		run := exec.Command(bin, "run", "media", "-o", out, "--boot", boot, "--mac", "52:54:00:00:07:01", "--timeout", "300s", "--expect", "bellbuild: node=m1 profile=media")
		run.Env = env
		b, err := run.CombinedOutput()
		if err != nil {
			t.Errorf("run --boot %s: %v\n%s", boot, err, b)
		}
	}
	if fileSum(t, disk) != before {
		t.Error("booting the disk changed disk.raw")
	}
	// What run refuses, before any VM starts.
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--boot", "disk", "--node", "m1"}, "--node and --append need --boot kernel"},
		{[]string{"--boot", "floppy"}, `--boot "floppy": want kernel, disk, iso or iso-bios`},
	} {
		var stdout, stderr strings.Builder
		code := run(append([]string{"run", "media", "-o", out}, tc.args...), &stdout, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("run %q: exit %d, stderr %q, want 1 and %q", tc.args, code, stderr.String(), tc.msg)
		}
	}
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}
