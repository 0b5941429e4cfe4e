package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/pxe"
	"github.com/bellbuild/bellbuild/pxe/enrol"
)

// enrolment sets up serve's enrolment endpoint in cfg: the site's PKI
// (from the private directory), serve's certificate for its address, and
// the state in STATE. A site without a PKI serves no endpoint (a
// warning says how to make one); --https-addr off serves none either.
// configs resolves an approved node's secrets (nil without serve's
// identity: nodes get their public configurations).
func (o serveFlags) enrolment(ctx context.Context, site *profiles.Site, configs *nodeConfigs, cfg *pxe.Config) error {
	if o.httpsAddr == "off" {
		return nil
	}
	ep, err := newEnrolEndpoint(ctx, site, o.site.dir, o.private, o.state, cfg.ServerIP, configs,
		enrol.Options{Log: cfg.Log})
	if errors.Is(err, errNoPKI) {
		level := slog.LevelWarn
		if o.site.dir == "" {
			level = slog.LevelInfo // the embedded demo site
		}
		slog.Log(ctx, level, "no enrolment endpoint: nodes cannot enrol", "why", err.Error())
		return nil
	}
	if err != nil {
		return err
	}
	cfg.Enrol, cfg.EnrolTLS, cfg.EnrolRoot, cfg.HTTPSAddr = &ep.cfg, ep.tls, ep.root, o.httpsAddr
	return nil
}
