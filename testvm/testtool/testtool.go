// Package testtool is what bellbuild's tests need of the machine they run
// on: the tools, kernels and privileges an end-to-end test uses, a booted
// VM owned by a test, and the bellbuild binary. Only test files import it:
// it imports package testing, which must never reach the product binary
// (cmd/bellbuild's deps_test enforces both).
//
// A test whose tool is missing skips on a developer's machine. Under
// BELLBUILD_REQUIRE_TOOLS=1 (which .ci/run sets) the same test fails
// instead, so that CI can never pass with a cross-check quietly skipped.
// Skips for -short are not affected: they are the quick loop's choice.
package testtool

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// RequireEnv names the variable that turns every Skipf into a failure.
const RequireEnv = "BELLBUILD_REQUIRE_TOOLS"

// Required reports whether missing tools must fail tests rather than skip
// them ($BELLBUILD_REQUIRE_TOOLS is 1, true or yes).
func Required() bool {
	switch os.Getenv(RequireEnv) {
	case "1", "true", "yes":
		return true
	}
	return false
}

// Skipf skips t because something it needs is missing (a tool, a kernel,
// root); under BELLBUILD_REQUIRE_TOOLS=1 it fails t instead. The message
// should say what is missing and which Debian package provides it.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s=1: %s", RequireEnv, msg)
	}
	t.Skip("SKIP: " + msg)
}

// LookPath returns the path of the command name, or Skipf's naming pkg
// (the Debian package that provides it).
func LookPath(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skipf(t, "%s not installed (Debian package %s): %v", name, pkg, err)
	}
	return p
}

// Stat returns nil when path exists, or Skipf's naming pkg.
func Stat(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Skipf(t, "%v (Debian package %s)", err, pkg)
	}
}

// Root Skipf's unless the test runs as root; why says what needs it.
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skipf(t, "needs root: %s (make test runs as root)", why)
	}
}
