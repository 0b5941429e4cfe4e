package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/placement"
	"github.com/bellbuild/bellbuild/profiles/siterev"
)

func init() {
	register(&command{
		name:    "services",
		summary: "print where the site places each service (and what a change would move)",
		usage:   "[-C SITE [--env ENV]] [-o text|json] [--diff OLD]",
		help: `services prints the placement of SITE/services.yaml: for each service its
group, its instances and the nodes it is placed on (rendezvous hashing of
service and node: docs/config.md).

--diff OLD prints instead which instances would move going from OLD to
the site: OLD is another copy of the site (a directory), else a git
revision of the site's repository (HEAD, main~1, a tag), read with git
itself without touching the work tree or the index. Review an inventory
change before it is applied:

  bellbuild services -C site --diff HEAD

Exit status: 0 (with --diff: nothing moves), 1 with --diff when
something moves, 2 on an error (a site's problems are printed one per
line, as validate prints them).

Example:
  bellbuild services -C examples/fleet
  bellbuild services -C examples/fleet -o json
  bellbuild services -C site --diff ../site.old`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o servicesFlags
			fs.StringVar(&o.dir, "C", "", "site `DIR` (default: the embedded demo site)")
			fs.StringVar(&o.format, "o", "text", "output `FORMAT`: text or json")
			fs.StringVar(&o.diff, "diff", "", "compare with `OLD`: a directory, or a git revision of the site")
			registerEnv(fs, &o.env)
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unexpected arguments %q", args)
				}
				err := runServices(ctx, o, os.Stdout, os.Stderr)
				var ee exitError
				if err != nil && !errors.As(err, &ee) {
					fmt.Fprintf(os.Stderr, "bellbuild services: %v\n", err)
					return exitError{2}
				}
				return err
			}
		},
	})
}

type servicesFlags struct {
	dir, format, diff, env string
}

// serviceRow is one service in -o json.
type serviceRow struct {
	Service             string              `json:"service"`
	Group               string              `json:"group"`
	GroupSize           int                 `json:"group_size"`
	Instances           string              `json:"num_instances"`
	Spread              string              `json:"spread,omitempty"`
	User                string              `json:"user,omitempty"`
	Hosts               []string            `json:"hosts"`
	Credentials         []string            `json:"service_credentials,omitempty"`
	MonitoringEndpoints []profiles.Endpoint `json:"monitoring_endpoints,omitempty"`
	PublicEndpoints     []profiles.Endpoint `json:"public_endpoints,omitempty"`
}

// moveRow is one service in --diff -o json.
type moveRow struct {
	Service string   `json:"service"`
	Removed []string `json:"removed"`
	Added   []string `json:"added"`
	New     bool     `json:"new,omitempty"`
	Gone    bool     `json:"gone,omitempty"`
}

func runServices(ctx context.Context, o servicesFlags, stdout, stderr io.Writer) error {
	// 1. Check the flags and load the site (and OLD).
	if o.format != "text" && o.format != "json" {
		return fmt.Errorf("-o %q: want text or json", o.format)
	}
	if o.env != "" && o.dir == "" {
		return errors.New("--env needs -C SITE: only a site directory has environments")
	}
	env := chooseEnv(o.dir, o.env)
	cur, err := loadServicesSite(o.dir, env)
	if err != nil {
		return siteErrors(stderr, err)
	}
	if o.diff == "" {
		return printPlacement(cur, o.format, stdout)
	}
	var old *profiles.Site
	if fi, err := os.Stat(o.diff); err == nil && fi.IsDir() {
		old, err = profiles.LoadEnv(o.diff, env)
		if err != nil {
			return siteErrors(stderr, err)
		}
	} else {
		dir := o.dir
		if dir == "" {
			return fmt.Errorf("--diff %s: not a directory, and a git revision needs -C SITE", o.diff)
		}
		if old, err = siterev.LoadEnv(ctx, dir, o.diff, env); err != nil {
			return siteErrors(stderr, err)
		}
	}

	// 2. What moves.
	moves := placement.Diff(hostsOf(old), hostsOf(cur))
	if o.format == "json" {
		rows := []moveRow{}
		for _, m := range moves {
			rows = append(rows, moveRow{Service: m.Service, Removed: nonNil(m.Removed), Added: nonNil(m.Added), New: m.New, Gone: m.Gone})
		}
		if err := encodeJSON(stdout, rows); err != nil {
			return err
		}
	} else {
		printMoves(stdout, moves)
	}
	if len(moves) > 0 {
		return exitError{1}
	}
	return nil
}

func loadServicesSite(dir, env string) (*profiles.Site, error) {
	if dir == "" {
		return profiles.Default(), nil
	}
	return profiles.LoadEnv(dir, env)
}

// siteErrors prints a site's problems one per line (exit status 2).
func siteErrors(w io.Writer, err error) error {
	var list profiles.ErrorList
	if !errors.As(err, &list) {
		return err
	}
	printSiteErrors(w, err)
	return exitError{2}
}

func hostsOf(s *profiles.Site) map[string][]string {
	out := map[string][]string{}
	for _, svc := range s.Services() {
		out[svc.Name] = svc.Hosts
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func instancesText(n int) string {
	if n == profiles.AllInstances {
		return "all"
	}
	return strconv.Itoa(n)
}

func printPlacement(s *profiles.Site, format string, w io.Writer) error {
	svcs := s.Services()
	if format == "json" {
		rows := []serviceRow{}
		for _, svc := range svcs {
			rows = append(rows, serviceRow{
				Service: svc.Name, Group: svc.Group, GroupSize: svc.GroupSize, Instances: instancesText(svc.Instances),
				Spread: svc.Spread, User: svc.User, Hosts: nonNil(svc.Hosts), Credentials: svc.Credentials,
				MonitoringEndpoints: svc.MonitoringEndpoints, PublicEndpoints: svc.PublicEndpoints,
			})
		}
		return encodeJSON(w, rows)
	}
	if len(svcs) == 0 {
		_, err := fmt.Fprintln(w, "no services (SITE/services.yaml)")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tGROUP\tINSTANCES\tHOSTS")
	for _, svc := range svcs {
		group := svc.Group
		if group == "" {
			group = "(every node)"
		}
		placed := fmt.Sprintf("%d of %d", len(svc.Hosts), svc.GroupSize)
		if svc.Spread != "" {
			placed += " by " + svc.Spread
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", svc.Name, group, placed, strings.Join(svc.Hosts, " "))
	}
	return tw.Flush()
}

// printMoves prints one line per service that moves: "-HOST" for each
// host it leaves, "+HOST" for each it comes to, then a count.
func printMoves(w io.Writer, moves []placement.Move) {
	if len(moves) == 0 {
		fmt.Fprintln(w, "nothing moves")
		return
	}
	instances := 0
	for _, m := range moves {
		var parts []string
		for _, h := range m.Removed {
			parts = append(parts, "-"+h)
		}
		for _, h := range m.Added {
			parts = append(parts, "+"+h)
		}
		note := ""
		switch {
		case m.New:
			note = " (new service)"
		case m.Gone:
			note = " (service removed)"
		}
		fmt.Fprintf(w, "%s: %s%s\n", m.Service, strings.Join(parts, " "), note)
		instances += max(len(m.Removed), len(m.Added))
	}
	fmt.Fprintf(w, "%d services change, %d instances move, start or stop\n", len(moves), instances)
}

func encodeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
