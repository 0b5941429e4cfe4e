package enrol

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"

	fwire "github.com/bellbuild/bellbuild/pxe/fleet/wire"
	"github.com/bellbuild/bellbuild/pxe/node"
)

// Reports keeps the applier's reports (package pxe/fleet's Recorder).
type Reports interface {
	// Record adds node's reports, oldest first, already checked.
	Record(ctx context.Context, node string, reps []fwire.Report, verified bool, from string) (fwire.Answer, error)
}

// reports takes a node's batch of reports (fwire.ReportsPath):
//
//  1. who sends: with a client certificate, it must be the node's own
//     (authorize: enrolled key, not revoked, not retired) and the reports
//     are verified; without one, the node must not be enrolled yet, and
//     the request must come from the address serve leased to one of the
//     node's MACs (Owners, Backend): the reports are unverified;
//  2. what: a batch of at most fwire.MaxBatch reports, each the node's
//     and within the protocol's bounds (else nothing is recorded);
//  3. recorded (Reports), answered with what was taken.
func (s *server) reports(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Reports == nil {
		return s.refused(refuse(http.StatusNotFound, "not-found", "this serve keeps no reports"))
	}
	nodeName := r.PathValue("node")
	if err := CheckNodeName(nodeName); err != nil {
		return s.refused(err)
	}
	// 1. Who.
	verified := r.TLS != nil && len(r.TLS.PeerCertificates) > 0
	if verified {
		if _, err := s.authorize(r); err != nil {
			return err
		}
	} else if err := s.unverified(r, nodeName); err != nil {
		return s.refused(err)
	}
	// 2. What.
	var b fwire.Batch
	if err := readJSON(w, r, fwire.MaxBody, &b); err != nil {
		return s.refused(err)
	}
	if len(b.Reports) == 0 || len(b.Reports) > fwire.MaxBatch {
		return s.refused(refuse(http.StatusBadRequest, "malformed", "a batch holds 1 to %d reports, not %d", fwire.MaxBatch, len(b.Reports)))
	}
	for i := range b.Reports {
		if err := b.Reports[i].Check(nodeName); err != nil {
			return s.refused(refuse(http.StatusBadRequest, "bad-report", "report %d: %v", i, err))
		}
	}
	// 3. Recorded.
	ans, err := s.cfg.Reports.Record(r.Context(), nodeName, b.Reports, verified, from(r))
	if err != nil {
		return err
	}
	s.cfg.Log.Debug("enrol: reports recorded", "node", nodeName, "accepted", ans.Accepted, "ignored", ans.Ignored, "verified", verified, "from", from(r))
	writeJSON(w, http.StatusOK, ans)
	return nil
}

// unverified lets a report without a certificate through only for a node
// that has not enrolled, from the address leased to one of its MACs.
func (s *server) unverified(r *http.Request, nodeName string) error {
	rec, err := s.cfg.Registry.Get(r.Context(), nodeName)
	if err != nil {
		return err
	}
	if rec.Key != "" {
		return refuse(http.StatusUnauthorized, "unauthenticated", "node %s is enrolled: its reports need its host certificate (mutual TLS)", nodeName)
	}
	if s.cfg.Owners == nil {
		return refuse(http.StatusForbidden, "not-leased", "serve has no leases: a report without a host certificate cannot be checked")
	}
	ip, err := netip.ParseAddr(from(r))
	if err != nil {
		return refuse(http.StatusForbidden, "not-leased", "no address to check")
	}
	mac, ok := s.cfg.Owners.MACFor(ip)
	if !ok {
		return refuse(http.StatusForbidden, "not-leased", "address %s has no lease: a report without a host certificate comes from the node's leased address", ip)
	}
	m, err := s.cfg.Backend.Lookup(r.Context(), net.HardwareAddr(mac))
	if errors.Is(err, node.ErrUnknown) || err == nil && m.Name != nodeName {
		return refuse(http.StatusForbidden, "not-leased", "address %s is leased to %s, which is not node %s", ip, mac, nodeName)
	}
	return err
}
