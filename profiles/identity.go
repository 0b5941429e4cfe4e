package profiles

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/pki"
)

// nodeIdentity is what an inventory entry says of the names its
// certificates carry:
//
//	nodes:
//	- name: etcd-1
//	  fqdn: etcd-1.dc1.example.org    # default NAME.DOMAIN
//	  ips: [192.0.2.11, 2001:db8::11] # default: the ip label
type nodeIdentity struct {
	fqdn   string
	fqdnAt Pos
	ips    []netip.Addr
	ipsAt  Pos
	set    bool // ips was given (an empty list means none)
}

// parse reads a node's fqdn or ips entry.
func (id *nodeIdentity) parse(e entry, path string, errs *ErrorList) {
	switch e.key {
	case "fqdn":
		text, ok := scalarString(e.val, path, errs)
		if !ok {
			return
		}
		if !nodeconf.ValidDNSName(text) || !strings.Contains(text, ".") || text != strings.ToLower(text) {
			errs.Add(e.val.pos, path, "%q is not a fully qualified name: lower-case DNS labels joined by dots (node1.example.org)", text)
			return
		}
		id.fqdn, id.fqdnAt = text, e.val.pos
	case "ips":
		items, pos := stringList(e.val, path, errs)
		id.ips, id.ipsAt, id.set = []netip.Addr{}, e.val.pos, true
		for i, it := range items {
			ip := path + nodeconf.Index(i)
			a, err := netip.ParseAddr(it)
			switch {
			case err != nil || a.Zone() != "":
				errs.Add(pos[i], ip, "%q: want an IP address like 192.0.2.10 or 2001:db8::10", it)
				continue
			case a.Is4In6():
				a = a.Unmap()
			}
			if why := notAHost(a); why != "" {
				errs.Add(pos[i], ip, "%v is %s, not a machine's address", a, why)
				continue
			}
			if slices.Contains(id.ips, a) {
				errs.Add(pos[i], ip, "%v is listed twice", a)
				continue
			}
			id.ips = append(id.ips, a)
		}
	}
}

// domain is the domain of the nodes of r's profile: its own (or an
// ancestor's) domain field, else site.yaml's; with where it was set.
func (r *resolved) domain(s *Site) (string, Pos) {
	if v := r.fields["domain"]; v != nil && v.kind == kScalar {
		return v.text, v.pos
	}
	return s.domain, s.domainPos
}

// nodeFQDN is an inventory node's fully qualified name: its fqdn, else
// NAME.DOMAIN, else (no domain) its name.
func (s *Site) nodeFQDN(nd *node) string {
	if nd.id.fqdn != "" {
		return nd.id.fqdn
	}
	if r, ok := s.resolved[nd.Profile]; ok {
		if d, _ := r.domain(s); d != "" {
			return nd.Name + "." + d
		}
	}
	return nd.Name
}

// identity gives a rendered node its domain, FQDN, IPs and the
// certificates the site's PKI issues it (nodeconf.Node.Certificates),
// and checks what those need: a domain for credentials, and under name
// constraints names and addresses inside the site's domain and subnets.
// nd is the inventory entry (nil for a machine rendered from a profile,
// named host). Each problem is reported at the line that set the value.
func (s *Site) identity(r *resolved, out *rendered, nd *node, host string) error {
	n := out.node
	var errs ErrorList
	domain, domainAt := r.domain(s)
	n.Domain = domain
	name, fqdnAt, ipsAt := host, domainAt, Pos{}
	fqdnPath, ipsPath := "domain", ""
	var ips []netip.Addr
	if nd != nil {
		name, ipsAt, ipsPath = nd.Name, nd.pos, nd.path
		switch {
		case nd.id.set:
			ips, ipsAt, ipsPath = nd.id.ips, nd.id.ipsAt, nd.path+".ips"
		case nd.IP.IsValid():
			ips, ipsAt, ipsPath = []netip.Addr{nd.IP}, nd.ipAt, nd.path+".labels.ip"
		}
	}
	switch {
	case nd != nil && nd.id.fqdn != "":
		n.FQDN, fqdnAt, fqdnPath = nd.id.fqdn, nd.id.fqdnAt, nd.path+".fqdn"
	case name != "" && domain != "":
		n.FQDN = name + "." + domain
	}
	for _, a := range ips {
		n.IPs = append(n.IPs, a.String())
	}
	if name == "" {
		return nil // a profile's defaults: no certificate names no one
	}
	n.Node = name
	// Where each credential was asked for.
	var credAt []Pos
	if out.tree != nil {
		if v := out.tree.get("credentials"); v != nil && v.kind == kList {
			for _, it := range v.items {
				at := it.pos
				if nv := it.get("name"); nv != nil {
					at = nv.pos
				}
				credAt = append(credAt, at)
			}
		}
	}
	if len(n.Conf.Credentials) > 0 && domain == "" {
		if nd == nil {
			// A profile rendered for a host name (validate tries each
			// host override): its domain may come from a child profile.
			// Issuing for it says what is missing.
			return nil
		}
		errs.Add(lookup(out.tree, "credentials"), "conf.credentials", "credentials need the site's domain (a server certificate names NAME.DOMAIN): set domain in site.yaml or in profile %s", r.chain[len(r.chain)-1])
		return errs.Err()
	}
	constrained := s.pki.NameConstraints && s.domain != ""
	if constrained {
		within := func(d string) bool { return d == s.domain || strings.HasSuffix(d, "."+s.domain) }
		if domain != "" && !within(domain) {
			errs.Add(domainAt, "domain", "%s is outside the site's domain %s, to which pki.name_constraints limit the hosts and services CAs", domain, s.domain)
		}
		if n.FQDN != "" && !within(n.FQDN) && within(domain) {
			errs.Add(fqdnAt, fqdnPath, "node %q: %s is outside the site's domain %s, to which pki.name_constraints limit the hosts CA", name, n.FQDN, s.domain)
		}
		subnets := s.pkiSubnets()
		for _, a := range ips {
			if !slices.ContainsFunc(subnets, func(p netip.Prefix) bool { return p.Contains(a) }) {
				errs.Add(ipsAt, ipsPath, "node %q: %v is outside the site's subnets (%s), to which pki.name_constraints limit the hosts and services CAs", name, a, prefixes(subnets))
			}
		}
	}
	if len(errs) > 0 {
		return errs.Err()
	}
	reqs, err := pki.NodeRequests(n)
	if err != nil {
		errs.Add(ipsAt, ipsPath, "%v", err)
		return errs.Err()
	}
	for _, req := range reqs {
		if constrained {
			req = pki.WithoutShortNames(req)
		}
		n.Certificates = append(n.Certificates, pki.Describe(req))
		at := fqdnAt
		if req.Service != "" {
			if i := slices.IndexFunc(n.Conf.Credentials, func(c nodeconf.Credential) bool { return c.Name == req.Service }); i >= 0 && i < len(credAt) {
				at = credAt[i]
			}
		}
		out.certAt = append(out.certAt, at)
	}
	return nil
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none declared: set pki.subnets or network.subnet in site.yaml"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// certOrigins are the explain lines of a node's certificates: each with
// its subject, at the line that asked for it (the credential's name; for
// the host certificate, where its FQDN or domain was set). render shows
// their names.
func certOrigins(r *rendered) []Origin {
	var out []Origin
	for i, c := range r.node.Certificates {
		o := Origin{Path: fmt.Sprintf("certificates[%q]", c.For), Value: c.Subject}
		if i < len(r.certAt) {
			o.Pos = r.certAt[i]
		}
		out = append(out, o)
	}
	return out
}
