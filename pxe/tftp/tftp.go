// Package tftp is the TFTP server of `bellbuild serve` (pin/tftp): it sends
// the iPXE loaders, and for clients that boot without HTTP the boot script,
// kernel and initramfs, from the catalog. It negotiates blksize and tsize,
// retransmits after Config.Timeout (not the library's 5 s, so one lost
// packet costs half a second) and without pin's random extra backoff.
// Requests are read-only; write requests are refused.
package tftp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/bellbuild/bellbuild/pxe/catalog"
	"github.com/bellbuild/bellbuild/pxe/metrics"
)

// Config tunes the server. Zero values get the defaults named below.
type Config struct {
	// ScriptBase is where boot scripts served over TFTP fetch the kernel
	// and initramfs (e.g. "tftp://192.0.2.1").
	ScriptBase string
	// Timeout is the retransmission timeout (default 500 ms: one lost
	// packet costs half a second, not pin's default 5 s).
	Timeout time.Duration
	// Retries before a transfer is abandoned (default 10).
	Retries int
	// Window is how many blocks are sent ahead of the client's ACKs
	// (default 16; 1 is lock-step, one block per round trip). The client
	// still ACKs every block, so any RFC 1350 client works: send-ahead only
	// saves the server's wait for each ACK, 4–5× the lock-step rate on a
	// LAN. A lost block costs one resend of the window's unacknowledged
	// rest, and the window adapts to a client that drops bursts (see
	// pxe/tftp/pin/PATCHES.md for the fix this needs in pin). The iPXE
	// loaders, which firmware fetches, are always sent in lock-step.
	Window uint
}

// DefaultWindow is Config.Window's default, and MaxWindow its largest
// value (pin's).
const (
	DefaultWindow = 16
	MaxWindow     = 60
)

// Server serves the catalog over TFTP.
type Server struct {
	cfg Config
	cat *catalog.Catalog
	m   *metrics.Metrics
	srv *tftp.Server
}

// New returns a Server. m may be nil.
func New(cfg Config, cat *catalog.Catalog, m *metrics.Metrics) *Server {
	if cfg.Timeout == 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	if cfg.Retries == 0 {
		cfg.Retries = 10
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if m == nil {
		m = metrics.New(nil, nil)
	}
	s := &Server{cfg: cfg, cat: cat, m: m}
	s.srv = tftp.NewServer(s.read, nil)
	s.srv.SetTimeout(cfg.Timeout)
	s.srv.SetRetries(cfg.Retries)
	s.srv.SetAnticipate(cfg.Window)
	// No random extra backoff: on a LAN it only stalls the transfer.
	s.srv.SetBackoff(func(int) time.Duration { return 0 })
	s.srv.SetHook(hook{m})
	return s
}

// Serve answers requests on conn until ctx is done; then it waits for the
// transfers under way to end (each ends within Timeout×Retries).
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	stop := context.AfterFunc(ctx, s.srv.Shutdown)
	defer stop()
	err := s.srv.Serve(conn)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Open resolves a read request for name from the client at from: what the
// server sends, or why not. Names are relative to the server's root; one
// leading slash names the same file (GRUB asks for /grub/grub.cfg, its
// prefix being /grub), as a TFTP server confined to its directory reads it.
func (s *Server) Open(ctx context.Context, name string, from netip.Addr) (*catalog.File, error) {
	if rest, ok := strings.CutPrefix(name, "/"); ok && !strings.HasPrefix(rest, "/") {
		name = rest
	}
	return s.cat.Open(ctx, name, from, s.cfg.ScriptBase)
}

func (s *Server) read(name string, rf io.ReaderFrom) error {
	var from netip.Addr
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		a := ot.RemoteAddr()
		from, _ = netip.AddrFromSlice(a.IP)
		from = from.Unmap()
	}
	ctx := context.Background()
	f, err := s.Open(ctx, name, from)
	if err != nil {
		reason := "not-found"
		if errors.Is(err, catalog.ErrBadName) {
			reason = "bad-name"
		} else if errors.Is(err, fs.ErrPermission) {
			reason = "forbidden"
		}
		s.m.Drop("tftp", reason)
		s.m.Log.Info("tftp: refused", "from", from.String(), "file", name, "err", err)
		// pin sends err's text to the client: keep paths out of it.
		return fmt.Errorf("%s: %s", name, reason)
	}
	defer f.Close()
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ot.SetSize(f.Size)
	}
	if w, ok := rf.(windowed); ok && f.Phase == metrics.PhaseLoader {
		// Firmware fetches the loaders: its PXE client polls the NIC,
		// whose ring may hold only a few packets. They are small; send
		// them in lock-step.
		w.SetWindow(1)
	}
	start := time.Now()
	args := []any{"proto", "tftp", "from", from.String(), "file", name, "size", f.Size}
	if f.Node != "" {
		args = append(args, "node", f.Node)
	}
	mac := f.MAC
	if mac == nil {
		mac = s.macOf(from)
	}
	s.m.Boot(f.Phase, mac, args...)
	// pin reads one block at a time: read the file in bigger pieces
	// (one read(2) per 256 KiB instead of one per block).
	n, err := rf.ReadFrom(bufio.NewReaderSize(f, 256<<10))
	s.m.Bytes.WithLabelValues("tftp").Add(float64(n))
	if err != nil && n == 0 {
		// UEFI firmware asks for the size (tsize) and ends the transfer
		// after the options: not a failure.
		s.m.Transfers.WithLabelValues("tftp", "aborted").Inc()
		s.m.Log.Info("tftp: client ended the transfer before any data (a size probe)", "from", from.String(), "file", name, "err", err)
		return err
	}
	if err != nil {
		s.m.Transfers.WithLabelValues("tftp", "error").Inc()
		s.m.Log.Warn("tftp: transfer failed", "from", from.String(), "file", name, "sent", n, "err", err)
		return err
	}
	s.m.Transfers.WithLabelValues("tftp", "ok").Inc()
	s.m.Log.Debug("tftp: sent", "from", from.String(), "file", name, "bytes", n, "took", time.Since(start))
	return nil
}

// macOf is the MAC leased the client's address, for the loader's log line
// (nil when unknown, e.g. in proxy mode).
func (s *Server) macOf(from netip.Addr) net.HardwareAddr {
	if o, ok := s.cat.Owners(); ok {
		if mac, ok := o.MACFor(from); ok {
			return mac
		}
	}
	return nil
}

// windowed is a transfer whose send-ahead window can be set (our pin
// patch).
type windowed interface{ SetWindow(n uint) }

// hook counts requests pin could not even parse.
type hook struct{ m *metrics.Metrics }

func (h hook) OnSuccess(tftp.TransferStats) {}

func (h hook) OnFailure(st tftp.TransferStats, err error) {
	if st.Filename == "" {
		// Serve's loop: a datagram that is not a valid request.
		h.m.Drop("tftp", "malformed")
		h.m.Log.Debug("tftp: bad request", "err", err)
	}
}
