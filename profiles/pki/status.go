package pki

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/netip"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// State is where a certificate stands.
type State string

// States of a certificate.
const (
	Valid      State = "valid"
	Renew      State = "renew" // in its renewal window: Renew re-issues it
	Expired    State = "expired"
	Revoked    State = "revoked"
	Superseded State = "superseded" // a newer certificate took its slot
)

// Entry is one CA or issued certificate, as Status lists it.
type Entry struct {
	// CA is the issuing CA; for a CA's own certificate, the CA itself.
	CA Kind
	// IsCA marks a CA's certificate.
	IsCA bool
	// Slot, Node and Service say what a leaf is for.
	Slot, Node, Service string
	Subject             string
	Serial              string
	// SANs are the DNS names and IP addresses.
	SANs      []string
	NotBefore time.Time
	NotAfter  time.Time
	State     State
	// Reason and RevokedAt are set for a revoked certificate.
	Reason    string
	RevokedAt time.Time
}

// Status lists every CA (its current certificate) and every issued
// certificate, in the log's order, each with its state at Options.Now.
func (s *Store) Status() ([]Entry, error) {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Entry
	for _, k := range Kinds {
		c := s.cas[k].Cert
		e := entryOf(c)
		e.CA, e.IsCA, e.Serial = k, true, serialHex(c.SerialNumber)
		e.State = s.stateOf(c, now, false)
		out = append(out, e)
	}
	for _, le := range s.st.leaves {
		c, err := le.parsed()
		if err != nil {
			return nil, err
		}
		e := entryOf(c)
		e.CA, e.Slot, e.Node, e.Service, e.Serial = le.rec.CA, le.rec.Slot, le.rec.Node, le.rec.Service, le.rec.Serial
		if r, ok := s.st.revoked[le.rec.Serial]; ok {
			e.State, e.Reason, e.RevokedAt = Revoked, r.Reason, r.Time
		} else {
			e.State = s.stateOf(c, now, s.st.latest(le.rec.Slot) != le)
		}
		out = append(out, e)
	}
	return out, nil
}

func entryOf(c *x509.Certificate) Entry {
	e := Entry{Subject: c.Subject.CommonName, NotBefore: c.NotBefore, NotAfter: c.NotAfter}
	e.SANs = append(e.SANs, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		a, _ := netip.AddrFromSlice(ip)
		e.SANs = append(e.SANs, a.Unmap().String())
	}
	return e
}

func (s *Store) stateOf(c *x509.Certificate, now time.Time, superseded bool) State {
	switch {
	case now.After(c.NotAfter):
		return Expired
	case superseded:
		return Superseded
	case !c.IsCA && !now.Before(s.renewAt(c)):
		return Renew
	}
	return Valid
}

// NodeCredentials is one node and the credentials it declares.
type NodeCredentials struct {
	Host        Host
	Credentials []nodeconf.Credential
}

// Material returns, for each node, its credentials' material as the
// applier reads it (nodeconf.X509): the CA bundle, the CRLs, and per
// credential the client and server certificates from Ensure (one batch
// for all nodes). withKeys includes the private keys (for a node's own
// config volume, or an apply with the private directory at hand);
// without, the certificates' public parts only, and the applier reports
// the keys as pending.
func (s *Store) Material(ctx context.Context, withKeys bool, nodes ...NodeCredentials) ([]*nodeconf.X509, error) {
	var reqs []Request
	type at struct{ node, cred int }
	var where []at
	for i, n := range nodes {
		for j, c := range n.Credentials {
			rs, err := ServiceRequests(n.Host, c)
			if err != nil {
				return nil, err
			}
			for range rs {
				where = append(where, at{i, j})
			}
			reqs = append(reqs, rs...)
		}
	}
	issued, err := s.Ensure(ctx, reqs...)
	if err != nil {
		return nil, err
	}
	crl, err := s.CRLs()
	if err != nil {
		return nil, err
	}
	bundle := string(s.Bundle())
	out := make([]*nodeconf.X509, len(nodes))
	for i := range nodes {
		out[i] = &nodeconf.X509{CA: bundle, CRL: string(crl)}
	}
	for k, is := range issued {
		w := where[k]
		x := out[w.node]
		name := nodes[w.node].Credentials[w.cred].Name
		if x.Credentials == nil {
			x.Credentials = map[string]nodeconf.IssuedCredential{}
		}
		ic := x.Credentials[name]
		cert := &nodeconf.IssuedCert{Cert: string(is.CertPEM)}
		if withKeys {
			cert.Key = is.Key
		}
		switch is.Slot[len(is.Slot)-len("/client"):] {
		case "/client":
			ic.Client = cert
		case "/server":
			ic.Server = cert
		default:
			return nil, fmt.Errorf("internal error: slot %s", is.Slot)
		}
		x.Credentials[name] = ic
	}
	return out, nil
}

// Refresh reads what other processes appended to the log since this
// store last did (a `pki revoke` while serve runs). Every commit refreshes
// too.
func (s *Store) Refresh() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.refresh(s.st.apply)
}

// Revoked reports whether the certificate with serial (hex) is revoked,
// after a Refresh.
func (s *Store) Revoked(serial string) (bool, error) {
	serial, err := ParseSerial(serial)
	if err != nil {
		return false, err
	}
	if err := s.Refresh(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.st.revoked[serial]
	return ok, nil
}
