package leases_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/leases"
	"github.com/bellbuild/bellbuild/pxe/state"
	"github.com/bellbuild/bellbuild/pxe/state/etcd"
	"github.com/bellbuild/bellbuild/pxe/state/etcd/etcdtest"
)

var sharedPool = leases.Range{Start: netip.MustParseAddr("192.0.2.10"), End: netip.MustParseAddr("192.0.2.249")}

func macN(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0, 0, byte(i >> 8), byte(i)}
}

// storm is n machines booting at once from servers that share a store:
// every DISCOVER reaches every server, the machine takes one offer at
// random and REQUESTs it from that server; a NAK (the address went to
// another machine meanwhile) sends it back to DISCOVER. It returns each
// machine's lease.
func storm(t *testing.T, servers []*leases.Store, n int, during func(i int)) map[string]netip.Addr {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	got := map[string]netip.Addr{}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if during != nil {
				during(i)
			}
			mac := macN(i)
			for try := 0; ; try++ {
				if try == 20 {
					t.Errorf("%s: no lease after 20 DISCOVERs", mac)
					return
				}
				var offers []netip.Addr
				var from []*leases.Store
				for _, s := range servers {
					ip, err := s.Offer(mac, netip.Addr{}, sharedPool)
					if err == nil {
						offers, from = append(offers, ip), append(from, s)
					}
				}
				if len(offers) == 0 {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				k := rand.IntN(len(offers))
				l, err := from[k].Ack(ctx, mac, offers[k], time.Hour)
				if errors.Is(err, leases.ErrInUse) {
					continue
				}
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				mu.Lock()
				got[mac.String()] = l.IP
				mu.Unlock()
				return
			}
		})
	}
	wg.Wait()
	return got
}

// checkDistinct fails unless every machine has a lease and no address is
// any two machines', in the leases and in what the store holds.
func checkDistinct(t *testing.T, st state.Store, got map[string]netip.Addr, n int) {
	t.Helper()
	if len(got) != n {
		t.Errorf("%d machines got a lease, want %d", len(got), n)
	}
	owner := map[netip.Addr]string{}
	for mac, ip := range got {
		if o, ok := owner[ip]; ok {
			t.Errorf("%s given to %s and %s", ip, o, mac)
		}
		owner[ip] = mac
	}
	// What the shared store holds: each machine's address is its own.
	for mac, ip := range got {
		v, err := st.Get(context.Background(), leases.KeyPrefix+ip.String())
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(string(v)); len(f) != 3 || f[0] != "L" || f[1] != mac {
			t.Errorf("the store holds %q for %s, want %s's lease", v, ip, mac)
		}
	}
}

// TestSharedDir: two servers over one state directory (two handles, as
// two processes would have) give 200 machines 200 distinct addresses.
func TestSharedDir(t *testing.T) {
	dir := t.TempDir()
	var servers []*leases.Store
	var st state.Store
	for range 2 {
		d, err := state.OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		st = d
		s, err := leases.OpenShared(context.Background(), d, leases.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		servers = append(servers, s)
	}
	checkDistinct(t, st, storm(t, servers, 200, nil), 200)
}

// TestSharedEtcd: two servers over a real three-member etcd cluster:
// 200 machines, 200 distinct addresses, though one member is stopped
// during the storm; a restarted server finds every lease; with no
// quorum, a machine with a lease keeps its address and a new one gets
// none, with the reason.
func TestSharedEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd cluster: skipped under -short")
	}
	c := etcdtest.Start(t, etcdtest.Options{})
	ctx := context.Background()
	open := func() (*etcd.Store, *leases.Store) {
		t.Helper()
		es, err := etcd.Open(ctx, etcd.Config{Endpoints: c.Endpoints(), Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { es.Close() })
		s, err := leases.OpenShared(ctx, es, leases.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return es, s
	}
	es, a := open()
	_, b := open()
	var once sync.Once
	got := storm(t, []*leases.Store{a, b}, 200, func(i int) {
		if i == 100 {
			once.Do(func() { c.Stop(2) })
		}
	})
	checkDistinct(t, es, got, 200)

	// A server started now knows every lease.
	_, fresh := open()
	if n := len(fresh.Leases()); n != 200 {
		t.Errorf("a new server sees %d leases, want 200", n)
	}

	// No quorum.
	c.Stop(1)
	mac := macN(7)
	ip, err := a.Offer(mac, netip.Addr{}, sharedPool)
	if err != nil || ip != got[mac.String()] {
		t.Errorf("no quorum, a machine with a lease: offered %v, %v; want %v", ip, err, got[mac.String()])
	}
	if l, err := a.Ack(ctx, mac, ip, time.Hour); err != nil || l.IP != ip {
		t.Errorf("no quorum, a machine with a lease: ack %v, %v", l, err)
	}
	start := time.Now()
	_, err = a.Offer(macN(500), netip.Addr{}, sharedPool)
	if !errors.Is(err, leases.ErrUnavailable) {
		t.Errorf("no quorum, a new machine: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("no quorum: the refusal took %v", d)
	}
}
