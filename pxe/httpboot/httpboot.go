// Package httpboot is the HTTP side of `bellbuild serve`:
//
//	GET /ipxe?mac=MAC          MAC's iPXE boot script (rendered whole, then sent)
//	GET /boot/MAC/kernel       the kernel MAC boots (Range requests work)
//	GET /boot/MAC/initrd       its initramfs
//	GET /files/NAME            the asking machine's own file NAME, only from
//	                           the address leased to that machine
//	GET /image/MAC/FILE        the image MAC installs and upgrades to
//	                           (manifest.json, disk, root, kernel, initrd;
//	                           Range requests work)
//	POST /report               a machine's install or upgrade report
//	GET /NAME                  an iPXE loader (UEFI HTTP boot)
//	GET /metrics               Prometheus metrics
//	GET /healthz               "ok"
//
// Everything a client reads is resolved by package catalog, the same way
// as over TFTP. Serve bounds what clients can hold (Limits): idle,
// read-header and stall timeouts, and a cap on connections beyond which
// new ones wait.
package httpboot

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bellbuild/bellbuild/pxe/catalog"
	"github.com/bellbuild/bellbuild/pxe/metrics"
)

// Config tunes the handler.
type Config struct {
	// Base is the URL scripts fetch the kernel and initramfs from
	// ("http://192.0.2.1:8080"); empty means the Host the script was asked
	// from.
	Base string
	// Gatherer serves /metrics (none when nil).
	Gatherer prometheus.Gatherer
	// Report serves POST /report (none when nil).
	Report http.Handler
}

type handler struct {
	cfg Config
	cat *catalog.Catalog
	m   *metrics.Metrics
}

// New returns the HTTP handler. m may be nil.
func New(cfg Config, cat *catalog.Catalog, m *metrics.Metrics) http.Handler {
	if m == nil {
		m = metrics.New(nil, nil)
	}
	h := &handler{cfg: cfg, cat: cat, m: m}
	mux := http.NewServeMux()
	mux.Handle("GET /ipxe", h.count("ipxe", http.HandlerFunc(h.script)))
	mux.Handle("GET /boot/{mac}/{what}", h.count("boot", http.HandlerFunc(h.file)))
	mux.Handle("GET /files/{name}", h.count("files", http.HandlerFunc(h.file)))
	mux.Handle("GET /image/{mac}/{what}", h.count("image", http.HandlerFunc(h.file)))
	if cfg.Report != nil {
		mux.Handle("POST /report", h.count("report", cfg.Report))
	}
	mux.Handle("GET /healthz", h.count("healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})))
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.Handle("GET /{name}", h.count("loader", http.HandlerFunc(h.file)))
	return mux
}

func (h *handler) script(w http.ResponseWriter, r *http.Request) {
	mac, err := net.ParseMAC(r.URL.Query().Get("mac"))
	if err != nil {
		http.Error(w, "want ?mac=MAC", http.StatusBadRequest)
		return
	}
	f, err := h.cat.Script(r.Context(), mac, h.base(r))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	defer f.Close()
	args := []any{"proto", "http", "from", client(r).String(), "node", f.Node}
	if f.Mode != "" {
		args = append(args, "boot", f.Mode)
	}
	h.m.Boot(f.Phase, mac, args...)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	http.ServeContent(w, r, "", f.ModTime, f)
}

func (h *handler) file(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	from := client(r)
	f, err := h.cat.Open(r.Context(), name, from, h.base(r))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	defer f.Close()
	// One line per phase: not again for every later Range request
	// (except for an image's, which an installer asks for in a few
	// ranges, and again when it resumes).
	if rg := r.Header.Get("Range"); rg == "" || strings.HasPrefix(rg, "bytes=0-") || f.Phase == metrics.PhaseImage {
		args := []any{"proto", "http", "from", from.String(), "file", name, "size", f.Size}
		if rg != "" {
			args = append(args, "range", strings.TrimPrefix(rg, "bytes="))
		}
		if f.Node != "" {
			args = append(args, "node", f.Node)
		}
		h.m.Boot(f.Phase, f.MAC, args...)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if f.Phase == metrics.PhaseFile {
		w.Header().Set("Cache-Control", "no-store")
	}
	http.ServeContent(w, r, "", f.ModTime, f)
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, reason := http.StatusInternalServerError, "error"
	switch {
	case errors.Is(err, catalog.ErrBadName):
		code, reason = http.StatusBadRequest, "bad-name"
	case errors.Is(err, fs.ErrPermission):
		code, reason = http.StatusForbidden, "forbidden"
	case errors.Is(err, fs.ErrNotExist):
		code, reason = http.StatusNotFound, "not-found"
	}
	if code == http.StatusInternalServerError {
		h.m.Error("http", err, "path", r.URL.Path)
	} else {
		h.m.Drop("http", reason)
		h.m.Log.Info("http: refused", "from", client(r).String(), "path", r.URL.Path, "err", err)
	}
	// The client learns the status, not our paths.
	http.Error(w, http.StatusText(code), code)
}

func (h *handler) base(r *http.Request) string {
	if h.cfg.Base != "" {
		return h.cfg.Base
	}
	return "http://" + r.Host
}

// client is the request's source address.
func client(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// count records each request's status and body bytes.
func (h *handler) count(name string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(cw, r)
		h.m.HTTPRequests.WithLabelValues(name, strconv.Itoa(cw.code)).Inc()
		h.m.Bytes.WithLabelValues("http").Add(float64(cw.n))
		if name == "boot" || name == "files" || name == "loader" || name == "image" {
			result := "ok"
			if cw.code >= 400 {
				result = "error"
			}
			h.m.Transfers.WithLabelValues("http", result).Inc()
		}
	})
}

type countingWriter struct {
	http.ResponseWriter
	code int
	n    int64
}

func (c *countingWriter) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// Serve serves h on l within lim until ctx is done, then shuts down
// gracefully.
func Serve(ctx context.Context, l net.Listener, h http.Handler, lim Limits) error {
	return ServeTLS(ctx, l, h, lim, nil)
}

// ServeTLS is Serve over TLS with cfg (plain HTTP when cfg is nil). The
// limits bound connections before their handshake: a client that never
// finishes one holds a slot only until the read-header timeout.
func ServeTLS(ctx context.Context, l net.Listener, h http.Handler, lim Limits, cfg *tls.Config) error {
	if err := lim.Check(); err != nil {
		return err
	}
	lim.fill()
	ll := newLimitListener(l, lim)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		ConnState:         ll.connState,
	}
	l = ll
	if cfg != nil {
		l = tls.NewListener(ll, cfg)
		srv.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are the client's
	}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
