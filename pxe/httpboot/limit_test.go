package httpboot

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/internal/pxetest"
	"github.com/bellbuild/bellbuild/pxe/node"
)

// rawConn is one client connection on a real socket, sending requests by
// hand so that the test decides when it speaks and when it reads.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (f *fixture) dial(t *testing.T) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp4", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

// send writes a GET of path (keep-alive).
func (rc *rawConn) send(path string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, "GET "+path+" HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		rc.t.Fatal(err)
	}
}

// response reads one response within wait: its status and body, or an
// error (a timeout when nothing came).
func (rc *rawConn) response(wait time.Duration) (int, string, error) {
	rc.c.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(rc.r, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// closedWithin waits up to wait for the server to close the connection and
// reports how long that took (false: still open).
func (rc *rawConn) closedWithin(wait time.Duration) (time.Duration, bool) {
	start := time.Now()
	rc.c.SetReadDeadline(start.Add(wait))
	_, err := rc.r.ReadByte()
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return time.Since(start), true
	}
	if err == nil {
		rc.t.Fatalf("unexpected byte from the server")
	}
	return 0, false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestIdleConnectionClosed: a keep-alive connection that asks nothing more
// is closed after the idle timeout, and one that never finishes its
// headers after the read-header timeout.
func TestIdleConnectionClosed(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name string
		lim  Limits
		// talk is what the client says before falling silent.
		talk func(*testing.T, *rawConn)
	}{{
		name: "idle after a response",
		lim:  Limits{IdleTimeout: timeout},
		talk: func(t *testing.T, rc *rawConn) {
			rc.send("/healthz")
			if code, body, err := rc.response(5 * time.Second); code != 200 || body != "ok\n" || err != nil {
				t.Fatalf("GET /healthz = %d %q %v", code, body, err)
			}
		},
	}, {
		name: "headers never finished",
		lim:  Limits{ReadHeaderTimeout: timeout},
		talk: func(t *testing.T, rc *rawConn) {
			io.WriteString(rc.c, "GET /healthz HTTP/1.1\r\nHost: te")
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startWith(t, nil, tt.lim, nil)
			rc := f.dial(t)
			tt.talk(t, rc)
			took, closed := rc.closedWithin(10 * time.Second)
			if !closed {
				t.Fatalf("connection still open 10 s later (timeout %v)", timeout)
			}
			if took < timeout/2 {
				t.Errorf("closed after %v, before the %v timeout", took, timeout)
			}
		})
	}
}

// TestConnectionCap: with a cap of two connections, a third waits (it is
// neither answered nor refused) while the two are busy, and the server
// keeps serving those two; the third is served as soon as one of them
// falls idle (that one is closed to make room) or closes.
func TestConnectionCap(t *testing.T) {
	f := startWith(t, nil, Limits{MaxConns: 2, IdleTimeout: time.Minute, ReadHeaderTimeout: time.Minute}, nil)
	a, b := f.dial(t), f.dial(t)
	// a and b hold the two slots: connected, request not yet sent.
	c := f.dial(t)
	c.send("/healthz")
	if code, _, err := c.response(500 * time.Millisecond); !isTimeout(err) {
		t.Fatalf("third connection over a cap of 2: got %d %v, want no answer yet", code, err)
	}
	// The two within the cap are served meanwhile; b then falls idle.
	b.send("/healthz")
	if code, body, err := b.response(5 * time.Second); code != 200 || body != "ok\n" || err != nil {
		t.Fatalf("connection within the cap: %d %q %v", code, body, err)
	}
	if code, body, err := c.response(5 * time.Second); code != 200 || body != "ok\n" || err != nil {
		t.Fatalf("waiting connection once b fell idle: %d %q %v", code, body, err)
	}
	if _, closed := b.closedWithin(5 * time.Second); !closed {
		t.Error("the idle connection was not closed to make room")
	}
	// Now a and c hold the slots, c idle: d takes c's.
	d := f.dial(t)
	d.send("/healthz")
	if code, body, err := d.response(5 * time.Second); code != 200 || body != "ok\n" || err != nil {
		t.Fatalf("fourth connection: %d %q %v", code, body, err)
	}
	// a (busy: still no request) kept its slot all along, and is served.
	a.send("/healthz")
	if code, body, err := a.response(5 * time.Second); code != 200 || body != "ok\n" || err != nil {
		t.Fatalf("first connection: %d %q %v", code, body, err)
	}
	// a and d are idle now: e and g take their slots (d's, then a's) and
	// stay busy (no request yet); h waits until e closes.
	e := f.dial(t)
	f.dial(t) // g: holds the other slot
	h := f.dial(t)
	h.send("/healthz")
	if code, _, err := h.response(500 * time.Millisecond); !isTimeout(err) {
		t.Fatalf("connection over the cap: got %d %v, want no answer yet", code, err)
	}
	e.c.Close()
	if code, body, err := h.response(5 * time.Second); code != 200 || body != "ok\n" || err != nil {
		t.Fatalf("waiting connection once another closed: %d %q %v", code, body, err)
	}
}

// TestStalledDownload: a client that asks for a large file and reads none
// of it is cut off after the stall timeout instead of holding its
// connection for ever.
func TestStalledDownload(t *testing.T) {
	mac := "52:54:00:00:00:0d"
	const size = 256 << 20 // more than the socket buffers hold
	f := startWith(t, nil, Limits{StallTimeout: 300 * time.Millisecond}, func(s *pxetest.Site) {
		p := filepath.Join(s.Artifacts, "huge")
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		s.Backend[mac] = &node.Machine{Name: "huge", Profile: "worker", Kernel: "huge", Initrd: "worker/initramfs.cpio.zst"}
	})
	rc := f.dial(t)
	rc.send("/boot/" + mac + "/kernel")
	time.Sleep(2 * time.Second) // reads nothing
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// What the socket buffers held, then the end: far less than the file.
	n, err := io.Copy(io.Discard, rc.r)
	if isTimeout(err) || n >= size {
		t.Fatalf("stalled download: read %d bytes (headers and body) of a %d-byte file, then %v; want the server to give up", n, size, err)
	}
}

// TestHalfCloseAfterUnreadBody: a request whose body the server does not
// read ends its connection; the server half-closes it as soon as the
// response is out, as net/http does on a bare TCP connection, so the
// client sees the end at once (not only when the server closes for good
// half a second later).
func TestHalfCloseAfterUnreadBody(t *testing.T) {
	f := startWith(t, nil, Limits{}, nil)
	rc := f.dial(t)
	body := strings.Repeat("x", 4<<20)
	go io.WriteString(rc.c, "GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	if code, text, err := rc.response(5 * time.Second); code != 200 || text != "ok\n" || err != nil {
		t.Fatalf("%d %q %v, want the response", code, text, err)
	}
	if took, closed := rc.closedWithin(5 * time.Second); !closed || took > 300*time.Millisecond {
		t.Errorf("end of the connection seen after %v (closed: %v), want at once", took, closed)
	}
}
