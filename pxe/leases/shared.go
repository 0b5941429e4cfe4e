package leases

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	pxestate "github.com/bellbuild/bellbuild/pxe/state"
)

// Shared is a state store that several servers share (package
// pxe/state/etcd): the bindings live there, one key per address, and
// each server's cache follows everyone's changes through Watch.
type Shared interface {
	pxestate.Store
	pxestate.Watcher
}

// KeyPrefix is where the bindings live in a Shared store: one key per
// address, KeyPrefix+IP, its value a log line without the address
// ("L MAC EXPIRY", "O MAC UNTIL", "D - UNTIL").
const KeyPrefix = "leases/"

// ErrUnavailable wraps a failure to commit a new binding to the shared
// store (a cluster without quorum): nothing is given out rather than an
// address that might be another server's.
var ErrUnavailable = errors.New("shared lease store unavailable: no new addresses given")

// sharedTries bounds how many addresses an Offer tries when other
// servers take them first.
const sharedTries = 32

// sharedTimeout bounds one commit.
const sharedTimeout = 5 * time.Second

// OpenShared keeps the bindings in st, shared with every server that
// uses it: an address is bound (offered, leased, declined) by a
// transaction on its key, which fails when another server changed the key
// since it was read, so that no address is ever given to two MACs. The
// Store's cache is filled from st before OpenShared returns and follows
// it until Close. When st cannot commit (no quorum), a machine whose lease
// the cache holds is still offered and acknowledged its address (its
// lease not extended); any other allocation fails with ErrUnavailable.
func OpenShared(ctx context.Context, st Shared, opts Options) (*Store, error) {
	opts.fill()
	s := &Store{
		opts:   opts,
		byMAC:  map[string]*binding{},
		byIP:   map[netip.Addr]*binding{},
		cursor: map[Range]netip.Addr{},
		shared: st,
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	if err := st.Watch(wctx, KeyPrefix, s.watched); err != nil {
		cancel()
		return nil, fmt.Errorf("leases: %w", err)
	}
	return s, nil
}

// watched applies a change of the shared store to the cache.
func (s *Store) watched(key string, value []byte) {
	ip, err := netip.ParseAddr(strings.TrimPrefix(key, KeyPrefix))
	if err != nil || !ip.Is4() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if value == nil {
		if old := s.byIP[ip]; old != nil {
			if old.mac != "" && s.byMAC[old.mac] == old {
				delete(s.byMAC, old.mac)
			}
			delete(s.byIP, ip)
		}
		return
	}
	b, err := parseShared(ip, value)
	if err != nil {
		return
	}
	s.setLocked(b)
}

// setLocked puts b in the cache as the shared store has it: unlike bind,
// it does not take the MAC's other address away (another key says what
// that is). Called with s.mu held.
func (s *Store) setLocked(b binding) {
	if old := s.byIP[b.ip]; old != nil && old.mac != "" && s.byMAC[old.mac] == old {
		delete(s.byMAC, old.mac)
	}
	nb := &binding{ip: b.ip, mac: b.mac, state: b.state, expiry: b.expiry}
	s.byIP[b.ip] = nb
	if nb.mac != "" {
		if cur := s.byMAC[nb.mac]; cur == nil || cur.state != leased || nb.state == leased && nb.expiry.After(cur.expiry) || cur.ip == nb.ip {
			s.byMAC[nb.mac] = nb
		}
	}
}

func sharedKey(ip netip.Addr) string { return KeyPrefix + ip.String() }

func sharedValue(b binding) []byte {
	kind := map[state]string{offered: "O", leased: "L", declined: "D"}[b.state]
	mac := b.mac
	if mac == "" {
		mac = "-"
	}
	return []byte(kind + " " + mac + " " + strconv.FormatInt(b.expiry.Unix(), 10))
}

func parseShared(ip netip.Addr, v []byte) (binding, error) {
	f := strings.Fields(string(v))
	bad := fmt.Errorf("leases: %s: malformed binding %q", ip, v)
	if len(f) != 3 {
		return binding{}, bad
	}
	t, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return binding{}, bad
	}
	b := binding{ip: ip, expiry: time.Unix(t, 0)}
	switch f[0] {
	case "O":
		b.state = offered
	case "L":
		b.state = leased
	case "D":
		b.state = declined
	default:
		return binding{}, bad
	}
	if b.state != declined {
		mac, err := net.ParseMAC(f[1])
		if err != nil {
			return binding{}, bad
		}
		b.mac = mac.String()
	}
	return b, nil
}

// commit binds ip as want decides from the shared store's current
// binding (nil: none): a transaction, retried when another server wrote
// ip first. want returns the binding to write, or an error (ErrInUse)
// to write nothing. The cache gets what was written (or what is there).
func (s *Store) commit(ctx context.Context, ip netip.Addr, want func(cur *binding) (binding, error)) (binding, error) {
	ctx, cancel := context.WithTimeout(ctx, sharedTimeout)
	defer cancel()
	var wrote binding
	var seen *binding
	unchanged := false
	err := s.shared.Update(ctx, sharedKey(ip), func(old []byte) ([]byte, error) {
		seen, unchanged = nil, false
		if old != nil {
			if b, err := parseShared(ip, old); err == nil {
				seen = &b
			}
		}
		b, err := want(seen)
		if errors.Is(err, pxestate.ErrUnchanged) {
			unchanged = true
		}
		if err != nil {
			return nil, err
		}
		wrote = b
		return sharedValue(b), nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil && unchanged:
		if seen != nil {
			s.setLocked(*seen)
		}
		return binding{}, pxestate.ErrUnchanged
	case err == nil:
		s.setLocked(wrote)
		return wrote, nil
	case seen != nil:
		s.setLocked(*seen)
	}
	if errors.Is(err, ErrInUse) || errors.Is(err, context.Canceled) {
		return binding{}, err
	}
	return binding{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// sharedOffer is Offer on a shared store: the candidate the cache gives,
// committed as an offer; another candidate when another server took it.
func (s *Store) sharedOffer(mac net.HardwareAddr, reserved netip.Addr, pool Range) (netip.Addr, error) {
	key := mac.String()
	ctx := context.Background()
	taken := map[netip.Addr]bool{}
	for range sharedTries {
		s.mu.Lock()
		now := s.opts.Now()
		var ip netip.Addr
		switch b := s.byMAC[key]; {
		case reserved.IsValid():
			ip = reserved
		case b != nil && pool.Contains(b.ip) && !taken[b.ip]:
			ip = b.ip
		default:
			var ok bool
			if ip, ok = s.sharedFree(pool, key, taken); !ok {
				if ip, ok = s.free(pool, now); !ok || taken[ip] {
					s.mu.Unlock()
					return netip.Addr{}, fmt.Errorf("%s: %w", pool, ErrExhausted)
				}
			}
		}
		cached := s.byIP[ip]
		mine := cached != nil && cached.mac == key && cached.state == leased && cached.live(now)
		s.mu.Unlock()
		hold := now.Add(s.opts.OfferHold)
		_, err := s.commit(ctx, ip, func(cur *binding) (binding, error) {
			if cur != nil && cur.mac != key && cur.live(now) && !(reserved.IsValid() && cur.state == declined) {
				return binding{}, ErrInUse
			}
			if cur != nil && cur.mac == key && cur.expiry.After(hold) {
				return *cur, pxestate.ErrUnchanged
			}
			return binding{ip: ip, mac: key, state: offered, expiry: hold}, nil
		})
		switch {
		case err == nil || errors.Is(err, pxestate.ErrUnchanged):
			return ip, nil
		case errors.Is(err, ErrUnavailable) && mine:
			// No quorum: a machine with a lease keeps its address.
			return ip, nil
		case errors.Is(err, ErrInUse) && reserved.IsValid():
			return netip.Addr{}, fmt.Errorf("reserved %s: %w", reserved, ErrInUse)
		case errors.Is(err, ErrInUse):
			taken[ip] = true // another server took it: the cache knows now
			continue
		}
		return netip.Addr{}, err
	}
	return netip.Addr{}, fmt.Errorf("%s: %w after %d tries", pool, ErrInUse, sharedTries)
}

// sharedAck is Ack on a shared store: committed before it returns.
func (s *Store) sharedAck(ctx context.Context, mac net.HardwareAddr, ip netip.Addr, d time.Duration) (Lease, error) {
	key := mac.String()
	now := s.opts.Now()
	exp := now.Add(d).Truncate(time.Second)
	s.mu.Lock()
	cached := s.byIP[ip]
	var prev netip.Addr
	if b := s.byMAC[key]; b != nil && b.ip != ip {
		prev = b.ip
	}
	s.mu.Unlock()
	_, err := s.commit(ctx, ip, func(cur *binding) (binding, error) {
		if cur != nil && cur.mac != key && cur.live(now) {
			return binding{}, fmt.Errorf("%s: %w", ip, ErrInUse)
		}
		return binding{ip: ip, mac: key, state: leased, expiry: exp}, nil
	})
	if errors.Is(err, ErrUnavailable) && cached != nil && cached.mac == key && cached.state == leased && cached.live(now) {
		// No quorum: the lease the cache holds, not extended.
		return Lease{IP: ip, MAC: mac, Expiry: cached.expiry}, nil
	}
	if err != nil {
		return Lease{}, err
	}
	if prev.IsValid() {
		// The MAC's other address goes back to the pool.
		s.commit(ctx, prev, func(cur *binding) (binding, error) {
			if cur == nil || cur.mac != key {
				return binding{}, pxestate.ErrUnchanged
			}
			return binding{ip: prev, mac: key, state: leased, expiry: now.Truncate(time.Second)}, nil
		})
	}
	return Lease{IP: ip, MAC: mac, Expiry: exp}, nil
}

// sharedRelease and sharedDecline are Release and Decline on a shared
// store.
func (s *Store) sharedRelease(ctx context.Context, mac net.HardwareAddr, ip netip.Addr) error {
	key := mac.String()
	now := s.opts.Now().Truncate(time.Second)
	_, err := s.commit(ctx, ip, func(cur *binding) (binding, error) {
		if cur == nil || cur.mac != key {
			return binding{}, pxestate.ErrUnchanged
		}
		return binding{ip: ip, mac: key, state: leased, expiry: now}, nil
	})
	if errors.Is(err, pxestate.ErrUnchanged) {
		return nil
	}
	return err
}

func (s *Store) sharedDecline(ctx context.Context, mac net.HardwareAddr, ip netip.Addr) (bool, error) {
	key := mac.String()
	until := s.opts.Now().Add(s.opts.DeclineHold).Truncate(time.Second)
	_, err := s.commit(ctx, ip, func(cur *binding) (binding, error) {
		if cur == nil || cur.mac != key {
			return binding{}, pxestate.ErrUnchanged
		}
		return binding{ip: ip, state: declined, expiry: until}, nil
	})
	if errors.Is(err, pxestate.ErrUnchanged) {
		return false, nil
	}
	if err == nil {
		s.mu.Lock()
		if b := s.byMAC[key]; b != nil && b.ip == ip {
			delete(s.byMAC, key)
		}
		s.mu.Unlock()
	}
	return err == nil, err
}

// sharedFree is the first address of pool, from a place the MAC chooses
// (its hash), that is bound to nobody or to mac already: every server
// that shares the store picks the same address for the same machine, so
// the offers they all make to it are one address, not one each. Called
// with s.mu held.
func (s *Store) sharedFree(pool Range, mac string, taken map[netip.Addr]bool) (netip.Addr, bool) {
	first, last := ipv4(pool.Start), ipv4(pool.End)
	size := uint64(last-first) + 1
	h := fnv.New64a()
	h.Write([]byte(mac))
	off := h.Sum64() % size
	for i := range size {
		n := first + uint32((off+i)%size)
		ip := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
		if taken[ip] {
			continue
		}
		if b := s.byIP[ip]; b == nil || b.mac == mac {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func ipv4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
