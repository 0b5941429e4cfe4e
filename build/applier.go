package build

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/bellbuild/bellbuild/images/arch"
)

// ErrNoApplier means no bellbuild for an image's architecture was given
// and none could be built.
var ErrNoApplier = errors.New("no applier for this architecture")

// modulePath is the Go module whose cmd/bellbuild is the applier.
const modulePath = "github.com/bellbuild/bellbuild"

// applierFor returns the static bellbuild to embed in an image of
// architecture a, in this order: Options.Appliers[a] (--applier-arm64),
// Options.Applier when a is the running architecture ($BELLBUILD_BIN,
// else this binary), $BELLBUILD_BIN_ARM64 (for arm64), and else bellbuild
// cross-built from the source checkout (crossBuild). Whichever it is, it
// must be a static ELF executable for a.
func (b *baker) applierFor(ctx context.Context, a, profile string) (string, error) {
	p := b.opts.Appliers[a]
	how := "--applier-" + a
	if p == "" && native(a) {
		p, how = b.opts.Applier, "--applier"
	}
	if env := "BELLBUILD_BIN_" + strings.ToUpper(a); p == "" && os.Getenv(env) != "" {
		p, how = os.Getenv(env), "$"+env
	}
	if p == "" {
		var err error
		if p, err = b.crossBuild(ctx, a); err != nil {
			return "", err
		}
		how = "cross-built"
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("applier (%s): %w", how, err)
	}
	got, err := arch.ELFFile(real)
	if err != nil {
		return "", fmt.Errorf("applier (%s): %w", how, err)
	}
	if got != a {
		return "", wrongArch("applier", real+" ("+how+")", got, a, profile)
	}
	if err := checkStatic(real); err != nil {
		return "", fmt.Errorf("applier (%s): %w (build it with CGO_ENABLED=0, e.g. make build)", how, err)
	}
	return real, nil
}

// crossBuild builds bellbuild for architecture a from the source checkout
// ($BELLBUILD_SRC, else the go.mod of this module found from the working
// directory up) — static (CGO_ENABLED=0), -trimpath, stripped, as `make
// build` builds the native one — into the cache, named by its content.
// Go's build cache makes a rebuild of unchanged sources a link step.
func (b *baker) crossBuild(ctx context.Context, a string) (string, error) {
	src, err := sourceDir()
	if err != nil {
		return "", fmt.Errorf("applier for %s: %w: pass --applier-%s PATH (a bellbuild built with GOARCH=%s CGO_ENABLED=0), or run from a bellbuild source checkout with Go installed (%v)", a, ErrNoApplier, a, a, err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("applier for %s: %w: no go command to cross-build it (pass --applier-%s PATH)", a, ErrNoApplier, a)
	}
	dir := filepath.Join(b.opts.CacheDir, "appliers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".build-"+a+"-")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	b.log.Info("applier: cross-building bellbuild", "arch", a, "source", src)
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags", "-s -w", "-o", tmp.Name(), "./cmd/bellbuild")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+a, "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("applier for %s: go build in %s: %w\n%s", a, src, err, tail(string(out), 20))
	}
	sum, err := fileSHA256(tmp.Name())
	if err != nil {
		return "", err
	}
	final := filepath.Join(dir, "bellbuild-"+a+"-"+sum[:16])
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return "", err
	}
	if err := syncPath(tmp.Name()); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", err
	}
	return final, nil
}

// sourceDir finds bellbuild's source: $BELLBUILD_SRC, else the first
// directory from the working directory up whose go.mod declares the module.
func sourceDir() (string, error) {
	if d := os.Getenv("BELLBUILD_SRC"); d != "" {
		if !isModuleRoot(d) {
			return "", fmt.Errorf("$BELLBUILD_SRC %s has no go.mod of %s", d, modulePath)
		}
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if isModuleRoot(d) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of %s in %s or above (set $BELLBUILD_SRC)", modulePath, wd)
		}
	}
}

func isModuleRoot(d string) bool {
	f, err := os.Open(filepath.Join(d, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(m), `"`) == modulePath
		}
	}
	return false
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
