// Package pki is a site's certificate authority: an offline root CA, three
// sub-CAs (hosts, services, users) whose keys live in the site's private
// directory, the certificates they issue, revocation and renewal.
//
// On disk:
//
//	SITE/pki/KIND.pem            CA certificates (root, hosts, services, users)
//	SITE/pki/KIND.crl.pem        each CA's revocation list
//	PRIVATE/pki/KIND.key         sub-CA keys (PKCS#8 PEM, 0600)
//	PRIVATE/pki/log.jsonl        every issued, revoked and published thing
//	PRIVATE/pki/keys/...         leaf keys made here by Ensure
//	ROOT-OUT/root.key            the root key: written once by Init, read
//	                             only by Extend
//
// The log is append-only and fsynced before a certificate leaves this
// package: a crash never loses a serial or hands one out twice, and it is
// the source of truth for Status, Revoke and Renew.
//
// Every time comes from Options.Now, so that tests can move the clock.
package pki

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Kind names a CA of the site.
type Kind string

// The site's CAs.
const (
	Root     Kind = "root"
	Hosts    Kind = "hosts"
	Services Kind = "services"
	Users    Kind = "users"
)

// SubCAs are the CAs that issue leaf certificates, in order.
var SubCAs = []Kind{Hosts, Services, Users}

// Kinds are every CA, the root first.
var Kinds = []Kind{Root, Hosts, Services, Users}

// ParseKind reads a CA's name.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, nil
		}
	}
	return "", fmt.Errorf("CA %q: want one of root, hosts, services, users", s)
}

// Algorithm is a key algorithm.
type Algorithm string

// The key algorithms a site can choose (pki.algorithm).
const (
	ECDSAP256 Algorithm = "ecdsa-p256"
	Ed25519   Algorithm = "ed25519"
	RSA3072   Algorithm = "rsa-3072"
)

// Algorithms are the accepted algorithms, the default first.
var Algorithms = []Algorithm{ECDSAP256, Ed25519, RSA3072}

// ParseAlgorithm reads an algorithm's name ("" is the default, ECDSA P-256).
func ParseAlgorithm(s string) (Algorithm, error) {
	if s == "" {
		return ECDSAP256, nil
	}
	for _, a := range Algorithms {
		if string(a) == s {
			return a, nil
		}
	}
	return "", fmt.Errorf("algorithm %q: want one of ecdsa-p256, ed25519, rsa-3072", s)
}

// Validity are certificate lifetimes per kind; zero fields take the
// defaults (root 20 years, sub-CAs 10 years, leaves 1 year).
type Validity struct {
	Root, SubCA, Leaf time.Duration
}

// Default lifetimes.
const (
	Year               = 365 * 24 * time.Hour
	DefaultRoot        = 20 * Year
	DefaultSubCA       = 10 * Year
	DefaultLeaf        = 1 * Year
	DefaultCRLValidity = 30 * 24 * time.Hour
	// backdate is how far before "now" a certificate starts, so that a
	// machine whose clock is a little behind accepts it.
	backdate = 5 * time.Minute
)

// Options say where a site's PKI lives and how it issues. The zero value
// (but Site) is usable: defaults are filled in by Open and Init.
type Options struct {
	// Site is the site directory; public files go to SITE/pki.
	Site string
	// Private is the private directory (default SITE/private); the CA
	// keys and the log go to PRIVATE/pki.
	Private string
	// Env, when set, is the site's environment whose own CA hierarchy
	// this is: its files go to SITE/pki/ENV and PRIVATE/pki/ENV, and its
	// CAs are named "SITE ENV".
	Env string
	// Name is the site's name in the CAs' subjects (default: the site
	// directory's base name).
	Name string
	// Algorithm of the keys made here (default ECDSA P-256).
	Algorithm Algorithm
	// Validity of the certificates issued from now on.
	Validity Validity
	// RenewBefore is how long before its end a certificate is renewed
	// (0: a third of its lifetime).
	RenewBefore time.Duration
	// CRLValidity is how long a published CRL stays current (its
	// next-update; default 30 days). Renew republishes a CRL in the last
	// third of that.
	CRLValidity time.Duration
	// NameConstraints (Init and Extend) constrain the hosts and services
	// sub-CAs to Domain, localhost, Subnets and loopback. Certificates
	// they issue then leave short host names out.
	NameConstraints bool
	// Domain is the site's DNS domain (for NameConstraints).
	Domain string
	// Subnets are the site's networks (for NameConstraints).
	Subnets []netip.Prefix
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Log receives what changed; never key material.
	Log *slog.Logger
}

// withDefaults fills in the zero fields of o.
func (o Options) withDefaults() (Options, error) {
	if o.Site == "" {
		return o, errors.New("pki: no site directory")
	}
	if o.Private == "" {
		o.Private = filepath.Join(o.Site, "private")
	}
	if o.Name == "" {
		abs, err := filepath.Abs(o.Site)
		if err != nil {
			return o, err
		}
		o.Name = filepath.Base(abs)
		if o.Env != "" {
			o.Name += " " + o.Env
		}
	}
	var err error
	if o.Algorithm, err = ParseAlgorithm(string(o.Algorithm)); err != nil {
		return o, err
	}
	if o.Validity.Root == 0 {
		o.Validity.Root = DefaultRoot
	}
	if o.Validity.SubCA == 0 {
		o.Validity.SubCA = DefaultSubCA
	}
	if o.Validity.Leaf == 0 {
		o.Validity.Leaf = DefaultLeaf
	}
	for _, d := range []time.Duration{o.Validity.Root, o.Validity.SubCA, o.Validity.Leaf, o.RenewBefore, o.CRLValidity} {
		if d < 0 {
			return o, fmt.Errorf("pki: negative duration %s", d)
		}
	}
	if o.CRLValidity == 0 {
		o.CRLValidity = DefaultCRLValidity
	}
	if o.NameConstraints && o.Domain == "" {
		return o, errors.New("pki: name constraints need the site's domain")
	}
	if o.Domain != "" && !nodeconf.ValidDNSName(o.Domain) {
		return o, fmt.Errorf("pki: domain %q is not a DNS name", o.Domain)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Errors a caller may want to tell apart (errors.Is).
var (
	// ErrExists: Init found a PKI already there (use force).
	ErrExists = errors.New("a PKI already exists")
	// ErrNoPKI: Open found no PKI (run pki init).
	ErrNoPKI = errors.New("no PKI")
	// ErrInsecure: a private directory or key others can read.
	ErrInsecure = errors.New("readable by others")
	// ErrKeyMismatch: a CA certificate and its key do not belong together.
	ErrKeyMismatch = errors.New("certificate does not match its key")
	// ErrExpired: a CA certificate is no longer valid.
	ErrExpired = errors.New("expired")
	// ErrWeakKey: a key of an algorithm or size this PKI does not accept.
	ErrWeakKey = errors.New("weak or unsupported key")
	// ErrNotFound: nothing matched a revocation.
	ErrNotFound = errors.New("no such certificate")
)

// ParseDuration reads a lifetime: a number with y (365 days) or d, or a
// Go duration ("8760h").
func ParseDuration(s string) (time.Duration, error) {
	unit := time.Duration(0)
	switch {
	case strings.HasSuffix(s, "y"):
		unit = Year
	case strings.HasSuffix(s, "d"):
		unit = 24 * time.Hour
	}
	if unit != 0 {
		n, err := strconv.Atoi(strings.TrimSuffix(s[:len(s)-1], " "))
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("duration %q: want a positive number of years (20y), days (90d) or a Go duration (8760h)", s)
		}
		return time.Duration(n) * unit, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("duration %q: want a positive number of years (20y), days (90d) or a Go duration (8760h)", s)
	}
	return d, nil
}
