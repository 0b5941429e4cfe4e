package enrol

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/node"
	"github.com/bellbuild/bellbuild/pxe/state"
)

// CA issues what enrolment hands out; cmd adapts the site's PKI to it.
// An error wrapping ErrRefused is the request's fault (a name the site
// does not give the node, a credential it does not have) and is told to
// the client; any other is the server's.
type CA interface {
	// SignHost issues node's host certificate (hosts sub-CA) for the key
	// of csr, with the names the site gives the node.
	SignHost(ctx context.Context, node string, csr *x509.CertificateRequest) (Cert, error)
	// SignService issues the side ("client" or "server") certificate of
	// node's credential (services sub-CA) for the key of csr.
	SignService(ctx context.Context, node, credential, side string, csr *x509.CertificateRequest) (Cert, error)
	// CRL returns the site's current CRLs (PEM).
	CRL(ctx context.Context) ([]byte, error)
}

// Cert is an issued certificate.
type Cert struct {
	// Serial is its serial number (lower-case hex).
	Serial string
	// PEM is the certificate, then the chain up to (not including) the
	// root.
	PEM []byte
}

// ErrRefused marks a CA's refusal of a request (see CA).
var ErrRefused = errors.New("refused")

// Refusal is a request refused: the HTTP status, the reason counted in
// /metrics, and a message for the client that says what and why.
type Refusal struct {
	Code    int
	Reason  string
	Message string
}

func (r *Refusal) Error() string { return r.Message }

func refuse(code int, reason, format string, a ...any) *Refusal {
	return &Refusal{Code: code, Reason: reason, Message: fmt.Sprintf(format, a...)}
}

// Defaults of Options.
const (
	DefaultMaxPendingPerMAC = 4
	DefaultMaxPending       = 4096
)

// Options configure a Registry.
type Options struct {
	// ParseCSR reads and checks a CSR: size, signature, key algorithm
	// and strength (cmd wires the PKI's pki.ParseCSR).
	ParseCSR func([]byte) (*x509.CertificateRequest, error)
	// MaxPendingPerMAC and MaxPending bound the CSRs that wait for an
	// operator, per MAC address and in all; beyond them the oldest are
	// dropped.
	MaxPendingPerMAC, MaxPending int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Log receives what happened (default slog.Default()).
	Log *slog.Logger
	// Counters, when set, count outcomes (the server's metrics).
	Counters *Counters
}

// Registry is the enrolment state of a site's nodes over a state.Store:
// what serve's handlers and the `bellbuild node` commands do. Its methods
// are safe for concurrent use, also by several processes over one store.
type Registry struct {
	store state.Store
	ca    CA
	opts  Options

	mu      sync.Mutex
	loaded  bool
	pending map[string]map[string]time.Time // node → fingerprint → first seen
}

// NewRegistry returns the registry over store, signing with ca (which may
// be nil for commands that only read, deny or retire).
func NewRegistry(store state.Store, ca CA, o Options) *Registry {
	if o.MaxPendingPerMAC <= 0 {
		o.MaxPendingPerMAC = DefaultMaxPendingPerMAC
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.ParseCSR == nil {
		o.ParseCSR = parseCSR
	}
	return &Registry{store: store, ca: ca, opts: o, pending: map[string]map[string]time.Time{}}
}

// parseCSR is the fallback ParseCSR: signature checked, nothing more.
func parseCSR(data []byte) (*x509.CertificateRequest, error) {
	der := data
	if b, _ := pem.Decode(data); b != nil {
		der = b.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR: bad signature: %w", err)
	}
	return csr, nil
}

// nodeRE is an inventory node name.
var nodeRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// CheckNodeName refuses what cannot be an inventory node's name.
func CheckNodeName(name string) error {
	if !nodeRE.MatchString(name) || strings.Contains(name, "..") {
		return refuse(http.StatusBadRequest, "malformed", "node %q: not a node name (lower-case letters, digits, . _ -)", short(name))
	}
	return nil
}

func short(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Get returns node's record (an empty one for a node never seen).
func (g *Registry) Get(ctx context.Context, node string) (*Record, error) {
	data, err := g.store.Get(ctx, NodeKey(node))
	if err != nil {
		return nil, err
	}
	return decodeRecord(node, data)
}

// update applies f to node's record under the store's lock and writes it
// (unless f returns state.ErrUnchanged), then refreshes the pending index.
func (g *Registry) update(ctx context.Context, node string, f func(*Record) error) (*Record, error) {
	var out *Record
	err := g.store.Update(ctx, NodeKey(node), func(old []byte) ([]byte, error) {
		r, err := decodeRecord(node, old)
		if err != nil {
			return nil, err
		}
		out = r
		if err := f(r); err != nil {
			return nil, err
		}
		return r.encode()
	})
	if err != nil {
		return nil, err
	}
	g.index(out)
	return out, nil
}

// csr reads a CSR and checks what it names: at most CN=NODE and no
// subject alternative names (the site decides the certificate's names).
func (g *Registry) csr(data, node string) (*x509.CertificateRequest, string, error) {
	if strings.TrimSpace(data) == "" {
		return nil, "", refuse(http.StatusBadRequest, "malformed", "no CSR")
	}
	csr, err := g.opts.ParseCSR([]byte(data))
	if err != nil {
		return nil, "", refuse(http.StatusBadRequest, "bad-csr", "%v", err)
	}
	if err := CheckCSRNames(csr, node); err != nil {
		return nil, "", err
	}
	fp, err := wire.Fingerprint(csr.PublicKey)
	if err != nil {
		return nil, "", refuse(http.StatusBadRequest, "bad-csr", "%v", err)
	}
	return csr, fp, nil
}

// CheckCSRNames refuses a CSR that asks for a name: its subject may be
// empty or CN=node (when node is not ""), and it may ask for no DNS name,
// IP address, e-mail address or URI: the site, not the node, says what a
// node is called.
func CheckCSRNames(csr *x509.CertificateRequest, node string) error {
	cn := csr.Subject.CommonName
	if cn != "" && node == "" {
		return refuse(http.StatusForbidden, "names", "CSR asks for CN %q: a credential's CSR names nothing; the site decides the certificate's names", short(cn))
	}
	if cn != "" && cn != node {
		return refuse(http.StatusForbidden, "names", "CSR asks for CN %q: a node's CSR may name only itself (CN=%s); the site decides the certificate's names", short(cn), node)
	}
	var extra []string
	for _, n := range csr.DNSNames {
		extra = append(extra, "DNS:"+short(n))
	}
	for _, ip := range csr.IPAddresses {
		extra = append(extra, "IP:"+ip.String())
	}
	for _, e := range csr.EmailAddresses {
		extra = append(extra, "email:"+short(e))
	}
	for _, u := range csr.URIs {
		extra = append(extra, "URI:"+short(u.String()))
	}
	if len(extra) > 0 {
		if len(extra) > 4 {
			extra = append(extra[:4], fmt.Sprintf("and %d more", len(extra)-4))
		}
		return refuse(http.StatusForbidden, "names", "CSR asks for subject alternative names (%s): the site decides the certificate's names, a CSR asks for none", strings.Join(extra, ", "))
	}
	if len(csr.Subject.Names) > 1 || len(csr.Subject.Organization) > 0 || len(csr.Subject.OrganizationalUnit) > 0 {
		return refuse(http.StatusForbidden, "names", "CSR's subject %q names more than the node: want CN=%s or nothing", short(csr.Subject.String()), node)
	}
	return nil
}

// Submit handles a node's CSR (from is its source address; mach what the
// inventory says of the MAC it claims, nil when the MAC is unknown):
//
//  1. check the request and the CSR;
//  2. decide, under the store's lock, and record the decision durably:
//     the node's own key is approved; another key of an enrolled node is
//     refused (and kept for an operator, who may approve it); a denied key
//     or a retired node is refused; otherwise the node's policy decides
//     (first-key and a pinned key's match approve, manual waits);
//  3. for an approved key without a current host certificate, sign one
//     and record it, then answer.
//
// A CSR submitted again gets the same answer: a client that lost the
// answer (serve killed before it) simply asks again.
func (g *Registry) Submit(ctx context.Context, req wire.EnrolRequest, mach *node.Machine, from string) (*wire.Status, error) {
	// 1. Check.
	if err := CheckNodeName(req.Node); err != nil {
		return nil, err
	}
	hw, err := net.ParseMAC(req.MAC)
	if err != nil || len(hw) != 6 {
		return nil, refuse(http.StatusBadRequest, "malformed", "mac %q: not a MAC address", short(req.MAC))
	}
	mac := hw.String()
	csr, fp, err := g.csr(req.CSR, req.Node)
	if err != nil {
		return nil, err
	}
	switch {
	case mach == nil:
		return nil, refuse(http.StatusForbidden, "unknown-node", "MAC %s is not in the site's inventory", mac)
	case mach.Name != req.Node:
		return nil, refuse(http.StatusForbidden, "wrong-mac", "MAC %s is not node %s's", mac, req.Node)
	}
	if err := g.loadIndex(ctx); err != nil {
		return nil, err
	}

	// 2. Decide and record.
	now := g.opts.Now()
	csrPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))
	var (
		st       = &wire.Status{Node: req.Node, Fingerprint: fp}
		refusal  *Refusal
		by       string
		enrolled string   // the other key, for the warning
		dropped  []string // pending CSRs dropped for the bound per MAC
	)
	rec, err := g.update(ctx, req.Node, func(r *Record) error {
		refusal, by, enrolled, dropped = nil, "", "", nil
		switch {
		case !r.Retired.IsZero():
			refusal = refuse(http.StatusForbidden, "retired", "node %s is retired: it gets nothing but the CRL", req.Node)
			return state.ErrUnchanged
		case r.Key == fp:
			if r.KeyCSR != "" {
				return state.ErrUnchanged
			}
			r.KeyCSR = csrPEM
			return nil
		case r.Key != "":
			enrolled = r.Key
			refusal = refuse(http.StatusForbidden, "key-mismatch", "node %s is enrolled with another key (%s): this key (%s) needs an operator's approval: bellbuild node approve %s --fingerprint %s",
				req.Node, wire.Short(r.Key), fp, req.Node, fp)
			r.addRefused(fp, from, now)
			dropped = g.addPending(r, fp, mac, from, csrPEM, now)
			return nil
		case slices.Contains(r.Denied, fp):
			refusal = refuse(http.StatusForbidden, "denied", "an operator denied this key of node %s (bellbuild node deny)", req.Node)
			return state.ErrUnchanged
		}
		switch mach.Enrol.Policy {
		case node.EnrolFirstKey:
			by = node.EnrolFirstKey
		case node.EnrolPinned:
			if fp == mach.Enrol.Pinned {
				by = node.EnrolPinned
				break
			}
			enrolled = mach.Enrol.Pinned
			refusal = refuse(http.StatusForbidden, "not-pinned", "node %s accepts only the key pinned in the site (%s), not %s", req.Node, wire.Short(mach.Enrol.Pinned), fp)
			r.addRefused(fp, from, now)
			dropped = g.addPending(r, fp, mac, from, csrPEM, now)
			return nil
		}
		if by != "" {
			r.Key, r.KeyCSR, r.Approved, r.ApprovedBy = fp, csrPEM, now, by
			r.Cert, r.CertSerial = "", ""
			r.dropPending(fp)
			return nil
		}
		dropped = g.addPending(r, fp, mac, from, csrPEM, now)
		return nil
	})
	if err != nil {
		return nil, err
	}
	g.flood(req.Node, mac, dropped)
	switch {
	case refusal != nil && enrolled != "":
		g.opts.Log.Warn("enrol: another key for an enrolled node refused", "node", req.Node, "mac", mac,
			"fingerprint", fp, "enrolled", enrolled, "from", from, "reason", refusal.Reason)
		g.opts.Counters.refused(refusal.Reason)
		return g.refusedStatus(st, refusal), refusal
	case refusal != nil:
		g.opts.Log.Info("enrol: refused", "node", req.Node, "mac", mac, "fingerprint", fp, "from", from, "reason", refusal.Reason)
		g.opts.Counters.refused(refusal.Reason)
		return g.refusedStatus(st, refusal), refusal
	case rec.Key == fp:
		if by != "" {
			g.opts.Log.Info("enrol: key approved", "node", req.Node, "fingerprint", fp, "by", by, "from", from)
		}
		// 3. The host certificate.
		return g.approved(ctx, rec, st)
	}
	if err := g.bound(ctx); err != nil {
		return nil, err
	}
	g.opts.Log.Info("enrol: pending", "node", req.Node, "mac", mac, "fingerprint", fp, "from", from)
	return pendingStatus(st), nil
}

func (g *Registry) refusedStatus(st *wire.Status, r *Refusal) *wire.Status {
	st.State, st.Message = wire.StateRefused, r.Message
	return st
}

func pendingStatus(st *wire.Status) *wire.Status {
	st.State = wire.StatePending
	st.Message = fmt.Sprintf("waiting for an operator: bellbuild node approve %s --fingerprint %s", st.Node, st.Fingerprint)
	st.Poll = wire.PollPath(st.Node, st.Fingerprint)
	return st
}

// addPending records (or refreshes) a pending CSR, keeping at most
// MaxPendingPerMAC for its MAC (the oldest go first); it returns the
// fingerprints dropped (for the caller to log once the update is done).
func (g *Registry) addPending(r *Record, fp, mac, from, csr string, now time.Time) []string {
	if i := r.pending(fp); i >= 0 {
		r.Pending[i].Last, r.Pending[i].From, r.Pending[i].MAC = now, from, mac
		return nil
	}
	r.Pending = append(r.Pending, Pending{Fingerprint: fp, MAC: mac, From: from, First: now, Last: now, CSR: csr})
	var dropped []string
	for {
		n := 0
		oldest := -1
		for i, p := range r.Pending {
			if p.MAC == mac {
				n++
				if oldest < 0 || p.First.Before(r.Pending[oldest].First) {
					oldest = i
				}
			}
		}
		if n <= g.opts.MaxPendingPerMAC {
			return dropped
		}
		dropped = append(dropped, r.Pending[oldest].Fingerprint)
		r.Pending = slices.Delete(r.Pending, oldest, oldest+1)
	}
}

// flood logs and counts the CSRs a bound dropped.
func (g *Registry) flood(node, mac string, dropped []string) {
	for _, fp := range dropped {
		g.opts.Log.Info("enrol: too many pending CSRs for one MAC: the oldest dropped", "node", node, "mac", mac,
			"fingerprint", fp, "limit", g.opts.MaxPendingPerMAC)
		g.opts.Counters.refused("flood")
	}
}

// approved answers an approved key: its current host certificate, signed
// now when there is none (first-key, or serve killed between approving
// and signing) or it has expired.
func (g *Registry) approved(ctx context.Context, rec *Record, st *wire.Status) (*wire.Status, error) {
	if !g.certCurrent(rec) {
		var err error
		if rec, err = g.signHost(ctx, rec.Node, rec.Key, rec.KeyCSR); err != nil {
			return nil, err
		}
		if rec.Key != st.Fingerprint {
			r := refuse(http.StatusForbidden, "key-mismatch", "node %s's key changed while its certificate was signed: ask again", rec.Node)
			return g.refusedStatus(st, r), r
		}
	}
	st.State, st.Cert = wire.StateApproved, rec.Cert
	return st, nil
}

// certCurrent reports whether rec holds a host certificate for its key
// that has not expired.
func (g *Registry) certCurrent(rec *Record) bool {
	if rec.Cert == "" {
		return false
	}
	b, _ := pem.Decode([]byte(rec.Cert))
	if b == nil {
		return false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return false
	}
	fp, err := wire.Fingerprint(c.PublicKey)
	return err == nil && fp == rec.Key && g.opts.Now().Before(c.NotAfter)
}

// signHost signs a host certificate for key fp of node (csrPEM is its
// CSR) and records it, serial first: the CA's own log has the serial
// before this returns, and the record gets it whether or not the key is
// still the node's.
func (g *Registry) signHost(ctx context.Context, nodeName, fp, csrPEM string) (*Record, error) {
	if g.ca == nil {
		return nil, errors.New("enrol: no CA to sign with")
	}
	csr, err := g.opts.ParseCSR([]byte(csrPEM))
	if err != nil {
		return nil, fmt.Errorf("node %s: the recorded CSR: %w", nodeName, err)
	}
	cert, err := g.ca.SignHost(ctx, nodeName, csr)
	if err != nil {
		return nil, g.caError(err)
	}
	g.opts.Counters.issued("host")
	now := g.opts.Now()
	return g.update(ctx, nodeName, func(r *Record) error {
		r.addIssued(cert.Serial, "host", now)
		if r.Key == fp && r.Retired.IsZero() {
			r.Cert, r.CertSerial = string(cert.PEM), cert.Serial
		}
		return nil
	})
}

func (g *Registry) caError(err error) error {
	if errors.Is(err, ErrRefused) {
		return refuse(http.StatusForbidden, "names", "%s", strings.TrimPrefix(err.Error(), ErrRefused.Error()+": "))
	}
	return err
}

// Poll answers a node asking about its key fp again.
func (g *Registry) Poll(ctx context.Context, nodeName, fp string) (*wire.Status, error) {
	if err := CheckNodeName(nodeName); err != nil {
		return nil, err
	}
	fp, err := wire.ParseFingerprint(fp)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, "malformed", "%v", err)
	}
	rec, err := g.Get(ctx, nodeName)
	if err != nil {
		return nil, err
	}
	st := &wire.Status{Node: nodeName, Fingerprint: fp}
	var r *Refusal
	switch {
	case !rec.Retired.IsZero():
		r = refuse(http.StatusForbidden, "retired", "node %s is retired: it gets nothing but the CRL", nodeName)
	case rec.Key == fp:
		return g.approved(ctx, rec, st)
	case rec.Key != "" && rec.pending(fp) >= 0:
		r = refuse(http.StatusForbidden, "key-mismatch", "node %s is enrolled with another key (%s): this key needs an operator's approval: bellbuild node approve %s --fingerprint %s",
			nodeName, wire.Short(rec.Key), nodeName, fp)
	case rec.pending(fp) >= 0:
		return pendingStatus(st), nil
	case slices.Contains(rec.Denied, fp):
		r = refuse(http.StatusForbidden, "denied", "an operator denied this key of node %s (bellbuild node deny)", nodeName)
	default:
		r = refuse(http.StatusNotFound, "unknown-key", "no enrolment of node %s with key %s: submit its CSR (POST %s)", nodeName, fp, wire.PathEnrol)
	}
	g.opts.Counters.refused(r.Reason)
	return g.refusedStatus(st, r), r
}

// Approval is what Approve did.
type Approval struct {
	// Serial is the new host certificate's.
	Serial string
	// Replaced is the key approved before, "" when none; its host
	// certificates are ReplacedSerials (for the caller to revoke).
	Replaced        string
	ReplacedSerials []string
}

// Approve makes the pending key fp node's own and signs its host
// certificate: an operator's `bellbuild node approve`. A fingerprint that
// no pending CSR of node has is refused, and nothing changes.
func (g *Registry) Approve(ctx context.Context, nodeName, fp string) (*Approval, error) {
	if err := CheckNodeName(nodeName); err != nil {
		return nil, err
	}
	fp, err := wire.ParseFingerprint(fp)
	if err != nil {
		return nil, err
	}
	rec, err := g.Get(ctx, nodeName)
	if err != nil {
		return nil, err
	}
	if !rec.Retired.IsZero() {
		return nil, fmt.Errorf("node %s is retired (since %s)", nodeName, rec.Retired.UTC().Format(time.RFC3339))
	}
	i := rec.pending(fp)
	if i < 0 {
		if rec.Key == fp {
			return nil, fmt.Errorf("node %s's key is %s already", nodeName, fp)
		}
		return nil, fmt.Errorf("node %s has no pending CSR with fingerprint %s (pending: %s): nothing approved", nodeName, fp, pendingList(rec))
	}
	p := rec.Pending[i]
	csr, err := g.opts.ParseCSR([]byte(p.CSR))
	if err != nil {
		return nil, fmt.Errorf("node %s: the pending CSR: %w", nodeName, err)
	}
	if g.ca == nil {
		return nil, errors.New("enrol: no CA to sign with")
	}
	cert, err := g.ca.SignHost(ctx, nodeName, csr)
	if err != nil {
		return nil, err
	}
	now := g.opts.Now()
	out := &Approval{Serial: cert.Serial}
	_, err = g.update(ctx, nodeName, func(r *Record) error {
		*out = Approval{Serial: cert.Serial}
		r.addIssued(cert.Serial, "host", now)
		if !r.Retired.IsZero() || r.pending(fp) < 0 {
			return fmt.Errorf("node %s's CSR %s went away while it was signed (certificate %s is unused)", nodeName, fp, cert.Serial)
		}
		if r.Key != "" && r.Key != fp {
			out.Replaced = r.Key
			for _, is := range r.Issued {
				if is.For == "host" && is.Serial != cert.Serial {
					out.ReplacedSerials = append(out.ReplacedSerials, is.Serial)
				}
			}
		}
		r.Key, r.KeyCSR, r.Approved, r.ApprovedBy = fp, p.CSR, now, "operator"
		r.Cert, r.CertSerial = string(cert.PEM), cert.Serial
		r.dropPending(fp)
		r.Denied = slices.DeleteFunc(r.Denied, func(d string) bool { return d == fp })
		return nil
	})
	if err != nil {
		return nil, err
	}
	g.opts.Log.Info("enrol: key approved", "node", nodeName, "fingerprint", fp, "by", "operator", "serial", cert.Serial)
	return out, nil
}

func pendingList(r *Record) string {
	if len(r.Pending) == 0 {
		return "none"
	}
	var fps []string
	for _, p := range r.Pending {
		fps = append(fps, p.Fingerprint)
	}
	return strings.Join(fps, ", ")
}

// Deny refuses every pending CSR of node: their keys are refused from now
// on. It returns the fingerprints denied.
func (g *Registry) Deny(ctx context.Context, nodeName string) ([]string, error) {
	if err := CheckNodeName(nodeName); err != nil {
		return nil, err
	}
	var denied []string
	_, err := g.update(ctx, nodeName, func(r *Record) error {
		denied = nil
		if len(r.Pending) == 0 {
			return fmt.Errorf("node %s has no pending CSR to deny", nodeName)
		}
		for _, p := range r.Pending {
			r.addDenied(p.Fingerprint)
			denied = append(denied, p.Fingerprint)
		}
		r.Pending = nil
		return nil
	})
	return denied, err
}

// Retire marks node retired and forgets its key and pending CSRs; the
// caller revokes its certificates (before, so that a crash between the
// two leaves them revoked). It returns the record as it was.
func (g *Registry) Retire(ctx context.Context, nodeName string) (*Record, error) {
	if err := CheckNodeName(nodeName); err != nil {
		return nil, err
	}
	var before Record
	now := g.opts.Now()
	_, err := g.update(ctx, nodeName, func(r *Record) error {
		before = *r
		if !r.Retired.IsZero() {
			return state.ErrUnchanged
		}
		r.Retired = now
		r.Key, r.KeyCSR, r.Cert, r.CertSerial, r.ApprovedBy = "", "", "", "", ""
		r.Approved = time.Time{}
		r.Pending, r.Refused = nil, nil
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &before, nil
}

// List returns the record of every node the state knows, by name.
func (g *Registry) List(ctx context.Context) ([]*Record, error) {
	keys, err := g.store.List(ctx, NodesPrefix)
	if err != nil {
		return nil, err
	}
	var out []*Record
	for _, k := range keys {
		r, err := g.Get(ctx, strings.TrimPrefix(k, NodesPrefix))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// loadIndex reads every record's pending CSRs once.
func (g *Registry) loadIndex(ctx context.Context) error {
	g.mu.Lock()
	loaded := g.loaded
	g.mu.Unlock()
	if loaded {
		return nil
	}
	recs, err := g.List(ctx)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.loaded {
		for _, r := range recs {
			g.indexLocked(r)
		}
		g.loaded = true
	}
	return nil
}

func (g *Registry) index(r *Record) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.indexLocked(r)
}

func (g *Registry) indexLocked(r *Record) {
	if len(r.Pending) == 0 {
		delete(g.pending, r.Node)
	} else {
		m := make(map[string]time.Time, len(r.Pending))
		for _, p := range r.Pending {
			m[p.Fingerprint] = p.First
		}
		g.pending[r.Node] = m
	}
	if g.opts.Counters != nil {
		n := 0
		for _, m := range g.pending {
			n += len(m)
		}
		g.opts.Counters.Pending.Set(float64(n))
	}
}

// bound drops the oldest pending CSRs, of any node, beyond MaxPending.
func (g *Registry) bound(ctx context.Context) error {
	for {
		g.mu.Lock()
		n := 0
		var node, fp string
		var first time.Time
		for nn, m := range g.pending {
			for f, t := range m {
				n++
				if node == "" || t.Before(first) || t.Equal(first) && nn+f < node+fp {
					node, fp, first = nn, f, t
				}
			}
		}
		g.mu.Unlock()
		if n <= g.opts.MaxPending {
			return nil
		}
		_, err := g.update(ctx, node, func(r *Record) error {
			if r.pending(fp) < 0 {
				return nil // gone already: write, to refresh the index
			}
			r.dropPending(fp)
			return nil
		})
		if err != nil {
			return err
		}
		g.opts.Log.Info("enrol: too many pending CSRs: the oldest dropped", "node", node, "fingerprint", fp, "limit", g.opts.MaxPending)
		g.opts.Counters.refused("flood")
	}
}
