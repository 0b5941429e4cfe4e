package tftp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// relay forwards TFTP between clients and a server on loopback, delaying
// every datagram by half a round trip each way and dropping the datagrams
// its drop function picks. (This machine has no netem: delay and loss are
// made here, the same for every server.) Each client gets its own pair of
// sockets, so the server's transfer port (TID) is relayed as the relay's
// own.
type relay struct {
	conn   *net.UDPConn
	server *net.UDPAddr
	// drop says whether to lose p, a datagram going to the client
	// (toClient) or to the server. Calls are serialised.
	drop func(toClient bool, p []byte) bool
	// up and down delay what goes to the server and to the client.
	up, down *delayLine
	mu       sync.Mutex
	// data counts the DATA datagrams the server sent, lost ones included.
	data atomic.Int64
	// acked is the highest block the client ACKed; ahead the most blocks
	// the server had sent beyond it (under mu).
	acked, ahead uint16
	// sent is the highest DATA block the server sent, reached the highest
	// ACK delivered to it; windows the number of blocks it sent for the
	// first time after each new ACK reached it (under mu): with a round
	// trip far longer than the server takes to send a window, the sizes of
	// its send-ahead windows, in order.
	sent, reached uint16
	windows       []int
	lastWin       int // the ACK that started the last window (-1: none yet)
}

// newRelay starts a relay to server ("127.0.0.1:PORT") that adds rtt to
// every round trip (0: none) and returns the port clients should use.
func newRelay(tb testing.TB, server string, rtt time.Duration, drop func(toClient bool, p []byte) bool) (*relay, string) {
	tb.Helper()
	saddr, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	r := &relay{conn: conn, server: saddr, drop: drop, lastWin: -1,
		up: newDelayLine(tb, rtt/2), down: newDelayLine(tb, rtt/2)}
	var socks []*net.UDPConn
	var smu sync.Mutex
	tb.Cleanup(func() {
		r.up.stop()
		r.down.stop()
		conn.Close()
		smu.Lock()
		for _, s := range socks {
			s.Close()
		}
		smu.Unlock()
	})
	go func() {
		sessions := map[string]*net.UDPConn{}
		buf := make([]byte, 65536)
		for {
			n, client, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			up := sessions[client.String()]
			if up == nil {
				up, _ = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				down, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				smu.Lock()
				socks = append(socks, up, down)
				smu.Unlock()
				sessions[client.String()] = up
				var mu sync.Mutex
				peer := r.server // the server's transfer address, once known
				go r.pump(up, true, func(from *net.UDPAddr) *net.UDPAddr {
					mu.Lock()
					peer = from
					mu.Unlock()
					return client
				}, down)
				go r.pump(down, false, func(*net.UDPAddr) *net.UDPAddr {
					mu.Lock()
					defer mu.Unlock()
					return peer
				}, up)
			}
			if !r.lose(false, buf[:n]) {
				r.forward(false, up, buf[:n], r.server)
			}
		}
	}()
	return r, strconv.Itoa(conn.LocalAddr().(*net.UDPAddr).Port)
}

// pump forwards what arrives on in, through out, to where route says.
func (r *relay) pump(in *net.UDPConn, toClient bool, route func(from *net.UDPAddr) *net.UDPAddr, out *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := in.ReadFromUDP(buf)
		if err != nil {
			return
		}
		to := route(from)
		if !r.lose(toClient, buf[:n]) {
			r.forward(toClient, out, buf[:n], to)
		}
	}
}

// forward sends p through out to to, after the delay of its direction.
func (r *relay) forward(toClient bool, out *net.UDPConn, p []byte, to *net.UDPAddr) {
	if toClient {
		r.down.send(out, p, to, nil)
		return
	}
	r.up.send(out, p, to, r.deliver)
}

// deliver notes p, a datagram that has just been sent to the server.
func (r *relay) deliver(p []byte) {
	if len(p) < 4 || binary.BigEndian.Uint16(p) != opAck {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if b := binary.BigEndian.Uint16(p[2:]); b-r.reached < 1<<15 {
		r.reached = b
	}
}

func (r *relay) lose(toClient bool, p []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(p) >= 4 {
		switch op, b := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:]); {
		case toClient && op == opData:
			r.data.Add(1)
			r.ahead = max(r.ahead, b-r.acked)
			if b-r.sent == 1 { // sent for the first time
				r.sent = b
				if int(r.reached) != r.lastWin {
					r.lastWin = int(r.reached)
					r.windows = append(r.windows, 0)
				}
				r.windows[len(r.windows)-1]++
			}
		case !toClient && op == opAck:
			r.acked = max(r.acked, b)
		}
	}
	return r.drop(toClient, p)
}

// maxAhead is the most DATA blocks the server had in flight.
func (r *relay) maxAhead() uint16 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ahead
}

// windowSizes is how many new blocks the server sent after each new ACK,
// in order (see relay.windows).
func (r *relay) windowSizes() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.windows)
}

// delayLine sends datagrams a fixed delay after they were queued, in
// order. It waits on a timerfd, which the runtime's netpoller wakes to the
// microsecond: Go's own timers cannot wait less than a millisecond when
// the process is otherwise idle (the netpoller's epoll_wait takes whole
// milliseconds), and a 0.2 ms round trip needs 0.1 ms each way. (A
// nanosleep(2) would hold one of the process's Ps for the whole sleep,
// stalling the in-process server that the benchmarks measure.)
type delayLine struct {
	d     time.Duration
	q     chan delayed
	done  chan struct{}
	once  sync.Once
	timer *os.File
	fd    int
}

type delayed struct {
	due  time.Time
	p    []byte
	out  *net.UDPConn
	to   *net.UDPAddr
	sent func([]byte)
}

// newDelayLine returns a line delaying by d (nil for 0: no delay).
func newDelayLine(tb testing.TB, d time.Duration) *delayLine {
	if d <= 0 {
		return nil
	}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		tb.Fatalf("timerfd: %v", err)
	}
	l := &delayLine{d: d, q: make(chan delayed, 8192), done: make(chan struct{}),
		timer: os.NewFile(uintptr(fd), "timerfd"), fd: fd}
	go l.run()
	return l
}

// send sends p through out to to after the line's delay, then calls sent
// (when not nil) with p.
func (l *delayLine) send(out *net.UDPConn, p []byte, to *net.UDPAddr, sent func([]byte)) {
	if l == nil {
		out.WriteToUDP(p, to)
		if sent != nil {
			sent(p)
		}
		return
	}
	select {
	case l.q <- delayed{time.Now().Add(l.d), bytes.Clone(p), out, to, sent}:
	case <-l.done:
	}
}

func (l *delayLine) run() {
	defer l.timer.Close()
	var expirations [8]byte
	for {
		var x delayed
		select {
		case x = <-l.q:
		case <-l.done:
			return
		}
		if w := time.Until(x.due); w > spinBelow {
			spec := unix.ItimerSpec{Value: unix.NsecToTimespec(w.Nanoseconds())}
			if err := unix.TimerfdSettime(l.fd, 0, &spec, nil); err != nil {
				panic(fmt.Sprintf("timerfd_settime: %v", err))
			}
			if _, err := l.timer.Read(expirations[:]); err != nil {
				return // closed
			}
		}
		for time.Now().Before(x.due) {
			runtime.Gosched()
		}
		x.out.WriteToUDP(x.p, x.to)
		if x.sent != nil {
			x.sent(x.p)
		}
	}
}

// spinBelow is the shortest wait a delay line sleeps for; it spins through
// shorter ones. The datagrams of a burst (a send-ahead window) follow each
// other by a few µs: waking up for each, 50–150 µs late on a busy
// machine, would spread the window out and slow send-ahead down for the
// relay's sake, not the network's.
const spinBelow = 50 * time.Microsecond

// stop ends the line: what it still holds is lost.
func (l *delayLine) stop() {
	if l != nil {
		l.once.Do(func() { close(l.done) })
	}
}

// randomLoss loses each datagram, either way, with probability rate (a
// seeded PRNG: the same sequence for every server).
func randomLoss(rate float64) func(bool, []byte) bool {
	rng := mrand.New(mrand.NewPCG(1, 2))
	return func(bool, []byte) bool { return rng.Float64() < rate }
}

// TFTP opcodes as the relay sees them.
const (
	opData = 3
	opAck  = 4
)

// loseOnce loses, the first time each passes, the DATA (to the client) or
// ACK (to the server) datagrams of the given blocks.
func loseOnce(op uint16, blocks ...uint16) func(bool, []byte) bool {
	left := map[uint16]bool{}
	for _, b := range blocks {
		left[b] = true
	}
	return func(toClient bool, p []byte) bool {
		if len(p) < 4 || binary.BigEndian.Uint16(p) != op || toClient != (op == opData) {
			return false
		}
		b := binary.BigEndian.Uint16(p[2:])
		if left[b] {
			delete(left, b)
			return true
		}
		return false
	}
}

// smallRing loses what a client that can hold only n blocks beyond its
// latest ACK would drop: every DATA more than n blocks ahead of the last
// ACK that passed.
func smallRing(n uint16) func(bool, []byte) bool {
	var acked uint16
	return func(toClient bool, p []byte) bool {
		if len(p) < 4 {
			return false
		}
		op, b := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
		switch {
		case !toClient && op == opAck:
			acked = max(acked, b)
		case toClient && op == opData:
			return b > acked+n
		}
		return false
	}
}
