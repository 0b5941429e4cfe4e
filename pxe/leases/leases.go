// Package leases binds IPv4 addresses to MAC addresses for the DHCP
// server and keeps those bindings across restarts.
//
// # Rules
//
// An address is bound to at most one MAC address at a time, and a MAC
// address to at most one address. A lease that expires stays bound to its
// MAC (the same machine gets the same address back) until the pool has no
// never-used address left; only then is the longest-expired binding handed
// to another machine. An offer holds its address for Options.OfferHold
// and is logged without waiting for the disk (a restarted server remembers
// it, a crashed one may not: that costs the client a NAK); an acknowledged
// lease is on disk before Ack returns, so the DHCPACK is never sent for a
// lease a crash could lose.
//
// # File format and write strategy
//
// The file is an append-only log of text lines:
//
//	L IP MAC EXPIRY   lease (EXPIRY in Unix seconds)
//	O IP MAC UNTIL    offer, held until UNTIL
//	R IP MAC TIME     released at TIME
//	D IP UNTIL        declined (someone else uses IP) until UNTIL
//
// Writes are group-committed: every Ack appends its line to an in-memory
// batch and waits; one writer goroutine writes the whole batch with a
// single write and a single fsync, then wakes every waiter. Under a storm
// of thousands of clients a batch holds hundreds of leases, so the rate is
// bounded by the handler, not by fsync (see BenchmarkAck). When the log
// holds more than twice as many lines as there are bindings (and at least
// Options.CompactAt), the writer instead writes a snapshot of the bindings
// to a temporary file in the same directory, fsyncs it, renames it over the
// log and fsyncs the directory: at every instant the file on disk is a
// complete log. A torn last line (a crash mid-write) is cut off on Open;
// any other bad line is an error. A lock file (FILE.lock, flock) keeps a
// second server from using the same file.
package leases

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Errors returned by the Store.
var (
	// ErrInUse means the address is bound to another MAC address.
	ErrInUse = errors.New("address bound to another MAC address")
	// ErrExhausted means the pool has no address left for a new machine.
	ErrExhausted = errors.New("address pool exhausted")
	// ErrClosed means the Store was closed.
	ErrClosed = errors.New("lease store closed")
	// ErrLocked means another process holds the lease file.
	ErrLocked = errors.New("lease file in use by another process")
)

// Lease is one binding of an address to a MAC address.
type Lease struct {
	IP     netip.Addr
	MAC    net.HardwareAddr
	Expiry time.Time
}

// Range is an inclusive range of IPv4 addresses.
type Range struct{ Start, End netip.Addr }

// ParseRange parses "START-END", e.g. "192.0.2.100-192.0.2.199".
func ParseRange(s string) (Range, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return Range{}, fmt.Errorf("range %q: want START-END", s)
	}
	start, err := netip.ParseAddr(strings.TrimSpace(a))
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", s, err)
	}
	end, err := netip.ParseAddr(strings.TrimSpace(b))
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", s, err)
	}
	if !start.Is4() || !end.Is4() || end.Less(start) {
		return Range{}, fmt.Errorf("range %q: want two IPv4 addresses, the first not after the second", s)
	}
	return Range{start, end}, nil
}

// Contains reports whether a is in r.
func (r Range) Contains(a netip.Addr) bool {
	return a.Is4() && !a.Less(r.Start) && !r.End.Less(a)
}

func (r Range) String() string { return r.Start.String() + "-" + r.End.String() }

// Options tune a Store. The zero value is usable.
type Options struct {
	// OfferHold is how long an offered address stays reserved for the MAC
	// it was offered to (default 60 s).
	OfferHold time.Duration
	// DeclineHold is how long a declined address is kept out of the pool
	// (default 10 min).
	DeclineHold time.Duration
	// CompactAt is the least number of log lines before the log is
	// compacted (default 4096).
	CompactAt int
	// Now replaces time.Now (tests).
	Now func() time.Time
}

func (o *Options) fill() {
	if o.OfferHold == 0 {
		o.OfferHold = 60 * time.Second
	}
	if o.DeclineHold == 0 {
		o.DeclineHold = 10 * time.Minute
	}
	if o.CompactAt == 0 {
		o.CompactAt = 4096
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

type state uint8

const (
	offered state = iota
	leased
	declined
)

type binding struct {
	ip     netip.Addr
	mac    string // "" when declined
	state  state
	expiry time.Time
}

// live reports whether b still keeps its address from anyone else.
func (b *binding) live(now time.Time) bool { return now.Before(b.expiry) }

// Store holds the bindings. It is safe for concurrent use.
type Store struct {
	opts Options

	mu     sync.Mutex
	byMAC  map[string]*binding
	byIP   map[netip.Addr]*binding
	cursor map[Range]netip.Addr

	// Persistence (nil f: memory only).
	path      string
	persist   bool     // false: memory only
	replaying bool     // Open is reading the log
	f         *os.File // owned by the writer goroutine once Open returns
	lock      *os.File
	lines     int // lines in the log file (including pending)
	pending   []byte
	waiters   []chan error
	kick      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closed    bool

	// shared, when set, holds the bindings instead of the file
	// (OpenShared); cancel stops its watch.
	shared Shared
	cancel context.CancelFunc
}

// Open loads the bindings logged in path (creating it when missing) and
// appends to it from then on. An empty path keeps leases in memory only.
func Open(path string, opts Options) (*Store, error) {
	opts.fill()
	s := &Store{
		opts:   opts,
		byMAC:  map[string]*binding{},
		byIP:   map[netip.Addr]*binding{},
		cursor: map[Range]netip.Addr{},
		path:   path,
	}
	if path == "" {
		return s, nil
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("leases: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("leases: %s: %w", path, ErrLocked)
	}
	s.lock = lock
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("leases: %w", err)
	}
	s.persist, s.replaying = true, true
	good, err := s.replay(f)
	s.replaying = false
	if err == nil {
		// Cut a torn last line, then append after the good part.
		if err = f.Truncate(good); err == nil {
			_, err = f.Seek(good, io.SeekStart)
		}
	}
	if err != nil {
		f.Close()
		lock.Close()
		return nil, fmt.Errorf("leases: %s: %w", path, err)
	}
	s.f = f
	s.kick = make(chan struct{}, 1)
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	go s.writer()
	return s, nil
}

// replay applies every line of f and returns the offset just after the
// last complete, valid line.
func (s *Store) replay(f *os.File) (int64, error) {
	r := bufio.NewReader(f)
	var off int64
	for n := 1; ; n++ {
		line, err := r.ReadString('\n')
		if err == io.EOF {
			// A last line without its newline is a torn write: dropped.
			return off, nil
		}
		if err != nil {
			return off, err
		}
		if perr := s.apply(strings.TrimSuffix(line, "\n")); perr != nil {
			// Only the very last line may be torn.
			if _, err := r.Peek(1); err == io.EOF {
				return off, nil
			}
			return off, fmt.Errorf("line %d: %w", n, perr)
		}
		off += int64(len(line))
		s.lines++
	}
}

// apply replays one log line.
func (s *Store) apply(line string) error {
	if line == "" || strings.HasPrefix(line, "#") {
		return nil
	}
	f := strings.Fields(line)
	bad := fmt.Errorf("malformed record %q", line)
	switch {
	case (f[0] == "L" || f[0] == "R" || f[0] == "O") && len(f) == 4:
		ip, err := netip.ParseAddr(f[1])
		if err != nil || !ip.Is4() {
			return bad
		}
		mac, err := net.ParseMAC(f[2])
		if err != nil {
			return bad
		}
		t, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			return bad
		}
		if f[0] == "O" {
			s.hold(ip, mac.String(), time.Unix(t, 0))
			break
		}
		s.bind(ip, mac.String(), leased, time.Unix(t, 0))
	case f[0] == "D" && len(f) == 3:
		ip, err := netip.ParseAddr(f[1])
		if err != nil || !ip.Is4() {
			return bad
		}
		t, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return bad
		}
		s.bind(ip, "", declined, time.Unix(t, 0))
	default:
		return bad
	}
	return nil
}

// bind makes ip belong to mac (or to nobody, declined), dropping whatever
// either was bound to before. Called with s.mu held.
func (s *Store) bind(ip netip.Addr, mac string, st state, expiry time.Time) *binding {
	if old := s.byIP[ip]; old != nil && old.mac != "" {
		delete(s.byMAC, old.mac)
	}
	if mac != "" {
		if old := s.byMAC[mac]; old != nil {
			delete(s.byIP, old.ip)
		}
	}
	b := &binding{ip: ip, mac: mac, state: st, expiry: expiry}
	s.byIP[ip] = b
	if mac != "" {
		s.byMAC[mac] = b
	}
	return b
}

// Offer picks the address to offer mac: reserved when valid (it must not be
// live for another MAC; a quarantine after a DECLINE does not count, since
// a reserved address has no other machine to go to), else the address mac already has in pool, else a
// never-used address of pool, else the longest-expired one. The address is
// held for mac for Options.OfferHold.
func (s *Store) Offer(mac net.HardwareAddr, reserved netip.Addr, pool Range) (netip.Addr, error) {
	if s.shared != nil {
		return s.sharedOffer(mac, reserved, pool)
	}
	key := mac.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	hold := now.Add(s.opts.OfferHold)
	if reserved.IsValid() {
		if b := s.byIP[reserved]; b != nil && b.mac != key && b.state != declined && b.live(now) {
			return netip.Addr{}, fmt.Errorf("reserved %s: %w", reserved, ErrInUse)
		}
		s.hold(reserved, key, hold)
		return reserved, nil
	}
	if b := s.byMAC[key]; b != nil && pool.Contains(b.ip) {
		s.hold(b.ip, key, hold)
		return b.ip, nil
	}
	ip, ok := s.free(pool, now)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%s: %w", pool, ErrExhausted)
	}
	s.hold(ip, key, hold)
	return ip, nil
}

// hold reserves ip for mac until t, keeping a longer lease mac already has
// on it. Called with s.mu held.
func (s *Store) hold(ip netip.Addr, mac string, t time.Time) {
	if b := s.byIP[ip]; b != nil && b.mac == mac && b.expiry.After(t) {
		return
	}
	s.bind(ip, mac, offered, t)
	// Logged without waiting: a lost offer only costs the client a NAK and
	// a new DISCOVER, but a restarted server that remembers its offers does
	// not offer the same address to a second machine meanwhile.
	if s.persist && !s.replaying {
		s.logLocked(record('O', ip, mac, t), false)
	}
}

// free finds an address of pool bound to nobody, scanning on from where the
// last scan stopped; failing that, the binding in pool that expired
// longest ago. Called with s.mu held.
func (s *Store) free(pool Range, now time.Time) (netip.Addr, bool) {
	start := s.cursor[pool]
	if !pool.Contains(start) {
		start = pool.Start
	}
	ip := start
	for {
		if s.byIP[ip] == nil {
			next := ip.Next()
			if !pool.Contains(next) {
				next = pool.Start
			}
			s.cursor[pool] = next
			return ip, true
		}
		ip = ip.Next()
		if !pool.Contains(ip) {
			ip = pool.Start
		}
		if ip == start {
			break
		}
	}
	var oldest *binding
	for a, b := range s.byIP {
		if pool.Contains(a) && !b.live(now) && (oldest == nil || b.expiry.Before(oldest.expiry) ||
			b.expiry.Equal(oldest.expiry) && a.Less(oldest.ip)) {
			oldest = b
		}
	}
	if oldest == nil {
		return netip.Addr{}, false
	}
	return oldest.ip, true
}

// Ack leases ip to mac for d, writes it to disk, and returns once it is
// there (or ctx is done). ip must not be live for another MAC address.
func (s *Store) Ack(ctx context.Context, mac net.HardwareAddr, ip netip.Addr, d time.Duration) (Lease, error) {
	if s.shared != nil {
		return s.sharedAck(ctx, mac, ip, d)
	}
	key := mac.String()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Lease{}, ErrClosed
	}
	now := s.opts.Now()
	if b := s.byIP[ip]; b != nil && b.mac != key && b.live(now) {
		s.mu.Unlock()
		return Lease{}, fmt.Errorf("%s: %w", ip, ErrInUse)
	}
	// Whole seconds: what is on disk is what is in memory.
	exp := now.Add(d).Truncate(time.Second)
	s.bind(ip, key, leased, exp)
	wait := s.logLocked(record('L', ip, key, exp), true)
	s.mu.Unlock()
	if err := s.await(ctx, wait); err != nil {
		return Lease{}, err
	}
	return Lease{IP: ip, MAC: mac, Expiry: exp}, nil
}

// Release ends mac's lease on ip now; the address stays bound to mac until
// the pool needs it for another machine.
func (s *Store) Release(ctx context.Context, mac net.HardwareAddr, ip netip.Addr) error {
	if s.shared != nil {
		return s.sharedRelease(ctx, mac, ip)
	}
	key := mac.String()
	s.mu.Lock()
	b := s.byIP[ip]
	if s.closed || b == nil || b.mac != key {
		s.mu.Unlock()
		return nil
	}
	now := s.opts.Now().Truncate(time.Second)
	b.expiry = now
	wait := s.logLocked(record('R', ip, key, now), true)
	s.mu.Unlock()
	return s.await(ctx, wait)
}

// Decline takes ip out of use for Options.DeclineHold: mac found it in use
// by someone else. mac loses its binding. It reports whether it did so: a
// DECLINE from a MAC that ip is not bound to changes nothing.
func (s *Store) Decline(ctx context.Context, mac net.HardwareAddr, ip netip.Addr) (bool, error) {
	if s.shared != nil {
		return s.sharedDecline(ctx, mac, ip)
	}
	key := mac.String()
	s.mu.Lock()
	b := s.byIP[ip]
	if s.closed || b == nil || b.mac != key {
		s.mu.Unlock()
		return false, nil
	}
	until := s.opts.Now().Add(s.opts.DeclineHold).Truncate(time.Second)
	s.bind(ip, "", declined, until)
	wait := s.logLocked(fmt.Sprintf("D %s %d\n", ip, until.Unix()), true)
	s.mu.Unlock()
	return true, s.await(ctx, wait)
}

// Get returns mac's binding: its lease (or offer), expired or not.
func (s *Store) Get(mac net.HardwareAddr) (Lease, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.byMAC[mac.String()]
	if b == nil {
		return Lease{}, false
	}
	return b.lease(), true
}

// MACFor returns the MAC address holding a current lease on ip: who may
// read that node's files from ip.
func (s *Store) MACFor(ip netip.Addr) (net.HardwareAddr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.byIP[ip.Unmap()]
	if b == nil || b.state != leased || !b.live(s.opts.Now()) {
		return nil, false
	}
	mac, _ := net.ParseMAC(b.mac)
	return mac, true
}

// Leases returns every acknowledged lease, expired or not, sorted by
// address.
func (s *Store) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Lease
	for _, b := range s.byIP {
		if b.state == leased {
			out = append(out, b.lease())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// Bound returns how many addresses are bound (leases, offers, declines).
func (s *Store) Bound() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byIP)
}

func (b *binding) lease() Lease {
	mac, _ := net.ParseMAC(b.mac)
	return Lease{IP: b.ip, MAC: mac, Expiry: b.expiry}
}

// logLocked queues line for the writer and returns the channel that
// reports it durable (nil in memory-only mode). Called with s.mu held.
// record formats one log line, "KIND IP MAC UNIXTIME\n", without fmt (a
// line per DHCP exchange: fmt cost 3% of the server's CPU).
func record(kind byte, ip netip.Addr, mac string, t time.Time) string {
	b := make([]byte, 0, 64)
	b = append(b, kind, ' ')
	b = ip.AppendTo(b)
	b = append(b, ' ')
	b = append(b, mac...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, t.Unix(), 10)
	return string(append(b, '\n'))
}

func (s *Store) logLocked(line string, wait bool) chan error {
	if !s.persist {
		return nil
	}
	s.pending = append(s.pending, line...)
	s.lines++
	var ch chan error
	if wait {
		ch = make(chan error, 1)
		s.waiters = append(s.waiters, ch)
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return ch
}

func (s *Store) await(ctx context.Context, ch chan error) error {
	if ch == nil {
		return nil
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writer is the one goroutine that writes the file: a batch per wake-up,
// one fsync per batch.
func (s *Store) writer() {
	defer close(s.done)
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			s.flush()
			return
		}
		s.flush()
	}
}

func (s *Store) flush() {
	s.mu.Lock()
	buf, waiters := s.pending, s.waiters
	s.pending, s.waiters = nil, nil
	var snap []byte
	if s.lines >= s.opts.CompactAt && s.lines > 2*len(s.byIP) {
		snap = s.snapshotLocked()
		s.lines = bytes.Count(snap, []byte{'\n'})
	}
	s.mu.Unlock()
	if len(buf) == 0 && snap == nil {
		return
	}
	var err error
	if snap != nil {
		err = s.compact(snap)
	} else {
		if _, err = s.f.Write(buf); err == nil {
			err = s.f.Sync()
		}
	}
	if err != nil {
		err = fmt.Errorf("leases: writing %s: %w", s.path, err)
	}
	for _, w := range waiters {
		w <- err
	}
}

// snapshotLocked renders every binding worth keeping as log lines, sorted
// by address. Called with s.mu held.
func (s *Store) snapshotLocked() []byte {
	ips := make([]netip.Addr, 0, len(s.byIP))
	for ip := range s.byIP {
		ips = append(ips, ip)
	}
	sort.Slice(ips, func(i, j int) bool { return ips[i].Less(ips[j]) })
	var b bytes.Buffer
	b.WriteString("# bellbuild leases v1\n")
	now := s.opts.Now()
	for _, ip := range ips {
		x := s.byIP[ip]
		switch {
		case x.state == leased:
			fmt.Fprintf(&b, "L %s %s %d\n", ip, x.mac, x.expiry.Unix())
		case x.state == offered && x.live(now):
			fmt.Fprintf(&b, "O %s %s %d\n", ip, x.mac, x.expiry.Unix())
		case x.state == declined && x.live(now):
			fmt.Fprintf(&b, "D %s %d\n", ip, x.expiry.Unix())
		}
	}
	return b.Bytes()
}

// compact replaces the log with snap atomically.
func (s *Store) compact(snap []byte) error {
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(s.path)+".*")
	if err != nil {
		return err
	}
	if _, err = tmp.Write(snap); err == nil {
		if err = tmp.Sync(); err == nil {
			err = os.Rename(tmp.Name(), s.path)
		}
	}
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	s.f.Close()
	s.f = tmp // positioned at its end: appends continue there
	return nil
}

// Close writes what is pending and closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	if !s.persist {
		return nil
	}
	close(s.stop)
	<-s.done
	err := s.f.Close()
	s.lock.Close()
	return err
}
