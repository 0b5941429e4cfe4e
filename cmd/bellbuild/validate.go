package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/pki"
)

func init() {
	register(&command{
		name:    "validate",
		summary: "check a site: every profile, override and node, all errors at once",
		usage:   "[-C SITE [--env ENV] | --values FILE]",
		help: `validate loads a site (SITE/profiles/*.yaml, SITE/nodes.yaml,
SITE/site.yaml and SITE/services.yaml) and checks it the way every other
command will read it: the files themselves (regular files inside the
site, at most 16 MiB, one YAML document each), YAML syntax, unknown keys
and wrong types, inheritance (unknown parents, cycles), the inventory
(names, MACs, profiles, fixed addresses: two nodes never share an "ip"
label, and when site.yaml declares the boot network each is one it can
give), the services (groups, counts, pins and denies: each is placed),
and each module's rules (crypt hashes, SSH key forms, exec policies and
intervals, ethtool on/off, octal modes, absolute paths, ...) on every node
and every profile as rendered.

It also checks the site's identity and credentials: domain and pki in
site.yaml, each node's fqdn and ips, each credential (a safe name, cert
modes client, server or both, extra_san DNS names, a domain to name
them), and under pki.name_constraints every name and address inside the
site's domain and subnets.

Secrets: a "!secret NAME" outside a conf, with a bad NAME, on a field that
is not text, or naming no SITE/secrets/NAME.age is an error at its line
(the values are not decrypted). A value that is secret whatever its form
(a user_crypt_passwd, a file with secret: true or a mode others cannot
read, a debconf password, a private key) written inline is accepted, and
warned about with the 'bellbuild secret set -C SITE NAME' command that
moves it into the store and the !secret NAME to write instead.

Every problem is printed on its own line as FILE:LINE:COL: FIELD: MESSAGE,
sorted. Warnings (FIELD: warning: MESSAGE) do not fail the site: short
host names left out under name constraints, secrets written inline, and
a private directory (--private, $BELLBUILD_PRIVATE, else SITE/private)
inside a git work tree that does not ignore it. Exit status: 0 when the
site has no error, 1 otherwise.

A site with environments (SITE/environments/NAME.yaml) is checked for
one of them, --env NAME (else $BELLBUILD_ENV): its inventory, its vars
in every file (${NAME}), and every environment's file; a machine that is
in two environments is a warning when both list it in shared_nodes, an
error otherwise.

Without -C the site embedded in bellbuild is checked. --values checks a
Divingbell values file instead (its conf: and conf.overrides).

Example:
  bellbuild validate -C examples/fleet
  bellbuild validate -C examples/fleet-envs --env prod
  bellbuild validate --values divingbell-values.yaml`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o siteFlags
			o.register(fs)
			var private string
			registerPrivate(fs, &private)
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unexpected arguments %q", args)
				}
				return runValidate(o, private, os.Stdout, os.Stderr)
			}
		},
	})
}

// labelFlag is a repeatable --label k=v flag collecting node labels; it
// stays nil until a label is given.
type labelFlag map[string]string

func (l *labelFlag) String() string {
	if l == nil || *l == nil {
		return ""
	}
	keys := make([]string, 0, len(*l))
	for k := range *l {
		keys = append(keys, k+"="+(*l)[k])
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

func (l *labelFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want k=v, got %q", s)
	}
	if *l == nil {
		*l = map[string]string{}
	}
	(*l)[k] = v
	return nil
}

// siteFlags choose the site a command reads, and its environment.
type siteFlags struct {
	dir, values, env string
}

func (o *siteFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.dir, "C", "", "site `DIR` (default: the embedded demo site)")
	fs.StringVar(&o.values, "values", "", "a Divingbell values `FILE`, read as a site with one profile named divingbell")
	registerEnv(fs, &o.env)
}

// load returns the site the flags name.
func (o siteFlags) load() (*profiles.Site, error) {
	switch {
	case o.dir != "" && o.values != "":
		return nil, errors.New("-C and --values contradict each other")
	case o.env != "" && o.dir == "":
		return nil, errors.New("--env needs -C SITE: only a site directory has environments")
	case o.values != "":
		return profiles.LoadValues(o.values)
	case o.dir != "":
		return profiles.LoadEnv(o.dir, chooseEnv(o.dir, o.env))
	}
	return profiles.Default(), nil
}

// printSiteErrors prints a site's problems one per line and turns them
// into exit status 1; other errors are returned as they are.
func printSiteErrors(w io.Writer, err error) error {
	var list profiles.ErrorList
	if !errors.As(err, &list) {
		return err
	}
	for _, e := range list {
		fmt.Fprintln(w, e)
	}
	return exitError{1}
}

func runValidate(o siteFlags, private string, stdout, stderr io.Writer) error {
	s, err := o.load()
	if err != nil {
		return printSiteErrors(stderr, err)
	}
	warnings := s.Warnings()
	if o.dir != "" {
		w, err := privateWarning(o.dir, private)
		if err != nil {
			return err
		}
		warnings = append(warnings, w...)
	}
	for _, w := range warnings {
		fmt.Fprintln(stderr, w)
	}
	if env := s.Environment(); env != "" {
		fmt.Fprintf(stdout, "ok: %d profiles, %d nodes (environment %s)\n", len(s.ProfileNames()), len(s.Nodes()), env)
		return nil
	}
	fmt.Fprintf(stdout, "ok: %d profiles, %d nodes\n", len(s.ProfileNames()), len(s.Nodes()))
	return nil
}

// privateWarning warns when the site's private directory — once there is
// one, or a PKI that needs one — lies in a git work tree that does not
// ignore it.
func privateWarning(site, private string) (profiles.ErrorList, error) {
	dir := privateDir(private, site)
	_, perr := os.Stat(dir)
	_, kerr := os.Stat(filepath.Join(site, "pki"))
	if perr != nil && kerr != nil {
		return nil, nil
	}
	top, err := pki.ExposedInGit(dir)
	if err != nil || top == "" {
		return nil, err
	}
	var l profiles.ErrorList
	l.Warn(profiles.Pos{File: dir}, "", "the private directory (the site's keys) is inside the git work tree %s and not ignored: add it to %s", top, filepath.Join(top, ".gitignore"))
	return l, nil
}
