package testtool

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/testvm"
)

// BootTimeout is a generous bound for one boot under TCG on a shared,
// two-core machine (a boot normally takes 6–15 s).
const BootTimeout = 180 * time.Second

// SkipVM skips t when VMs should not or cannot run: under -short, or
// without qemu-system-x86_64 (a failure under BELLBUILD_REQUIRE_TOOLS=1).
func SkipVM(t testing.TB) {
	t.Helper()
	SkipVMArch(t, testvm.AMD64)
}

// SkipVMArch is SkipVM for VMs of architecture arch: arm64 needs
// qemu-system-aarch64 (package qemu-system-arm) and its UEFI firmware,
// AAVMF (package qemu-efi-aarch64).
func SkipVMArch(t testing.TB, arch string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a QEMU VM: skipped under -short")
	}
	emu, pkg := testvm.Emulator(arch), "qemu-system-x86"
	if arch == testvm.ARM64 {
		pkg = "qemu-system-arm"
	}
	if _, err := exec.LookPath(emu); err != nil {
		Skipf(t, "VM test: %s not found in PATH (Debian package %s)", emu, pkg)
	}
	if arch == testvm.ARM64 {
		for _, f := range []string{testvm.AAVMF, testvm.AAVMFVars} {
			Stat(t, f, "qemu-efi-aarch64")
		}
	}
}

// VM is a VM owned by a test: it is killed when the test ends, and its
// console is written to the test log when the test fails.
type VM struct {
	*testvm.VM
	t testing.TB
}

// NewVM boots c for t (after SkipVM), with the console also logged to a file in
// t's temporary directory unless c.LogFile is set.
func NewVM(t testing.TB, c testvm.Config) *VM {
	t.Helper()
	SkipVMArch(t, c.Arch)
	if c.LogFile == "" {
		c.LogFile = filepath.Join(t.TempDir(), "console.log")
	}
	vm, err := testvm.Start(context.Background(), c)
	if err != nil {
		t.Fatalf("starting VM: %v", err)
	}
	t.Cleanup(func() {
		vm.Close()
		if t.Failed() {
			t.Logf("VM console (%s):\n%s", c.LogFile, tail(vm.Console(), 150))
		}
	})
	return &VM{VM: vm, t: t}
}

// Wait is WaitFor with BootTimeout that fails the test on error.
func (v *VM) Wait(re string) []string {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), BootTimeout)
	defer cancel()
	m, err := v.WaitFor(ctx, regexp.MustCompile(re))
	if err != nil {
		v.t.Fatalf("VM: %v", err)
	}
	return m
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
