package profiles

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/pki"
)

// PKISettings are site.yaml's pki: how the site's PKI makes keys and
// certificates. The zero value is the PKI's defaults.
//
//	pki:
//	  algorithm: ecdsa-p256        # or ed25519, rsa-3072
//	  validity: {root: 20y, sub_ca: 10y, leaf: 1y}
//	  renew_before: 90d            # default: a third of a certificate's life
//	  name_constraints: false      # true: hosts and services CAs limited to the domain
//	  subnets: [192.0.2.0/24]      # for name_constraints (default: the network's)
type PKISettings struct {
	Algorithm       pki.Algorithm
	Validity        pki.Validity
	RenewBefore     time.Duration
	NameConstraints bool
	// Subnets are the site's networks the constraints permit: pki.subnets,
	// else the boot network's subnets.
	Subnets []netip.Prefix
	// SharedEnvironments (environments: shared) gives every environment
	// of the site the one CA hierarchy in SITE/pki; by default each has
	// its own, in SITE/pki/ENV (docs/pki.md).
	SharedEnvironments bool
}

// siteSettings are site.yaml's domain and pki, with where they were set.
type siteSettings struct {
	domain                   string
	domainPos                Pos
	pki                      PKISettings
	renewPos, constraintsPos Pos
	sharedEnvPos             Pos
}

var (
	pkiKeys      = []string{"algorithm", "validity", "renew_before", "name_constraints", "subnets", "environments"}
	validityKeys = []string{"root", "sub_ca", "leaf"}
)

// Domain returns site.yaml's domain ("" when it sets none).
func (s *Site) Domain() string { return s.domain }

// PKI returns site.yaml's pki settings.
func (s *Site) PKI() PKISettings {
	p := s.pki
	p.Subnets = s.pkiSubnets()
	return p
}

// pkiSubnets are pki.subnets, else the boot network's subnets.
func (s *Site) pkiSubnets() []netip.Prefix {
	if s.pki.Subnets != nil || s.network == nil {
		return slices.Clone(s.pki.Subnets)
	}
	var out []netip.Prefix
	if s.network.Subnet.IsValid() {
		out = append(out, s.network.Subnet)
	}
	for _, p := range s.network.Pools {
		if !slices.Contains(out, p.Subnet) {
			out = append(out, p.Subnet)
		}
	}
	return out
}

// PKIOptions returns the options of the site's PKI as site.yaml declares
// them: the site directory, its domain, algorithm, validities, renewal
// window, name constraints and subnets, and for a site loaded for an
// environment that does not share the site's CA hierarchy, the
// environment (its own in SITE/pki/ENV). The caller sets Private (and may
// override the rest with flags).
func (s *Site) PKIOptions() pki.Options {
	p := s.PKI()
	o := pki.Options{
		Site: s.dir, Domain: s.domain, Algorithm: p.Algorithm, Validity: p.Validity,
		RenewBefore: p.RenewBefore, NameConstraints: p.NameConstraints, Subnets: p.Subnets,
	}
	if !p.SharedEnvironments {
		o.Env = s.Environment()
	}
	return o
}

// PKIOptions reads SITE/site.yaml (and, for a site with environments, the
// environments' files, for their vars) but no profile or inventory
// (`bellbuild pki init` may come first), and returns the options of the
// site's PKI it declares for environment env (Site.PKIOptions). A problem
// in those files, or with env, is an ErrorList.
func PKIOptions(dir, env string) (pki.Options, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return pki.Options{}, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return pki.Options{}, fmt.Errorf("site directory: %w", err)
	}
	defer root.Close()
	s := &Site{dir: abs}
	var errs ErrorList
	fsys := rootFS{root}
	if fatal := s.readEnvironments(fsys, dir, "", env, &errs); len(fatal) > 0 {
		return pki.Options{}, append(fatal, errs...).Err()
	}
	if fsys.exists(SiteFile) {
		if v := s.readSite(fsys, SiteFile, displayName(dir, SiteFile), &errs); v != nil {
			s.parseSiteFile(v, &errs)
		}
	}
	if errs := errs.Errors(); len(errs) > 0 {
		return pki.Options{}, errs.Err()
	}
	return s.PKIOptions(), nil
}

// parseDomain reads site.yaml's domain.
func (s *Site) parseDomain(v *value, path string, errs *ErrorList) {
	if d, ok := parseDomainValue(v, path, errs); ok {
		s.domain, s.domainPos = d, v.pos
	}
}

// parseDomainValue reads a domain: a DNS name of at least two labels,
// lower case.
func parseDomainValue(v *value, path string, errs *ErrorList) (string, bool) {
	if v.kind == kNull {
		return "", false
	}
	text, ok := scalarString(v, path, errs)
	if !ok {
		return "", false
	}
	if !nodeconf.ValidDNSName(text) || text != strings.ToLower(text) {
		errs.Add(v.pos, path, "%q is not a DNS domain: lower-case letters, digits and inner - in dot-separated labels (example.org)", text)
		return "", false
	}
	return text, true
}

// parsePKI reads site.yaml's pki.
func (s *Site) parsePKI(v *value, path string, errs *ErrorList) {
	if v.kind == kNull || !expectMap(v, path, errs) {
		return
	}
	p := &s.pki
	for _, e := range v.ents {
		fp := joinKey(path, e.key)
		switch e.key {
		case "algorithm":
			text, ok := scalarString(e.val, fp, errs)
			if !ok {
				continue
			}
			a, err := pki.ParseAlgorithm(text)
			if err != nil || text == "" {
				errs.Add(e.val.pos, fp, "%q: want one of ecdsa-p256, ed25519, rsa-3072", text)
				continue
			}
			p.Algorithm = a
		case "validity":
			if e.val.kind == kNull || !expectMap(e.val, fp, errs) {
				continue
			}
			for _, f := range e.val.ents {
				vp := joinKey(fp, f.key)
				var to *time.Duration
				switch f.key {
				case "root":
					to = &p.Validity.Root
				case "sub_ca":
					to = &p.Validity.SubCA
				case "leaf":
					to = &p.Validity.Leaf
				default:
					errs.Add(f.kpos, vp, "unknown key %q%s", f.key, suggestList(f.key, validityKeys))
					continue
				}
				if d, ok := parseLifetime(f.val, vp, errs); ok {
					*to = d
				}
			}
		case "renew_before":
			if d, ok := parseLifetime(e.val, fp, errs); ok {
				p.RenewBefore, s.renewPos = d, e.val.pos
			}
		case "name_constraints":
			b, ok := scalarBool(e.val)
			if !ok {
				errs.Add(e.val.pos, fp, "want true or false")
				continue
			}
			p.NameConstraints, s.constraintsPos = b, e.val.pos
		case "environments":
			switch text, _ := scalarString(e.val, fp, errs); text {
			case "own":
				p.SharedEnvironments, s.sharedEnvPos = false, e.val.pos
			case "shared":
				p.SharedEnvironments, s.sharedEnvPos = true, e.val.pos
			default:
				if e.val.kind == kScalar {
					errs.Add(e.val.pos, fp, "%q: want own (each environment a CA hierarchy of its own, SITE/pki/ENV/) or shared (one for all, SITE/pki/)", text)
				}
			}
		case "subnets":
			items, pos := stringList(e.val, fp, errs)
			p.Subnets = []netip.Prefix{}
			for i, it := range items {
				ip := fp + nodeconf.Index(i)
				sn, err := netip.ParsePrefix(it)
				switch {
				case err != nil:
					errs.Add(pos[i], ip, "%q: want a subnet like 192.0.2.0/24 or 2001:db8::/64", it)
				case sn != sn.Masked():
					errs.Add(pos[i], ip, "%q has host bits set: the subnet is %v", it, sn.Masked())
				default:
					p.Subnets = append(p.Subnets, sn)
				}
			}
		default:
			errs.Add(e.kpos, fp, "unknown key %q%s", e.key, suggestList(e.key, pkiKeys))
		}
	}
}

// parseLifetime reads a duration: 20y, 90d or a Go duration (8760h).
func parseLifetime(v *value, path string, errs *ErrorList) (time.Duration, bool) {
	text, ok := scalarString(v, path, errs)
	if !ok {
		return 0, false
	}
	d, err := pki.ParseDuration(text)
	if err != nil {
		errs.Add(v.pos, path, "%v", err)
		return 0, false
	}
	return d, true
}

// checkPKI checks site.yaml's pki against its domain, once both are read:
// name constraints need the domain, a renewal window must be shorter than
// a leaf's life, and validate says that constrained certificates leave
// short host names out (a warning).
func (s *Site) checkPKI(errs *ErrorList) {
	p := s.pki
	leaf := p.Validity.Leaf
	if leaf == 0 {
		leaf = pki.DefaultLeaf
	}
	if s.sharedEnvPos.File != "" && s.envs == nil {
		errs.Warn(s.sharedEnvPos, "pki.environments", "the site has no environments (%s/NAME.yaml): this setting does nothing yet", EnvironmentsDir)
	}
	if p.RenewBefore >= leaf {
		errs.Add(s.renewPos, "pki.renew_before", "%s is not shorter than a leaf certificate's life (%s): every certificate would be renewed as soon as it is issued", lifetime(p.RenewBefore), lifetime(leaf))
	}
	if !p.NameConstraints {
		return
	}
	if s.domain == "" {
		errs.Add(s.constraintsPos, "pki.name_constraints", "name constraints need the site's domain: set domain in site.yaml")
		return
	}
	errs.Warn(s.constraintsPos, "pki.name_constraints", "the hosts and services CAs are limited to %s, localhost and the site's subnets: host and server certificates leave short host names out (a peer must use NAME.%s)", s.domain, s.domain)
}

// lifetime formats d as site.yaml would write it: 1y, 90d, or a Go
// duration.
func lifetime(d time.Duration) string {
	switch {
	case d%pki.Year == 0:
		return fmt.Sprintf("%dy", d/pki.Year)
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}
