package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// dayTwoEnrol is apply's enrolment on a root where the boot enrolled (or
// tried to enrol) the node with serve: ROOT/var/lib/bellbuild/enrol holds
// the endpoint and the node's key. Each run asks once (no wait): until the
// key is approved it applies what it loaded, printing the pending line;
// once approved it renews what is due, fetches the whole configuration
// and the CRL and applies that. A root without an enrolment gets nil.
func dayTwoEnrol(root string, console io.Writer) func(context.Context, *nodeconf.Node) (*nodeconf.Node, string) {
	dir := filepath.Join(root, enrol.Dir)
	ep, err := enrol.ReadEndpoint(dir)
	if err != nil {
		return nil
	}
	return func(ctx context.Context, node *nodeconf.Node) (*nodeconf.Node, string) {
		if node.Node != ep.Node {
			return node, ""
		}
		if node.Conf.X509 != nil && node.Conf.X509.CA != "" {
			ep.CA = node.Conf.X509.CA
		}
		c, err := enrol.New(enrol.Options{Endpoint: ep, Dir: dir, Console: console})
		if err != nil {
			fmt.Fprintf(console, "bellbuild apply: enrolment: %v\n", err)
			return node, "error"
		}
		res, err := c.Converge(ctx, 0)
		if err != nil {
			fmt.Fprintf(console, "bellbuild apply: enrolment: %v\n", err)
		}
		if res.Node != nil {
			return res.Node, res.State
		}
		if res.State == "approved" {
			// serve is out of reach: the credentials kept here still
			// go in (a certificate is asked for only when one is due).
			if _, err := c.Credentials(ctx, node); err != nil {
				fmt.Fprintf(console, "bellbuild apply: enrolment: %v\n", err)
			}
		}
		return node, res.State
	}
}
