package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/sitediff"
	"github.com/bellbuild/bellbuild/profiles/siterev"
)

func init() {
	register(&command{
		name:    "diff",
		summary: "what a change of the site does to its machines: configurations, images, services",
		usage:   "[-C SITE] [--env ENV] [-o text|json] FROM [TO]",
		help: `diff compares two versions of a site and prints what going from FROM to TO
changes on the machines of environment ENV:

  - per node, each value of its configuration that changes, by path, old →
    new (a secret — a password hash, a secret of the store — is said to
    change, never shown), and the nodes added and removed;
  - the profiles whose images must be baked again, and why: a setting of
    the image (stage, kernel, cmdline, outputs, persist) or the
    configurations the image carries (bundle);
  - the service instances that move, and the secrets of the store that
    change.

FROM and TO are git revisions of the site's repository (a commit, a
branch, a tag, HEAD~1), read through git itself without touching the work
tree or the index, or directories (other copies of the site). TO defaults
to the site as it is in its work tree (-C SITE). With a branch per
environment, 'bellbuild diff -C site --env prod prod staging' shows what
merging staging into prod would change on prod's machines.

Exit status: 0 nothing changes, 1 something does (for CI gates), 2 an
error (a site's problems are printed one per line, as validate prints
them).

Example:
  bellbuild diff -C site HEAD
  bellbuild diff -C site --env prod prod staging -o json
  bellbuild diff ../site.old ../site.new`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o diffFlags
			fs.StringVar(&o.dir, "C", "", "site `DIR`: its git repository holds the revisions, and it is TO by default")
			registerEnv(fs, &o.env)
			fs.StringVar(&o.format, "o", "text", "output `FORMAT`: text or json")
			return func(ctx context.Context, args []string) error {
				args, err := positional(fs, args)
				if err != nil {
					return err
				}
				o.args = args
				err = runDiff(ctx, o, os.Stdout, os.Stderr)
				var ee exitError
				if err != nil && !errors.As(err, &ee) {
					fmt.Fprintf(os.Stderr, "bellbuild diff: %v\n", err)
					return exitError{2}
				}
				return err
			}
		},
	})
}

type diffFlags struct {
	dir, env, format string
	args             []string
}

func runDiff(ctx context.Context, o diffFlags, stdout, stderr io.Writer) error {
	// 1. Check the flags.
	if o.format != "text" && o.format != "json" {
		return fmt.Errorf("-o %q: want text or json", o.format)
	}
	if len(o.args) < 1 || len(o.args) > 2 {
		return errors.New("want FROM [TO]: two git revisions of the site, or two directories (see 'bellbuild help diff')")
	}
	if len(o.args) == 1 {
		if o.dir == "" {
			return errors.New("TO is the site's work tree by default: give -C SITE (or TO)")
		}
		o.args = append(o.args, o.dir)
	}
	envFrom := o.dir
	if envFrom == "" {
		envFrom = o.args[1]
	}
	env := chooseEnv(envFrom, o.env)

	// 2. Load both versions, at once.
	var sides [2]sitediff.Side
	var errs [2]error
	var cleanups [2]func()
	var wg sync.WaitGroup
	for i, arg := range o.args {
		wg.Go(func() {
			s, dir, cleanup, err := loadVersion(ctx, o.dir, arg, env)
			sides[i], errs[i] = sitediff.Side{Site: s, Dir: dir}, err
			cleanups[i] = cleanup
		})
	}
	wg.Wait()
	defer cleanups[0]()
	defer cleanups[1]()
	for _, err := range errs {
		if err != nil {
			return siteErrors(stderr, err)
		}
	}

	// 3. Compare and print.
	r, err := sitediff.Compare(sides[0], sides[1])
	if err != nil {
		return siteErrors(stderr, err)
	}
	if o.format == "json" {
		err = encodeJSON(stdout, r)
	} else {
		err = r.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	if !r.Empty() {
		return exitError{1}
	}
	return nil
}

// loadVersion loads one side of a diff: a directory (another copy of the
// site), else a git revision of the repository of the site in dir, whose
// files are kept in a temporary directory until cleanup.
func loadVersion(ctx context.Context, dir, arg, env string) (s *profiles.Site, files string, cleanup func(), err error) {
	cleanup = func() {}
	if fi, err := os.Stat(arg); err == nil && fi.IsDir() {
		s, err := profiles.LoadEnv(arg, env)
		return s, arg, cleanup, err
	}
	if dir == "" {
		return nil, "", cleanup, fmt.Errorf("%s: not a directory, and a git revision needs -C SITE", arg)
	}
	s, tmp, err := siterev.Checkout(ctx, dir, arg, env)
	if tmp != "" {
		cleanup = func() { os.RemoveAll(tmp) }
	}
	return s, tmp, cleanup, err
}
