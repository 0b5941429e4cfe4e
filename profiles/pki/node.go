package pki

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// HostFor is the "for" of a node's host certificate (nodeconf.Certificate).
const HostFor = "host"

// NodeHost is the Host a rendered node's certificates name: its inventory
// name, domain, FQDN and IP addresses.
func NodeHost(n *nodeconf.Node) (Host, error) {
	h := Host{Name: n.Node, Domain: n.Domain, FQDN: n.FQDN}
	for _, s := range n.IPs {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return h, fmt.Errorf("node %s: ips: %q is not an IP address", n.Node, s)
		}
		h.IPs = append(h.IPs, a)
	}
	return h, nil
}

// NodeRequests are the certificates a rendered node gets: its host
// certificate when it has a fully qualified name, then the client and
// server certificates of each of its credentials, in the order declared.
// A node without a name (a profile's defaults) gets none; one with
// credentials but no domain is an error.
func NodeRequests(n *nodeconf.Node) ([]Request, error) {
	if n.Node == "" {
		return nil, nil
	}
	h, err := NodeHost(n)
	if err != nil {
		return nil, err
	}
	var out []Request
	if h.Fqdn() != "" {
		r, err := HostRequest(h)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	for _, c := range n.Conf.Credentials {
		rs, err := ServiceRequests(h, c)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// For is what r's certificate is for, as nodeconf.Certificate names it:
// "host", or "NAME/client" and "NAME/server" for credential NAME.
func (r Request) For() string {
	kind, rest, _ := strings.Cut(r.Slot, "/")
	switch kind {
	case "host":
		return HostFor
	case "service":
		// service/NODE/NAME/SIDE
		parts := strings.Split(rest, "/")
		if len(parts) == 3 {
			return parts[1] + "/" + parts[2]
		}
	}
	return r.Slot
}

// isShort reports whether a DNS name is a bare host name, which no DNS
// subtree constraint can permit (localhost is named by the constraints).
func isShort(n string) bool { return !strings.Contains(n, ".") && n != "localhost" }

// WithoutShortNames is r as a name-constrained CA issues it: its short
// (dot-less) host names left out.
func WithoutShortNames(r Request) Request {
	var names []string
	for _, n := range r.DNSNames {
		if !isShort(n) {
			names = append(names, n)
		}
	}
	r.DNSNames = names
	return r
}

// Describe is r as render shows it: no key material.
func Describe(r Request) nodeconf.Certificate {
	c := nodeconf.Certificate{For: r.For(), CA: string(r.CA), Subject: "CN=" + r.CommonName, Usage: r.Mode}
	c.DNSNames = append(c.DNSNames, r.DNSNames...)
	for _, ip := range r.IPs {
		c.IPs = append(c.IPs, ip.String())
	}
	return c
}

// Publish gives each node that asks for certificates (NodeRequests) the
// site's CA bundle and CRLs in conf.x509 and issues nothing: the public
// configuration of a machine that gets its certificates by enrolment (an
// image, serve's node.json), whose keys it makes itself. Its host
// certificate and credentials stay pending until enrolment brings them;
// issuing here, for keys kept in the private directory, would only be
// superseded by the enrolled key's certificate in the same slot.
func (s *Store) Publish(nodes []*nodeconf.Node) error {
	crl, err := s.CRLs()
	if err != nil {
		return err
	}
	bundle := string(s.Bundle())
	for _, n := range nodes {
		rs, err := NodeRequests(n)
		if err != nil {
			return err
		}
		if len(rs) > 0 {
			n.Conf.X509 = &nodeconf.X509{CA: bundle, CRL: string(crl)}
		}
	}
	return nil
}

// Certify issues what each node asks for (NodeRequests: its host
// certificate and its credentials') and puts it in the node's conf.x509
// with the site's CA bundle and CRLs: current certificates are reused,
// new ones issued, all in one Ensure batch. The private keys go in only
// with keys — a configuration for that one machine (its config volume, a
// root applied from the site); otherwise x509 carries the public parts
// and the credentials module reports the keys as pending. A node that
// asks for no certificate is left as it is.
func (s *Store) Certify(ctx context.Context, nodes []*nodeconf.Node, keys bool) error {
	var (
		reqs  []Request
		owner []int
	)
	for i, n := range nodes {
		rs, err := NodeRequests(n)
		if err != nil {
			return err
		}
		for _, r := range rs {
			reqs = append(reqs, r)
			owner = append(owner, i)
		}
	}
	if len(reqs) == 0 {
		return nil
	}
	issued, err := s.Ensure(ctx, reqs...)
	if err != nil {
		return err
	}
	crl, err := s.CRLs()
	if err != nil {
		return err
	}
	bundle := string(s.Bundle())
	done := map[int]bool{}
	for k, is := range issued {
		n := nodes[owner[k]]
		if !done[owner[k]] {
			n.Conf.X509 = &nodeconf.X509{CA: bundle, CRL: string(crl)}
			done[owner[k]] = true
		}
		c := &nodeconf.IssuedCert{Cert: string(is.CertPEM)}
		if keys {
			c.Key = is.Key
		}
		x := n.Conf.X509
		f := is.For()
		if f == HostFor {
			x.Host = c
			continue
		}
		name, side, _ := strings.Cut(f, "/")
		if x.Credentials == nil {
			x.Credentials = map[string]nodeconf.IssuedCredential{}
		}
		ic := x.Credentials[name]
		if side == "client" {
			ic.Client = c
		} else {
			ic.Server = c
		}
		x.Credentials[name] = ic
	}
	return nil
}
