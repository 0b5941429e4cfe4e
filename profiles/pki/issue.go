package pki

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/profiles/internal/parallel"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Issued is a certificate this PKI signed (or, from Ensure, found still
// current in its log).
type Issued struct {
	// Request is what was asked, with the names the CA allowed.
	Request
	// Serial is the certificate's serial number, lower-case hex.
	Serial string
	// NotAfter is when the certificate expires.
	NotAfter time.Time
	// DER is the certificate; Certificate parses it.
	DER []byte
	// CertPEM is the certificate, PEM.
	CertPEM []byte
	// Key is the private key (PKCS#8 PEM) when it was made here; zero
	// when the request brought its public key.
	Key nodeconf.Secret
}

// job is one request on its way to a certificate.
type job struct {
	req    Request
	ca     *CA
	keyPEM []byte // the key made here, or nil
	// keyFile is where Ensure keeps the key the worker makes: it
	// writes it to keyFile.tmp, Ensure puts it in place.
	keyFile string
	out     *Issued
}

// Issue signs reqs and records every serial in the log (one fsynced
// append) before it returns the certificates:
//  1. check each request and the CA that signs it (not expired);
//  2. make the keys that are not given, and
//  3. sign (both on every core for a large batch);
//  4. append to the log; a serial already there (another process drew
//     it) fails the whole batch, which the caller may retry.
func (s *Store) Issue(ctx context.Context, reqs ...Request) ([]*Issued, error) {
	now := s.opts.Now()
	jobs, err := s.prepare(reqs, now)
	if err != nil {
		return nil, err
	}
	if err := s.sign(ctx, jobs, now); err != nil {
		return nil, err
	}
	if err := s.record(jobs, now); err != nil {
		return nil, err
	}
	out := make([]*Issued, len(jobs))
	for i, j := range jobs {
		out[i] = j.out
	}
	return out, nil
}

// prepare checks reqs (1); the missing keys are made by the signing
// workers (2).
func (s *Store) prepare(reqs []Request, now time.Time) ([]*job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	jobs := make([]*job, len(reqs))
	for i, r := range reqs {
		ca, err := s.usable(r.CA, now)
		if err != nil {
			return nil, err
		}
		if r, err = s.allowed(r, ca); err != nil {
			return nil, err
		}
		jobs[i] = &job{req: r, ca: ca}
	}
	return jobs, nil
}

// makeKey makes j's key pair when its request brought no public key (2),
// and writes it to its temporary file when Ensure keeps it.
func (s *Store) makeKey(j *job) error {
	if j.req.PublicKey != nil {
		return nil
	}
	pub, p, err := newLeafKey(s.opts.Algorithm)
	if err != nil {
		return err
	}
	j.req.PublicKey, j.keyPEM = pub, p
	if j.keyFile != "" {
		return writeTemp(j.keyFile, j.keyPEM, 0o600, false)
	}
	return nil
}

// allowed checks r and returns it with the names its CA's constraints
// allow: short (dot-less) host names are left out under name constraints;
// any other name or address outside them is an error.
func (s *Store) allowed(r Request, ca *CA) (Request, error) {
	if r.Slot == "" || r.CommonName == "" {
		return r, fmt.Errorf("request for the %s CA without slot or common name", r.CA)
	}
	if !slices.Contains(nodeconf.CertModes, r.Mode) {
		return r, fmt.Errorf("%s: mode %q is not one of client, server, both", r.Slot, r.Mode)
	}
	if r.Validity < 0 {
		return r, fmt.Errorf("%s: negative validity", r.Slot)
	}
	if r.PublicKey != nil {
		if err := CheckPublicKey(r.PublicKey); err != nil {
			return r, fmt.Errorf("%s: %w", r.Slot, err)
		}
	}
	for _, n := range r.DNSNames {
		if !nodeconf.ValidDNSName(n) {
			return r, fmt.Errorf("%s: %q is not a DNS name", r.Slot, n)
		}
	}
	c := ca.Cert
	if len(c.PermittedDNSDomains) == 0 && len(c.PermittedIPRanges) == 0 {
		return r, nil
	}
	var names []string
	for _, n := range r.DNSNames {
		if isShort(n) {
			continue // a short name cannot satisfy a DNS subtree
		}
		if len(c.PermittedDNSDomains) > 0 && !slices.ContainsFunc(c.PermittedDNSDomains, func(d string) bool { return n == d || strings.HasSuffix(n, "."+d) }) {
			return r, fmt.Errorf("%s: %s is outside the %s CA's name constraints (%s)", r.Slot, n, ca.Kind, strings.Join(c.PermittedDNSDomains, ", "))
		}
		names = append(names, n)
	}
	r.DNSNames = names
	if len(c.PermittedIPRanges) > 0 {
		for _, ip := range r.IPs {
			if !slices.ContainsFunc(c.PermittedIPRanges, func(n *net.IPNet) bool { return n.Contains(ip.AsSlice()) }) {
				return r, fmt.Errorf("%s: %s is outside the %s CA's name constraints (subnets %s)", r.Slot, ip, ca.Kind, ipNets(c.PermittedIPRanges))
			}
		}
	}
	return r, nil
}

func ipNets(ns []*net.IPNet) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = n.String()
	}
	return strings.Join(s, ", ")
}

// sign makes every job's certificate (3), on every core.
func (s *Store) sign(ctx context.Context, jobs []*job, now time.Time) error {
	return parallel.Each(ctx, len(jobs), 16, func(w *signer, i int) error { return s.signOne(w, jobs[i], now) })
}

// signer is one signing goroutine's template, reused from certificate to
// certificate (x509.CreateCertificate only reads it).
type signer struct {
	t   x509.Certificate
	ips []byte // backing of t.IPAddresses
}

// The extended key usages of each mode, shared by every template.
var (
	ekuClient = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	ekuServer = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	ekuBoth   = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

// leafTemplate is the certificate r asks for, valid from now, in w's
// template.
func (s *Store) leafTemplate(w *signer, r Request, ca *CA, now time.Time) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	life := r.Validity
	if life == 0 {
		life = s.opts.Validity.Leaf
	}
	// The addresses as ip.AsSlice has them, without an allocation each.
	w.ips = slices.Grow(w.ips[:0], net.IPv6len*len(r.IPs))
	ips := w.t.IPAddresses[:0]
	for _, ip := range r.IPs {
		at := len(w.ips)
		switch {
		case ip.Is4():
			a := ip.As4()
			w.ips = append(w.ips, a[:]...)
		case ip.Is6():
			a := ip.As16()
			w.ips = append(w.ips, a[:]...)
		default:
			ips = append(ips, nil)
			continue
		}
		ips = append(ips, net.IP(w.ips[at:len(w.ips):len(w.ips)]))
	}
	w.t = x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: r.CommonName},
		// Whole seconds in UTC, as the certificate encodes them and
		// Issued.NotAfter reports them.
		NotBefore:             now.Add(-backdate).UTC().Truncate(time.Second),
		NotAfter:              clampEnd(now.Add(life), ca.Cert).UTC().Truncate(time.Second),
		KeyUsage:              keyUsage(r.PublicKey),
		ExtKeyUsage:           extKeyUsage(r.Mode),
		BasicConstraintsValid: true,
		DNSNames:              r.DNSNames,
		IPAddresses:           ips,
	}
	return &w.t, nil
}

func (s *Store) signOne(w *signer, j *job, now time.Time) error {
	if err := s.makeKey(j); err != nil {
		return err
	}
	t, err := s.leafTemplate(w, j.req, j.ca, now)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, t, j.ca.Cert, j.req.PublicKey, j.ca.key)
	if err != nil {
		return fmt.Errorf("%s: %w", j.req.Slot, err)
	}
	// Not parsed back: what the caller needs of it is in the template
	// (a certificate's times are whole seconds, as the template's are).
	j.out = &Issued{Request: j.req, Serial: serialHex(t.SerialNumber), NotAfter: t.NotAfter, DER: der, CertPEM: certPEM(der)}
	if pub, ok := j.req.PublicKey.(*ecdh.PublicKey); ok {
		// A key made here: give it as crypto/x509 reads it.
		if j.out.PublicKey, err = ecdsaPublic(pub); err != nil {
			return fmt.Errorf("%s: %w", j.req.Slot, err)
		}
	}
	if j.keyPEM != nil {
		j.out.Key = nodeconf.NewSecret("key of "+j.req.Slot, j.keyPEM)
	}
	return nil
}

// record appends the jobs' certificates to the log (4).
func (s *Store) record(jobs []*job, now time.Time) error {
	recs := make([]record, len(jobs))
	for i, j := range jobs {
		recs[i] = record{Op: "issue", Time: now, Serial: j.out.Serial, CA: j.req.CA, Slot: j.req.Slot,
			Node: j.req.Node, Service: j.req.Service, Cert: j.out.DER}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.log.commit(recs, s.st.apply, func() error {
		for _, r := range recs {
			if _, dup := s.st.serials[r.Serial]; dup {
				return fmt.Errorf("serial %s is already in the log (drawn twice): nothing was issued, try again", r.Serial)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range recs {
		s.opts.Log.Debug("pki: issued", "slot", r.Slot, "serial", r.Serial, "ca", r.CA)
	}
	return nil
}

func extKeyUsage(mode string) []x509.ExtKeyUsage {
	switch mode {
	case nodeconf.CertModeClient:
		return ekuClient
	case nodeconf.CertModeServer:
		return ekuServer
	}
	return ekuBoth
}

// modeOf reads a certificate's mode back from its extended key usage.
func modeOf(c *x509.Certificate) string {
	cl, sv := slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth), slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	switch {
	case cl && sv:
		return nodeconf.CertModeBoth
	case sv:
		return nodeconf.CertModeServer
	}
	return nodeconf.CertModeClient
}

// MaxCSR is the largest CSR ParseCSR reads.
const MaxCSR = 16 << 10

// ParseCSR reads a certificate signing request (PEM or DER, at most
// MaxCSR bytes), checks its signature and refuses a weak key or an
// unknown algorithm.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSR {
		return nil, fmt.Errorf("CSR of %d bytes: larger than %d", len(data), MaxCSR)
	}
	der := data
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("PEM block %q: not a CERTIFICATE REQUEST", b.Type)
		}
		der = b.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR: bad signature: %w", err)
	}
	return csr, nil
}

// SignCSR issues r for the key of csr (parsed by ParseCSR). The CSR may
// ask for no names, or for names r has: its common name, DNS names and
// IPs must each be among r's (the site, not the CSR, says what a node
// may be called); anything else is refused.
func (s *Store) SignCSR(ctx context.Context, r Request, csr *x509.CertificateRequest) (*Issued, error) {
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != r.CommonName {
		return nil, fmt.Errorf("CSR asks for CN %q; %s may have %q", cn, r.Slot, r.CommonName)
	}
	for _, n := range csr.DNSNames {
		if !slices.Contains(r.DNSNames, n) {
			return nil, fmt.Errorf("CSR asks for DNS name %q, which %s may not have (%s)", n, r.Slot, strings.Join(r.DNSNames, ", "))
		}
	}
	for _, ip := range csr.IPAddresses {
		a, _ := netip.AddrFromSlice(ip)
		if !slices.Contains(r.IPs, a.Unmap()) {
			return nil, fmt.Errorf("CSR asks for IP %s, which %s may not have", ip, r.Slot)
		}
	}
	if len(csr.EmailAddresses) > 0 || len(csr.URIs) > 0 {
		return nil, fmt.Errorf("CSR asks for e-mail or URI names, which this PKI does not issue")
	}
	r.PublicKey = csr.PublicKey
	out, err := s.Issue(ctx, r)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// Certificate parses the certificate.
func (i *Issued) Certificate() (*x509.Certificate, error) {
	return x509.ParseCertificate(i.DER)
}
