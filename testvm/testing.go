package testvm

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// BootTimeout is a generous bound for one boot under TCG on a shared,
// two-core machine (a boot normally takes 6–15 s).
const BootTimeout = 180 * time.Second

// Skip skips t, loudly, when VMs cannot or should not run: under -short, or
// without qemu-system-x86_64.
func Skip(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a QEMU VM: skipped under -short")
	}
	if _, err := exec.LookPath(QEMU); err != nil {
		t.Skipf("SKIPPING VM TEST: %s not found in PATH (apt-get install qemu-system-x86)", QEMU)
	}
}

// T is a VM owned by a test: it is killed when the test ends, and its
// console is written to the test log when the test fails.
type T struct {
	*VM
	t testing.TB
}

// New boots c for t (after Skip), with the console also logged to a file in
// t's temporary directory unless c.LogFile is set.
func New(t testing.TB, c Config) *T {
	t.Helper()
	Skip(t)
	if c.LogFile == "" {
		c.LogFile = filepath.Join(t.TempDir(), "console.log")
	}
	vm, err := Start(context.Background(), c)
	if err != nil {
		t.Fatalf("starting VM: %v", err)
	}
	t.Cleanup(func() {
		vm.Close()
		if t.Failed() {
			t.Logf("VM console (%s):\n%s", c.LogFile, tail(vm.Console(), 150))
		}
	})
	return &T{VM: vm, t: t}
}

// Wait is WaitFor with BootTimeout that fails the test on error.
func (v *T) Wait(re string) []string {
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
