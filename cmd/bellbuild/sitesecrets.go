package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/secrets"
)

// Where a site's secret values may go: a node's own configuration — a
// disk's config volume written for it (config write, config image),
// `apply --config SITE` on a machine with an identity, and what the
// enrolment endpoint serves an approved node over mutual TLS
// (nodeConfigs). Never into an image, a manifest, a log line, an error,
// or anything served over plain HTTP or TFTP: those carry the public
// configuration (profiles.Site.RenderNode), whose references say what is
// withheld.

// registerIdentity adds --identity FILE (repeatable), the age identity
// that decrypts the site's secrets.
func registerIdentity(fs *flag.FlagSet, files *[]string, what string) {
	fs.Var((*listFlag)(files), "identity", what+": an age identity `FILE` that decrypts the site's secrets (repeatable; default $"+secrets.IdentityEnv+")")
}

// optionalIdentity loads the --identity files, else $BELLBUILD_AGE_IDENTITY's,
// and is nil when neither names one.
func optionalIdentity(files []string) (*secrets.Identity, error) {
	if len(files) == 0 && os.Getenv(secrets.IdentityEnv) == "" {
		return nil, nil
	}
	return loadIdentity(files)
}

// warnPending says, as a warning, which secret values of n stay withheld
// for want of an identity: the applier holds their items until a
// configuration with them comes.
func warnPending(n *nodeconf.Node) {
	var names []string
	for _, r := range n.Secrets {
		if r.Withheld {
			names = append(names, r.Name)
		}
	}
	if len(names) > 0 {
		slog.Warn("no identity to decrypt the site's secrets (--identity FILE or $"+secrets.IdentityEnv+"): their values stay pending, and the applier holds what needs them",
			"node", n.Node, "secrets", strings.Join(names, ","))
	}
}

// checkIdentity makes sure id decrypts every secret the site refers to:
// what serve needs before it starts handing out resolved configurations.
// Its error names each secret that fails, and why (never a value).
func checkIdentity(site *profiles.Site, id *secrets.Identity) error {
	res := site.Resolver(id)
	var errs []error
	for _, name := range site.SecretNames() {
		if _, err := res.Lookup(name); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("the identity cannot decrypt the site's secrets: %w", errors.Join(errs...))
	}
	return nil
}

// nodeConfigs gives each node of a site its own configuration: rendered
// with its secret values through res, with the certificates of the site's
// PKI (never a key: a node makes its own). It is what the enrolment
// endpoint serves an approved node over mutual TLS (pxe/enrol's Configs),
// and nowhere else.
type nodeConfigs struct {
	site    *profiles.Site
	res     secrets.Resolver
	private string // the site's private directory flag (certify)
}

// NodeConfig returns node's resolved configuration, written by
// nodeconf.Encode as JSON. An unknown node wraps profiles.ErrNotFound; a
// secret res cannot decrypt is an error.
func (c *nodeConfigs) NodeConfig(ctx context.Context, node string) ([]byte, error) {
	n, err := c.site.RenderNodeSecrets(node, c.res)
	if err != nil {
		return nil, err
	}
	if n.Withheld() {
		return nil, fmt.Errorf("node %s: its secrets cannot be resolved without an identity (serve --identity FILE)", node)
	}
	if err := certify(ctx, c.site, c.private, []*nodeconf.Node{n}, publicOnly, true); err != nil {
		return nil, err
	}
	return nodeconf.Marshal(n, nodeconf.JSON)
}

// serveConfigs loads serve's identity (--identity, else
// $BELLBUILD_AGE_IDENTITY) and checks, before anything is opened, that it
// decrypts every secret the site refers to. Without an identity it is nil:
// nodes get their public configurations only, and a site with secrets is
// told so.
func serveConfigs(site *profiles.Site, identities []string, private string) (*nodeConfigs, error) {
	id, err := optionalIdentity(identities)
	if err != nil {
		return nil, fmt.Errorf("--identity: %w", err)
	}
	if id == nil {
		if names := site.SecretNames(); len(names) > 0 {
			slog.Warn("no identity (--identity FILE or $"+secrets.IdentityEnv+"): the nodes get their public configurations only, their secrets stay pending",
				"secrets", strings.Join(names, ","))
		}
		return nil, nil
	}
	if err := checkIdentity(site, id); err != nil {
		return nil, fmt.Errorf("serve refuses to start: %w", err)
	}
	return &nodeConfigs{site: site, res: site.Resolver(id), private: private}, nil
}
