package httpboot

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Limits bound what HTTP clients can hold on the server. Zero values get
// the defaults named below; negative ones are an error.
type Limits struct {
	// IdleTimeout closes a keep-alive connection that has waited this long
	// for its next request (default 60 s). iPXE asks for its script, kernel
	// and initramfs one after the other, so a booting machine never waits
	// that long between two.
	IdleTimeout time.Duration
	// ReadHeaderTimeout closes a connection whose request headers have not
	// all arrived this long after it was opened, or after its previous
	// response (default 10 s).
	ReadHeaderTimeout time.Duration
	// StallTimeout closes a connection whose client has not taken one
	// write of its response (at most 32 KiB) in this long (default 60 s):
	// a reader that stopped mid-download. A slow reader keeps going.
	StallTimeout time.Duration
	// MaxConns caps the connections open at once (default 1024). A
	// connection beyond the cap waits: it is accepted only when another
	// closes, and the keep-alive connection idle the longest is closed at
	// once to make room. Waiting, not refusing, because a refused
	// firmware or iPXE download fails the machine's boot, while a wait
	// only delays it; the timeouts above free every slot that is not
	// sending a response.
	MaxConns int
}

// Defaults of Limits.
const (
	DefaultIdleTimeout       = 60 * time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultStallTimeout      = 60 * time.Second
	DefaultMaxConns          = 1024
)

// Check reports a negative limit.
func (l Limits) Check() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"idle timeout", l.IdleTimeout}, {"read-header timeout", l.ReadHeaderTimeout}, {"stall timeout", l.StallTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("http %s %v: want a positive duration (0: the default)", d.name, d.v)
		}
	}
	if l.MaxConns < 0 {
		return fmt.Errorf("http connection cap %d: want a positive number (0: the default)", l.MaxConns)
	}
	return nil
}

func (l *Limits) fill() {
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.ReadHeaderTimeout == 0 {
		l.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if l.StallTimeout == 0 {
		l.StallTimeout = DefaultStallTimeout
	}
	if l.MaxConns == 0 {
		l.MaxConns = DefaultMaxConns
	}
}

// limitListener hands out at most cap(slots) connections at a time. Accept
// takes the next connection from the kernel and then waits for a slot,
// closing idle keep-alive connections to free one; while it waits, the
// connections behind it wait in the kernel's listen backlog.
type limitListener struct {
	net.Listener
	stall time.Duration
	slots chan struct{}
	done  chan struct{}
	once  sync.Once

	mu       sync.Mutex
	idle     map[*limitConn]time.Time // keep-alive connections between requests, since when
	wentIdle chan struct{}            // a connection became idle (capacity 1)
}

func newLimitListener(l net.Listener, lim Limits) *limitListener {
	return &limitListener{
		Listener: l,
		stall:    lim.StallTimeout,
		slots:    make(chan struct{}, lim.MaxConns),
		done:     make(chan struct{}),
		idle:     map[*limitConn]time.Time{},
		wentIdle: make(chan struct{}, 1),
	}
}

func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	for {
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, l: l, stall: l.stall}, nil
		default:
		}
		// Full: make room by closing the connection idle the longest
		// (its Close frees its slot at once), else wait for a slot or
		// for a connection to become idle.
		l.closeOldestIdle()
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, l: l, stall: l.stall}, nil
		case <-l.wentIdle:
		case <-l.done:
			c.Close()
			return nil, net.ErrClosed
		}
	}
}

// Close closes the listener and wakes an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// connState is the http.Server's ConnState hook: it keeps the set of idle
// keep-alive connections.
func (l *limitListener) connState(c net.Conn, st http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	lc, ok := c.(*limitConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if st != http.StateIdle {
		delete(l.idle, lc)
		return
	}
	l.idle[lc] = time.Now()
	select {
	case l.wentIdle <- struct{}{}:
	default:
	}
}

func (l *limitListener) closeOldestIdle() {
	l.mu.Lock()
	var oldest *limitConn
	var since time.Time
	for c, t := range l.idle {
		if oldest == nil || t.Before(since) {
			oldest, since = c, t
		}
	}
	delete(l.idle, oldest)
	l.mu.Unlock()
	if oldest != nil {
		oldest.Close()
	}
}

// limitConn gives its slot back when closed, and gives up on a client that
// takes none of the response for the stall timeout.
type limitConn struct {
	net.Conn
	l     *limitListener
	stall time.Duration
	once  sync.Once
}

func (c *limitConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.stall)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// CloseWrite half-closes a TCP connection, as net/http does to make sure
// the client reads a last response before the connection closes.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.idle, c)
		c.l.mu.Unlock()
		<-c.l.slots
	})
	return err
}
