package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/pxe"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/fleet"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
)

// enrolment sets up serve's enrolment endpoint in cfg: the site's PKI
// (from the private directory), serve's certificate for its address, and
// the state in STATE. A site without a PKI serves no endpoint (a
// warning says how to make one); --https-addr off serves none either.
// configs resolves an approved node's secrets (nil without serve's
// identity: nodes get their public configurations).
func (o serveFlags) enrolment(ctx context.Context, site *profiles.Site, configs *nodeConfigs, st pxestate.Store, cfg *pxe.Config) error {
	if o.httpsAddr == "off" {
		return nil
	}
	ep, err := newEnrolEndpointOn(ctx, site, o.private, st, cfg.ServerIP, configs,
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
	// The status page beside the endpoint, for the site's users (their
	// certificates are asked for too) or the --status-auth token, and
	// the fleet's metrics.
	token := ""
	if o.statusAuth != "" {
		data, err := os.ReadFile(o.statusAuth)
		if err != nil {
			return fmt.Errorf("--status-auth: %w", err)
		}
		if token = strings.TrimSpace(string(data)); len(token) < 16 {
			return fmt.Errorf("--status-auth %s: a token of at least 16 characters", o.statusAuth)
		}
	}
	ep.tls.ClientCAs.AddCert(ep.users)
	pc := fleet.PageConfig{Inventory: &cachedWants{w: siteWants{site: site, artifacts: o.artifacts}},
		Recorder: fleet.NewRecorder(st, fleet.Options{}), Enrolments: registryEnrolments{ep.cfg.Registry},
		Users: ep.users, CRL: ep.cfg.CA.CRL, Token: token, Log: cfg.Log}
	cfg.Status = fleet.Page(pc)
	cfg.Collectors = append(cfg.Collectors, fleet.NewCollector(pc))
	return nil
}

// cachedWants renders the site's nodes once: serve's site does not
// change while it runs.
type cachedWants struct {
	w    siteWants
	once sync.Once
	out  []fleet.Want
	err  error
}

func (c *cachedWants) Wants(ctx context.Context) ([]fleet.Want, error) {
	c.once.Do(func() { c.out, c.err = c.w.Wants(ctx) })
	return c.out, c.err
}
