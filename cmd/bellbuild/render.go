package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/secrets"
)

func init() {
	register(&command{
		name:    "render",
		summary: "print a node's effective configuration (and where each value came from)",
		usage:   "[-C SITE [--env ENV] | --values FILE] (--node NAME | --profile P [--label k=v ...] [--host H]) [-o yaml|json] [--explain] [--show-secrets --identity FILE]",
		help: `render prints the configuration the applier will enforce on one machine:
{node, profile, profiles (the inheritance chain), labels, services, facts,
containers, conf}. The conf is the profile chain merged parent first, then
the Divingbell overrides in conf.overrides, then every matching label
override along the chain, then the services SITE/services.yaml places on
the node, then matching host overrides, then the node's own conf
(docs/config.md). facts holds enable_SERVICE for every service of the
site.

--node renders an inventory entry. --profile renders a machine that is not
in the inventory, with the labels and host name given. With --values, the
profile is "divingbell" unless --profile says otherwise.

-o json (or yaml) writes exactly what 'bellbuild apply --config' reads
back: the document ends with a checksum of its content, and apply refuses
a file whose checksum is missing or wrong (cut short, or changed by hand).
--explain prints instead one line per effective value: its path, its value
and the FILE:LINE:COL that set it, after one line per service saying why
it is or is not on the node.

A secret value — a "!secret NAME" of the site, or a field that is secret
whatever its form (a password hash, a file others cannot read or with
secret: true, a debconf password, a private key) — is printed as
<secret NAME> (<secret PATH> for one written inline), and --explain names
the line that referred to it; the document's "secrets" list says which
values are secret and that they are withheld. --show-secrets prints the
values themselves, those of the store decrypted with the identity given
by --identity FILE (or $BELLBUILD_AGE_IDENTITY): the output is then that
node's own configuration, secrets included (what 'bellbuild config write'
puts on its volume).

Example:
  bellbuild render --node demo-2
  bellbuild render -C examples/fleet --profile k8s-worker --label rack=r1 --explain
  bellbuild render --values values.yaml --host superhost -o json > node.json
  bellbuild render -C site --node web-1 --show-secrets --identity ~/.config/bellbuild/alice.key`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o renderFlags
			o.site.register(fs)
			fs.StringVar(&o.node, "node", "", "inventory node `NAME`")
			fs.StringVar(&o.profile, "profile", "", "profile `P` to render without an inventory entry")
			fs.StringVar(&o.host, "host", "", "host name `H` for host overrides (with --profile)")
			fs.Var((*labelFlag)(&o.labels), "label", "label `k=v` for label overrides (repeatable, with --profile)")
			fs.StringVar(&o.format, "o", "yaml", "output `FORMAT`: yaml or json")
			fs.BoolVar(&o.explain, "explain", false, "print each value with the file and line that set it")
			fs.BoolVar(&o.showSecrets, "show-secrets", false, "print secret values instead of <secret NAME> (the store's need --identity)")
			registerIdentity(fs, &o.identities, "--show-secrets")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unexpected arguments %q", args)
				}
				return runRender(o, os.Stdout, os.Stderr)
			}
		},
	})
}

type renderFlags struct {
	site                siteFlags
	node, profile, host string
	labels              map[string]string
	format              string
	explain             bool
	showSecrets         bool
	identities          []string
}

func runRender(o renderFlags, stdout, stderr io.Writer) error {
	// 1. Check the flags.
	if o.format != "yaml" && o.format != "json" {
		return fmt.Errorf("-o %q: want yaml or json", o.format)
	}
	if o.site.values != "" && o.profile == "" && o.node == "" {
		o.profile = "divingbell"
	}
	switch {
	case (o.node == "") == (o.profile == ""):
		return errors.New("give exactly one of --node and --profile")
	case o.node != "" && (o.host != "" || o.labels != nil):
		return errors.New("--label and --host go with --profile; a node has its own")
	}

	var id *secrets.Identity
	if o.showSecrets {
		var err error
		if id, err = optionalIdentity(o.identities); err != nil {
			return err
		}
	} else if len(o.identities) > 0 {
		return errors.New("--identity goes with --show-secrets")
	}

	// 2. Load the site.
	s, err := o.site.load()
	if err != nil {
		return printSiteErrors(stderr, err)
	}

	// 3. Render (public, or resolved with --show-secrets) or explain.
	resolved := func() (*nodeconf.Node, error) {
		var n *nodeconf.Node
		var err error
		if o.node != "" {
			n, err = s.RenderNodeSecrets(o.node, s.Resolver(id))
		} else {
			n, err = s.RenderProfileSecrets(o.profile, o.labels, o.host, s.Resolver(id))
		}
		if err == nil && n.Withheld() {
			err = fmt.Errorf("--show-secrets: the site's secrets need an identity that decrypts them: --identity FILE or $%s", secrets.IdentityEnv)
		}
		return n, err
	}
	if o.explain {
		var origins []profiles.Origin
		if o.node != "" {
			origins, err = s.ExplainNode(o.node)
		} else {
			origins, err = s.ExplainProfile(o.profile, o.labels, o.host)
		}
		if err != nil {
			return printSiteErrors(stderr, err)
		}
		var n *nodeconf.Node
		if o.showSecrets {
			if n, err = resolved(); err != nil {
				return printSiteErrors(stderr, err)
			}
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, or := range origins {
			if or.Secret && n != nil {
				if v, err := n.Field(or.Path); err == nil {
					or.Value = v
				}
			}
			v := explainValue(or.Value)
			if strings.HasPrefix(or.Path, "services.") || strings.HasPrefix(or.Path, "services[") {
				v = or.Value // why a service is placed: one line, never cut
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", or.Path, v, or.Pos)
		}
		return tw.Flush()
	}
	var n *nodeconf.Node
	switch {
	case o.showSecrets:
		n, err = resolved()
	case o.node != "":
		n, err = s.RenderNode(o.node)
	default:
		n, err = s.RenderProfile(o.profile, o.labels, o.host)
	}
	if err != nil {
		return printSiteErrors(stderr, err)
	}
	if !o.showSecrets {
		// <secret NAME> in place of each value.
		if n, err = n.Show(); err != nil {
			return err
		}
	}
	return nodeconf.Encode(stdout, n, nodeconf.Format(o.format))
}

// explainValue shows a value on one line: long or multi-line text is cut.
func explainValue(v string) string {
	line, _, multi := strings.Cut(v, "\n")
	if len(line) > 60 {
		line, multi = line[:57], true
	}
	if multi {
		return fmt.Sprintf("%q…", line)
	}
	return fmt.Sprintf("%q", line)
}
