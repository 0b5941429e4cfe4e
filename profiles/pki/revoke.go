package pki

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
)

// Reasons are the CRL reason codes a revocation may give (RFC 5280).
var Reasons = map[string]int{
	"unspecified":          0,
	"keyCompromise":        1,
	"affiliationChanged":   3,
	"superseded":           4,
	"cessationOfOperation": 5,
	"privilegeWithdrawn":   9,
}

// ParseReason reads a reason in any case, with or without - and _
// ("key-compromise", "keyCompromise"); "" is unspecified.
func ParseReason(s string) (string, error) {
	if s == "" {
		return "unspecified", nil
	}
	norm := strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s))
	for name := range Reasons {
		if strings.ToLower(name) == norm {
			return name, nil
		}
	}
	names := make([]string, 0, len(Reasons))
	for n := range Reasons {
		names = append(names, n)
	}
	sort.Strings(names)
	return "", fmt.Errorf("reason %q: want one of %s", s, strings.Join(names, ", "))
}

// Selector chooses what to revoke: exactly one field is set.
type Selector struct {
	// Serial is one certificate's serial (hex).
	Serial string
	// Node is every unexpired certificate of a node (host and services).
	Node string
	// Service is every unexpired certificate of a credential, on every node.
	Service string
}

// Revoke revokes what sel chooses, with reason (see Reasons):
//  1. find the certificates (not the CAs'); none is ErrNotFound, while
//     certificates already revoked are skipped;
//  2. record the revocations in the log;
//  3. publish the CRL of each CA concerned.
//
// It returns the serials revoked now.
func (s *Store) Revoke(ctx context.Context, sel Selector, reason string) ([]string, error) {
	reason, err := ParseReason(reason)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, f := range []string{sel.Serial, sel.Node, sel.Service} {
		if f != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("revoke: give exactly one of a serial, a node or a service")
	}
	if sel.Serial != "" {
		if sel.Serial, err = ParseSerial(sel.Serial); err != nil {
			return nil, err
		}
	}
	now := s.opts.Now()
	// 1. Find.
	s.mu.Lock()
	var recs []record
	matched := 0
	pick := func(e *entry) {
		matched++
		if _, done := s.st.revoked[e.rec.Serial]; !done {
			recs = append(recs, record{Op: "revoke", Time: now, Serial: e.rec.Serial, CA: e.rec.CA, Reason: reason})
		}
	}
	switch {
	case sel.Serial != "":
		e, ok := s.st.serials[sel.Serial]
		switch {
		case !ok:
		case e.rec.Op == "ca":
			s.mu.Unlock()
			return nil, fmt.Errorf("serial %s is the %s CA's certificate: revoke leaf certificates only", sel.Serial, e.rec.CA)
		default:
			pick(e)
		}
	default:
		for _, e := range s.st.leaves {
			if (sel.Node != "" && e.rec.Node == sel.Node) || (sel.Service != "" && e.rec.Service == sel.Service) {
				c, err := e.parsed()
				if err != nil {
					s.mu.Unlock()
					return nil, err
				}
				if now.Before(c.NotAfter) {
					pick(e)
				}
			}
		}
	}
	if matched == 0 {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrNotFound, sel)
	}
	// 2. Record.
	if len(recs) > 0 {
		if err := s.log.commit(recs, s.st.apply, nil); err != nil {
			s.mu.Unlock()
			return nil, err
		}
	}
	s.mu.Unlock()
	var serials []string
	kinds := map[Kind]bool{}
	for _, r := range recs {
		serials = append(serials, r.Serial)
		kinds[r.CA] = true
		s.opts.Log.Info("pki: revoked", "serial", r.Serial, "ca", r.CA, "reason", reason)
	}
	// 3. Publish.
	var cas []Kind
	for _, k := range SubCAs {
		if kinds[k] {
			cas = append(cas, k)
		}
	}
	return serials, s.PublishCRLs(ctx, cas...)
}

func (sel Selector) String() string {
	switch {
	case sel.Serial != "":
		return "serial " + sel.Serial
	case sel.Node != "":
		return "node " + sel.Node
	}
	return "service " + sel.Service
}

// makeCRL is the PEM of CA c's CRL number n listing revoked, current
// from now until next.
func makeCRL(c *x509.Certificate, key crypto.Signer, n int64, revoked []record, now, next time.Time) ([]byte, error) {
	t := &x509.RevocationList{
		Number:     big.NewInt(n),
		ThisUpdate: now,
		NextUpdate: next,
	}
	for _, r := range revoked {
		serial, _ := new(big.Int).SetString(r.Serial, 16)
		t.RevokedCertificateEntries = append(t.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: serial, RevocationTime: r.Time, ReasonCode: Reasons[r.Reason],
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, t, c, key)
	if err != nil {
		return nil, fmt.Errorf("%s: CRL: %w", c.Subject.CommonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// PublishCRLs writes a new CRL for each of the sub-CAs kinds (all three
// when none is named) to SITE/pki/KIND.crl.pem, atomically, listing every
// certificate the log says the CA revoked. The CRL numbers are recorded
// in the log first, so a number is never used twice.
func (s *Store) PublishCRLs(ctx context.Context, kinds ...Kind) error {
	if len(kinds) == 0 {
		kinds = SubCAs
	}
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var recs []record
	for _, k := range kinds {
		if _, err := s.usable(k, now); err != nil {
			return err
		}
		recs = append(recs, record{Op: "crl", Time: now, CA: k})
	}
	err := s.log.commit(recs, s.st.apply, func() error {
		for i := range recs {
			recs[i].Number = s.st.crl[recs[i].CA] + 1
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := makeCRL(s.cas[r.CA].Cert, s.cas[r.CA].key, r.Number, s.revokedBy(r.CA), now, now.Add(s.opts.CRLValidity))
		if err != nil {
			return err
		}
		if err := writeFile(s.crlPath(r.CA), data, 0o644); err != nil {
			return err
		}
		s.opts.Log.Info("pki: CRL published", "ca", r.CA, "number", r.Number, "file", s.crlPath(r.CA))
	}
	return nil
}

// revokedBy lists the revocations of CA k's certificates, by serial.
func (s *Store) revokedBy(k Kind) []record {
	var out []record
	for _, r := range s.st.revoked {
		if r.CA == k {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b record) int { return strings.Compare(a.Serial, b.Serial) })
	return out
}

// RenewResult is what Renew did.
type RenewResult struct {
	// Certs are the certificates issued anew.
	Certs []*Issued
	// CRLs are the CAs whose CRL was republished.
	CRLs []Kind
}

// Renew re-issues every host and service certificate that is its slot's
// newest, not revoked, and due (within the renewal window, or expired):
// same names, usage and public key, a new serial and the current leaf
// validity, so the node's key stays. (User certificates are re-issued with IssueUser.) It
// also republishes each CRL in the last third of its validity.
func (s *Store) Renew(ctx context.Context) (RenewResult, error) {
	now := s.opts.Now()
	var res RenewResult
	var reqs []Request
	s.mu.Lock()
	slots := make([]string, 0, len(s.st.slots))
	for slot := range s.st.slots {
		slots = append(slots, slot)
	}
	sort.Strings(slots)
	for _, slot := range slots {
		e := s.st.latest(slot)
		if e.rec.CA == Users {
			continue
		}
		if _, revoked := s.st.revoked[e.rec.Serial]; revoked {
			continue
		}
		c, err := e.parsed()
		if err != nil {
			s.mu.Unlock()
			return res, err
		}
		if now.Before(s.renewAt(c)) {
			continue
		}
		r := Request{CA: e.rec.CA, Slot: slot, Node: e.rec.Node, Service: e.rec.Service,
			CommonName: c.Subject.CommonName, DNSNames: c.DNSNames, Mode: modeOf(c), PublicKey: c.PublicKey}
		for _, ip := range c.IPAddresses {
			a, _ := netip.AddrFromSlice(ip)
			r.IPs = append(r.IPs, a.Unmap())
		}
		reqs = append(reqs, r)
	}
	s.mu.Unlock()
	if len(reqs) > 0 {
		var err error
		if res.Certs, err = s.Issue(ctx, reqs...); err != nil {
			return res, err
		}
	}
	for _, k := range SubCAs {
		due, err := s.crlDue(k, now)
		if err != nil {
			return res, err
		}
		if due {
			res.CRLs = append(res.CRLs, k)
		}
	}
	if len(res.CRLs) > 0 {
		if err := s.PublishCRLs(ctx, res.CRLs...); err != nil {
			return res, err
		}
	}
	return res, nil
}

// crlDue reports whether CA k's CRL file is missing, unreadable or in
// the last third of its validity.
func (s *Store) crlDue(k Kind, now time.Time) (bool, error) {
	data, err := os.ReadFile(s.crlPath(k))
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return true, nil
	}
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		return true, nil
	}
	left := crl.NextUpdate.Sub(crl.ThisUpdate) / 3
	return !now.Before(crl.NextUpdate.Add(-left)), nil
}
