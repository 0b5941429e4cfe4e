package main

import (
	"context"
	"errors"
	"flag"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/siterev"
)

// envVar names the environment of a site with environments when --env
// does not.
const envVar = "BELLBUILD_ENV"

// registerEnv adds --env NAME.
func registerEnv(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "env", "", "the site's environment `NAME` (SITE/environments/NAME.yaml; default $"+envVar+")")
}

// chooseEnv is the environment to load the site in dir for: --env, else
// $BELLBUILD_ENV when the site has environments (a site without them
// ignores the variable, so that one exported for another site does not
// stop it; --env for it is an error the load reports).
func chooseEnv(dir, flagValue string) string {
	if flagValue != "" || dir == "" {
		return flagValue
	}
	if _, err := os.Stat(filepath.Join(dir, profiles.EnvironmentsDir)); errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	return os.Getenv(envVar)
}

// envDir is DIR/ENV for a site loaded for environment ENV, else DIR: where
// its bakes (OUT) and serve's state (STATE) go, apart per environment.
func envDir(dir string, s *profiles.Site) string {
	if s == nil || s.Environment() == "" {
		return dir
	}
	return filepath.Join(dir, s.Environment())
}

// siteRevision describes the git revision of the site in dir for a
// manifest (nil when it is not in a git work tree), and warns when the
// work tree differs from its commit: what is baked is then in no commit.
func siteRevision(ctx context.Context, dir string) *profiles.Revision {
	if dir == "" {
		return nil
	}
	rev, err := siterev.Describe(ctx, dir)
	if err != nil {
		if !errors.Is(err, siterev.ErrNotGit) {
			slog.Warn("the site's git revision is unknown", "site", dir, "err", err)
		}
		return nil
	}
	if rev.Dirty {
		slog.Warn("baking from a dirty work tree: the site differs from its commit (the manifest says so)",
			"site", dir, "commit", rev.Commit, "changed", strings.Join(rev.Changed, " "))
	}
	return rev
}
