package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/secrets"
)

func init() {
	register(&command{
		name:    "apply",
		summary: "enforce a node's host configuration on a root (first boot and day 2)",
		usage:   "--config SRC --root DIR [--node NAME | --hostname H [--profile P] --label k=v ...] [--plan | --watch [--interval D] [--resync D]] [--offline | --live] [--upgrade]",
		help: `apply enforces one node's configuration — sysctl, limits, perm, mounts,
ethtool, uamlite, apt, files, units, exec, apparmor, in that order — on a
root filesystem, idempotently: a second run with the same configuration
changes nothing, and an item removed from the configuration is reverted to
what was there before bellbuild first touched it. Everything is validated
before anything changes.

SRC is a site directory, a rendered node file (bellbuild render -o json
or -o yaml), an image's bundle, or a Divingbell values file (its conf:,
overrides included). A rendered node or bundle ends with the checksum
bellbuild wrote: a file cut short, changed by hand, empty or without a
checksum is refused (exit 1) and nothing is applied. The node is chosen by --node, else by bellbuild.node= on the
kernel command line, else by a MAC of this machine, else by the hostname;
--hostname (with --label) describes another machine instead of this one.
With no inventory match, a bundle gives its default, and a site renders
--profile (a values file: its one profile) for that hostname and labels.
From a site directory with its PKI, the node's certificates and private
keys are issued from the private directory (--private, $BELLBUILD_PRIVATE,
else SITE/private; without it they stay pending). From a site (or a
values file, whose secrets are DIR/secrets beside it), the node's secret
values are decrypted with --identity FILE (or $BELLBUILD_AGE_IDENTITY);
without an identity they stay pending, with a warning.

A configuration that withholds secret values (an image's bundle, the
node.json serve sends, a site without an identity) is applied without
the items that need them — a file, a user, a script, a sysctl key, a
unit, a package — which are neither applied nor reverted: held, counted
as pending=N in the summary, until a configuration with their values
comes.

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
ConfigMap changes. Only a complete, stable SRC is applied: the same content
on two looks in a row and, for a rendered file, a checksum that verifies;
a file caught half-written is waited for (and reported once if it stays
so). A failed run is reported and retried after --interval, then twice as
long each time (at most 5m), or at once when SRC changes.
--resync D also applies again D after the last run with no change, which
undoes drift (a sysctl set by hand, a managed file's mode changed).

On a machine booted from a slot of an installed disk (--root /), an
apply without errors then upgrades: when the configuration (serve's
node.json for this machine, else SRC) names another image than the one
running and the node's upgrade: is auto, or with --upgrade, the new root
image, kernel and initramfs are fetched from serve, checked against the
image's manifest and written into the other slot with a boot entry of
three tries; reboot: now reboots into it, reboot: manual leaves it
waiting (the summary says reboot=pending). reboot: window CRON reboots
only in a minute CRON names (UTC): at once when the run is in one, else
the summary adds reboot_at=TIME, its next minute, and that reboot is
arranged: --watch runs again then, a one-shot run where systemd runs
sets a timer (/run/systemd/system/bellbuild-reboot.timer), and
elsewhere the next run in the window reboots. An image that failed to
come up before is not written again. See docs/boot-media.md.

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
			registerIdentity(fs, &o.identities, "from a site")
			registerEnv(fs, &o.env)
			fs.BoolVar(&o.upgrade, "upgrade", false, "on an installed disk, write the image the configuration names into the other slot whatever its upgrade: says")
			watch := fs.Bool("watch", false, "apply again whenever SRC's content changes, until stopped")
			var w firstboot.WatchOptions
			fs.DurationVar(&w.Interval, "interval", firstboot.DefaultWatchInterval, "how often --watch looks at SRC")
			fs.DurationVar(&w.Resync, "resync", 0, "with --watch, also apply again after `D` without a change, to undo drift (0: never)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unexpected arguments %q", args)
				}
				o.trigger = "apply"
				if *watch {
					o.trigger = "watch"
				}
				ro, err := o.runOptions(ctx)
				if err != nil {
					return err
				}
				if *watch {
					if o.plan {
						return errors.New("--watch applies; it cannot be combined with --plan")
					}
					w.Run = ro
					return exitStatus(firstboot.Watch(ctx, w))
				}
				if w.Resync != 0 {
					return errors.New("--resync needs --watch")
				}
				return exitStatus(firstboot.Run(ctx, ro))
			}
		},
	})
}

type applyFlags struct {
	config, root, node, hostname, profile string
	private, env                          string
	identities                            []string
	labels                                map[string]string
	plan, offline, live, upgrade          bool
	// trigger names the run in its report ("apply", "watch").
	trigger string
}

// runOptions checks the flags and turns them into firstboot's options.
func (o applyFlags) runOptions(ctx context.Context) (firstboot.RunOptions, error) {
	if o.config == "" || o.root == "" {
		return firstboot.RunOptions{}, errors.New("--config and --root are required (--root / applies to this machine)")
	}
	if o.offline && o.live {
		return firstboot.RunOptions{}, errors.New("--offline and --live contradict each other")
	}
	// The machine to choose a node for: the one --node or --hostname
	// describes, else this one.
	m := firstboot.Machine{Node: o.node, Hostname: o.hostname}
	if o.node == "" && o.hostname == "" {
		m = firstboot.ThisMachine()
	}
	return firstboot.RunOptions{
		Source: firstboot.Source{Path: o.config, Machine: m, OpenSite: func(path string) (firstboot.Inventory, error) { return o.openSite(ctx, path) }},
		Options: firstboot.Options{RootDir: o.root, Live: (o.root == "/" || o.live) && !o.offline,
			Plan: o.plan, Log: slog.Default()},
		Stdout: os.Stdout, Stderr: os.Stderr,
		Enrol:   dayTwoEnrol(o.root, os.Stderr),
		Report:  dayTwoReport(o.root, o.trigger, os.Stderr),
		Upgrade: dayTwoUpgrade(o.root, o.upgrade, o.trigger == "watch", os.Stderr),
	}, nil
}

// exitStatus turns firstboot.Run's outcome into apply's exit status: 2
// for pending changes, 1 for errors it has printed.
func exitStatus(err error) error {
	switch {
	case errors.Is(err, firstboot.ErrPending):
		return exitError{2}
	case errors.Is(err, firstboot.ErrFailed):
		return exitError{1}
	}
	return err
}

// openSite opens a site directory or a Divingbell values file for
// firstboot, which never reads the site model itself.
func (o applyFlags) openSite(ctx context.Context, path string) (firstboot.Inventory, error) {
	id, err := optionalIdentity(o.identities)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
		site, err := profiles.LoadValues(path)
		if err != nil {
			return nil, err
		}
		return siteInventory{site: site, profile: o.profile, labels: o.labels, secrets: site.Resolver(id)}, nil
	}
	site, err := profiles.LoadEnv(path, chooseEnv(path, o.env))
	if err != nil {
		return nil, err
	}
	// A site directory with its private directory at hand: the node's
	// certificates and keys are issued as it is rendered.
	return siteInventory{site: site, profile: o.profile, labels: o.labels, secrets: site.Resolver(id), certify: func(n *nodeconf.Node) error {
		return certify(ctx, site, o.private, []*nodeconf.Node{n}, withKeys, true)
	}}, nil
}

// siteInventory is a site as a firstboot.Inventory: its inventory's nodes
// by name and MAC, and for any other machine --profile (or the site's only
// profile) rendered with --label and the machine's host name.
type siteInventory struct {
	site    *profiles.Site
	profile string
	labels  map[string]string
	// certify issues a rendered node's certificates (nil: none, as for a
	// values file, which has no PKI).
	certify func(*nodeconf.Node) error
	// secrets resolves the node's secret values (its identity may be
	// nil: they stay pending).
	secrets secrets.Resolver
}

// rendered certifies n when the inventory can, and warns about the
// secret values it lacks.
func (s siteInventory) rendered(n *nodeconf.Node, err error) (*nodeconf.Node, error) {
	if err != nil {
		return n, err
	}
	warnPending(n)
	if s.certify == nil {
		return n, nil
	}
	return n, s.certify(n)
}

func (s siteInventory) Node(name string) (*nodeconf.Node, error) {
	if !slices.ContainsFunc(s.site.Nodes(), func(n profiles.NodeInfo) bool { return n.Name == name }) {
		return nil, fmt.Errorf("%w in the site's inventory", firstboot.ErrNoSuchNode)
	}
	return s.rendered(s.site.RenderNodeSecrets(name, s.secrets))
}

func (s siteInventory) NodeByMAC(mac net.HardwareAddr) string {
	n, _ := s.site.NodeByMAC(mac)
	return n.Name
}

func (s siteInventory) Default(hostname string) (*nodeconf.Node, error) {
	profile := s.profile
	if names := s.site.ProfileNames(); profile == "" && len(names) == 1 {
		profile = names[0]
	}
	if profile == "" {
		return nil, fmt.Errorf("no inventory node matches this machine (hostname %q): name one with --node, or a profile with --profile", hostname)
	}
	return s.rendered(s.site.RenderProfileSecrets(profile, s.labels, hostname, s.secrets))
}
