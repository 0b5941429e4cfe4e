package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/testvm"
)

// TestImageAndRun is `make demo` in a temporary directory: the real binary
// bakes the embedded demo profile, then `run --node demo-1 --expect` boots
// it and returns as soon as the applier's summary names the node.
func TestImageAndRun(t *testing.T) {
	testvm.Skip(t)
	if _, err := os.Stat("/vmlinuz"); err != nil {
		t.Skip("SKIPPING: no host kernel at /vmlinuz (apt-get install linux-image-amd64)")
	}
	bin := testvm.Binary(t)
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
