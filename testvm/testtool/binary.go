package testtool

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the path of a static bellbuild binary for end-to-end tests:
// $BELLBUILD_BIN when set (the Makefile sets it to bin/bellbuild), else one
// built once per test process with CGO_ENABLED=0 into a temporary directory.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("BELLBUILD_BIN"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	binOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		top := filepath.Dir(filepath.Dir(filepath.Dir(file)))
		dir, err := os.MkdirTemp("", "bellbuild-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "bellbuild")
		cmd := exec.Command("go", "build", "-trimpath", "-o", binPath, "./cmd/bellbuild")
		cmd.Dir = top
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = &buildError{out: string(out), err: err}
		}
	})
	if binErr != nil {
		t.Fatalf("building bellbuild: %v", binErr)
	}
	return binPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

var (
	crossMu   sync.Mutex
	crossBins = map[string]string{}
)

// BinaryArch is Binary for architecture arch: Binary itself for the
// running one, else $BELLBUILD_BIN_ARCH (BELLBUILD_BIN_ARM64) when set,
// else bellbuild cross-built once per test process (GOARCH=arch,
// CGO_ENABLED=0, -trimpath), as a bake would embed it.
func BinaryArch(t testing.TB, arch string) string {
	t.Helper()
	if arch == "" || arch == runtime.GOARCH {
		return Binary(t)
	}
	if p := os.Getenv("BELLBUILD_BIN_" + strings.ToUpper(arch)); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	crossMu.Lock()
	defer crossMu.Unlock()
	if p, ok := crossBins[arch]; ok {
		return p
	}
	if _, err := exec.LookPath("go"); err != nil {
		Skipf(t, "no go command to cross-build bellbuild for %s: %v", arch, err)
	}
	_, file, _, _ := runtime.Caller(0)
	top := filepath.Dir(filepath.Dir(filepath.Dir(file)))
	dir, err := os.MkdirTemp("", "bellbuild-bin-"+arch+"-")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "bellbuild")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", p, "./cmd/bellbuild")
	cmd.Dir = top
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cross-building bellbuild for %s: %v\n%s", arch, err, out)
	}
	crossBins[arch] = p
	return p
}
