// Package enrol is serve's enrolment endpoint: a node proves its key (a
// CSR), an operator (or the node's policy) approves it, and only then does
// the node get its host certificate, its whole configuration and its
// service certificates, over mutual TLS with that host certificate.
//
// The protocol is package wire's. What the endpoint keeps (pending CSRs,
// approvals, pinned keys, issued serials) is a Registry over a state.Store,
// written durably before any answer; the `bellbuild node` commands change
// the same Registry, and serve sees their changes at the next request.
// Certificates come from a CA (cmd adapts the site's PKI): this package
// never reads the site.
package enrol

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/node"
)

// Configs gives a node's whole configuration (a rendered node written by
// nodeconf.Encode, with what only the node may see); cmd adapts the site.
type Configs interface {
	// NodeConfig returns node's configuration, or an error wrapping
	// node.ErrUnknown.
	NodeConfig(ctx context.Context, node string) ([]byte, error)
}

// Owners says which MAC address an IP address is leased to (serve's
// leases).
type Owners interface {
	MACFor(ip netip.Addr) (net.HardwareAddr, bool)
}

// Config configures the handler.
type Config struct {
	// Registry keeps the enrolment state and signs through its CA.
	Registry *Registry
	// CA is the Registry's (the CRL and the service certificates).
	CA CA
	// Backend says what a MAC address is (its node and policy).
	Backend node.Backend
	// Configs gives an enrolled node its configuration.
	Configs Configs
	// Bundle is the site's CA bundle (PEM), sent with service
	// certificates.
	Bundle []byte
	// Owners, when set, refuses a CSR from an address leased to another
	// MAC than the one it claims.
	Owners Owners
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Log (default slog.Default()).
	Log *slog.Logger
	// Counters count requests and outcomes (nil: none).
	Counters *Counters
}

type server struct {
	cfg Config

	crlMu   sync.Mutex
	crlAt   time.Time
	crlSum  [32]byte
	revoked map[string]bool
}

// New returns the enrolment handler (paths of package wire). Serve it
// over TLS with TLSConfig: the mutual-TLS paths need the client's
// certificate.
func New(cfg Config) http.Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Counters != nil && cfg.Registry.opts.Counters == nil {
		// The registry counts its outcomes into the server's metrics.
		cfg.Registry.opts.Counters = cfg.Counters
	}
	s := &server{cfg: cfg}
	mux := http.NewServeMux()
	handle := func(pattern, name string, h func(http.ResponseWriter, *http.Request) error) {
		mux.Handle(pattern, s.count(name, h))
	}
	handle("POST "+wire.PathEnrol, "enrol", s.enrol)
	handle("GET "+wire.PathEnrol+"/{node}/{fp}", "poll", s.poll)
	handle("GET "+wire.PathCRL, "crl", s.crl)
	handle("GET "+wire.PathNodes+"{node}/config", "config", s.config)
	handle("POST "+wire.PathNodes+"{node}/certificates", "certificates", s.certificates)
	handle("POST "+wire.PathNodes+"{node}/renew", "renew", s.renew)
	mux.Handle("/", s.count("other", func(w http.ResponseWriter, r *http.Request) error {
		return refuse(http.StatusNotFound, "not-found", "%s %s: no such enrolment endpoint (see package wire: /v1/enrol, /v1/crl, /v1/nodes/NODE/...)", r.Method, short(r.URL.Path))
	}))
	return mux
}

// TLSConfig is the endpoint's TLS: cert is serve's own (from the hosts
// sub-CA, for its address), clientCA the CA that issues nodes' host
// certificates (the hosts sub-CA), which a client may present. now is the
// clock certificates are checked at (nil: time.Now).
func TLSConfig(cert tls.Certificate, clientCA *x509.Certificate, now func() time.Time) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(clientCA)
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		Time:         now,
	}
}

// count runs h, answers its error, and counts the request.
func (s *server) count(name string, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &codeWriter{ResponseWriter: w, code: http.StatusOK}
		if err := h(cw, r); err != nil {
			s.fail(cw, r, err)
		}
		s.cfg.Counters.request(name, cw.code)
	})
}

type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c *codeWriter) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

// fail answers err: a Refusal as it says, anything else as a server error
// (logged, not told).
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var rf *Refusal
	if !errors.As(err, &rf) {
		s.cfg.Log.Error("enrol: request failed", "path", r.URL.Path, "from", from(r), "err", err)
		rf = &Refusal{Code: http.StatusInternalServerError, Reason: "error", Message: "internal error (see serve's log)"}
	}
	writeJSON(w, rf.Code, wire.Error{Error: rf.Message})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		code, data = http.StatusInternalServerError, []byte(`{"error":"encoding the answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(append(data, '\n'))
}

// status answers a Status: 200 approved, 202 pending, else the refusal's
// code.
func status(w http.ResponseWriter, st *wire.Status, err error) error {
	var rf *Refusal
	switch {
	case st != nil && errors.As(err, &rf):
		writeJSON(w, rf.Code, st)
		return nil
	case err != nil:
		return err
	case st.State == wire.StatePending:
		writeJSON(w, http.StatusAccepted, st)
	default:
		writeJSON(w, http.StatusOK, st)
	}
	return nil
}

// from is the request's source address.
func from(r *http.Request) string {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return ap.Addr().Unmap().String()
}

// readJSON reads a body of at most limit bytes into v, strictly: unknown
// fields and trailing data are refused.
func readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &mb):
		return refuse(http.StatusRequestEntityTooLarge, "too-large", "request body larger than %d bytes", limit)
	case err != nil:
		return refuse(http.StatusBadRequest, "malformed", "reading the request: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return refuse(http.StatusBadRequest, "malformed", "request is not the JSON this endpoint takes: %v", err)
	}
	if dec.More() {
		return refuse(http.StatusBadRequest, "malformed", "request has data after its JSON")
	}
	return nil
}

func (s *server) enrol(w http.ResponseWriter, r *http.Request) error {
	var req wire.EnrolRequest
	if err := readJSON(w, r, wire.MaxBody, &req); err != nil {
		return s.refused(err)
	}
	var mach *node.Machine
	if hw, err := net.ParseMAC(req.MAC); err == nil && len(hw) == 6 {
		m, err := s.cfg.Backend.Lookup(r.Context(), hw)
		switch {
		case errors.Is(err, node.ErrUnknown):
		case err != nil:
			return err
		default:
			mach = m
		}
		if err := s.leased(r, hw); err != nil {
			return s.refused(err)
		}
	}
	st, err := s.cfg.Registry.Submit(r.Context(), req, mach, from(r))
	if st == nil && err != nil {
		return s.refused(err)
	}
	return status(w, st, err)
}

// leased refuses a CSR from an address leased to another MAC than the one
// it claims (an address with no lease, or serve without leases, passes:
// a node whose lease lapsed still enrols).
func (s *server) leased(r *http.Request, claimed net.HardwareAddr) error {
	if s.cfg.Owners == nil {
		return nil
	}
	ip, err := netip.ParseAddr(from(r))
	if err != nil {
		return nil
	}
	if mac, ok := s.cfg.Owners.MACFor(ip); ok && mac.String() != claimed.String() {
		return refuse(http.StatusForbidden, "not-leased", "address %s is leased to another MAC than %s", ip, claimed)
	}
	return nil
}

// refused counts a refusal made before the registry saw the request.
func (s *server) refused(err error) error {
	var rf *Refusal
	if errors.As(err, &rf) {
		s.cfg.Counters.refused(rf.Reason)
		s.cfg.Log.Info("enrol: refused", "reason", rf.Reason, "err", rf.Message)
	}
	return err
}

func (s *server) poll(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Registry.Poll(r.Context(), r.PathValue("node"), r.PathValue("fp"))
	if st == nil && err != nil {
		return s.refused(err)
	}
	return status(w, st, err)
}

func (s *server) crl(w http.ResponseWriter, r *http.Request) error {
	data, err := s.cfg.CA.CRL(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(data)
	return nil
}

// authorize checks that the request comes over mutual TLS with a current
// host certificate of node's enrolled key, not revoked, and returns node's
// record.
func (s *server) authorize(r *http.Request) (*Record, error) {
	nodeName := r.PathValue("node")
	if err := CheckNodeName(nodeName); err != nil {
		return nil, s.refused(err)
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
		return nil, s.refused(refuse(http.StatusUnauthorized, "unauthenticated", "%s needs the node's host certificate (mutual TLS): enrol first", r.URL.Path))
	}
	leaf := r.TLS.PeerCertificates[0]
	fp, err := wire.Fingerprint(leaf.PublicKey)
	if err != nil {
		return nil, s.refused(refuse(http.StatusUnauthorized, "unauthenticated", "%v", err))
	}
	rec, err := s.cfg.Registry.Get(r.Context(), nodeName)
	if err != nil {
		return nil, err
	}
	switch {
	case !rec.Retired.IsZero():
		return nil, s.refused(refuse(http.StatusForbidden, "retired", "node %s is retired: it gets nothing but the CRL", nodeName))
	case rec.Key == "" || rec.Key != fp:
		s.cfg.Log.Warn("enrol: a certificate that is not the node's", "node", nodeName, "fingerprint", fp, "enrolled", rec.Key, "from", from(r))
		return nil, s.refused(refuse(http.StatusForbidden, "not-enrolled", "this certificate's key (%s) is not node %s's", fp, nodeName))
	}
	revoked, err := s.isRevoked(r.Context(), leaf)
	if err != nil {
		return nil, err
	}
	if revoked {
		return nil, s.refused(refuse(http.StatusForbidden, "revoked", "certificate %s of node %s is revoked", leaf.SerialNumber.Text(16), nodeName))
	}
	return rec, nil
}

// isRevoked looks c's serial up in the site's CRLs (read again at most
// once a second: a `pki revoke` or `node retire` in another process shows
// within a second).
func (s *server) isRevoked(ctx context.Context, c *x509.Certificate) (bool, error) {
	s.crlMu.Lock()
	defer s.crlMu.Unlock()
	now := s.cfg.Now()
	if s.revoked == nil || now.Sub(s.crlAt) > time.Second || now.Before(s.crlAt) {
		data, err := s.cfg.CA.CRL(ctx)
		if err != nil {
			return false, err
		}
		if sum := sha256.Sum256(data); sum != s.crlSum || s.revoked == nil {
			s.revoked, err = revokedSerials(data)
			if err != nil {
				return false, err
			}
			s.crlSum = sum
		}
		s.crlAt = now
	}
	return s.revoked[c.Issuer.String()+"/"+c.SerialNumber.Text(16)], nil
}

// revokedSerials lists every serial the PEM CRLs revoke, by issuer.
func revokedSerials(data []byte) (map[string]bool, error) {
	out := map[string]bool{}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out, nil
		}
		if b.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CRL: %w", err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			out[crl.Issuer.String()+"/"+(*big.Int)(e.SerialNumber).Text(16)] = true
		}
	}
}

func (s *server) config(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.authorize(r)
	if err != nil {
		return err
	}
	data, err := s.cfg.Configs.NodeConfig(r.Context(), rec.Node)
	if errors.Is(err, node.ErrUnknown) {
		return s.refused(refuse(http.StatusNotFound, "unknown-node", "node %s is not in the site's inventory", rec.Node))
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
	s.cfg.Log.Info("enrol: configuration sent", "node", rec.Node, "from", from(r))
	return nil
}

func (s *server) certificates(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.authorize(r)
	if err != nil {
		return err
	}
	var req wire.SignRequest
	if err := readJSON(w, r, wire.MaxSignBody, &req); err != nil {
		return s.refused(err)
	}
	certs, err := s.cfg.Registry.SignServices(r.Context(), rec, req)
	if err != nil {
		return s.refused(err)
	}
	crl, err := s.cfg.CA.CRL(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.SignResponse{Certificates: certs, CA: string(s.cfg.Bundle), CRL: string(crl)})
	return nil
}

func (s *server) renew(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.authorize(r)
	if err != nil {
		return err
	}
	var req wire.RenewRequest
	if err := readJSON(w, r, wire.MaxBody, &req); err != nil {
		return s.refused(err)
	}
	st, err := s.cfg.Registry.Renew(r.Context(), rec, req.CSR)
	if st == nil && err != nil {
		return s.refused(err)
	}
	return status(w, st, err)
}
