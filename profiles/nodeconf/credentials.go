package nodeconf

import (
	"regexp"
	"slices"
	"strings"
)

// credNameRE is a credential name: a safe path component (it names the
// directory /etc/credentials/x509/NAME) that is also the start of a DNS
// name (the server certificate's NAME.DOMAIN).
var credNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

// ValidCredentialName reports whether name can name a credential:
// lower-case DNS labels (letters, digits, inner hyphens) joined by dots,
// at most 63 characters, and none of the names the credentials module
// uses itself in /etc/credentials/x509 (ReservedCredentialNames).
func ValidCredentialName(name string) bool {
	return len(name) <= 63 && credNameRE.MatchString(name) && !slices.Contains(ReservedCredentialNames, name)
}

// ReservedCredentialNames are the entries of /etc/credentials/x509 that
// are not a service's: the host certificate's directory and the CA and
// CRL files.
var ReservedCredentialNames = []string{"host", "ca.pem", "crl.pem"}

// ValidDNSName reports whether s is a DNS name of letters, digits and
// hyphens in dot-separated labels of 1 to 63 characters (no trailing dot,
// no wildcard), at most 253 characters.
func ValidDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func (v *validator) credentials(list []Credential) {
	seen := map[string]int{}
	for i, c := range list {
		p := "credentials" + Index(i)
		switch {
		case c.Name == "":
			v.add(p+".name", "required")
		case slices.Contains(ReservedCredentialNames, c.Name):
			v.add(p+".name", "%q is reserved (/etc/credentials/x509/%s is the node's own): choose another name", c.Name, c.Name)
		case !ValidCredentialName(c.Name):
			v.add(p+".name", "%q is not a safe name: lower-case letters, digits, inner - and . (it names a directory and the DNS name NAME.DOMAIN)", c.Name)
		default:
			if j, dup := seen[c.Name]; dup {
				v.add(p+".name", "%q is also credentials[%d]", c.Name, j)
			}
			seen[c.Name] = i
		}
		if c.ClientCertMode != "" {
			v.oneOf(p, ".client_cert_mode", c.ClientCertMode, CertModes)
		}
		if c.ServerCertMode != "" {
			v.oneOf(p, ".server_cert_mode", c.ServerCertMode, CertModes)
		}
		if !c.ClientEnabled() && !c.ServerEnabled() {
			v.add(p, "enables neither a client nor a server certificate")
		}
		for j, s := range c.ExtraSAN {
			if !ValidDNSName(s) {
				v.add(p+".extra_san"+Index(j), "%q is not a DNS name", s)
			}
		}
		if c.Owner != "" && !userRE.MatchString(c.Owner) {
			v.add(p+".owner", "%q is not a user name", c.Owner)
		}
		if c.Group != "" && !userRE.MatchString(c.Group) {
			v.add(p+".group", "%q is not a group name", c.Group)
		}
	}
}

// x509 checks that the issued material matches the declared credentials.
// (Whether the PEM parses is the applier's check: this package stays free
// of crypto.)
func (v *validator) x509(x *X509, list []Credential) {
	byName := map[string]Credential{}
	for _, c := range list {
		byName[c.Name] = c
	}
	for _, name := range sortedKeys(x.Credentials) {
		p := "x509.credentials" + Key(name)
		c, ok := byName[name]
		if !ok {
			v.add(p, "issued for a credential that is not declared in credentials")
			continue
		}
		ic := x.Credentials[name]
		if ic.Client != nil && !c.ClientEnabled() {
			v.add(p+".client", "issued, but credentials: %s has enable_client: false", name)
		}
		if ic.Server != nil && !c.ServerEnabled() {
			v.add(p+".server", "issued, but credentials: %s has enable_server: false", name)
		}
		if ic.Client != nil && strings.TrimSpace(ic.Client.Cert) == "" {
			v.add(p+".client.cert", "required")
		}
		if ic.Server != nil && strings.TrimSpace(ic.Server.Cert) == "" {
			v.add(p+".server.cert", "required")
		}
	}
	if x.Host != nil && strings.TrimSpace(x.Host.Cert) == "" {
		v.add("x509.host.cert", "required")
	}
	if (len(x.Credentials) > 0 || x.Host != nil) && strings.TrimSpace(x.CA) == "" {
		v.add("x509.ca", "required with issued credentials")
	}
}
