package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

func init() {
	register(&command{
		name:    "apply",
		summary: "enforce a node's host configuration on a root (first boot and day 2)",
		usage:   "--config SRC --root DIR [--node NAME | --hostname H [--profile P] --label k=v ...] [--plan | --watch [--interval D] [--resync D]] [--offline | --live]",
		help: `apply enforces one node's configuration — sysctl, limits, perm, mounts,
ethtool, uamlite, apt, files, units, exec, apparmor, in that order — on a
root filesystem, idempotently: a second run with the same configuration
changes nothing, and an item removed from the configuration is reverted to
what was there before bellbuild first touched it. Everything is validated
before anything changes.

SRC is a site directory, a rendered node file (bellbuild render -o json),
an image's bundle, or a Divingbell values file (its conf:, overrides
included). The node is chosen by --node, else by bellbuild.node= on the
kernel command line, else by a MAC of this machine, else by the hostname;
--hostname (with --label) describes another machine instead of this one.
With no inventory match, a bundle gives its default, and a site renders
--profile (a values file: its one profile) for that hostname and labels.
From a site directory with its PKI, the node's certificates and private
keys are issued from the private directory (--private, $BELLBUILD_PRIVATE,
else SITE/private; without it they stay pending).

--root / is the live host: sysctl values, mounts, ethtool features and
AppArmor profiles are also applied to the running system. Any other root is
a mounted host root and gets persistent state only (files, units), unless
--live says its running kernel is this one (a DaemonSet with the host at
/host). --offline forces persistent state only.

State lives in ROOT/var/lib/bellbuild/: ledger.json (what bellbuild owns
and the originals it replaced), last-run.json (the report), lock.

--watch applies, then applies again whenever SRC's content changes (its
SHA-256, looked at every --interval), until stopped: the day-2 rerun on a
machine whose config volume is rewritten in place, or in a DaemonSet whose
ConfigMap changes. A failed run is reported and retried after --interval,
then twice as long each time (at most 5m), or at once when SRC changes.
--resync D also applies again D after the last run with no change, which
undoes drift (a sysctl set by hand, a managed file's mode changed).

Exit status: 0 converged, 1 error (all listed on stderr), 2 --plan found
pending changes. One summary line goes to stdout.

Examples:
  # what would change on a mounted host root, then do it
  bellbuild apply --config node.json --root /mnt/target --plan
  bellbuild apply --config node.json --root /mnt/target
  # day 2 on the machine itself, from the site, node chosen by MAC
  bellbuild apply --config /srv/site --root /
  # a Divingbell values file for a host with labels
  bellbuild apply --config values.yaml --root /host --live --hostname node7 --label compute_type=dpdk
  # rerun whenever the config volume changes
  bellbuild apply --config /run/bellbuild/config/bellbuild/node.json --root / --watch
  # a DaemonSet: the host at /host, its ConfigMap, hourly drift repair
  bellbuild apply --config /etc/bellbuild/config/node.json --root /host --live --watch --interval 10s --resync 1h`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o applyFlags
			fs.StringVar(&o.config, "config", "", "rendered node or bundle file (`SRC`)")
			fs.StringVar(&o.root, "root", "", "target root `DIR` (required; / is the live host)")
			fs.StringVar(&o.node, "node", "", "node `NAME` to apply (from a bundle)")
			fs.StringVar(&o.hostname, "hostname", "", "host name to select by, instead of this machine's")
			fs.StringVar(&o.profile, "profile", "", "profile `P` to render when no inventory node matches (a site or values file)")
			fs.Var((*labelFlag)(&o.labels), "label", "node label `k=v` (repeatable; for rendering a profile)")
			fs.BoolVar(&o.plan, "plan", false, "print what would change and exit 2 if anything would")
			fs.BoolVar(&o.offline, "offline", false, "write persistent state only; touch no running kernel or service")
			fs.BoolVar(&o.live, "live", false, "also apply to the running kernel when --root is not /")
			registerPrivate(fs, &o.private)
			watch := fs.Bool("watch", false, "apply again whenever SRC's content changes, until stopped")
			var w watchOptions
			fs.DurationVar(&w.Interval, "interval", defaultWatchInterval, "how often --watch looks at SRC")
			fs.DurationVar(&w.Resync, "resync", 0, "with --watch, also apply again after `D` without a change, to undo drift (0: never)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unexpected arguments %q", args)
				}
				if *watch {
					if o.plan {
						return errors.New("--watch applies; it cannot be combined with --plan")
					}
					return watchApply(ctx, o, w, os.Stdout, os.Stderr)
				}
				if w.Resync != 0 {
					return errors.New("--resync needs --watch")
				}
				return runApply(ctx, o, os.Stdout, os.Stderr)
			}
		},
	})
}

type applyFlags struct {
	config, root, node, hostname, profile string
	private                               string
	labels                                map[string]string
	plan, offline, live                   bool
}

// runApply loads the configuration, picks the node, and applies it.
func runApply(ctx context.Context, o applyFlags, stdout, stderr io.Writer) error {
	// 1. Options.
	if o.config == "" || o.root == "" {
		return errors.New("--config and --root are required (--root / applies to this machine)")
	}
	if o.offline && o.live {
		return errors.New("--offline and --live contradict each other")
	}
	live := (o.root == "/" || o.live) && !o.offline

	// 2. The node's configuration.
	node, err := loadNode(ctx, o)
	if err != nil {
		return err
	}

	// 3. Apply, report.
	rep, err := firstboot.Apply(ctx, firstboot.Options{RootDir: o.root, Live: live, Plan: o.plan, Log: slog.Default()}, node)
	if err != nil {
		printErrors(stderr, err)
		fmt.Fprintln(stdout, rep.Summary())
		return exitError{1}
	}
	if o.plan {
		fmt.Fprint(stdout, firstboot.PlanText(rep))
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(stderr, "bellbuild apply: %s\n", e)
	}
	fmt.Fprintln(stdout, rep.Summary())
	switch {
	case len(rep.Errors) > 0:
		return exitError{1}
	case o.plan && len(rep.Changes) > 0:
		return exitError{2}
	}
	return nil
}

// printErrors lists each of a joined error's errors on its own line.
func printErrors(w io.Writer, err error) {
	var j interface{ Unwrap() []error }
	if errors.As(err, &j) {
		for _, e := range j.Unwrap() {
			printErrors(w, e)
		}
		return
	}
	fmt.Fprintf(w, "bellbuild apply: %v\n", err)
}

// loadNode reads SRC and returns the node to apply.
func loadNode(ctx context.Context, o applyFlags) (*nodeconf.Node, error) {
	fi, err := os.Stat(o.config)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		site, err := profiles.Load(o.config)
		if err != nil {
			return nil, err
		}
		n, err := renderFor(site, o)
		if err != nil {
			return nil, err
		}
		// The private directory at hand: this machine's keys too.
		return n, certify(ctx, site, o.private, []*nodeconf.Node{n}, withKeys, true)
	}
	node, bundle, err := firstboot.ReadConfig(o.config)
	if errors.Is(err, firstboot.ErrNotRendered) {
		site, err := profiles.LoadValues(o.config)
		if err != nil {
			return nil, err
		}
		return renderFor(site, o)
	}
	if err != nil {
		return nil, err
	}
	if node != nil {
		if o.node != "" && node.Node != o.node {
			return nil, fmt.Errorf("%s is the configuration of node %q, not %q", o.config, node.Node, o.node)
		}
		return node, nil
	}
	n, how, err := firstboot.SelectNode(bundle, machine(o))
	if err != nil {
		return nil, err
	}
	slog.Info("node selected", "node", n.Node, "profile", n.Profile, "by", how)
	return n, nil
}

// machine describes the machine to select a node for: the one given by
// --node or --hostname, else this one.
func machine(o applyFlags) firstboot.Machine {
	if o.node != "" || o.hostname != "" {
		return firstboot.Machine{Node: o.node, Hostname: o.hostname}
	}
	return firstboot.ThisMachine()
}

// renderFor renders the node of a site (or Divingbell values file): by
// --node, else bellbuild.node= on the kernel command line, else a MAC of
// this machine in the inventory, else the hostname in the inventory, else
// --profile (or the site's only profile) with --label and the hostname.
func renderFor(site *profiles.Site, o applyFlags) (*nodeconf.Node, error) {
	m := machine(o)
	name, how := m.Node, "--node"
	if name == "" {
		name, how = firstboot.CmdlineNode(m.Cmdline), "cmdline"
	}
	if name == "" {
		for _, mac := range m.MACs {
			if n, ok := site.NodeByMAC(mac); ok {
				name, how = n.Name, "mac "+mac.String()
				break
			}
		}
	}
	if name == "" && m.Hostname != "" {
		for _, n := range site.Nodes() {
			if n.Name == m.Hostname {
				name, how = n.Name, "hostname"
			}
		}
	}
	if name != "" {
		slog.Info("node selected", "node", name, "by", how)
		return site.RenderNode(name)
	}
	profile := o.profile
	if names := site.ProfileNames(); profile == "" && len(names) == 1 {
		profile = names[0]
	}
	if profile == "" {
		return nil, fmt.Errorf("no inventory node matches this machine (hostname %q): name one with --node, or a profile with --profile", m.Hostname)
	}
	slog.Info("profile selected", "profile", profile, "hostname", m.Hostname, "labels", o.labels)
	return site.RenderProfile(profile, o.labels, m.Hostname)
}
