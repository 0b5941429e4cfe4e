package tftp

import (
	"encoding/binary"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// relay forwards TFTP between clients and a server on loopback, dropping
// the datagrams its drop function picks. (This machine has no netem: loss
// is made here, the same for every server.) Each client gets its own pair
// of sockets, so the server's transfer port (TID) is relayed as the
// relay's own.
type relay struct {
	conn   *net.UDPConn
	server *net.UDPAddr
	// drop says whether to lose p, a datagram going to the client
	// (toClient) or to the server. Calls are serialised.
	drop func(toClient bool, p []byte) bool
	mu   sync.Mutex
	// data counts the DATA datagrams the server sent, lost ones included.
	data atomic.Int64
	// acked is the highest block the client ACKed; ahead the most blocks
	// the server had sent beyond it (under mu).
	acked, ahead uint16
}

// newRelay starts a relay to server ("127.0.0.1:PORT") and returns the
// port clients should use.
func newRelay(tb testing.TB, server string, drop func(toClient bool, p []byte) bool) (*relay, string) {
	tb.Helper()
	saddr, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	r := &relay{conn: conn, server: saddr, drop: drop}
	var socks []*net.UDPConn
	var smu sync.Mutex
	tb.Cleanup(func() {
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
				up.WriteToUDP(buf[:n], r.server)
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
			out.WriteToUDP(buf[:n], to)
		}
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
