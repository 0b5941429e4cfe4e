package enrol

import (
	"context"
	"crypto/x509"
	"net/http"
	"regexp"

	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
)

// credRE is a credential's name (the site checks the same, and more).
var credRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// Renew signs a new host certificate for the key node enrolled with (rec
// is its record, the caller authorized the request): a renewal keeps the
// key; a new key needs an operator.
func (g *Registry) Renew(ctx context.Context, rec *Record, csrPEM string) (*wire.Status, error) {
	_, fp, err := g.csr(csrPEM, rec.Node)
	if err != nil {
		return nil, err
	}
	st := &wire.Status{Node: rec.Node, Fingerprint: fp}
	if fp != rec.Key {
		r := refuse(http.StatusForbidden, "key-mismatch", "a renewal keeps the key node %s enrolled with (%s), not %s: a new key needs an operator's approval", rec.Node, wire.Short(rec.Key), fp)
		g.opts.Counters.refused(r.Reason)
		return g.refusedStatus(st, r), r
	}
	rec, err = g.signHost(ctx, rec.Node, fp, csrPEM)
	if err != nil {
		return nil, err
	}
	if rec.Key != fp || rec.Cert == "" {
		r := refuse(http.StatusForbidden, "key-mismatch", "node %s's key changed while its certificate was signed", rec.Node)
		return g.refusedStatus(st, r), r
	}
	g.opts.Log.Info("enrol: host certificate renewed", "node", rec.Node, "serial", rec.CertSerial)
	st.State, st.Cert = wire.StateApproved, rec.Cert
	return st, nil
}

// SignServices signs the credential certificates req asks for, for the
// authorized node of rec, and records their serials. Every request is
// checked before any is signed: one bad request refuses them all.
func (g *Registry) SignServices(ctx context.Context, rec *Record, req wire.SignRequest) ([]wire.IssuedCert, error) {
	if len(req.Requests) == 0 {
		return nil, refuse(http.StatusBadRequest, "malformed", "no certificate requested")
	}
	if len(req.Requests) > wire.MaxSignRequests {
		return nil, refuse(http.StatusRequestEntityTooLarge, "too-large", "%d certificates requested at once: at most %d", len(req.Requests), wire.MaxSignRequests)
	}
	csrs := make([]*x509.CertificateRequest, len(req.Requests))
	seen := map[string]bool{}
	for i, c := range req.Requests {
		if !credRE.MatchString(c.Credential) {
			return nil, refuse(http.StatusBadRequest, "malformed", "credential %q: not a credential name", short(c.Credential))
		}
		if c.Side != wire.SideClient && c.Side != wire.SideServer {
			return nil, refuse(http.StatusBadRequest, "malformed", "credential %s: side %q: want client or server", c.Credential, short(c.Side))
		}
		if seen[c.Credential+"/"+c.Side] {
			return nil, refuse(http.StatusBadRequest, "malformed", "credential %s/%s asked for twice", c.Credential, c.Side)
		}
		seen[c.Credential+"/"+c.Side] = true
		var err error
		if csrs[i], _, err = g.csr(c.CSR, ""); err != nil {
			r := err.(*Refusal)
			r.Message = c.Credential + "/" + c.Side + ": " + r.Message
			return nil, r
		}
	}
	out := make([]wire.IssuedCert, len(req.Requests))
	certs := make([]Cert, len(req.Requests))
	for i, c := range req.Requests {
		cert, err := g.ca.SignService(ctx, rec.Node, c.Credential, c.Side, csrs[i])
		if err != nil {
			return nil, g.caError(err)
		}
		g.opts.Counters.issued("service")
		certs[i] = cert
		out[i] = wire.IssuedCert{Credential: c.Credential, Side: c.Side, Cert: string(cert.PEM)}
	}
	now := g.opts.Now()
	_, err := g.update(ctx, rec.Node, func(r *Record) error {
		for i, c := range req.Requests {
			r.addIssued(certs[i].Serial, c.Credential+"/"+c.Side, now)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	g.opts.Log.Info("enrol: service certificates issued", "node", rec.Node, "count", len(out))
	return out, nil
}
