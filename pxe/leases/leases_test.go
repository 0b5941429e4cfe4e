package leases

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var pool = Range{Start: netip.MustParseAddr("192.0.2.10"), End: netip.MustParseAddr("192.0.2.12")}

func mac(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0, byte(i >> 16), byte(i >> 8), byte(i)}
}

// clock is a settable Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Unix(1_700_000_000, 0)} }

func open(t *testing.T, path string, c *clock) *Store {
	t.Helper()
	s, err := Open(path, Options{Now: c.now, CompactAt: 8})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// offerAck is one DISCOVER+REQUEST.
func offerAck(t *testing.T, s *Store, m net.HardwareAddr) netip.Addr {
	t.Helper()
	ip, err := s.Offer(m, netip.Addr{}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ack(context.Background(), m, ip, time.Hour); err != nil {
		t.Fatal(err)
	}
	return ip
}

func summary(s *Store) []string {
	var out []string
	for _, l := range s.Leases() {
		out = append(out, fmt.Sprintf("%s %s %d", l.IP, l.MAC, l.Expiry.Unix()))
	}
	return out
}

func TestAllocation(t *testing.T) {
	c := newClock()
	s := open(t, "", c)
	a := offerAck(t, s, mac(1))
	b := offerAck(t, s, mac(2))
	if a == b {
		t.Fatalf("two MACs got %s", a)
	}
	if again := offerAck(t, s, mac(1)); again != a {
		t.Errorf("same MAC got %s, then %s", a, again)
	}
	// Offers hold addresses too: a third MAC takes the last one, a fourth
	// finds none.
	if _, err := s.Offer(mac(3), netip.Addr{}, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Offer(mac(4), netip.Addr{}, pool); !errors.Is(err, ErrExhausted) {
		t.Fatalf("fourth MAC: %v, want ErrExhausted", err)
	}
	// Once the offer has lapsed, its address goes to the next machine, while
	// expired leases stay with their MACs as long as there is a choice.
	c.add(2 * time.Minute)
	if ip, err := s.Offer(mac(4), netip.Addr{}, pool); err != nil || ip != netip.MustParseAddr("192.0.2.12") {
		t.Fatalf("after the offer lapsed: %v %v, want 192.0.2.12", ip, err)
	}
	if _, err := s.Ack(context.Background(), mac(4), netip.MustParseAddr("192.0.2.12"), time.Hour); err != nil {
		t.Fatal(err)
	}
	// A reserved address that another MAC holds is not given away.
	if _, err := s.Offer(mac(5), a, pool); !errors.Is(err, ErrInUse) {
		t.Errorf("reserved address held by another MAC: %v, want ErrInUse", err)
	}
	// Expired leases are reclaimed oldest first only when nothing is free.
	c.add(2 * time.Hour)
	ip, err := s.Offer(mac(6), netip.Addr{}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if ip != a {
		t.Errorf("reclaimed %s, want the oldest expired %s", ip, a)
	}
	if _, ok := s.Get(mac(1)); ok {
		t.Error("MAC 1 still bound after its address went to MAC 6")
	}
}

func TestAckRefusesAddressOfAnotherMAC(t *testing.T) {
	c := newClock()
	s := open(t, "", c)
	a := offerAck(t, s, mac(1))
	if _, err := s.Ack(context.Background(), mac(2), a, time.Hour); !errors.Is(err, ErrInUse) {
		t.Fatalf("Ack of another MAC's address: %v, want ErrInUse", err)
	}
	if m, ok := s.MACFor(a); !ok || m.String() != mac(1).String() {
		t.Errorf("MACFor(%s) = %v %v, want MAC 1", a, m, ok)
	}
	c.add(2 * time.Hour)
	if _, ok := s.MACFor(a); ok {
		t.Error("MACFor answers for an expired lease")
	}
}

func TestPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases")
	c := newClock()
	s := open(t, path, c)
	ctx := context.Background()
	// Enough traffic to compact several times (CompactAt 8).
	for i := range 30 {
		offerAck(t, s, mac(i%3))
	}
	ip := netip.MustParseAddr("192.0.2.12")
	if err := s.Release(ctx, mac(2), ip); err != nil {
		t.Fatal(err)
	}
	want := summary(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if lines := strings.Count(string(data), "\n"); lines > 20 {
		t.Errorf("log has %d lines after compaction:\n%s", lines, data)
	}
	s2 := open(t, path, c)
	defer s2.Close()
	if d := cmp.Diff(want, summary(s2)); d != "" {
		t.Errorf("leases after reopening (-before +after):\n%s", d)
	}
	if _, ok := s2.MACFor(ip); ok {
		t.Error("released lease active after reopening")
	}
	if got, _ := s2.Offer(mac(2), netip.Addr{}, pool); got != ip {
		t.Errorf("released MAC re-offered %s, want its old %s", got, ip)
	}
}

func TestTornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases")
	good := "L 192.0.2.10 52:54:00:00:00:01 1700003600\n"
	if err := os.WriteFile(path, []byte(good+"L 192.0.2.11 52:54:00:0"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, path, newClock())
	want := []string{"192.0.2.10 52:54:00:00:00:01 1700003600"}
	if d := cmp.Diff(want, summary(s)); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	offerAck(t, s, mac(7))
	s.Close()
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), good+"O 192.0.2.11 52:54:00:00:00:07 ") {
		t.Errorf("torn line not cut before appending:\n%s", data)
	}
}

func TestCorruptLog(t *testing.T) {
	tests := []struct{ name, data, want string }{
		{"bad record mid-file", "L 192.0.2.10 52:54:00:00:00:01 1\nX nonsense\nL 192.0.2.11 52:54:00:00:00:02 1\n",
			`line 2: malformed record "X nonsense"`},
		{"bad address", "L 999.0.2.10 52:54:00:00:00:01 1\nD 192.0.2.10 1\n",
			`line 1: malformed record "L 999.0.2.10 52:54:00:00:00:01 1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "leases")
			os.WriteFile(path, []byte(tt.data), 0o600)
			_, err := Open(path, Options{})
			if err == nil || !strings.HasSuffix(err.Error(), tt.want) {
				t.Fatalf("Open: %v, want …%s", err, tt.want)
			}
		})
	}
}

// TestDecline: only the MAC an address is bound to can quarantine it; the
// quarantine is on disk, and it never keeps a reserved (fixed) address
// from the MAC it is reserved for.
func TestDecline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases")
	c := newClock()
	s := open(t, path, c)
	ctx := context.Background()
	a := offerAck(t, s, mac(1))
	if ok, err := s.Decline(ctx, mac(2), a); ok || err != nil {
		t.Fatalf("DECLINE from a MAC that does not hold %s: %v %v, want false", a, ok, err)
	}
	if m, ok := s.MACFor(a); !ok || m.String() != mac(1).String() {
		t.Errorf("after another MAC's DECLINE, %s is leased to %v %v, want MAC 1", a, m, ok)
	}
	if ok, err := s.Decline(ctx, mac(1), a); !ok || err != nil {
		t.Fatalf("DECLINE from the holder: %v %v, want true", ok, err)
	}
	s.Close()
	s = open(t, path, c)
	defer s.Close()
	if _, err := s.Ack(ctx, mac(3), a, time.Hour); !errors.Is(err, ErrInUse) {
		t.Errorf("declined %s leased after a restart: %v, want ErrInUse", a, err)
	}
	// A quarantine of an address that is now reserved for a MAC (a log
	// written before the server stopped declining fixed addresses, or
	// an address that left the pool to become a node's) does not keep
	// it from that MAC.
	if ip, err := s.Offer(mac(4), a, pool); ip != a || err != nil {
		t.Errorf("reserved %s under quarantine: offered %v %v", a, ip, err)
	}
	if _, err := s.Ack(ctx, mac(4), a, time.Hour); err != nil {
		t.Errorf("reserved %s under quarantine: %v", a, err)
	}
}

func TestSecondOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases")
	s := open(t, path, newClock())
	defer s.Close()
	if _, err := Open(path, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

// TestConcurrentStorm has many goroutines take leases at once, then checks
// the file holds each of them, once.
func TestConcurrentStorm(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases")
	big := Range{Start: netip.MustParseAddr("10.0.0.1"), End: netip.MustParseAddr("10.0.255.254")}
	s, err := Open(path, Options{CompactAt: 500})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	got := make([]netip.Addr, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2 { // every MAC renews once
				ip, err := s.Offer(mac(i), netip.Addr{}, big)
				if err == nil {
					_, err = s.Ack(context.Background(), mac(i), ip, time.Hour)
				}
				if err != nil {
					t.Error(err)
					return
				}
				got[i] = ip
			}
		}()
	}
	wg.Wait()
	s.Close()
	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	seen := map[netip.Addr]int{}
	for i := range n {
		l, ok := s2.Get(mac(i))
		if !ok || l.IP != got[i] {
			t.Fatalf("MAC %d: reopened %v %v, acked %s", i, l.IP, ok, got[i])
		}
		if j, dup := seen[l.IP]; dup {
			t.Fatalf("MACs %d and %d share %s", i, j, l.IP)
		}
		seen[l.IP] = i
	}
}

func TestParseRange(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "192.0.2.10-192.0.2.20", want: "192.0.2.10-192.0.2.20"},
		{in: "192.0.2.20-192.0.2.10", err: `range "192.0.2.20-192.0.2.10": want two IPv4 addresses, the first not after the second`},
		{in: "192.0.2.10", err: `range "192.0.2.10": want START-END`},
		{in: "2001:db8::1-2001:db8::2", err: `range "2001:db8::1-2001:db8::2": want two IPv4 addresses, the first not after the second`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := ParseRange(tt.in)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v, want %s", err, tt.err)
				}
				return
			}
			if err != nil || r.String() != tt.want {
				t.Fatalf("= %v, %v; want %s", r, err, tt.want)
			}
		})
	}
}

// BenchmarkAck measures acknowledged leases per second, each on disk before
// Ack returns, with 256 clients at once (a boot storm).
func BenchmarkAck(b *testing.B) {
	path := filepath.Join(b.TempDir(), "leases")
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	big := Range{Start: netip.MustParseAddr("10.0.0.1"), End: netip.MustParseAddr("10.255.255.254")}
	b.SetParallelism(128)
	var next int64
	var mu sync.Mutex
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			next++
			m := mac(int(next))
			mu.Unlock()
			ip, err := s.Offer(m, netip.Addr{}, big)
			if err == nil {
				_, err = s.Ack(context.Background(), m, ip, time.Hour)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "leases/s")
}

// TestRecord: a log line as the replay reads it.
func TestRecord(t *testing.T) {
	got := record('L', netip.MustParseAddr("192.0.2.10"), "52:54:00:00:00:01", time.Unix(1700000000, 0))
	if want := "L 192.0.2.10 52:54:00:00:00:01 1700000000\n"; got != want {
		t.Errorf("record = %q, want %q", got, want)
	}
}
