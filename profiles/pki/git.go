package pki

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ExposedInGit reports whether the private directory dir lies inside a
// git work tree that does not ignore it, where a `git add -A` would
// commit the site's keys: it returns that work tree's top directory, or
// "" when dir is outside every work tree, ignored, or git is not
// installed. (`validate` turns it into a warning.)
func ExposedInGit(dir string) (string, error) {
	git, err := exec.LookPath("git")
	if err != nil {
		return "", nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	// The nearest directory that exists: the private directory may not
	// be made yet.
	anc, rest := abs, ""
	for {
		if fi, err := os.Stat(anc); err == nil && fi.IsDir() {
			break
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(anc)
		if parent == anc {
			return "", nil
		}
		rest = filepath.Join(filepath.Base(anc), rest)
		anc = parent
	}
	if anc, err = filepath.EvalSymlinks(anc); err != nil {
		return "", err
	}
	out, err := exec.Command(git, "-C", anc, "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return "", nil // not inside a work tree
	}
	top := strings.TrimSpace(string(out))
	rel, err := filepath.Rel(top, filepath.Join(anc, rest))
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", nil
	}
	// A file inside the directory: a pattern for the directory (private/)
	// covers it whether or not the directory exists yet.
	probe := filepath.Join(rel, "key")
	var stderr bytes.Buffer
	cmd := exec.Command(git, "-C", top, "check-ignore", "-q", "--", probe)
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return "", nil // ignored
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return top, nil
	}
	return "", fmt.Errorf("git check-ignore in %s: %v: %s", top, err, strings.TrimSpace(stderr.String()))
}
