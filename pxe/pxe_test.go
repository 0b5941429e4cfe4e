package pxe

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"

	"github.com/bellbuild/bellbuild/pxe/dhcp"
	"github.com/bellbuild/bellbuild/pxe/leases"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
)

func macOf(i int) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0, 1, byte(i >> 8), byte(i)} }

func fleet(n int) node.Static {
	s := node.Static{}
	for i := range n {
		s[macOf(i).String()] = &Machine{Name: fmt.Sprintf("n%d", i), Profile: "worker"}
	}
	return s
}

// running is one server of the test.
type running struct {
	srv    *Server
	cancel context.CancelFunc
	done   chan error
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func serve(t *testing.T, cfg Config, b Backend) *running {
	t.Helper()
	srv, err := New(cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Run(ctx) }()
	return r
}

func loopbackConfig(leaseFile string, dhcpPort int) Config {
	return Config{
		ServerIP: netip.MustParseAddr("192.0.2.1"),
		Pools: []dhcp.Pool{{
			Range:  leases.Range{Start: netip.MustParseAddr("192.0.2.10"), End: netip.MustParseAddr("192.0.2.250")},
			Subnet: netip.MustParsePrefix("192.0.2.0/24"),
		}},
		LeaseFile: leaseFile,
		DHCPAddr:  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(dhcpPort)),
		TFTPAddr:  "127.0.0.1:0",
		HTTPAddr:  "127.0.0.1:0",
		Loaders:   map[string]string{},
		Log:       slog.New(slog.DiscardHandler),
	}
}

func dora(ctx context.Context, server *net.UDPAddr, mac net.HardwareAddr) (netip.Addr, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return netip.Addr{}, err
	}
	c, err := nclient4.NewWithConn(conn, mac, nclient4.WithServerAddr(server),
		nclient4.WithTimeout(time.Second), nclient4.WithRetry(20))
	if err != nil {
		conn.Close()
		return netip.Addr{}, err
	}
	defer c.Close()
	lease, err := c.Request(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	ip, _ := netip.AddrFromSlice(lease.ACK.YourIPAddr.To4())
	return ip, nil
}

// TestRestartDuringStorm restarts the server while 200 clients boot at
// once: every acknowledged lease survives, no address goes to two MACs,
// and each MAC is offered its address again afterwards.
func TestRestartDuringStorm(t *testing.T) {
	const n = 200
	file := filepath.Join(t.TempDir(), "leases")
	inv := fleet(n)
	first := serve(t, loopbackConfig(file, 0), inv)
	addr := first.srv.DHCPAddr().(*net.UDPAddr)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got := make([]netip.Addr, n)
	var acked atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip, err := dora(ctx, addr, macOf(i))
			if err != nil {
				t.Errorf("client %d: %v", i, err)
				return
			}
			got[i] = ip
			acked.Add(1)
		}()
	}
	// Restart once some, not all, have their lease.
	for acked.Load() < n/4 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	first.stop(t)
	t.Logf("restarting after %d of %d leases", acked.Load(), n)
	second := serve(t, loopbackConfig(file, addr.Port), inv)
	wg.Wait()
	if t.Failed() {
		second.stop(t)
		return
	}
	seen := map[netip.Addr]int{}
	for i, ip := range got {
		if j, dup := seen[ip]; dup {
			t.Errorf("MACs %d and %d both got %s", j, i, ip)
		}
		seen[ip] = i
	}
	second.stop(t)

	// A third server reads the same file: every lease is there, and each
	// MAC gets its address again.
	third := serve(t, loopbackConfig(file, addr.Port), inv)
	defer third.stop(t)
	for i, ip := range got {
		l, ok := third.srv.Leases().Get(macOf(i))
		if !ok || l.IP != ip {
			t.Fatalf("MAC %d: after restart %v %v, acked %s", i, l.IP, ok, ip)
		}
	}
	for i := range 10 {
		ip, err := dora(ctx, addr, macOf(i))
		if err != nil || ip != got[i] {
			t.Errorf("MAC %d re-offered %v (%v), had %s", i, ip, err, got[i])
		}
	}
}

func TestHTTPEndpoints(t *testing.T) {
	r := serve(t, loopbackConfig("", 0), fleet(1))
	defer r.stop(t)
	base := "http://" + r.srv.HTTPAddr().String()
	for path, want := range map[string]string{
		"/healthz": "ok\n",
		"/metrics": "bellbuild_pxe_dhcp_offers_total 0",
	} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d, want %q in:\n%.300s", path, resp.StatusCode, want, b)
		}
	}
	if v := metrics.Value(r.srv.Metrics().HTTPRequests); v != 1 {
		t.Errorf("HTTP requests counted %v, want 1 (/healthz; /metrics is not counted)", v)
	}
}

func TestSecondServerOnTheSamePortFails(t *testing.T) {
	r := serve(t, loopbackConfig("", 0), fleet(1))
	defer r.stop(t)
	port := r.srv.DHCPAddr().(*net.UDPAddr).Port
	if _, err := New(loopbackConfig("", port), fleet(1)); err == nil {
		t.Fatal("a second server bound the same DHCP port (SO_REUSEPORT would split the traffic)")
	}
}

// TestHTTPLimits: Config.HTTP reaches the HTTP server (an idle keep-alive
// connection is closed after its idle timeout), and a negative limit is
// refused before anything is opened.
func TestHTTPLimits(t *testing.T) {
	cfg := loopbackConfig("", 0)
	cfg.HTTP.IdleTimeout = 300 * time.Millisecond
	r := serve(t, cfg, fleet(1))
	defer r.stop(t)
	c, err := net.Dial("tcp4", r.srv.HTTPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v after %v, want the server to close it", err, time.Since(start))
	}

	bad := loopbackConfig("", 0)
	bad.HTTP.MaxConns = -1
	want := "pxe: http connection cap -1: want a positive number (0: the default)"
	if _, err := New(bad, fleet(1)); err == nil || err.Error() != want {
		t.Errorf("New with a negative cap: %v, want %q", err, want)
	}
}
