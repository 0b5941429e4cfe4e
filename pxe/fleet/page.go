package fleet

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/x509"
	"embed"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// PageConfig configures the status page (Page).
type PageConfig struct {
	// Inventory, Recorder and Enrolments make the view (View).
	Inventory  Inventory
	Recorder   *Recorder
	Enrolments Enrolments
	// Stale is the view's (default DefaultStale).
	Stale time.Duration
	// Users is the site PKI's users CA: a client certificate it signed
	// may read the page (the TLS configuration must ask for client
	// certificates and trust it).
	Users *x509.Certificate
	// CRL, when set, gives the site's CRLs (PEM): a revoked user
	// certificate is refused (and so is every one while they cannot be
	// read).
	CRL func(ctx context.Context) ([]byte, error)
	// Token, when set, is also accepted, as "Authorization: Bearer TOKEN"
	// (for scripts and `bellbuild status --server`).
	Token string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Log (default slog.Default()).
	Log *slog.Logger
}

//go:embed page.html
var pageFS embed.FS

var pageT = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"short": ShortHash,
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return Ago(now.Sub(t))
	},
	"class": func(state string) string { return strings.ReplaceAll(state, " ", "-") },
	"utc":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
}).ParseFS(pageFS, "page.html"))

// Page is serve's status page (server-rendered HTML, no script, no asset
// from elsewhere):
//
//	GET /              the fleet: counts per state, one row per node;
//	                   ?sort=COLUMN&desc=1 orders it, ?state=STATE filters
//	GET /node/NAME     a node: its last reports, newest first, and their
//	                   errors
//	GET /status.json   the view as JSON (Status)
//
// Every path needs a user certificate from the site PKI (Users) or the
// token. Nothing secret is shown: reports carry no secret value (the
// applier shows each as its reference).
func Page(cfg PageConfig) http.Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	p := &page{cfg: cfg}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", p.fleet)
	mux.HandleFunc("GET /status.json", p.json)
	mux.HandleFunc("GET /node/{node}", p.node)
	return p.auth(mux)
}

type page struct{ cfg PageConfig }

// auth lets through a request with a user certificate or the token.
func (p *page) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.user(r) {
			next.ServeHTTP(w, r)
			return
		}
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && p.cfg.Token != "" &&
			subtle.ConstantTimeCompare([]byte(tok), []byte(p.cfg.Token)) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprintln(w, "the status page needs a user certificate from the site PKI (bellbuild pki issue user) or serve's --status-auth token")
	})
}

// user says whether the request came with a certificate of the users
// CA (TLS has verified its chain and validity).
func (p *page) user(r *http.Request) bool {
	if p.cfg.Users == nil || r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return false
	}
	leaf := r.TLS.PeerCertificates[0]
	if leaf.CheckSignatureFrom(p.cfg.Users) != nil {
		return false
	}
	if p.cfg.CRL == nil {
		return true
	}
	data, err := p.cfg.CRL(r.Context())
	if err != nil {
		p.cfg.Log.Error("status page: the CRLs cannot be read: refusing user certificates", "err", err)
		return false
	}
	revoked, err := isRevoked(data, p.cfg.Users, leaf)
	if err != nil {
		p.cfg.Log.Error("status page: the CRLs cannot be read: refusing user certificates", "err", err)
		return false
	}
	return !revoked
}

// isRevoked looks leaf up in the CRLs (PEM) that users signed.
func isRevoked(data []byte, users, leaf *x509.Certificate) (bool, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false, nil
		}
		if b.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return false, fmt.Errorf("CRL: %w", err)
		}
		if crl.CheckSignatureFrom(users) != nil {
			continue // another CA's
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
				return true, nil
			}
		}
	}
}

func (p *page) view(ctx context.Context) ([]Row, error) {
	return View(ctx, p.cfg.Inventory, p.cfg.Recorder, p.cfg.Enrolments, ViewOptions{Stale: p.cfg.Stale, Now: p.cfg.Now})
}

// columns are the table's sortable columns, by their ?sort= name.
var columns = []struct{ Key, Title string }{
	{"node", "Node"}, {"profile", "Profile"}, {"state", "State"}, {"config", "Config (desired/applied)"},
	{"image", "Image (desired/running)"}, {"seen", "Last seen"}, {"errors", "Errors"},
}

func sortRows(rows []Row, by string, desc bool) {
	rank := func(s string) int { return slices.Index(States, s) }
	less := map[string]func(a, b Row) bool{
		"node":    func(a, b Row) bool { return a.Node < b.Node },
		"profile": func(a, b Row) bool { return a.Profile < b.Profile },
		"state":   func(a, b Row) bool { return rank(a.State) < rank(b.State) },
		"config":  func(a, b Row) bool { return a.AppliedConfig < b.AppliedConfig },
		"image":   func(a, b Row) bool { return a.RunningImage < b.RunningImage },
		"seen":    func(a, b Row) bool { return a.LastSeen.Before(b.LastSeen) },
		"errors":  func(a, b Row) bool { return a.Errors < b.Errors },
	}[by]
	if less == nil {
		return
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if desc {
			return less(rows[j], rows[i])
		}
		return less(rows[i], rows[j])
	})
}

func (p *page) fleet(w http.ResponseWriter, r *http.Request) {
	rows, err := p.view(r.Context())
	if err != nil {
		p.fail(w, err)
		return
	}
	counts := Counts(rows)
	by, desc := r.URL.Query().Get("sort"), r.URL.Query().Get("desc") == "1"
	if by == "" {
		by = "state"
	}
	sortRows(rows, by, desc)
	filter := r.URL.Query().Get("state")
	if filter != "" {
		rows = slices.DeleteFunc(rows, func(r Row) bool { return r.State != filter })
	}
	type col struct{ Key, Title, Link, Mark string }
	var cols []col
	for _, c := range columns {
		q := "?sort=" + c.Key
		mark := ""
		if c.Key == by {
			if desc {
				mark = " ▼"
			} else {
				mark, q = " ▲", q+"&desc=1"
			}
		}
		if filter != "" {
			q += "&state=" + template.URLQueryEscaper(filter)
		}
		cols = append(cols, col{c.Key, c.Title, q, mark})
	}
	type count struct {
		State string
		N     int
	}
	var cs []count
	for _, s := range States {
		cs = append(cs, count{s, counts[s]})
	}
	p.render(w, "fleet", map[string]any{"Rows": rows, "Cols": cols, "Counts": cs, "Filter": filter, "Now": p.cfg.Now(), "N": sumCounts(counts)})
}

func sumCounts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func (p *page) node(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("node")
	rows, err := p.view(r.Context())
	if err != nil {
		p.fail(w, err)
		return
	}
	i := slices.IndexFunc(rows, func(r Row) bool { return r.Node == name })
	if i < 0 {
		http.Error(w, "no such node in the site's inventory", http.StatusNotFound)
		return
	}
	h, err := p.cfg.Recorder.History(r.Context(), name)
	if err != nil {
		p.fail(w, err)
		return
	}
	reps := slices.Clone(h.Reports)
	slices.Reverse(reps)
	p.render(w, "node", map[string]any{"Row": rows[i], "Reports": reps, "Now": p.cfg.Now()})
}

func (p *page) json(w http.ResponseWriter, r *http.Request) {
	o := ViewOptions{Stale: p.cfg.Stale, Now: p.cfg.Now}
	if s := r.URL.Query().Get("stale"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			http.Error(w, "stale: want a positive duration", http.StatusBadRequest)
			return
		}
		o.Stale = d
	}
	rows, err := View(r.Context(), p.cfg.Inventory, p.cfg.Recorder, p.cfg.Enrolments, o)
	if err != nil {
		p.fail(w, err)
		return
	}
	data, err := json.MarshalIndent(Status{Counts: Counts(rows), Nodes: rows}, "", "  ")
	if err != nil {
		p.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(append(data, '\n'))
}

// render executes the whole page before sending any of it.
func (p *page) render(w http.ResponseWriter, name string, data any) {
	var b bytes.Buffer
	if err := pageT.ExecuteTemplate(&b, name, data); err != nil {
		p.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	w.Write(b.Bytes())
}

func (p *page) fail(w http.ResponseWriter, err error) {
	p.cfg.Log.Error("status page", "err", err)
	http.Error(w, "internal error (see serve's log)", http.StatusInternalServerError)
}

// ShortHash is how the fleet's views show a hash: its first 12 hex
// digits, "-" for none.
func ShortHash(h string) string {
	h = strings.TrimPrefix(h, "sha256:")
	switch {
	case h == "":
		return "-"
	case len(h) > 12:
		return h[:12]
	}
	return h
}

// Ago is how the fleet's views show how long ago something was seen.
func Ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
