// Package dhcp is the DHCPv4 server of `bellbuild serve`: it gives the
// machines of the inventory an address (reserved, or from a pool, kept in a
// leases.Store) and the PXE fields that start their network boot.
//
// A firmware PXE client (option 60 "PXEClient") gets the loader for its
// architecture (option 93: BIOS → undionly.kpxe, x86-64 UEFI → ipxe.efi,
// arm64 UEFI → GRUB's grubnetaa64.efi, which reads its configuration over
// TFTP: package grub) from TFTP; iPXE itself (option 77 "iPXE") gets the
// URL of its boot script instead, so it does not chainload itself forever.
// A client whose firmware's architecture is not its image's gets no boot
// file (and a warning in the log). Relayed requests (giaddr set) get an address of the pool
// whose subnet holds the relay and are answered to the relay. In proxy
// mode the server answers only the PXE part, beside another DHCP server
// that hands out the addresses. MAC addresses the Backend does not know are
// ignored.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/bellbuild/bellbuild/pxe/leases"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
)

// Mode says how much of DHCP the server does.
type Mode int

const (
	// Full hands out addresses and the PXE fields.
	Full Mode = iota
	// Proxy answers only PXE clients, only with the PXE fields (no
	// address), beside another DHCP server (PXE spec "proxyDHCP").
	Proxy
)

// ParseMode parses "full" or "proxy".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "full":
		return Full, nil
	case "proxy":
		return Proxy, nil
	}
	return 0, fmt.Errorf("dhcp mode %q: want full or proxy", s)
}

// Pool is a range of addresses to lease on one subnet.
type Pool struct {
	Range leases.Range
	// Subnet holds Range. It gives the netmask (option 1) and selects the
	// pool: relayed requests by their giaddr, local ones by Config.ServerIP.
	Subnet netip.Prefix
	// Router is option 3; for a relayed pool it defaults to the relay.
	Router netip.Addr
	// DNS is option 6.
	DNS []netip.Addr
}

// Loaders names the first-stage loader each firmware gets over TFTP.
type Loaders struct {
	BIOS  string // option 93 = 0 (default "undionly.kpxe")
	EFI64 string // 7 and 9: x86-64 UEFI (default "ipxe.efi")
	ARM64 string // 11: arm64 UEFI (default "grubnetaa64.efi")
}

// Config configures a Server. Zero values get the defaults named below.
type Config struct {
	Mode Mode
	// ServerIP is this server's address on the boot network: siaddr (next
	// server), option 54 and option 66.
	ServerIP netip.Addr
	Pools    []Pool
	// LeaseTime defaults to one hour.
	LeaseTime time.Duration
	Loaders   Loaders
	// ScriptURL returns the boot file for iPXE (user class "iPXE"): the
	// URL of mac's boot script. Without it iPXE gets nothing to boot.
	ScriptURL func(mac net.HardwareAddr) string
	// Workers bounds the REQUESTs, RELEASEs and DECLINEs handled at once
	// (default 256: a worker mostly waits for its lease record to reach
	// the disk, and one fsync serves every record of its batch, so many
	// workers make large batches; other packets have workers of their
	// own). Queue bounds the packets waiting (default 4096 of those, and
	// as many others). A packet that finds its queue full is dropped and
	// counted.
	Workers, Queue int
	// RelayPort is where relays are answered (default 67); ClientPort is
	// where clients are (default 68). Tests change them.
	RelayPort, ClientPort int
}

func (c *Config) fill() {
	if c.LeaseTime == 0 {
		c.LeaseTime = time.Hour
	}
	if c.Loaders.BIOS == "" {
		c.Loaders.BIOS = "undionly.kpxe"
	}
	if c.Loaders.EFI64 == "" {
		c.Loaders.EFI64 = "ipxe.efi"
	}
	if c.Loaders.ARM64 == "" {
		c.Loaders.ARM64 = "grubnetaa64.efi"
	}
	if c.Workers == 0 {
		c.Workers = 256
	}
	if c.Queue == 0 {
		c.Queue = 4096
	}
	if c.RelayPort == 0 {
		c.RelayPort = dhcpv4.ServerPort
	}
	if c.ClientPort == 0 {
		c.ClientPort = dhcpv4.ClientPort
	}
}

// Server answers DHCP requests.
type Server struct {
	cfg     Config
	backend node.Backend
	leases  *leases.Store
	m       *metrics.Metrics
}

// New returns a Server. leases may be nil in Proxy mode; m may be nil.
func New(cfg Config, b node.Backend, l *leases.Store, m *metrics.Metrics) (*Server, error) {
	cfg.fill()
	if m == nil {
		m = metrics.New(nil, nil)
	}
	if !cfg.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcp: server address %v is not IPv4", cfg.ServerIP)
	}
	if cfg.Mode == Full {
		if l == nil {
			return nil, errors.New("dhcp: full mode needs a lease store")
		}
		if len(cfg.Pools) == 0 {
			return nil, errors.New("dhcp: full mode needs at least one pool")
		}
	}
	for _, p := range cfg.Pools {
		if !p.Subnet.Contains(p.Range.Start) || !p.Subnet.Contains(p.Range.End) {
			return nil, fmt.Errorf("dhcp: pool %s is not inside subnet %s", p.Range, p.Subnet)
		}
	}
	return &Server{cfg: cfg, backend: b, leases: l, m: m}, nil
}

// Drop reasons (the "reason" label of bellbuild_pxe_dhcp_dropped_total).
const (
	DropMalformed   = "malformed"
	DropNotRequest  = "not-request"
	DropUnknownMAC  = "unknown-mac"
	DropOtherServer = "other-server"
	DropNoPool      = "no-pool"
	DropNotPXE      = "not-pxe"
	DropQueueFull   = "queue-full"
	DropUnsupported = "unsupported"
	DropBackend     = "backend-error"
	DropLease       = "lease-error"
	DropPanic       = "panic"
)

// dropError is why a packet got no answer.
type dropError struct {
	reason string
	err    error
}

func (e *dropError) Error() string {
	if e.err != nil {
		return e.reason + ": " + e.err.Error()
	}
	return e.reason
}

func (e *dropError) Unwrap() error { return e.err }

func drop(reason string, err error) error { return &dropError{reason, err} }

// HandlePacket parses one datagram received from peer and returns the reply
// to send and where to send it. A packet that gets no reply returns an
// error saying why (and is counted); it never panics.
func (s *Server) HandlePacket(ctx context.Context, b []byte, peer *net.UDPAddr) (reply []byte, to *net.UDPAddr, err error) {
	defer func() {
		if r := recover(); r != nil {
			reply, to, err = nil, nil, drop(DropPanic, fmt.Errorf("%v", r))
		}
		if err != nil {
			var d *dropError
			if errors.As(err, &d) {
				s.m.Drop("dhcp", d.reason)
			}
		}
	}()
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		return nil, nil, drop(DropMalformed, err)
	}
	r, to, err := s.Handle(ctx, req, peer)
	if err != nil {
		return nil, nil, err
	}
	return r.ToBytes(), to, nil
}

// Handle answers one request from peer: the reply and its destination, or
// an error wrapping a *dropError when there is nothing to send.
func (s *Server) Handle(ctx context.Context, req *dhcpv4.DHCPv4, peer *net.UDPAddr) (*dhcpv4.DHCPv4, *net.UDPAddr, error) {
	if req.OpCode != dhcpv4.OpcodeBootRequest || req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return nil, nil, drop(DropNotRequest, nil)
	}
	mt := req.MessageType()
	if s.m != nil {
		s.m.DHCPPackets.WithLabelValues(strings.ToLower(mt.String())).Inc()
	}
	mac := req.ClientHWAddr
	mach, err := s.backend.Lookup(ctx, mac)
	if errors.Is(err, node.ErrUnknown) {
		return nil, nil, drop(DropUnknownMAC, nil)
	}
	if err != nil {
		return nil, nil, drop(DropBackend, err)
	}
	if s.cfg.Mode == Proxy {
		return s.proxy(req, mt, mach, peer)
	}
	pool, ok := s.pool(req)
	if !ok {
		return nil, nil, drop(DropNoPool, fmt.Errorf("no pool for relay %v / server %v", req.GatewayIPAddr, s.cfg.ServerIP))
	}
	reserved, _ := netip.AddrFromSlice(mach.IP.To4())
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		ip, err := s.leases.Offer(mac, reserved, pool.Range)
		if err != nil {
			s.m.Error("dhcp", err, "mac", mac.String())
			return nil, nil, drop(DropLease, err)
		}
		reply, err := s.reply(req, dhcpv4.MessageTypeOffer, mach, pool, ip)
		if err != nil {
			return nil, nil, err
		}
		if s.m != nil {
			s.m.Offers.Inc()
			s.m.Leases.Set(float64(s.leases.Bound()))
		}
		s.m.Boot(metrics.PhaseOffer, mac, "node", mach.Name, "ip", ip.String(), "file", reply.BootFileName)
		return reply, s.dest(req, peer), nil
	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(s.cfg.ServerIP.AsSlice()) {
			return nil, nil, drop(DropOtherServer, nil)
		}
		want := req.RequestedIPAddress()
		if want == nil || want.IsUnspecified() {
			want = req.ClientIPAddr
		}
		ip, _ := netip.AddrFromSlice(want.To4())
		ok := ip.IsValid() && (ip == reserved || !reserved.IsValid() && pool.Range.Contains(ip))
		var lease leases.Lease
		if ok {
			lease, err = s.leases.Ack(ctx, mac, ip, s.cfg.LeaseTime)
			if err != nil && !errors.Is(err, leases.ErrInUse) {
				s.m.Error("dhcp", err, "mac", mac.String())
				return nil, nil, drop(DropLease, err)
			}
			ok = err == nil
		}
		if !ok {
			nak := newReply(req,
				dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice())))
			if s.m != nil {
				s.m.Naks.Inc()
			}
			s.m.Log.Info("dhcp nak", "mac", mac.String(), "requested", ip.String())
			return nak, s.dest(req, peer), nil
		}
		reply, err := s.reply(req, dhcpv4.MessageTypeAck, mach, pool, lease.IP)
		if err != nil {
			return nil, nil, err
		}
		if s.m != nil {
			s.m.Acks.Inc()
			s.m.Leases.Set(float64(s.leases.Bound()))
		}
		s.m.Boot(metrics.PhaseAck, mac, "node", mach.Name, "ip", lease.IP.String(), "file", reply.BootFileName)
		return reply, s.dest(req, peer), nil
	case dhcpv4.MessageTypeRelease:
		ip, _ := netip.AddrFromSlice(req.ClientIPAddr.To4())
		if err := s.leases.Release(ctx, mac, ip); err != nil {
			return nil, nil, drop(DropLease, err)
		}
		s.m.Log.Info("dhcp release", "mac", mac.String(), "ip", ip.String())
		return nil, nil, errNoReply
	case dhcpv4.MessageTypeDecline:
		return s.decline(ctx, req, reserved)
	}
	return nil, nil, drop(DropUnsupported, fmt.Errorf("message type %v", mt))
}

// decline handles a DHCPDECLINE: the client found the address it was
// given in use by another host. Anyone can send one with any MAC, so it
// takes an address out of the pool (leases.Store.Decline, for
// leases.Options.DeclineHold) only when it names this server (or none)
// and the address is a dynamic one bound to that MAC. A node's fixed
// address is never quarantined, only logged: the node has no other
// address to fall back on, so keeping it from the node would only let a
// forged DECLINE carrying the node's MAC stop the node from booting.
func (s *Server) decline(ctx context.Context, req *dhcpv4.DHCPv4, reserved netip.Addr) (*dhcpv4.DHCPv4, *net.UDPAddr, error) {
	mac := req.ClientHWAddr
	if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(s.cfg.ServerIP.AsSlice()) {
		return nil, nil, drop(DropOtherServer, nil)
	}
	ip, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
	if ip.IsValid() && ip == reserved {
		s.m.Log.Warn("dhcp decline of a fixed address: kept for its node", "mac", mac.String(), "ip", ip.String())
		return nil, nil, errNoReply
	}
	declined, err := s.leases.Decline(ctx, mac, ip)
	if err != nil {
		return nil, nil, drop(DropLease, err)
	}
	if !declined {
		s.m.Log.Info("dhcp decline ignored: the address is not bound to this MAC", "mac", mac.String(), "ip", ip.String())
		return nil, nil, errNoReply
	}
	s.m.Log.Warn("dhcp decline: address in use on the network; kept out of the pool", "mac", mac.String(), "ip", ip.String())
	return nil, nil, errNoReply
}

// errNoReply marks messages that are handled but never answered (RELEASE,
// DECLINE).
var errNoReply = errors.New("handled; no reply")

// NoReply reports whether err only says that the message (a RELEASE or a
// DECLINE) is never answered.
func NoReply(err error) bool { return errors.Is(err, errNoReply) }

// proxy answers a PXE client's DISCOVER (port 67) or REQUEST (port 4011)
// with the boot fields only.
func (s *Server) proxy(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, mach *node.Machine, peer *net.UDPAddr) (*dhcpv4.DHCPv4, *net.UDPAddr, error) {
	if !isPXE(req) && !isIPXE(req) {
		return nil, nil, drop(DropNotPXE, nil)
	}
	var t dhcpv4.MessageType
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		t = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
		t = dhcpv4.MessageTypeAck
	default:
		return nil, nil, drop(DropUnsupported, fmt.Errorf("proxy: message type %v", mt))
	}
	reply, err := s.reply(req, t, mach, nil, netip.Addr{})
	if err != nil {
		return nil, nil, err
	}
	if s.m != nil {
		if t == dhcpv4.MessageTypeOffer {
			s.m.Offers.Inc()
		} else {
			s.m.Acks.Inc()
		}
	}
	phase := metrics.PhaseOffer
	if t == dhcpv4.MessageTypeAck {
		phase = metrics.PhaseAck
	}
	s.m.Boot(phase, req.ClientHWAddr, "node", mach.Name, "proxy", true, "file", reply.BootFileName)
	return reply, s.dest(req, peer), nil
}

// reply builds an OFFER or ACK giving ip (none in proxy mode) and the boot
// fields.
func (s *Server) reply(req *dhcpv4.DHCPv4, t dhcpv4.MessageType, mach *node.Machine, pool *Pool, ip netip.Addr) (*dhcpv4.DHCPv4, error) {
	server := s.cfg.ServerIP.AsSlice()
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(t),
		dhcpv4.WithServerIP(server),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
	}
	if pool != nil {
		mods = append(mods,
			dhcpv4.WithYourIP(ip.AsSlice()),
			dhcpv4.WithNetmask(net.CIDRMask(pool.Subnet.Bits(), 32)),
			dhcpv4.WithLeaseTime(uint32(s.cfg.LeaseTime/time.Second)))
		router := pool.Router
		if !router.IsValid() && req.GatewayIPAddr != nil && !req.GatewayIPAddr.IsUnspecified() {
			router, _ = netip.AddrFromSlice(req.GatewayIPAddr.To4())
		}
		if router.IsValid() {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(router.AsSlice())))
		}
		if len(pool.DNS) > 0 {
			dns := make([]net.IP, len(pool.DNS))
			for i, d := range pool.DNS {
				dns[i] = d.AsSlice()
			}
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(dns...)))
		}
	}
	reply := newReply(req, mods...)
	if file := s.bootFile(req, mach); file != "" {
		// Old PXE ROMs read the BOOTP header; others read options 66/67.
		reply.BootFileName = file
		reply.UpdateOption(dhcpv4.OptBootFileName(file))
		reply.UpdateOption(dhcpv4.OptTFTPServerName(s.cfg.ServerIP.String()))
		if isPXE(req) {
			reply.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
			// PXE vendor options: discovery control (6) = 8, boot the
			// file named here, no boot server discovery. Without it
			// EDK2 (OVMF) takes the offer for a BINL one, asks port 4011
			// and gives up ("PXE-E16: No valid offer received").
			reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8, 255}))
		}
	}
	return reply, nil
}

// bootFile picks what the client loads next: the boot script URL for iPXE,
// the loader for its firmware for any other PXE client, nothing for a
// client that is not booting from the network.
func (s *Server) bootFile(req *dhcpv4.DHCPv4, mach *node.Machine) string {
	if isIPXE(req) {
		if s.cfg.ScriptURL == nil {
			return ""
		}
		return s.cfg.ScriptURL(req.ClientHWAddr)
	}
	if !isPXE(req) {
		return ""
	}
	arch := iana.INTEL_X86PC
	if a := req.ClientArch(); len(a) > 0 {
		arch = a[0]
	}
	var file, image string
	switch arch {
	case iana.INTEL_X86PC:
		file, image = s.cfg.Loaders.BIOS, "amd64"
	case iana.EFI_X86_64, iana.EFI_BC:
		file, image = s.cfg.Loaders.EFI64, "amd64"
	case iana.EFI_ARM64:
		file, image = s.cfg.Loaders.ARM64, "arm64"
	}
	if file != "" {
		if want := orAMD64(mach.Arch); want != image {
			s.m.Log.Warn("dhcp: the machine's image is for another architecture than its firmware: nothing to boot",
				"mac", req.ClientHWAddr.String(), "node", mach.Name, "firmware", arch.String(), "image", want)
			return ""
		}
		return file
	}
	s.m.Log.Warn("dhcp: no loader for this client architecture", "mac", req.ClientHWAddr.String(), "arch", arch.String())
	return ""
}

func orAMD64(a string) string {
	if a == "" {
		return "amd64"
	}
	return a
}

func isPXE(req *dhcpv4.DHCPv4) bool {
	return strings.HasPrefix(req.ClassIdentifier(), "PXEClient")
}

func isIPXE(req *dhcpv4.DHCPv4) bool {
	for _, uc := range req.UserClass() {
		if uc == "iPXE" {
			return true
		}
	}
	// Option 175 (iPXE encapsulated options) is the other sign of iPXE.
	return req.Options.Has(dhcpv4.GenericOptionCode(optionIPXE))
}

const optionIPXE = 175

// pool picks the pool for req: the one whose subnet holds the relay, or
// this server.
func (s *Server) pool(req *dhcpv4.DHCPv4) (*Pool, bool) {
	at := s.cfg.ServerIP
	if gi := req.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
		at, _ = netip.AddrFromSlice(gi.To4())
	}
	for i := range s.cfg.Pools {
		if s.cfg.Pools[i].Subnet.Contains(at) {
			return &s.cfg.Pools[i], true
		}
	}
	return nil, false
}

// dest is where the reply to req goes (RFC 2131 4.1): the relay, else the
// client's own address when it has one, else broadcast.
func (s *Server) dest(req *dhcpv4.DHCPv4, peer *net.UDPAddr) *net.UDPAddr {
	if gi := req.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
		return &net.UDPAddr{IP: gi, Port: s.cfg.RelayPort}
	}
	if peer != nil && peer.IP != nil && !peer.IP.IsUnspecified() && !peer.IP.Equal(net.IPv4bcast) {
		return peer
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: s.cfg.ClientPort}
}

// packet is one datagram waiting for a worker.
type packet struct {
	buf  *[]byte
	n    int
	peer *net.UDPAddr
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// offerWorkers handle the packets that never wait for the disk (see Serve).
const offerWorkers = 4

// Serve reads requests from conn until ctx is done (then it closes conn
// and returns nil) or reading fails. REQUESTs, RELEASEs and DECLINEs are
// handled by at most Config.Workers goroutines, which wait for their lease
// records to reach the disk; every other packet (DISCOVER above all) by
// offerWorkers of their own, so that a slow fsync delays ACKs but not
// OFFERs. When Config.Queue
// packets are already waiting for either, new ones are dropped and
// counted rather than piling up.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	requests := make(chan packet, s.cfg.Queue)
	others := make(chan packet, s.cfg.Queue)
	var wg sync.WaitGroup
	work := func(q chan packet, n int) {
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for p := range q {
					s.serveOne(ctx, conn, p)
				}
			}()
		}
	}
	work(requests, s.cfg.Workers)
	work(others, offerWorkers)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer wg.Wait()
	defer close(requests)
	defer close(others)
	for {
		buf := bufs.Get().(*[]byte)
		n, addr, err := conn.ReadFrom(*buf)
		if err != nil {
			bufs.Put(buf)
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dhcp: %w", err)
		}
		peer, _ := addr.(*net.UDPAddr)
		q := others
		switch dhcpv4.MessageType(messageType((*buf)[:n])) {
		case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
			q = requests // each waits for its lease record to reach the disk
		}
		select {
		case q <- packet{buf, n, peer}:
		default:
			bufs.Put(buf)
			s.m.Drop("dhcp", DropQueueFull)
		}
	}
}

// messageType returns option 53 (DHCP message type) of a raw DHCPv4
// packet, found by walking its options, or 0 when it has none (or is not
// DHCP at all, which HandlePacket then reports).
func messageType(b []byte) byte {
	const options = 240 // after the fixed header and the magic cookie
	if len(b) < options || b[236] != 99 || b[237] != 130 || b[238] != 83 || b[239] != 99 {
		return 0
	}
	for i := options; i < len(b); {
		switch code := b[i]; code {
		case 0: // pad
			i++
		case 255: // end
			return 0
		default:
			if i+1 >= len(b) {
				return 0
			}
			l := int(b[i+1])
			if code == 53 && l == 1 && i+2 < len(b) {
				return b[i+2]
			}
			i += 2 + l
		}
	}
	return 0
}

func (s *Server) serveOne(ctx context.Context, conn net.PacketConn, p packet) {
	defer bufs.Put(p.buf)
	reply, to, err := s.HandlePacket(ctx, (*p.buf)[:p.n], p.peer)
	if err != nil {
		if !NoReply(err) {
			s.m.Log.Debug("dhcp: dropped", "from", p.peer, "err", err)
		}
		return
	}
	if _, err := conn.WriteTo(reply, to); err != nil {
		s.m.Error("dhcp", fmt.Errorf("reply to %v: %w", to, err))
	}
}

// newReply is dhcpv4.NewReplyFromRequest without its first step, drawing a
// random transaction ID from the kernel that WithReply then overwrites
// with the request's: one getrandom(2) per reply, 6% of the server's CPU
// at 5,000 exchanges a second.
func newReply(req *dhcpv4.DHCPv4, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	d := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        iana.HWTypeEthernet,
		ClientHWAddr:  make(net.HardwareAddr, 6),
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: net.IPv4zero,
		// Room for a PXE reply's options without growing the map.
		Options: make(dhcpv4.Options, 16),
	}
	for _, m := range append([]dhcpv4.Modifier{
		dhcpv4.WithReply(req),
		dhcpv4.WithGatewayIP(req.GatewayIPAddr),
		dhcpv4.WithOptionCopied(req, dhcpv4.OptionRelayAgentInformation),
		// RFC 6842: a client identifier is copied into the reply.
		dhcpv4.WithOptionCopied(req, dhcpv4.OptionClientIdentifier),
	}, mods...) {
		m(d)
	}
	return d
}
