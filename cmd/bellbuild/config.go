package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/bellbuild/bellbuild/images/confvol"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

func init() {
	register(&command{
		name:    "config",
		summary: "write a node's configuration volume (BELLCONF) for day 2",
		usage:   "image -o FILE | write TARGET   (--node NAME | --profile P) [-C SITE [--env ENV] | --values FILE] [--identity FILE]",
		help: `config renders one node's configuration (what 'bellbuild render -o json'
prints) and writes it as /bellbuild/node.json on a config volume: a FAT32
filesystem labelled BELLCONF. The applier reads it at every boot and
reruns when it changes, so a machine booted from an immutable disk is
reconfigured without rebuilding its image.

  config image -o FILE   writes a standalone config volume image
                         (--size BYTES, default: the smallest FAT32, 33 MiB).
  config write TARGET    TARGET is a disk image or block device made by
                         'bellbuild image' (outputs: [raw]): only its
                         "bellconf" partition is rewritten, every other
                         byte stays as baked. The volume must not be
                         mounted. TARGET may instead be a directory -- the
                         mounted volume on a running machine, normally
                         /run/bellbuild/config -- where node.json is
                         replaced atomically.

When the site has a PKI (bellbuild pki init), the node's host certificate
and its credentials' certificates are issued (or the current ones reused)
from the private directory (--private, $BELLBUILD_PRIVATE, else
SITE/private) and written with their PRIVATE KEYS: the volume is that
machine's own, like its disk. Keep it as you keep the machine.

It also holds the node's SECRET VALUES: those written inline (password
hashes, files others cannot read, ...) and those the site refers to as
"!secret NAME", decrypted with --identity FILE (or $BELLBUILD_AGE_IDENTITY).
Without an identity those stay pending (a warning says which): the
applier holds what needs them, and applies the rest.

SOURCE_DATE_EPOCH sets the files' time stamps (default 0: 1980-01-01 on
FAT), so the same configuration always gives the same bytes.

Example:
  bellbuild config write out/demo/disk.raw --node demo-2
  bellbuild config image -C examples/fleet --node rack1-07 -o rack1-07.conf.img
  bellbuild config write /run/bellbuild/config --node demo-2`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o configFlags
			o.site.register(fs)
			fs.StringVar(&o.node, "node", "", "inventory node `NAME`")
			fs.StringVar(&o.profile, "profile", "", "profile `P` to render without an inventory entry")
			fs.StringVar(&o.out, "o", "", "output `FILE` (config image)")
			fs.Int64Var(&o.size, "size", 0, "volume size in `BYTES` (config image; 0: smallest)")
			registerPrivate(fs, &o.private)
			registerIdentity(fs, &o.identities, "decrypt the node's secrets")
			return func(ctx context.Context, args []string) error {
				if len(args) == 0 {
					return errors.New("missing subcommand: image or write (see 'bellbuild help config')")
				}
				o.sub = args[0]
				// Flags may come before or after the subcommand and TARGET.
				rest := args[1:]
				for {
					if err := fs.Parse(rest); err != nil {
						return exitError{2}
					}
					if fs.NArg() == 0 {
						break
					}
					o.args = append(o.args, fs.Arg(0))
					rest = fs.Args()[1:]
				}
				return runConfig(ctx, o, os.Stderr)
			}
		},
	})
}

type configFlags struct {
	site          siteFlags
	node, profile string
	out, private  string
	size          int64
	sub           string
	args          []string
	identities    []string
}

func runConfig(ctx context.Context, o configFlags, stderr io.Writer) error {
	// 1. Check the flags.
	switch o.sub {
	case "image":
		if o.out == "" || len(o.args) > 0 {
			return errors.New("config image: want -o FILE and no arguments")
		}
	case "write":
		if len(o.args) != 1 || o.out != "" || o.size != 0 {
			return errors.New("config write: want exactly one TARGET (a disk image, a block device or a mounted volume) and no -o/--size")
		}
	default:
		return fmt.Errorf("unknown subcommand %q: want image or write", o.sub)
	}
	if (o.node == "") == (o.profile == "") {
		return errors.New("give exactly one of --node and --profile")
	}
	epoch, err := configEpoch()
	if err != nil {
		return err
	}
	id, err := optionalIdentity(o.identities)
	if err != nil {
		return err
	}

	// 2. Render the node, its secrets with it: the volume is its own.
	s, err := o.site.load()
	if err != nil {
		return printSiteErrors(stderr, err)
	}
	var n *nodeconf.Node
	if o.node != "" {
		n, err = s.RenderNodeSecrets(o.node, s.Resolver(id))
	} else {
		n, err = s.RenderProfileSecrets(o.profile, nil, "", s.Resolver(id))
	}
	if err != nil {
		return printSiteErrors(stderr, err)
	}
	warnPending(n)
	if err := certify(ctx, s, o.private, []*nodeconf.Node{n}, withKeys, false); err != nil {
		return err
	}
	data, err := nodeconf.Marshal(n, nodeconf.JSON)
	if err != nil {
		return err
	}
	files := confvol.Tree(data, epoch)

	// 3. Write the volume.
	if o.sub == "image" {
		if err := confvol.WriteFile(o.out, files, o.size); err != nil {
			return err
		}
		slog.Info("config volume written", "file", o.out, "node", n.Node, "profile", n.Profile)
		return nil
	}
	target := o.args[0]
	if st, err := os.Stat(target); err == nil && st.IsDir() {
		if err := confvol.WriteDir(target, files); err != nil {
			return err
		}
		slog.Info("config written into mounted volume", "dir", target, "node", n.Node, "profile", n.Profile)
		return nil
	}
	if err := confvol.Rewrite(target, files); err != nil {
		return err
	}
	slog.Info("config partition rewritten", "disk", target, "node", n.Node, "profile", n.Profile)
	return nil
}

// configEpoch is SOURCE_DATE_EPOCH, or 0 when it is unset.
func configEpoch() (int64, error) {
	e, err := envSourceDate()
	if err != nil || e == nil {
		return 0, err
	}
	return *e, nil
}
