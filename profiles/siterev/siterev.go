// Package siterev reads a site as it was at a git revision, through git
// itself and without touching the work tree or the index: `git archive` of
// the site's directory at that commit, unpacked into a temporary directory
// (regular files, directories and symbolic links only, each file at most
// profiles.MaxFileSize) and loaded from there.
package siterev

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/profiles"
)

// maxTotal bounds what one revision may unpack (256 MiB).
const maxTotal = 256 << 20

// ErrNotGit is returned (wrapped) when the site is not in a git work tree.
var ErrNotGit = errors.New("not in a git work tree")

// Load loads the site in directory dir as it was at revision rev (a
// commit, branch, tag or any other name git accepts: HEAD~1, v1.2). The
// site's errors, if any, are a profiles.ErrorList naming the files as
// "REV:PATH" relative to the site.
func Load(ctx context.Context, dir, rev string) (*profiles.Site, error) {
	return LoadEnv(ctx, dir, rev, "")
}

// LoadEnv is Load for environment env of a site with environments
// (profiles.LoadEnv).
func LoadEnv(ctx context.Context, dir, rev, env string) (*profiles.Site, error) {
	s, tmp, err := Checkout(ctx, dir, rev, env)
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	return s, err
}

// Checkout is LoadEnv that keeps the files: it exports the site at rev
// into a new temporary directory, tmp, and loads it from there. The
// caller removes tmp when it is done with the files (tmp is "" when none
// was made).
func Checkout(ctx context.Context, dir, rev, env string) (s *profiles.Site, tmp string, err error) {
	tmp, err = os.MkdirTemp("", "bellbuild-site-")
	if err != nil {
		return nil, "", err
	}
	if err := Export(ctx, dir, rev, tmp); err != nil {
		return nil, tmp, err
	}
	s, err = profiles.LoadEnv(tmp, env)
	var list profiles.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			if rel, ok := strings.CutPrefix(e.Pos.File, tmp+string(os.PathSeparator)); ok {
				e.Pos.File = rev + ":" + rel
			} else if e.Pos.File == tmp {
				e.Pos.File = rev + ":"
			}
			e.Msg = strings.ReplaceAll(e.Msg, tmp+string(os.PathSeparator), rev+":")
		}
	}
	return s, tmp, err
}

// Export writes the files of the site directory dir as they were at
// revision rev into the existing, empty directory out.
func Export(ctx context.Context, dir, rev, out string) error {
	// 1. Where the site is in its repository.
	top, err := git(ctx, dir, nil, "rev-parse", "--show-toplevel")
	if err != nil {
		return fmt.Errorf("%s: %w (%v)", dir, ErrNotGit, err)
	}
	prefix, err := git(ctx, dir, nil, "rev-parse", "--show-prefix")
	if err != nil {
		return fmt.Errorf("%s: %w (%v)", dir, ErrNotGit, err)
	}
	// 2. The commit (a name that starts with "-" is not an option).
	if strings.HasPrefix(rev, "-") || rev == "" {
		return fmt.Errorf("revision %q: not a revision", rev)
	}
	commit, err := git(ctx, dir, nil, "rev-parse", "--verify", "--quiet", "--end-of-options", rev+"^{commit}")
	if err != nil {
		return fmt.Errorf("revision %q: not a commit of the repository at %s", rev, top)
	}
	// 3. The site's tree at that commit, as a tar stream, unpacked.
	tree := commit + ":" + strings.TrimSuffix(prefix, "/")
	if prefix == "" {
		tree = commit + "^{tree}"
	}
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "git", "-C", top, "archive", "--format=tar", tree)
	cmd.Stdout, cmd.Stderr = pw, &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("git archive: %w", err)
	}
	done := make(chan error, 1)
	go func() { err := cmd.Wait(); pw.CloseWithError(err); done <- err }()
	uerr := unpack(pr, out)
	if uerr == nil {
		// The padding after the end-of-archive blocks.
		_, uerr = io.Copy(io.Discard, pr)
	}
	pr.CloseWithError(errors.New("unpacked")) // git stops if unpack gave up early
	werr := <-done
	switch {
	case uerr != nil && (werr == nil || !errors.Is(uerr, werr)):
		return fmt.Errorf("revision %s: %w", rev, uerr)
	case werr != nil:
		return fmt.Errorf("revision %s: git archive %s: %s", rev, tree, firstLine(stderr.String(), werr))
	}
	return nil
}

// Describe returns the git revision of the site in directory dir: the
// commit of its work tree's HEAD and, when the site's files there differ
// from it (changed, added, deleted or untracked, not ignored), those
// files relative to the site, sorted. It reads through git without
// taking git's optional locks (GIT_OPTIONAL_LOCKS=0: `git status` does
// not refresh the index). A directory outside any work tree is ErrNotGit.
func Describe(ctx context.Context, dir string) (*profiles.Revision, error) {
	prefix, err := git(ctx, dir, nil, "rev-parse", "--show-prefix")
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%v)", dir, ErrNotGit, err)
	}
	commit, err := git(ctx, dir, nil, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
	if err != nil {
		return nil, fmt.Errorf("%s: the repository has no commit yet", dir)
	}
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", "--", ".")
	cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git status: %s", firstLine(stderr.String(), err))
	}
	rev := &profiles.Revision{Commit: commit}
	// Each entry is "XY PATH\0", the path from the repository's top.
	for _, ent := range strings.Split(string(out), "\x00") {
		if len(ent) < 4 {
			continue
		}
		p, ok := strings.CutPrefix(ent[3:], prefix)
		if !ok {
			continue
		}
		rev.Changed = append(rev.Changed, p)
	}
	sort.Strings(rev.Changed)
	rev.Dirty = len(rev.Changed) > 0
	return rev, nil
}

// git runs git in dir and returns its output's first line.
func git(ctx context.Context, dir string, stdin io.Reader, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return "", errors.New(firstLine(stderr.String(), err))
	}
	return strings.TrimRight(string(b), "\n"), nil
}

func firstLine(s string, err error) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	if line == "" {
		return err.Error()
	}
	return line
}

// unpack writes a tar stream into out through an os.Root: directories,
// regular files up to profiles.MaxFileSize (bigger ones are skipped: no
// site file is that big, and a stage tarball is not read by Load) and
// symbolic links (Load refuses those that leave the site).
func unpack(r io.Reader, out string) error {
	root, err := os.OpenRoot(out)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	total := int64(0)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if name == "." || name == "pax_global_header" && h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if !fs.ValidPath(name) {
			return fmt.Errorf("archive entry %q: not a path inside the site", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if h.Size > profiles.MaxFileSize {
				continue
			}
			if total += h.Size; total > maxTotal {
				return fmt.Errorf("the site's files at this revision exceed %d MiB", maxTotal>>20)
			}
			if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
				return err
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, io.LimitReader(tr, h.Size))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
				return err
			}
			if err := root.Symlink(h.Linkname, name); err != nil {
				return err
			}
		}
	}
}
