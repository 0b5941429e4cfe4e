// Package pxe network-boots machines by their MAC address: one Server runs
// the DHCP server (package dhcp, with leases kept by package leases), the
// TFTP server (package tftp) and the HTTP server (package httpboot), which
// all read through one catalog (package catalog) and count into one set of
// metrics (package metrics), under one context.
//
// A machine's boot, and the log line each step writes:
//
//	dhcp-offer, dhcp-ack   firmware PXE gets an address and the iPXE loader's name
//	tftp-loader            it fetches the loader (undionly.kpxe, ipxe.efi) over TFTP
//	dhcp-offer, dhcp-ack   iPXE asks again and gets its boot script's URL
//	ipxe-script            iPXE fetches the script (HTTP, or TFTP with BootVia "tftp")
//	kernel, initrd         and the kernel and initramfs it names; then boots
//
// pxe never reads the site: it asks a Backend what a MAC boots, and the
// serve command adapts the inventory and the baked artifacts to it.
package pxe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/bellbuild/bellbuild/pxe/catalog"
	"github.com/bellbuild/bellbuild/pxe/dhcp"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/httpboot"
	"github.com/bellbuild/bellbuild/pxe/install"
	"github.com/bellbuild/bellbuild/pxe/leases"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
	"github.com/bellbuild/bellbuild/pxe/tftp"
)

// Machine is what one MAC address boots (see package node).
type Machine = node.Machine

// Image is the image a machine installs and upgrades to (see package node).
type Image = node.Image

// Backend says what a MAC address boots (see package node).
type Backend = node.Backend

// ErrUnknown is returned by a Backend for a MAC address that must not boot.
var ErrUnknown = node.ErrUnknown

// DHCP modes of Config.DHCP.
const (
	DHCPFull  = "full"
	DHCPProxy = "proxy"
	DHCPOff   = "off"
)

// LoaderDir is where Debian's ipxe package installs the loaders.
const LoaderDir = "/usr/lib/ipxe"

// Config configures a Server. The zero value plus ServerIP (or Interface)
// and Pools serves DHCP, TFTP on :69 and HTTP on :8080.
type Config struct {
	// Interface is the boot network's interface: DHCP listens only there,
	// and ServerIP defaults to its first IPv4 address.
	Interface string
	ServerIP  netip.Addr
	// DHCP is DHCPFull (default), DHCPProxy or DHCPOff.
	DHCP      string
	Pools     []dhcp.Pool
	LeaseTime time.Duration
	// LeaseFile keeps leases across restarts (empty: in memory only).
	LeaseFile string
	// SharedLeases, when set, keeps the leases there instead, shared with
	// the other servers that use it (leases.OpenShared): several servers
	// answer one boot network and never give an address to two MACs.
	SharedLeases leases.Shared
	// Loaders maps loader names to paths (default: DefaultLoaders(LoaderDir)).
	Loaders map[string]string
	// Artifacts is the directory of the artifacts Machine.Kernel and
	// Machine.Initrd name; Files the one of Machine.Files.
	Artifacts, Files string
	// DHCPAddr defaults to 0.0.0.0:67, ProxyAddr (proxy mode) to
	// 0.0.0.0:4011, TFTPAddr to 0.0.0.0:69, HTTPAddr to 0.0.0.0:8080.
	// "off" turns TFTP or HTTP off.
	DHCPAddr, ProxyAddr netip.AddrPort
	TFTPAddr, HTTPAddr  string
	// BootVia is "http" (default: iPXE fetches its script, kernel and
	// initramfs over HTTP) or "tftp" (for networks without HTTP).
	BootVia string
	TFTP    tftp.Config
	// HTTP bounds the HTTP server's connections: idle and read-header
	// timeouts and a cap (see httpboot.Limits for the defaults).
	HTTP httpboot.Limits
	// DHCPWorkers and DHCPQueue bound the DHCP server (see dhcp.Config).
	DHCPWorkers, DHCPQueue int
	// RelayPort is where relays are answered (default 67).
	RelayPort int
	// Log receives the boot-phase lines (default slog.Default()).
	Log *slog.Logger
	// Enrol, when set, serves the enrolment endpoint (package enrol)
	// over EnrolTLS on HTTPSAddr (default 0.0.0.0:8443). Its Backend
	// defaults to the server's, its Owners to the leases, its Counters to
	// counters on the server's registry; every machine's kernel command
	// line then names the endpoint, pins EnrolRoot (the site root CA's
	// fingerprint, wire.CertFingerprint) and passes on the boot NIC's
	// settings (wire.ParamURL, ParamCA, ParamNet).
	Enrol     *enrol.Config
	EnrolTLS  *tls.Config
	EnrolRoot string
	HTTPSAddr string
	// Status, when set, answers every HTTPS path but the enrolment's
	// (/v1/): the status page (package fleet's Page).
	Status http.Handler
	// Collectors are registered with the server's metrics (/metrics).
	Collectors []prometheus.Collector
	// Installs, when set, keeps the nodes' installs (package install):
	// a node whose Machine says Install boots the installer until it is
	// recorded installed, then from its disk; machines POST their
	// reports to /report (over HTTP, which must be on).
	Installs *install.Store
}

// DefaultLoaders returns the iPXE loaders found in dir, by name, with
// symlinks resolved (Debian links ipxe.efi to /boot).
func DefaultLoaders(dir string) map[string]string {
	out := map[string]string{}
	for _, n := range []string{"undionly.kpxe", "undionly.kkpxe", "ipxe.pxe", "ipxe.efi", "snponly.efi", "ipxe-arm64.efi"} {
		p, err := filepath.EvalSymlinks(filepath.Join(dir, n))
		if err == nil {
			out[n] = p
		}
	}
	return out
}

// Server is a running PXE server: its sockets are open once New returns.
type Server struct {
	cfg     Config
	leases  *leases.Store
	metrics *metrics.Metrics
	reg     *prometheus.Registry
	cat     *catalog.Catalog

	dhcp      *dhcp.Server
	dhcpConn  net.PacketConn
	proxyConn net.PacketConn
	tftp      *tftp.Server
	tftpConn  net.PacketConn
	http      http.Handler
	httpLn    net.Listener
	https     http.Handler
	httpsLn   net.Listener
}

// New opens the lease file and every socket (so that a port in use fails
// here, and tests can read the ports chosen), ready for Run.
func New(cfg Config, b Backend) (_ *Server, err error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, reg: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = metrics.New(s.reg, cfg.Log)
	for _, c := range cfg.Collectors {
		if err := s.reg.Register(c); err != nil {
			return nil, fmt.Errorf("pxe: metrics: %w", err)
		}
	}
	if cfg.DHCP != DHCPProxy {
		if cfg.SharedLeases != nil {
			s.leases, err = leases.OpenShared(context.Background(), cfg.SharedLeases, leases.Options{})
		} else {
			s.leases, err = leases.Open(cfg.LeaseFile, leases.Options{})
		}
		if err != nil {
			return nil, fmt.Errorf("pxe: %w", err)
		}
	}
	var owners catalog.Owners
	if s.leases != nil {
		owners = s.leases
	}
	extra := ""
	if cfg.Enrol != nil {
		if extra, err = s.openEnrol(b); err != nil {
			return nil, err
		}
	}
	httpBase := ""
	if cfg.HTTPAddr != "off" {
		if s.httpLn, err = net.Listen("tcp4", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("pxe: http: %w", err)
		}
		port := s.httpLn.Addr().(*net.TCPAddr).Port
		httpBase = fmt.Sprintf("http://%s:%d", cfg.ServerIP, port)
	}
	cc := catalog.Config{Loaders: cfg.Loaders, Artifacts: cfg.Artifacts, Files: cfg.Files, Cmdline: extra, ServeURL: httpBase}
	if cfg.Installs != nil {
		cc.Installs = cfg.Installs
	}
	s.cat, err = catalog.New(cc, b, owners)
	if err != nil {
		return nil, fmt.Errorf("pxe: %w", err)
	}
	if cfg.TFTPAddr != "off" {
		if s.tftpConn, err = net.ListenPacket("udp4", cfg.TFTPAddr); err != nil {
			return nil, fmt.Errorf("pxe: tftp: %w", err)
		}
		s.tftp = tftp.New(withDefault(cfg.TFTP, "tftp://"+cfg.ServerIP.String()), s.cat, s.metrics)
	}
	if s.httpLn != nil {
		hc := httpboot.Config{Base: httpBase, Gatherer: s.reg}
		if cfg.Installs != nil {
			var o install.Owners
			if s.leases != nil {
				o = s.leases
			}
			hc.Report = install.Handler(cfg.Installs, o, b, s.metrics)
		}
		s.http = httpboot.New(hc, s.cat, s.metrics)
	}
	if cfg.DHCP != DHCPOff {
		mode := dhcp.Full
		if cfg.DHCP == DHCPProxy {
			mode = dhcp.Proxy
		}
		dc := dhcp.Config{
			Mode: mode, ServerIP: cfg.ServerIP, Pools: cfg.Pools, LeaseTime: cfg.LeaseTime,
			Workers: cfg.DHCPWorkers, Queue: cfg.DHCPQueue, RelayPort: cfg.RelayPort,
			ScriptURL: s.scriptURL(httpBase),
		}
		if s.dhcp, err = dhcp.New(dc, b, s.leases, s.metrics); err != nil {
			return nil, fmt.Errorf("pxe: %w", err)
		}
		if s.dhcpConn, err = dhcp.Listen(cfg.Interface, cfg.DHCPAddr); err != nil {
			return nil, fmt.Errorf("pxe: %w", err)
		}
		if mode == dhcp.Proxy {
			if s.proxyConn, err = dhcp.Listen(cfg.Interface, cfg.ProxyAddr); err != nil {
				return nil, fmt.Errorf("pxe: %w", err)
			}
		}
	}
	return s, nil
}

// openEnrol opens the enrolment endpoint's listener and makes its
// handler; it returns the kernel command line parameters that name it.
func (s *Server) openEnrol(b Backend) (string, error) {
	ec := *s.cfg.Enrol
	if ec.Backend == nil {
		ec.Backend = b
	}
	if ec.Owners == nil && s.leases != nil {
		ec.Owners = s.leases
	}
	if ec.Counters == nil {
		ec.Counters = enrol.NewCounters(s.reg)
	}
	if s.cfg.EnrolTLS == nil {
		return "", errors.New("pxe: enrolment without a TLS configuration")
	}
	ln, err := net.Listen("tcp4", s.cfg.HTTPSAddr)
	if err != nil {
		return "", fmt.Errorf("pxe: https: %w", err)
	}
	s.httpsLn = ln
	s.https = enrol.New(ec)
	if s.cfg.Status != nil {
		mux := http.NewServeMux()
		mux.Handle("/v1/", s.https)
		mux.Handle("/", s.cfg.Status)
		s.https = mux
	}
	url := fmt.Sprintf("https://%s:%d", s.cfg.ServerIP, ln.Addr().(*net.TCPAddr).Port)
	args := wire.ParamURL + "=" + url + " " + wire.ParamNet + "=" + wire.NetFromIPXE
	if s.cfg.EnrolRoot != "" {
		args += " " + wire.ParamCA + "=" + s.cfg.EnrolRoot
	}
	return args, nil
}

func withDefault(c tftp.Config, base string) tftp.Config {
	if c.ScriptBase == "" {
		c.ScriptBase = base
	}
	return c
}

// scriptURL is the boot file iPXE gets: its script over HTTP, or over TFTP
// when BootVia is "tftp" (or HTTP is off).
func (s *Server) scriptURL(httpBase string) func(net.HardwareAddr) string {
	if s.cfg.BootVia == "tftp" || httpBase == "" {
		return func(mac net.HardwareAddr) string {
			return fmt.Sprintf("tftp://%s/ipxe/%s", s.cfg.ServerIP, mac)
		}
	}
	return func(mac net.HardwareAddr) string {
		return fmt.Sprintf("%s/ipxe?mac=%s", httpBase, mac)
	}
}

func (c *Config) fill() error {
	switch c.DHCP {
	case "":
		c.DHCP = DHCPFull
	case DHCPFull, DHCPProxy, DHCPOff:
	default:
		return fmt.Errorf("pxe: dhcp mode %q: want full, proxy or off", c.DHCP)
	}
	switch c.BootVia {
	case "":
		c.BootVia = "http"
	case "http", "tftp":
	default:
		return fmt.Errorf("pxe: boot via %q: want http or tftp", c.BootVia)
	}
	if err := c.HTTP.Check(); err != nil {
		return fmt.Errorf("pxe: %w", err)
	}
	if !c.ServerIP.IsValid() {
		if c.Interface == "" {
			return errors.New("pxe: need an interface or a server address")
		}
		ip, _, err := InterfaceAddr(c.Interface)
		if err != nil {
			return err
		}
		c.ServerIP = ip
	}
	if c.Loaders == nil {
		c.Loaders = DefaultLoaders(LoaderDir)
	}
	if !c.DHCPAddr.IsValid() {
		c.DHCPAddr = netip.AddrPortFrom(netip.IPv4Unspecified(), 67)
	}
	if !c.ProxyAddr.IsValid() {
		c.ProxyAddr = netip.AddrPortFrom(netip.IPv4Unspecified(), 4011)
	}
	if c.TFTPAddr == "" {
		c.TFTPAddr = "0.0.0.0:69"
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = "0.0.0.0:8080"
	}
	if c.HTTPSAddr == "" {
		c.HTTPSAddr = "0.0.0.0:8443"
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return nil
}

// InterfaceAddr returns the first IPv4 address of the interface ifname and
// its subnet.
func InterfaceAddr(ifname string) (netip.Addr, netip.Prefix, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("pxe: %w", err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("pxe: %s: %w", ifname, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok {
				ones, _ := n.Mask.Size()
				return ip, netip.PrefixFrom(ip, ones).Masked(), nil
			}
		}
	}
	return netip.Addr{}, netip.Prefix{}, fmt.Errorf("pxe: interface %s has no IPv4 address", ifname)
}

// Run serves until ctx is done or a server fails, then stops them all and
// closes the lease file.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				once.Do(func() { firstErr = fmt.Errorf("pxe: %s: %w", name, err) })
				cancel()
			}
		}()
	}
	if s.dhcpConn != nil {
		run("dhcp", func(ctx context.Context) error { return s.dhcp.Serve(ctx, s.dhcpConn) })
	}
	if s.proxyConn != nil {
		run("proxy dhcp", func(ctx context.Context) error { return s.dhcp.Serve(ctx, s.proxyConn) })
	}
	if s.tftpConn != nil {
		run("tftp", func(ctx context.Context) error { return s.tftp.Serve(ctx, s.tftpConn) })
	}
	if s.httpLn != nil {
		run("http", func(ctx context.Context) error { return httpboot.Serve(ctx, s.httpLn, s.http, s.cfg.HTTP) })
	}
	if s.httpsLn != nil {
		run("https", func(ctx context.Context) error {
			return httpboot.ServeTLS(ctx, s.httpsLn, s.https, s.cfg.HTTP, s.cfg.EnrolTLS)
		})
	}
	s.cfg.Log.Info("serving", "server", s.cfg.ServerIP.String(), "dhcp", s.cfg.DHCP,
		"dhcp_addr", addrString(s.dhcpConn), "tftp", addrString(s.tftpConn), "http", addrString(s.httpLn), "https", addrString(s.httpsLn),
		"boot_via", s.cfg.BootVia, "leases", s.cfg.LeaseFile)
	wg.Wait()
	s.close()
	return firstErr
}

func (s *Server) close() {
	for _, c := range []interface{ Close() error }{s.dhcpConn, s.proxyConn, s.tftpConn, s.httpLn, s.httpsLn} {
		if c != nil {
			c.Close()
		}
	}
	if s.leases != nil {
		if err := s.leases.Close(); err != nil {
			s.cfg.Log.Error("closing leases", "err", err)
		}
	}
	if s.cat != nil {
		s.cat.Close()
	}
}

func addrString(c any) string {
	switch v := c.(type) {
	case net.PacketConn:
		if v != nil {
			return v.LocalAddr().String()
		}
	case net.Listener:
		if v != nil {
			return v.Addr().String()
		}
	}
	return "off"
}

// DHCPAddr, TFTPAddr and HTTPAddr are the addresses the servers listen on
// (nil when off).
func (s *Server) DHCPAddr() net.Addr { return localAddr(s.dhcpConn) }

// TFTPAddr: see DHCPAddr.
func (s *Server) TFTPAddr() net.Addr { return localAddr(s.tftpConn) }

// HTTPSAddr is the enrolment endpoint's address (nil when off).
func (s *Server) HTTPSAddr() net.Addr {
	if s.httpsLn == nil {
		return nil
	}
	return s.httpsLn.Addr()
}

// HTTPAddr: see DHCPAddr.
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLn == nil {
		return nil
	}
	return s.httpLn.Addr()
}

func localAddr(c net.PacketConn) net.Addr {
	if c == nil {
		return nil
	}
	return c.LocalAddr()
}

// Leases is the server's lease store (nil in proxy mode).
func (s *Server) Leases() *leases.Store { return s.leases }

// Registry is the server's Prometheus registry (what /metrics serves).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Metrics are the server's counters.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }
