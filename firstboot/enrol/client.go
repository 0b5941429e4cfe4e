// Package enrol is the node's side of enrolment (docs/enrolment.md): it
// keeps the node's key pair, proves it to `bellbuild serve` with a CSR,
// waits for an operator's approval, then — over mutual TLS with the host
// certificate it got — fetches the node's whole configuration, has the
// certificates of its service credentials signed (their keys made here,
// never sent), renews what is due and fetches the CRL. The applier's
// credentials module installs what it brings (conf.x509).
//
// What it keeps, in its directory (ROOT/var/lib/bellbuild/enrol, so on a
// disk's persistent layer when there is one; in memory on a diskless
// node, which therefore makes a new key at each boot):
//
//	enrol.json                the endpoint, the node, the trust anchor
//	host.key, host.pem        the node's key (0600) and host certificate
//	credentials/NAME.SIDE.key the service keys (0600) and their
//	credentials/NAME.SIDE.pem certificates
//	ca.pem, crl.pem           the site's CAs and CRLs as last sent
package enrol

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
)

// Dir is where the enrolment keeps its files, relative to the root.
const Dir = "var/lib/bellbuild/enrol"

// Endpoint is how a node reaches serve: what enrol.json keeps.
type Endpoint struct {
	// URL is serve's enrolment endpoint ("https://192.0.2.1:8443").
	URL string `json:"url"`
	// Node is the node's inventory name, MAC the address it enrols with.
	Node string `json:"node"`
	MAC  string `json:"mac"`
	// RootPin is the site root CA's fingerprint (wire.CertFingerprint),
	// from the kernel command line; used when CA is empty.
	RootPin string `json:"root_pin,omitempty"`
	// CA is the site's CA bundle (PEM), from the node's configuration:
	// serve's certificate must chain to one of its certificates.
	CA string `json:"ca,omitempty"`
}

// Options configure a Client.
type Options struct {
	Endpoint
	// Dir is the directory of the node's key and certificates.
	Dir string
	// Console receives the lines an operator at the console reads
	// (nil: none).
	Console io.Writer
	// Now is the clock (default time.Now); TLS checks certificates at it.
	Now func() time.Time
	// Timeout bounds each request (default 30 s).
	Timeout time.Duration
	// PollMin and PollMax bound the wait between polls (default 1 s,
	// doubling up to 15 s).
	PollMin, PollMax time.Duration
}

// Client talks to serve for one node.
type Client struct {
	o   Options
	key crypto.Signer
	fp  string

	plain *http.Client // serve's certificate checked, none of ours
	// last is serve's last answer to Enrol: pending or refused.
	last string
}

// Errors of the Client.
var (
	// ErrNotEnrolled: the node has no host certificate yet.
	ErrNotEnrolled = errors.New("not enrolled")
	// ErrRefused: serve refused the request (the message says why).
	ErrRefused = errors.New("refused by serve")
)

// New opens the node's enrolment in o.Dir: it loads the node's key, or
// makes one (ECDSA P-256, written 0600 before anything is sent), and
// records the endpoint.
func New(o Options) (*Client, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.PollMin == 0 {
		o.PollMin = time.Second
	}
	if o.PollMax == 0 {
		o.PollMax = 15 * time.Second
	}
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("enrolment endpoint %q: want https://HOST:PORT", o.URL)
	}
	if o.Node == "" {
		return nil, errors.New("enrolment: no node name")
	}
	if o.CA == "" && o.RootPin == "" {
		return nil, errors.New("enrolment: nothing to check serve's certificate with (no CA bundle in the configuration, no " + wire.ParamCA + "= on the command line)")
	}
	if o.RootPin != "" {
		if o.RootPin, err = wire.ParseFingerprint(o.RootPin); err != nil {
			return nil, fmt.Errorf("%s: %w", wire.ParamCA, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, "credentials"), 0o700); err != nil {
		return nil, fmt.Errorf("enrolment: %w", err)
	}
	c := &Client{o: o}
	if c.key, err = loadOrMakeKey(filepath.Join(o.Dir, "host.key")); err != nil {
		return nil, err
	}
	if c.fp, err = wire.Fingerprint(c.key.Public()); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(o.Endpoint, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(o.Dir, "enrol.json"), append(data, '\n'), 0o600); err != nil {
		return nil, err
	}
	tc, err := c.tlsConfig(nil)
	if err != nil {
		return nil, err
	}
	c.plain = c.httpClient(tc)
	return c, nil
}

// ReadEndpoint reads what New recorded in dir (for the day-2 run); a
// directory without it is fs.ErrNotExist.
func ReadEndpoint(dir string) (Endpoint, error) {
	var e Endpoint
	data, err := os.ReadFile(filepath.Join(dir, "enrol.json"))
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(data, &e); err != nil {
		return e, fmt.Errorf("%s: %w", filepath.Join(dir, "enrol.json"), err)
	}
	return e, nil
}

// Fingerprint is the node key's fingerprint.
func (c *Client) Fingerprint() string { return c.fp }

// Node is the node's name.
func (c *Client) Node() string { return c.o.Node }

// Dir is the directory of the node's key and certificates.
func (c *Client) Dir() string { return c.o.Dir }

func (c *Client) say(format string, a ...any) {
	if c.o.Console != nil {
		fmt.Fprintf(c.o.Console, "bellbuild: node=%s "+format+"\n", append([]any{c.o.Node}, a...)...)
	}
}

// tlsConfig checks serve's certificate against the CA bundle, else
// against the pinned root (which serve sends in its chain), and offers
// cert (nil: none).
func (c *Client) tlsConfig(cert *tls.Certificate) (*tls.Config, error) {
	u, _ := url.Parse(c.o.URL)
	host := u.Hostname()
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, Time: c.o.Now}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	if c.o.CA != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(c.o.CA)) {
			return nil, errors.New("enrolment: the configuration's CA bundle holds no certificate")
		}
		tc.RootCAs = pool
		return tc, nil
	}
	pin := c.o.RootPin
	tc.InsecureSkipVerify = true // verified below, against the pinned root
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("serve sent no certificate")
		}
		roots, inter := x509.NewCertPool(), x509.NewCertPool()
		found := false
		for _, pc := range cs.PeerCertificates[1:] {
			if wire.CertFingerprint(pc.Raw) == pin {
				roots.AddCert(pc)
				found = true
			} else {
				inter.AddCert(pc)
			}
		}
		if !found {
			return fmt.Errorf("serve's certificate does not chain to the pinned root CA %s", wire.Short(pin))
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName: host, Roots: roots, Intermediates: inter, CurrentTime: c.o.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		return err
	}
	return tc, nil
}

func (c *Client) httpClient(tc *tls.Config) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     tc,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: c.o.Timeout}
}

// mtls is a client that offers the node's host certificate.
func (c *Client) mtls() (*http.Client, error) {
	chain, err := os.ReadFile(filepath.Join(c.o.Dir, "host.pem"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, err
	}
	cert, err := c.keyPair(chain)
	if err != nil {
		return nil, err
	}
	tc, err := c.tlsConfig(&cert)
	if err != nil {
		return nil, err
	}
	return c.httpClient(tc), nil
}

func (c *Client) keyPair(chain []byte) (tls.Certificate, error) {
	var cert tls.Certificate
	for rest := chain; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			cert.Certificate = append(cert.Certificate, b.Bytes)
		}
	}
	if len(cert.Certificate) == 0 {
		return cert, errors.New("host certificate: no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return cert, fmt.Errorf("host certificate: %w", err)
	}
	if fp, _ := wire.Fingerprint(leaf.PublicKey); fp != c.fp {
		return cert, fmt.Errorf("host certificate is for key %s, not this node's %s", wire.Short(fp), wire.Short(c.fp))
	}
	cert.PrivateKey, cert.Leaf = c.key, leaf
	return cert, nil
}

// HostCert is the node's host certificate (nil, ErrNotEnrolled when it
// has none).
func (c *Client) HostCert() (*x509.Certificate, []byte, error) {
	chain, err := os.ReadFile(filepath.Join(c.o.Dir, "host.pem"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, nil, err
	}
	cert, err := c.keyPair(chain)
	if err != nil {
		return nil, nil, err
	}
	return cert.Leaf, chain, nil
}

// HostKey is the node's private key (PKCS#8 PEM).
func (c *Client) HostKey() ([]byte, error) {
	return os.ReadFile(filepath.Join(c.o.Dir, "host.key"))
}

// do sends one request and decodes a JSON answer into out; a refusal
// (4xx) is an error wrapping ErrRefused with serve's message, and, when
// the answer is a Status, out holds it too.
func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.o.URL+path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 400 {
		var e wire.Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return resp.StatusCode, fmt.Errorf("%w: %s", ErrRefused, e.Error)
		}
		if out != nil && json.Unmarshal(data, out) == nil {
			if st, ok := out.(*wire.Status); ok && st.Message != "" {
				return resp.StatusCode, fmt.Errorf("%w: %s", ErrRefused, st.Message)
			}
		}
		return resp.StatusCode, fmt.Errorf("%w: %s %s: %s", ErrRefused, method, path, resp.Status)
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return resp.StatusCode, nil
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// csr is a CSR for key, naming cn (may be empty) and nothing else.
func csr(key crypto.Signer, cn string) (string, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// Enrol submits the node's CSR and polls until serve approves the key or
// wait has passed (0: ask once). It prints on the console
//
//	bellbuild: node=NAME enrolment pending fingerprint=FP
//
// while the key waits for an operator (again every minute), and says when
// it is approved or refused. It returns whether the node is enrolled
// (its host certificate is kept in the directory); an error only for what
// waiting cannot mend (the context's end, a broken directory).
func (c *Client) Enrol(ctx context.Context, wait time.Duration) (bool, error) {
	if cert, _, err := c.HostCert(); err == nil && c.o.Now().Before(cert.NotAfter) {
		return true, nil
	}
	deadline := c.o.Now().Add(wait)
	pause := c.o.PollMin
	submitted := false
	var said string
	var saidAt time.Time
	say := func(line string) {
		if line != said || c.o.Now().Sub(saidAt) >= time.Minute {
			c.say("%s", line)
			said, saidAt = line, c.o.Now()
		}
	}
	for {
		var st wire.Status
		var err error
		forgot := false
		if !submitted {
			csrPEM, cerr := csr(c.key, c.o.Node)
			if cerr != nil {
				return false, cerr
			}
			_, err = c.do(ctx, c.plain, http.MethodPost, wire.PathEnrol, wire.EnrolRequest{Node: c.o.Node, MAC: c.o.MAC, CSR: csrPEM}, &st)
		} else {
			var code int
			code, err = c.do(ctx, c.plain, http.MethodGet, wire.PollPath(c.o.Node, c.fp), nil, &st)
			// Serve forgot it (dropped as the oldest, or its state was
			// reset): submit it again.
			forgot = code == http.StatusNotFound
		}
		switch {
		case forgot:
			submitted = false
		case err == nil && st.State == wire.StateApproved:
			if err := c.saveHost(st.Cert); err != nil {
				return false, err
			}
			say("enrolment approved fingerprint=" + c.fp)
			return true, nil
		case err == nil && st.State == wire.StatePending:
			submitted = true
			c.last = wire.StatePending
			say("enrolment pending fingerprint=" + c.fp)
		case errors.Is(err, ErrRefused):
			c.last = wire.StateRefused
			if st.State != "" {
				submitted = true // refused for now: an operator may still approve it
			}
			say("enrolment refused fingerprint=" + c.fp + ": " + refusal(err))
		case err != nil && ctx.Err() != nil:
			return false, ctx.Err()
		case err != nil:
			say(fmt.Sprintf("enrolment: serve not reached (%v); asking again", err))
		}
		if !c.o.Now().Before(deadline) {
			return false, nil
		}
		t := time.NewTimer(min(pause, max(deadline.Sub(c.o.Now()), 0)))
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, c.o.PollMax)
	}
}

// refusal is serve's message in err.
func refusal(err error) string {
	s := err.Error()
	if p := ErrRefused.Error() + ": "; len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}

// saveHost checks a host certificate (for this node's key) and keeps it.
func (c *Client) saveHost(chain string) error {
	if _, err := c.keyPair([]byte(chain)); err != nil {
		return fmt.Errorf("serve's answer: %w", err)
	}
	return atomicfile.Write(filepath.Join(c.o.Dir, "host.pem"), []byte(chain), 0o600)
}

// loadOrMakeKey reads a PKCS#8 PEM key, or makes an ECDSA P-256 key and
// writes it (0600 from the start) when there is none.
func loadOrMakeKey(p string) (crypto.Signer, error) {
	data, err := os.ReadFile(p)
	if err == nil {
		return parseKey(data, p)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return k, nil
}

// parseKey reads a PKCS#8 PEM private key (errors never quote it).
func parseKey(data []byte, name string) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: not a PKCS#8 PEM private key", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: not a PKCS#8 private key", name)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: a key that cannot sign", name)
	}
	return s, nil
}

// Post sends in (JSON) to serve's path and decodes the answer into out:
// over mutual TLS with the host certificate once the node has one
// (mutual true), else with serve's certificate checked and none of the
// node's. A refusal wraps ErrRefused; code is the HTTP status (0 when
// serve was not reached).
func (c *Client) Post(ctx context.Context, path string, in, out any) (mutual bool, code int, err error) {
	hc, err := c.mtls()
	switch {
	case errors.Is(err, ErrNotEnrolled):
		hc = c.plain
	case err != nil:
		return false, 0, err
	default:
		mutual = true
	}
	code, err = c.do(ctx, hc, http.MethodPost, path, in, out)
	return mutual, code, err
}
