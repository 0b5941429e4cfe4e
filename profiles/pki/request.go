package pki

import (
	"crypto"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Host is what a machine's certificates name.
type Host struct {
	// Name is the node's inventory name.
	Name string
	// Domain is the node's DNS domain (site-wide or per profile).
	Domain string
	// FQDN is the node's fully qualified name (default NAME.DOMAIN).
	FQDN string
	// IPs are the node's addresses.
	IPs []netip.Addr
}

// nodeRE is an inventory node name (profiles checks the same).
var nodeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// Fqdn is h.FQDN, or NAME.DOMAIN.
func (h Host) Fqdn() string {
	if h.FQDN != "" {
		return h.FQDN
	}
	if h.Domain == "" {
		return ""
	}
	return h.Name + "." + h.Domain
}

// Short is the first label of the FQDN (the node's name without one).
func (h Host) Short() string {
	f := h.Fqdn()
	if f == "" {
		return h.Name
	}
	short, _, _ := strings.Cut(f, ".")
	return short
}

func (h Host) check() error {
	if !nodeRE.MatchString(h.Name) || strings.Contains(h.Name, "..") {
		return fmt.Errorf("node %q: not a node name (lower-case letters, digits, . _ -)", h.Name)
	}
	if h.Fqdn() == "" {
		return fmt.Errorf("node %s has no domain: certificates need one (set domain in site.yaml or the profile, or the node's fqdn)", h.Name)
	}
	if !nodeconf.ValidDNSName(h.Fqdn()) || !strings.Contains(h.Fqdn(), ".") {
		return fmt.Errorf("node %s: fqdn %q is not a fully qualified DNS name", h.Name, h.Fqdn())
	}
	if h.Domain != "" && !nodeconf.ValidDNSName(h.Domain) {
		return fmt.Errorf("node %s: domain %q is not a DNS name", h.Name, h.Domain)
	}
	for _, ip := range h.IPs {
		if !ip.IsValid() || ip.Zone() != "" {
			return fmt.Errorf("node %s: %q is not an IP address", h.Name, ip)
		}
	}
	return nil
}

// Request is one certificate to issue. HostRequest, ServiceRequests and
// UserRequest make them; a caller may set PublicKey (from a CSR) and
// Validity.
type Request struct {
	// CA is the sub-CA that signs: hosts, services or users.
	CA Kind
	// Slot says what the certificate is for ("host/NODE",
	// "service/NODE/NAME/client" or ".../server", "user/NAME"): the
	// newest certificate of a slot supersedes the older ones.
	Slot string
	// Node and Service select certificates for revocation.
	Node, Service string
	// CommonName is the subject's CN.
	CommonName string
	// DNSNames and IPs are the subject alternative names.
	DNSNames []string
	IPs      []netip.Addr
	// Mode is the extended key usage: client, server or both.
	Mode string
	// PublicKey is the key to certify; nil makes one here (and then the
	// private key is in Issued.Key).
	PublicKey crypto.PublicKey
	// Validity overrides Options.Validity.Leaf.
	Validity time.Duration
}

// HostRequest is the host certificate of h, from the hosts CA: CN the
// FQDN; SANs the FQDN, the short name and every IP; for TLS server and
// client.
func HostRequest(h Host) (Request, error) {
	if err := h.check(); err != nil {
		return Request{}, err
	}
	return Request{
		CA: Hosts, Slot: "host/" + h.Name, Node: h.Name,
		CommonName: h.Fqdn(),
		DNSNames:   dedupe([]string{h.Fqdn(), h.Short()}),
		IPs:        slices.Clone(h.IPs),
		Mode:       nodeconf.CertModeBoth,
	}, nil
}

// ServiceRequests are the certificates of credential c on host h, from the
// services CA, in minicluster's form: a client certificate (CN
// NAME@SHORTHOST) when enable_client, a server certificate when
// enable_server, each with the extended key usage of its mode. A server
// certificate's SANs are NAME.DOMAIN, the short host name, the FQDN, every
// IP of the host, localhost, 127.0.0.1, ::1 and each extra_san with the
// domain appended (unless it ends with it already). A client certificate
// whose mode includes server carries the same SANs, so it can serve; a
// client-only one carries none.
func ServiceRequests(h Host, c nodeconf.Credential) ([]Request, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	if h.Domain == "" {
		return nil, fmt.Errorf("node %s has no domain: credential %s needs one for %s.DOMAIN (set domain in site.yaml or the profile)", h.Name, c.Name, c.Name)
	}
	if !nodeconf.ValidCredentialName(c.Name) {
		return nil, fmt.Errorf("credential %q: not a safe name (lower-case letters, digits, inner - and .)", c.Name)
	}
	for _, m := range []string{c.ClientMode(), c.ServerMode()} {
		if !slices.Contains(nodeconf.CertModes, m) {
			return nil, fmt.Errorf("credential %s: cert mode %q is not one of client, server, both", c.Name, m)
		}
	}
	sans := []string{c.Name + "." + h.Domain, h.Short(), h.Fqdn(), "localhost"}
	for _, x := range c.ExtraSAN {
		if !nodeconf.ValidDNSName(x) {
			return nil, fmt.Errorf("credential %s: extra_san %q is not a DNS name", c.Name, x)
		}
		if x != h.Domain && !strings.HasSuffix(x, "."+h.Domain) {
			x += "." + h.Domain
		}
		sans = append(sans, x)
	}
	sans = dedupe(sans)
	ips := slices.Clone(h.IPs)
	ips = append(ips, netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback())
	ips = dedupe(ips)
	cn := c.Name + "@" + h.Short()
	base := Request{CA: Services, Node: h.Name, Service: c.Name, CommonName: cn}
	var out []Request
	if c.ClientEnabled() {
		r := base
		r.Slot, r.Mode = "service/"+h.Name+"/"+c.Name+"/client", c.ClientMode()
		if r.Mode != nodeconf.CertModeClient {
			r.DNSNames, r.IPs = sans, ips
		}
		out = append(out, r)
	}
	if c.ServerEnabled() {
		r := base
		r.Slot, r.Mode = "service/"+h.Name+"/"+c.Name+"/server", c.ServerMode()
		r.DNSNames, r.IPs = sans, ips
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("credential %s enables neither a client nor a server certificate", c.Name)
	}
	return out, nil
}

// userRE is an operator's name: a user name or an e-mail-like name.
var userRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// UserRequest is a client certificate for operator name, from the users
// CA (CN name, no SANs).
func UserRequest(name string) (Request, error) {
	if !userRE.MatchString(name) {
		return Request{}, fmt.Errorf("user %q: not a user name (letters, digits, . _ @ -; at most 64)", name)
	}
	return Request{CA: Users, Slot: "user/" + name, CommonName: name, Mode: nodeconf.CertModeClient}, nil
}

func dedupe[T comparable](in []T) []T {
	seen := map[T]bool{}
	out := in[:0:0]
	for _, v := range in {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}
