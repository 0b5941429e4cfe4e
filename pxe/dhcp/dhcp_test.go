package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bellbuild/bellbuild/pxe/leases"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

var (
	macA    = mustMAC("52:54:00:00:00:0a")
	macB    = mustMAC("52:54:00:00:00:0b")
	macRes  = mustMAC("52:54:00:00:00:0c")
	macArm  = mustMAC("52:54:00:00:00:0d")
	macNone = mustMAC("52:54:00:00:00:ff")
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// inventory knows three machines; macRes has a reserved address.
func inventory() node.Static {
	return node.Static{
		macA.String():   {Name: "alpha", Profile: "worker"},
		macB.String():   {Name: "beta", Profile: "storage"},
		macRes.String(): {Name: "gamma", Profile: "worker", IP: net.ParseIP("192.0.2.50")},
		macArm.String(): {Name: "delta", Profile: "worker-arm64", Arch: "arm64"},
	}
}

var (
	serverIP = netip.MustParseAddr("192.0.2.1")
	localNet = Pool{
		Range:  leases.Range{Start: netip.MustParseAddr("192.0.2.100"), End: netip.MustParseAddr("192.0.2.199")},
		Subnet: netip.MustParsePrefix("192.0.2.0/24"),
		Router: netip.MustParseAddr("192.0.2.1"),
	}
	relayedNet = Pool{
		Range:  leases.Range{Start: netip.MustParseAddr("198.51.100.10"), End: netip.MustParseAddr("198.51.100.20")},
		Subnet: netip.MustParsePrefix("198.51.100.0/24"),
	}
)

func testConfig() Config {
	return Config{
		ServerIP:  serverIP,
		Pools:     []Pool{localNet, relayedNet},
		ScriptURL: func(mac net.HardwareAddr) string { return "http://192.0.2.1:8080/ipxe?mac=" + mac.String() },
	}
}

type fixture struct {
	srv    *Server
	addr   *net.UDPAddr
	leases *leases.Store
	reg    *prometheus.Registry
	m      *metrics.Metrics
	log    *testtool.Buffer
}

// start runs a server on 127.0.0.1 (any port) until the test ends.
func start(t *testing.T, cfg Config, store *leases.Store) *fixture {
	t.Helper()
	f, stop := startStoppable(t, cfg, store)
	t.Cleanup(stop)
	return f
}

// startStoppable runs a server on 127.0.0.1 (any port) until stop is
// called (stop leaves the lease store open).
func startStoppable(t *testing.T, cfg Config, store *leases.Store) (f *fixture, stop func()) {
	t.Helper()
	if store == nil {
		var err error
		if store, err = leases.Open("", leases.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	log := &testtool.Buffer{}
	m := metrics.New(reg, slog.New(slog.NewTextHandler(log, nil)))
	srv, err := New(cfg, inventory(), store, m)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := Listen("", netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	return &fixture{srv: srv, addr: conn.LocalAddr().(*net.UDPAddr), leases: store, reg: reg, m: m, log: log}, stop
}

func (f *fixture) client(t *testing.T, mac net.HardwareAddr) *nclient4.Client {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := nclient4.NewWithConn(conn, mac, nclient4.WithServerAddr(f.addr),
		nclient4.WithTimeout(300*time.Millisecond), nclient4.WithRetry(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var pxeBIOS = []dhcpv4.Modifier{
	dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
	dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
}

var pxeARM64 = []dhcpv4.Modifier{
	dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00011:UNDI:003000")),
	dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_ARM64)),
}

// reply is what a test checks in an answer.
type reply struct {
	Type     string
	YourIP   string
	ServerIP string
	File     string
	Opt66    string
	Opt67    string
	Opt60    string
	Opt43    string
	Mask     string
	Router   string
}

func summarize(m *dhcpv4.DHCPv4) reply {
	r := reply{
		Type:     m.MessageType().String(),
		YourIP:   m.YourIPAddr.String(),
		ServerIP: m.ServerIPAddr.String(),
		File:     m.BootFileName,
		Opt66:    m.TFTPServerName(),
		Opt67:    m.BootFileNameOption(),
		Opt60:    m.ClassIdentifier(),
		Opt43:    fmt.Sprintf("%x", m.Options.Get(dhcpv4.OptionVendorSpecificInformation)),
	}
	if mask := m.SubnetMask(); mask != nil {
		r.Mask = net.IP(mask).String()
	}
	if rt := m.Router(); len(rt) > 0 {
		r.Router = rt[0].String()
	}
	return r
}

func TestDORA(t *testing.T) {
	tests := []struct {
		name string
		mac  net.HardwareAddr
		mods []dhcpv4.Modifier
		want reply
	}{{
		name: "BIOS PXE gets undionly.kpxe",
		mac:  macA,
		mods: pxeBIOS,
		want: reply{Type: "ACK", YourIP: "192.0.2.100", ServerIP: "192.0.2.1", File: "undionly.kpxe",
			Opt66: "192.0.2.1", Opt67: "undionly.kpxe", Opt60: "PXEClient", Opt43: "060108ff", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}, {
		name: "x86-64 UEFI gets ipxe.efi",
		mac:  macA,
		mods: []dhcpv4.Modifier{
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)),
		},
		want: reply{Type: "ACK", YourIP: "192.0.2.100", ServerIP: "192.0.2.1", File: "ipxe.efi",
			Opt66: "192.0.2.1", Opt67: "ipxe.efi", Opt60: "PXEClient", Opt43: "060108ff", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}, {
		name: "EFI BC (9) is x86-64 UEFI too",
		mac:  macA,
		mods: []dhcpv4.Modifier{
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00009:UNDI:003016")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_BC)),
		},
		want: reply{Type: "ACK", YourIP: "192.0.2.100", ServerIP: "192.0.2.1", File: "ipxe.efi",
			Opt66: "192.0.2.1", Opt67: "ipxe.efi", Opt60: "PXEClient", Opt43: "060108ff", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}, {
		name: "arm64 UEFI booting an arm64 image gets GRUB",
		mac:  macArm,
		mods: pxeARM64,
		want: reply{Type: "ACK", YourIP: "192.0.2.100", ServerIP: "192.0.2.1", File: "grubnetaa64.efi",
			Opt66: "192.0.2.1", Opt67: "grubnetaa64.efi", Opt60: "PXEClient", Opt43: "060108ff", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}, {
		name: "arm64 UEFI booting an amd64 image gets nothing to boot",
		mac:  macA,
		mods: pxeARM64,
		want: reply{Type: "ACK", YourIP: "192.0.2.100", ServerIP: "192.0.2.1", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}, {
		name: "x86 BIOS booting an arm64 image gets nothing to boot",
		mac:  macArm,
		mods: pxeBIOS,
		want: reply{Type: "ACK", YourIP: "192.0.2.100", ServerIP: "192.0.2.1", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}, {
		name: "iPXE gets its script URL, not the loader again",
		mac:  macB,
		mods: append([]dhcpv4.Modifier{dhcpv4.WithUserClass("iPXE", false)}, pxeBIOS...),
		want: reply{Type: "ACK", YourIP: "192.0.2.100", ServerIP: "192.0.2.1",
			File: "http://192.0.2.1:8080/ipxe?mac=52:54:00:00:00:0b", Opt66: "192.0.2.1",
			Opt67: "http://192.0.2.1:8080/ipxe?mac=52:54:00:00:00:0b", Opt60: "PXEClient", Opt43: "060108ff", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}, {
		name: "a machine that is not netbooting gets an address only",
		mac:  macA,
		want: reply{Type: "ACK", YourIP: "192.0.2.100", ServerIP: "192.0.2.1", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}, {
		name: "reserved address",
		mac:  macRes,
		mods: pxeBIOS,
		want: reply{Type: "ACK", YourIP: "192.0.2.50", ServerIP: "192.0.2.1", File: "undionly.kpxe",
			Opt66: "192.0.2.1", Opt67: "undionly.kpxe", Opt60: "PXEClient", Opt43: "060108ff", Mask: "255.255.255.0", Router: "192.0.2.1"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, testConfig(), nil)
			c := f.client(t, tt.mac)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			lease, err := c.Request(ctx, tt.mods...)
			if err != nil {
				t.Fatal(err)
			}
			offer := summarize(lease.Offer)
			wantOffer := tt.want
			wantOffer.Type = "OFFER"
			if d := cmp.Diff(wantOffer, offer); d != "" {
				t.Errorf("offer (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.want, summarize(lease.ACK)); d != "" {
				t.Errorf("ack (-want +got):\n%s", d)
			}
			got, ok := f.leases.Get(tt.mac)
			if !ok || got.IP.String() != tt.want.YourIP {
				t.Errorf("lease store has %v, %v; want %s", got, ok, tt.want.YourIP)
			}
			if n := metrics.Value(f.m.Acks); n != 1 {
				t.Errorf("acks counted = %v, want 1", n)
			}
		})
	}
}

func TestUnknownMACIgnored(t *testing.T) {
	f := start(t, testConfig(), nil)
	c := f.client(t, macNone)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.DiscoverOffer(ctx, pxeBIOS...)
	if err == nil {
		t.Fatal("unknown MAC got an offer")
	}
	if n := metrics.Value(f.m.Dropped.WithLabelValues("dhcp", DropUnknownMAC)); n < 1 {
		t.Errorf("unknown-mac drops = %v, want ≥ 1", n)
	}
	if _, ok := f.leases.Get(macNone); ok {
		t.Error("unknown MAC got a binding")
	}
}

func TestSameAddressAgainAndNoneShared(t *testing.T) {
	f := start(t, testConfig(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	la, err := f.client(t, macA).Request(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := f.client(t, macB).Request(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if la.ACK.YourIPAddr.Equal(lb.ACK.YourIPAddr) {
		t.Fatalf("two MACs share %v", la.ACK.YourIPAddr)
	}
	again, err := f.client(t, macA).Request(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !again.ACK.YourIPAddr.Equal(la.ACK.YourIPAddr) {
		t.Errorf("second boot got %v, first %v", again.ACK.YourIPAddr, la.ACK.YourIPAddr)
	}
}

// exchange sends one packet from a socket at 127.0.0.1 and returns the
// answer, or nil after a short wait.
func exchange(t *testing.T, conn *net.UDPConn, to *net.UDPAddr, m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	t.Helper()
	if _, err := conn.WriteTo(m.ToBytes(), to); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 1500)
	n, _, err := conn.ReadFrom(buf)
	if err != nil {
		return nil
	}
	r, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRequests(t *testing.T) {
	// The relay listens where answers to giaddr 127.0.0.1 go.
	relay, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	cfg := testConfig()
	cfg.RelayPort = relay.LocalAddr().(*net.UDPAddr).Port
	cfg.Pools = append(cfg.Pools, Pool{
		Range:  leases.Range{Start: netip.MustParseAddr("127.0.0.10"), End: netip.MustParseAddr("127.0.0.11")},
		Subnet: netip.MustParsePrefix("127.0.0.0/8"),
	})
	f := start(t, cfg, nil)

	msg := func(t *testing.T, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
		m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac)}, mods...)...)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	t.Run("relayed DISCOVER gets the relay's pool, sent to the relay", func(t *testing.T) {
		r := exchange(t, relay, f.addr, msg(t, macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover),
			dhcpv4.WithGatewayIP(net.IPv4(127, 0, 0, 1))))
		if r == nil {
			t.Fatal("no answer at the relay")
		}
		if got := r.YourIPAddr.String(); got != "127.0.0.10" {
			t.Errorf("offered %s, want 127.0.0.10 from the relay's pool", got)
		}
		if got := r.Router(); len(got) != 1 || !got[0].Equal(net.IPv4(127, 0, 0, 1)) {
			t.Errorf("router = %v, want the relay", got)
		}
	})
	t.Run("REQUEST for an address of another MAC is NAKed", func(t *testing.T) {
		ctx := context.Background()
		if _, err := f.leases.Ack(ctx, macB, netip.MustParseAddr("192.0.2.150"), time.Hour); err != nil {
			t.Fatal(err)
		}
		r := exchange(t, relay, f.addr, msg(t, macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("192.0.2.150")))))
		if r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
			t.Fatalf("answer %v, want a NAK", r)
		}
		if l, _ := f.leases.Get(macB); l.IP.String() != "192.0.2.150" {
			t.Errorf("B's lease moved to %v", l.IP)
		}
	})
	t.Run("REQUEST outside the pool is NAKed", func(t *testing.T) {
		r := exchange(t, relay, f.addr, msg(t, macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.1.2.3")))))
		if r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
			t.Fatalf("answer %v, want a NAK", r)
		}
	})
	t.Run("REQUEST for another server is ignored", func(t *testing.T) {
		r := exchange(t, relay, f.addr, msg(t, macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("192.0.2.254"))),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("192.0.2.100")))))
		if r != nil {
			t.Fatalf("answered %v", r.MessageType())
		}
	})
	t.Run("RELEASE then DECLINE", func(t *testing.T) {
		ctx := context.Background()
		ip := netip.MustParseAddr("192.0.2.160")
		if _, err := f.leases.Ack(ctx, macA, ip, time.Hour); err != nil {
			t.Fatal(err)
		}
		if r := exchange(t, relay, f.addr, msg(t, macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease),
			dhcpv4.WithClientIP(ip.AsSlice()))); r != nil {
			t.Fatalf("RELEASE answered: %v", r.MessageType())
		}
		if _, ok := f.leases.MACFor(ip); ok {
			t.Error("released address still leased")
		}
		if l, ok := f.leases.Get(macA); !ok || l.IP != ip {
			t.Errorf("released address no longer kept for its MAC: %v %v", l, ok)
		}
		if _, err := f.leases.Ack(ctx, macA, ip, time.Hour); err != nil {
			t.Fatal(err)
		}
		exchange(t, relay, f.addr, msg(t, macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice()))))
		if _, err := f.leases.Ack(ctx, macB, ip, time.Hour); !errors.Is(err, leases.ErrInUse) {
			t.Errorf("declined address leased again: %v", err)
		}
	})
}

// TestDecline: a DHCPDECLINE quarantines an address only when it comes
// from the MAC that holds that address and the address is not a node's
// fixed one; whatever it does lasts across a restart on the same lease
// file. Each case runs real exchanges (nclient4 DORA, then raw DECLINE
// and renewing REQUEST packets) against a server on loopback.
func TestDecline(t *testing.T) {
	type bound struct {
		mac net.HardwareAddr
		ip  string
	}
	tests := []struct {
		name string
		// before: DORAs run first, each must get its address.
		before []bound
		// decline: who sends the DECLINE, for which address, naming
		// which server (nil: none, like some clients).
		from net.HardwareAddr
		ip   string
		sid  net.IP
		// renewed: REQUESTs from an address already held (RENEWING,
		// ciaddr set) that must be ACKed right after the DECLINE.
		renewed []bound
		// after: DORAs run after the DECLINE and again, in this order,
		// after a restart on the same lease file.
		after []bound
		// log: a line the server must have logged.
		log string
	}{{
		name:    "a node's fixed address is only logged",
		before:  []bound{{macRes, "192.0.2.50"}},
		from:    macRes,
		ip:      "192.0.2.50",
		sid:     net.ParseIP("192.0.2.1"),
		renewed: []bound{{macRes, "192.0.2.50"}},
		after:   []bound{{macRes, "192.0.2.50"}},
		log:     `msg="dhcp decline of a fixed address: kept for its node" mac=52:54:00:00:00:0c ip=192.0.2.50`,
	}, {
		name:    "a node's fixed address, without a server identifier",
		before:  []bound{{macRes, "192.0.2.50"}},
		from:    macRes,
		ip:      "192.0.2.50",
		renewed: []bound{{macRes, "192.0.2.50"}},
		after:   []bound{{macRes, "192.0.2.50"}},
	}, {
		name:    "a dynamic address from a MAC that does not hold it",
		before:  []bound{{macA, "192.0.2.100"}},
		from:    macB,
		ip:      "192.0.2.100",
		sid:     net.ParseIP("192.0.2.1"),
		renewed: []bound{{macA, "192.0.2.100"}},
		after:   []bound{{macA, "192.0.2.100"}, {macB, "192.0.2.101"}},
		log:     `msg="dhcp decline ignored: the address is not bound to this MAC" mac=52:54:00:00:00:0b ip=192.0.2.100`,
	}, {
		name:    "a dynamic address from a node with a fixed address",
		before:  []bound{{macA, "192.0.2.100"}, {macRes, "192.0.2.50"}},
		from:    macRes,
		ip:      "192.0.2.100",
		sid:     net.ParseIP("192.0.2.1"),
		renewed: []bound{{macA, "192.0.2.100"}, {macRes, "192.0.2.50"}},
		after:   []bound{{macA, "192.0.2.100"}, {macRes, "192.0.2.50"}},
	}, {
		name:    "a DECLINE naming another server",
		before:  []bound{{macA, "192.0.2.100"}},
		from:    macA,
		ip:      "192.0.2.100",
		sid:     net.ParseIP("192.0.2.254"),
		renewed: []bound{{macA, "192.0.2.100"}},
		after:   []bound{{macA, "192.0.2.100"}},
	}, {
		// The one DECLINE that quarantines: the holder's own dynamic
		// address leaves the pool, the holder and everyone else get
		// others, before and after the restart.
		name:   "a dynamic address from its holder",
		before: []bound{{macA, "192.0.2.100"}},
		from:   macA,
		ip:     "192.0.2.100",
		sid:    net.ParseIP("192.0.2.1"),
		after:  []bound{{macA, "192.0.2.101"}, {macB, "192.0.2.102"}},
		log:    `msg="dhcp decline: address in use on the network; kept out of the pool" mac=52:54:00:00:00:0a ip=192.0.2.100`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "leases")
			store, err := leases.Open(path, leases.Options{})
			if err != nil {
				t.Fatal(err)
			}
			f, stop := startStoppable(t, testConfig(), store)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			dora := func(f *fixture, when string, want []bound) {
				t.Helper()
				for _, b := range want {
					l, err := f.client(t, b.mac).Request(ctx)
					if err != nil {
						t.Fatalf("%s: %s got no lease: %v", when, b.mac, err)
					}
					if got := l.ACK.YourIPAddr.String(); got != b.ip {
						t.Errorf("%s: %s got %s, want %s", when, b.mac, got, b.ip)
					}
				}
			}
			dora(f, "before the DECLINE", tt.before)

			conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			mods := []dhcpv4.Modifier{dhcpv4.WithHwAddr(tt.from),
				dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
				dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(tt.ip)))}
			if tt.sid != nil {
				mods = append(mods, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(tt.sid)))
			}
			decline, err := dhcpv4.New(mods...)
			if err != nil {
				t.Fatal(err)
			}
			if r := exchange(t, conn, f.addr, decline); r != nil {
				t.Fatalf("DECLINE answered: %s", r.Summary())
			}
			for _, b := range tt.renewed {
				req, err := dhcpv4.New(dhcpv4.WithHwAddr(b.mac),
					dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
					dhcpv4.WithClientIP(net.ParseIP(b.ip)))
				if err != nil {
					t.Fatal(err)
				}
				r := exchange(t, conn, f.addr, req)
				if r == nil || r.MessageType() != dhcpv4.MessageTypeAck || r.YourIPAddr.String() != b.ip {
					t.Errorf("%s renewing %s after the DECLINE: got %v, want an ACK", b.mac, b.ip, r)
				}
			}
			dora(f, "after the DECLINE", tt.after)
			if tt.log != "" && !strings.Contains(f.log.String(), tt.log) {
				t.Errorf("log lacks %q:\n%s", tt.log, f.log)
			}

			stop()
			if err := store.Close(); err != nil {
				t.Fatal(err)
			}
			store, err = leases.Open(path, leases.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			f, stop = startStoppable(t, testConfig(), store)
			defer stop()
			dora(f, "after a restart", tt.after)
		})
	}
}

func TestProxy(t *testing.T) {
	cfg := testConfig()
	cfg.Mode = Proxy
	cfg.Pools = nil
	f := start(t, cfg, nil)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	discover := func(mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
		m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(macA),
			dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover)}, mods...)...)
		if err != nil {
			t.Fatal(err)
		}
		return exchange(t, conn, f.addr, m)
	}
	r := discover(pxeBIOS...)
	if r == nil {
		t.Fatal("no proxy offer")
	}
	want := reply{Type: "OFFER", YourIP: "0.0.0.0", ServerIP: "192.0.2.1", File: "undionly.kpxe",
		Opt66: "192.0.2.1", Opt67: "undionly.kpxe", Opt60: "PXEClient", Opt43: "060108ff"}
	if d := cmp.Diff(want, summarize(r)); d != "" {
		t.Errorf("proxy offer (-want +got):\n%s", d)
	}
	if r.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Error("proxy offer carries a lease time")
	}
	if r := discover(); r != nil {
		t.Errorf("proxy answered a client that is not PXE: %v", summarize(r))
	}
	// The PXE client's next step: a REQUEST to the proxy (port 4011),
	// answered with an ACK carrying the boot fields and still no address.
	req, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(macA),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(net.ParseIP("192.0.2.77")),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("192.0.2.1")))}, pxeBIOS...)...)
	if err != nil {
		t.Fatal(err)
	}
	ack := exchange(t, conn, f.addr, req)
	if ack == nil {
		t.Fatal("no proxy ACK")
	}
	want.Type = "ACK"
	if d := cmp.Diff(want, summarize(ack)); d != "" {
		t.Errorf("proxy ack (-want +got):\n%s", d)
	}
	if _, ok := f.leases.Get(macA); ok {
		t.Error("proxy mode bound an address")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	store, _ := leases.Open("", leases.Options{})
	bad := testConfig()
	bad.Pools = []Pool{{Range: localNet.Range, Subnet: netip.MustParsePrefix("10.0.0.0/8")}}
	if _, err := New(bad, inventory(), store, nil); err == nil {
		t.Error("pool outside its subnet accepted")
	}
	empty := testConfig()
	empty.Pools = nil
	if _, err := New(empty, inventory(), store, nil); err == nil {
		t.Error("full mode without pools accepted")
	}
}

// FuzzHandlePacket: any datagram is either answered with a well-formed
// reply to the same client, or dropped and counted; nothing panics.
func FuzzHandlePacket(f *testing.F) {
	seed := func(mac net.HardwareAddr, mods ...dhcpv4.Modifier) {
		m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac)}, mods...)...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.ToBytes())
	}
	discover := dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover)
	seed(macA, append([]dhcpv4.Modifier{discover}, pxeBIOS...)...)
	seed(macB, discover, dhcpv4.WithUserClass("iPXE", false))
	seed(macRes, discover, dhcpv4.WithGatewayIP(net.IPv4(198, 51, 100, 1)))
	seed(macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("192.0.2.100"))))
	seed(macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(net.ParseIP("192.0.2.100")))
	seed(macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline))
	seed(macNone, discover)
	f.Add([]byte{})
	f.Add([]byte{1, 1, 6, 0})
	f.Add(make([]byte, 300))

	store, err := leases.Open("", leases.Options{})
	if err != nil {
		f.Fatal(err)
	}
	m := metrics.New(nil, slog.New(slog.DiscardHandler))
	srv, err := New(testConfig(), inventory(), store, m)
	if err != nil {
		f.Fatal(err)
	}
	peer := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 68}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Serve sorts by the raw type: it must agree with the parser.
		mt := messageType(b)
		if req, err := dhcpv4.FromBytes(b); err == nil && mt != 0 && mt != byte(req.MessageType()) {
			t.Fatalf("messageType %d, the parser says %s", mt, req.MessageType())
		}
		before := metrics.Value(m.Dropped)
		out, to, err := srv.HandlePacket(context.Background(), b, peer)
		if err != nil {
			if !NoReply(err) && metrics.Value(m.Dropped) != before+1 {
				t.Fatalf("dropped (%v) but not counted", err)
			}
			return
		}
		req, _ := dhcpv4.FromBytes(b)
		r, perr := dhcpv4.FromBytes(out)
		if perr != nil {
			t.Fatalf("reply does not parse: %v", perr)
		}
		if r.OpCode != dhcpv4.OpcodeBootReply || r.TransactionID != req.TransactionID ||
			r.ClientHWAddr.String() != req.ClientHWAddr.String() || to == nil {
			t.Fatalf("reply %v to %v for %v", r.Summary(), to, req.Summary())
		}
		if yi := r.YourIPAddr; !yi.IsUnspecified() {
			ip, _ := netip.AddrFromSlice(yi.To4())
			if !localNet.Range.Contains(ip) && !relayedNet.Range.Contains(ip) && ip.String() != "192.0.2.50" {
				t.Fatalf("handed out %s", ip)
			}
		}
	})
}

// TestNewReply: newReply builds, byte for byte, what the library's
// NewReplyFromRequest does (a relayed request with a client identifier,
// relay agent information and the broadcast flag), without its random
// transaction ID.
func TestNewReply(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9}
	req, err := dhcpv4.NewDiscovery(mac,
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithGatewayIP(net.IPv4(192, 0, 2, 1)),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, 0x52, 0x54, 0, 0, 0, 9})),
		dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.AgentCircuitIDSubOption, []byte("eth7")))))
	if err != nil {
		t.Fatal(err)
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 10)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(198, 51, 100, 1))),
	}
	want, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		t.Fatal(err)
	}
	got := newReply(req, mods...)
	if d := cmp.Diff(want.ToBytes(), got.ToBytes()); d != "" {
		t.Errorf("newReply differs from NewReplyFromRequest (-want +got):\n%s\nwant %s\ngot %s", d, want.Summary(), got.Summary())
	}
	if got.TransactionID != req.TransactionID || got.OpCode != dhcpv4.OpcodeBootReply || !got.IsBroadcast() {
		t.Errorf("reply %s", got.Summary())
	}
}

// TestMessageType: the type Serve sorts packets by, read from the raw
// options as the library parses it, and 0 for what is not DHCP.
func TestMessageType(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9}
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform} {
		// Other options first, some padding, a long one.
		m, err := dhcpv4.New(dhcpv4.WithHwAddr(mac),
			dhcpv4.WithOption(dhcpv4.OptHostName(strings.Repeat("h", 200))),
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")),
			dhcpv4.WithMessageType(mt))
		if err != nil {
			t.Fatal(err)
		}
		if got := messageType(m.ToBytes()); got != byte(mt) {
			t.Errorf("messageType(%s) = %d", mt, got)
		}
	}
	req, _ := dhcpv4.NewDiscovery(mac)
	b := req.ToBytes()
	for name, bad := range map[string][]byte{
		"empty":         nil,
		"header only":   b[:240],
		"no cookie":     append(append([]byte{}, b[:236]...), make([]byte, len(b)-236)...),
		"truncated TLV": append(append([]byte{}, b[:240]...), 12),
		"no type":       append(append([]byte{}, b[:240]...), 12, 1, 'x', 255),
	} {
		if got := messageType(bad); got != 0 {
			t.Errorf("%s: messageType = %d, want 0", name, got)
		}
	}
}
