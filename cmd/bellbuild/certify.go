package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/pki"
)

// registerPrivate adds --private DIR, the site's private directory.
func registerPrivate(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "private", "", "the site's private `DIR` (default $BELLBUILD_PRIVATE, else SITE/private)")
}

// privateDir is the private directory of the site in dir: --private,
// else $BELLBUILD_PRIVATE, else SITE/private.
func privateDir(flagValue, dir string) string {
	switch {
	case flagValue != "":
		return flagValue
	case os.Getenv("BELLBUILD_PRIVATE") != "":
		return os.Getenv("BELLBUILD_PRIVATE")
	}
	return filepath.Join(dir, "private")
}

// Where certify puts the private keys.
const (
	publicOnly = false // artifacts for many machines, or served: the CA bundle only
	withKeys   = true  // one machine's own configuration: its keys too
)

// certify gives nodes the certificates their configuration describes
// (nodeconf.Node.Certificates), issued or reused from the site's PKI, in
// conf.x509, with their private keys (withKeys: one machine's own
// configuration, its config volume or a root applied from the site);
// publicOnly gives them the CA bundle and CRLs alone (a served or baked
// configuration: those machines enrol, and their keys never leave them). A site without
// a PKI (no SITE/pki) issues nothing: the credentials stay pending, and
// a warning says how to make one. Without its private directory a PKI
// cannot issue: an error, unless optional (apply from a site directory:
// the keys stay pending then too). A private directory others can read
// is always an error.
func certify(ctx context.Context, s *profiles.Site, private string, nodes []*nodeconf.Node, keys, optional bool) error {
	if !needsCertificates(nodes) {
		return nil
	}
	opts := s.PKIOptions()
	if opts.Site == "" {
		return nil
	}
	if _, err := os.Stat(filepath.Join(pki.PublicDir(opts), string(pki.Root)+".pem")); errors.Is(err, fs.ErrNotExist) {
		fix := fmt.Sprintf("bellbuild pki init -C %s --root-out DIR", opts.Site)
		if env := s.Environment(); env != "" {
			fix = fmt.Sprintf("bellbuild pki init -C %s --env %s --root-out DIR", opts.Site, env)
		}
		slog.Warn("the site has no PKI: its nodes' certificates and credentials stay pending",
			"site", opts.Site, "pki", pki.PublicDir(opts), "fix", fix)
		return nil
	}
	opts.Private = privateDir(private, opts.Site)
	if _, err := os.Stat(opts.Private); optional && errors.Is(err, fs.ErrNotExist) {
		slog.Warn("no private directory: the nodes' certificates and keys stay pending", "private", opts.Private)
		return nil
	}
	opts.Log = slog.Default()
	st, err := pki.Open(opts)
	if err != nil {
		return fmt.Errorf("issuing the nodes' certificates: %w", err)
	}
	defer st.Close()
	if !keys {
		// Served or baked for machines that enrol: the CA bundle and
		// CRLs, no certificate (the machine's own key gets its own).
		if err := st.Publish(nodes); err != nil {
			return fmt.Errorf("the nodes' CA bundle: %w", err)
		}
		return nil
	}
	if err := st.Certify(ctx, nodes, keys); err != nil {
		return fmt.Errorf("issuing the nodes' certificates: %w", err)
	}
	return nil
}

func needsCertificates(nodes []*nodeconf.Node) bool {
	for _, n := range nodes {
		if len(n.Certificates) > 0 {
			return true
		}
	}
	return false
}

// bundleNodes are the nodes of b to bake (only those named, when names
// are given), to certify in place.
func bundleNodes(b *nodeconf.Bundle, names []string) []*nodeconf.Node {
	var out []*nodeconf.Node
	for i := range b.Nodes {
		if len(names) == 0 || slices.Contains(names, b.Nodes[i].Node) {
			out = append(out, &b.Nodes[i])
		}
	}
	return out
}
