package enrol

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
)

// Config fetches the node's whole configuration over mutual TLS: a
// rendered node that must verify (nodeconf.Decode) and be this node's.
func (c *Client) Config(ctx context.Context) (*nodeconf.Node, error) {
	hc, err := c.mtls()
	if err != nil {
		return nil, err
	}
	var data []byte
	if _, err := c.do(ctx, hc, http.MethodGet, wire.ConfigPath(c.o.Node), nil, &data); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	n, _, err := nodeconf.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("configuration from serve: %w", err)
	}
	if n == nil || n.Node != c.o.Node {
		return nil, fmt.Errorf("configuration from serve is not node %s's", c.o.Node)
	}
	return n, nil
}

// CRL fetches the site's CRLs and keeps them (crl.pem).
func (c *Client) CRL(ctx context.Context) ([]byte, error) {
	var data []byte
	if _, err := c.do(ctx, c.plain, http.MethodGet, wire.PathCRL, nil, &data); err != nil {
		return nil, fmt.Errorf("CRL: %w", err)
	}
	if !strings.Contains(string(data), "-----BEGIN X509 CRL-----") {
		return nil, errors.New("CRL: serve's answer holds no PEM CRL")
	}
	if err := atomicfile.Write(filepath.Join(c.o.Dir, "crl.pem"), data, 0o644); err != nil {
		return nil, err
	}
	return data, nil
}

// Due reports whether a certificate is due for renewal at now: a third
// of its lifetime or less remains (or it has expired).
func Due(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return !now.Before(cert.NotAfter.Add(-life / 3))
}

// RenewHost renews the host certificate when it is due (same key); it
// says whether it did.
func (c *Client) RenewHost(ctx context.Context) (bool, error) {
	cert, _, err := c.HostCert()
	if err != nil {
		return false, err
	}
	if !Due(cert, c.o.Now()) {
		return false, nil
	}
	hc, err := c.mtls()
	if err != nil {
		return false, err
	}
	csrPEM, err := csr(c.key, c.o.Node)
	if err != nil {
		return false, err
	}
	var st wire.Status
	if _, err := c.do(ctx, hc, http.MethodPost, wire.RenewPath(c.o.Node), wire.RenewRequest{CSR: csrPEM}, &st); err != nil {
		return false, fmt.Errorf("renewing the host certificate: %w", err)
	}
	if st.State != wire.StateApproved {
		return false, fmt.Errorf("renewing the host certificate: serve says %s", st.State)
	}
	if err := c.saveHost(st.Cert); err != nil {
		return false, err
	}
	return true, nil
}

// side is one certificate of a credential on this node.
type side struct {
	name, side string
	key        crypto.Signer
	keyPEM     []byte
	cert       string // PEM chain ("" when it has none yet)
}

func (s *side) file(dir, ext string) string {
	return filepath.Join(dir, "credentials", s.name+"."+s.side+ext)
}

// Credentials gives node's credentials their certificates: for each side
// the configuration enables, a key made here (kept, 0600) and a
// certificate signed by serve (asked for when there is none, when it is
// not for the key, or when it is due), in one request. It then puts them
// in node.Conf.X509 with the site's CAs and CRLs, for the credentials
// module to install; the configuration's own x509 credentials (if any)
// are replaced. It returns how many certificates serve signed.
func (c *Client) Credentials(ctx context.Context, node *nodeconf.Node) (int, error) {
	var sides []*side
	for _, cr := range node.Conf.Credentials {
		for _, sd := range []struct {
			name string
			on   bool
		}{{wire.SideClient, cr.ClientEnabled()}, {wire.SideServer, cr.ServerEnabled()}} {
			if sd.on {
				sides = append(sides, &side{name: cr.Name, side: sd.name})
			}
		}
	}
	if len(sides) == 0 {
		return 0, c.hostInto(node)
	}
	sort.Slice(sides, func(i, j int) bool { return sides[i].name+sides[i].side < sides[j].name+sides[j].side })
	// 1. Keys and the certificates kept.
	var req wire.SignRequest
	var asked []*side
	for _, s := range sides {
		if !nodeconf.ValidCredentialName(s.name) {
			return 0, fmt.Errorf("credential %q: not a credential name", s.name)
		}
		key, err := loadOrMakeKey(s.file(c.o.Dir, ".key"))
		if err != nil {
			return 0, err
		}
		s.key = key
		if s.keyPEM, err = os.ReadFile(s.file(c.o.Dir, ".key")); err != nil {
			return 0, err
		}
		if data, err := os.ReadFile(s.file(c.o.Dir, ".pem")); err == nil && c.fits(data, key) {
			s.cert = string(data)
			continue
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
		csrPEM, err := csr(key, "")
		if err != nil {
			return 0, err
		}
		req.Requests = append(req.Requests, wire.CertRequest{Credential: s.name, Side: s.side, CSR: csrPEM})
		asked = append(asked, s)
	}
	// 2. What is missing or due, signed.
	ca, crl := c.readFile("ca.pem"), c.readFile("crl.pem")
	if len(asked) > 0 {
		hc, err := c.mtls()
		if err != nil {
			return 0, err
		}
		var resp wire.SignResponse
		if _, err := c.do(ctx, hc, http.MethodPost, wire.CertificatesPath(c.o.Node), req, &resp); err != nil {
			return 0, fmt.Errorf("service certificates: %w", err)
		}
		if len(resp.Certificates) != len(asked) {
			return 0, fmt.Errorf("service certificates: asked for %d, got %d", len(asked), len(resp.Certificates))
		}
		for i, s := range asked {
			got := resp.Certificates[i]
			if got.Credential != s.name || got.Side != s.side || !c.fits([]byte(got.Cert), s.key) {
				return 0, fmt.Errorf("service certificates: serve's answer for %s/%s does not fit its key", s.name, s.side)
			}
			if err := atomicfile.Write(s.file(c.o.Dir, ".pem"), []byte(got.Cert), 0o644); err != nil {
				return 0, err
			}
			s.cert = got.Cert
		}
		ca, crl = resp.CA, resp.CRL
		if err := atomicfile.Write(filepath.Join(c.o.Dir, "ca.pem"), []byte(ca), 0o644); err != nil {
			return 0, err
		}
		if err := atomicfile.Write(filepath.Join(c.o.Dir, "crl.pem"), []byte(crl), 0o644); err != nil {
			return 0, err
		}
	}
	// 3. Into the configuration.
	x := node.Conf.X509
	if x == nil {
		x = &nodeconf.X509{}
	}
	if ca != "" {
		x.CA = ca
	}
	if crl != "" {
		x.CRL = crl
	}
	x.Credentials = map[string]nodeconf.IssuedCredential{}
	for _, s := range sides {
		ic := x.Credentials[s.name]
		is := &nodeconf.IssuedCert{Cert: s.cert, Key: nodeconf.NewSecret("key of "+s.name+"/"+s.side, s.keyPEM)}
		if s.side == wire.SideClient {
			ic.Client = is
		} else {
			ic.Server = is
		}
		x.Credentials[s.name] = ic
	}
	node.Conf.X509 = x
	return len(asked), c.hostInto(node)
}

// hostInto puts the node's host certificate and key (made here, signed
// by serve at approval) in node.Conf.X509.Host, for the credentials
// module to install at /etc/credentials/x509/host/, when the node has
// one and its configuration carries the site's CAs.
func (c *Client) hostInto(node *nodeconf.Node) error {
	_, chain, err := c.HostCert()
	if errors.Is(err, ErrNotEnrolled) {
		return nil
	}
	if err != nil {
		return err
	}
	key, err := c.HostKey()
	if err != nil {
		return err
	}
	x := node.Conf.X509
	if x == nil {
		x = &nodeconf.X509{CA: c.readFile("ca.pem"), CRL: c.readFile("crl.pem")}
	}
	if x.CA == "" {
		return nil // nothing to verify it with: the credentials module would refuse it
	}
	x.Host = &nodeconf.IssuedCert{Cert: string(chain), Key: nodeconf.NewSecret("host key", key)}
	node.Conf.X509 = x
	return nil
}

// fits reports whether the PEM chain's first certificate is for key and
// not due for renewal.
func (c *Client) fits(chain []byte, key crypto.Signer) bool {
	b, _ := pem.Decode(chain)
	if b == nil || b.Type != "CERTIFICATE" {
		return false
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return false
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey) && !Due(cert, c.o.Now())
}

func (c *Client) readFile(name string) string {
	data, _ := os.ReadFile(filepath.Join(c.o.Dir, name))
	return string(data)
}

// Result is what Converge did, for the summary line.
type Result struct {
	// State is "approved", "pending" or "refused" (serve's last answer).
	State string
	// Node is the whole configuration with its credentials (nil unless
	// approved and fetched).
	Node *nodeconf.Node
	// Renewed and Signed count the host certificate renewed and the
	// service certificates signed.
	Renewed, Signed int
}

// Converge is what a run does with enrolment: enrol (waiting up to wait
// for approval), renew the host certificate when due, fetch the whole
// configuration, give its credentials their certificates and fetch the
// CRL. An error after approval leaves Result.Node nil: the caller applies
// what it has.
func (c *Client) Converge(ctx context.Context, wait time.Duration) (*Result, error) {
	res := &Result{State: wire.StatePending}
	ok, err := c.Enrol(ctx, wait)
	if err != nil || !ok {
		if c.last != "" {
			res.State = c.last
		}
		return res, err
	}
	res.State = wire.StateApproved
	renewed, err := c.RenewHost(ctx)
	if err != nil {
		if errors.Is(err, ErrRefused) {
			res.State = wire.StateRefused
		}
		return res, err
	}
	if renewed {
		res.Renewed = 1
	}
	n, err := c.Config(ctx)
	if err != nil {
		if errors.Is(err, ErrRefused) {
			res.State = wire.StateRefused
		}
		return res, err
	}
	if res.Signed, err = c.Credentials(ctx, n); err != nil {
		return res, err
	}
	if crl, err := c.CRL(ctx); err == nil && n.Conf.X509 != nil {
		n.Conf.X509.CRL = string(crl)
	}
	res.Node = n
	return res, nil
}
