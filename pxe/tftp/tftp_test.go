package tftp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/bellbuild/bellbuild/pxe/catalog"
	"github.com/bellbuild/bellbuild/pxe/internal/pxetest"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

var loopback = netip.MustParseAddr("127.0.0.1")

type fixture struct {
	site *pxetest.Site
	addr *net.UDPAddr
	m    *metrics.Metrics
}

// start serves pxetest's site on 127.0.0.1; owners says who holds which
// address.
func start(t testing.TB, owners pxetest.Owners, cfg Config) *fixture {
	t.Helper()
	site := pxetest.New(t)
	cat, err := catalog.New(catalog.Config{Loaders: site.Loaders, Artifacts: site.Artifacts, Files: site.Files},
		site.Backend, owners)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(nil, slog.New(slog.DiscardHandler))
	cfg.ScriptBase = "tftp://127.0.0.1"
	srv := New(cfg, cat, m)
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		cat.Close()
	})
	return &fixture{site: site, addr: conn.LocalAddr().(*net.UDPAddr), m: m}
}

// get downloads name with pin's client at blksize (0: 512).
func (f *fixture) get(t testing.TB, name string, blksize int) ([]byte, int64, error) {
	t.Helper()
	c, err := tftp.NewClient(f.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	c.RequestTSize(true)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, 0, err
	}
	size, _ := wt.(tftp.IncomingTransfer).Size()
	var b bytes.Buffer
	_, err = wt.WriteTo(&b)
	return b.Bytes(), size, err
}

func TestPinClient(t *testing.T) {
	f := start(t, pxetest.Owners{loopback: pxetest.MACA}, Config{})
	tests := []struct {
		name    string
		file    string
		blksize int
		want    []byte
		err     string
	}{
		{name: "loader", file: "undionly.kpxe", blksize: 1468, want: []byte("LOADER")},
		{name: "big kernel at blksize 1468", file: "boot/52:54:00:00:00:0b/kernel", blksize: 1468, want: f.site.Big},
		{name: "big kernel at 512", file: "boot/52:54:00:00:00:0b/kernel", want: f.site.Big},
		{name: "script", file: "ipxe/52:54:00:00:00:0a", want: []byte("#!ipxe\necho bellbuild: booting node alpha (profile worker) from tftp://127.0.0.1\n" +
			"kernel tftp://127.0.0.1/boot/52:54:00:00:00:0a/kernel initrd=initrd console=ttyS0 bellbuild.node=alpha\n" +
			"initrd --name initrd tftp://127.0.0.1/boot/52:54:00:00:00:0a/initrd\nboot\n")},
		{name: "own node file", file: "files/node.json", want: []byte(`{"node":"alpha"}`)},
		{name: "other node's file", file: "files/secret", err: "files/secret: not-found"},
		{name: "dot-dot", file: "../outside", err: "../outside: bad-name"},
		{name: "absolute: the same name under the root", file: "/etc/passwd", err: "/etc/passwd: not-found"},
		{name: "a loader by its absolute name", file: "/undionly.kpxe", want: []byte("LOADER")},
		{name: "two leading slashes", file: "//undionly.kpxe", err: "//undionly.kpxe: bad-name"},
		{name: "GRUB's configuration, as GRUB asks for it", file: "/grub/grub.cfg", want: []byte("# bellbuild: node alpha, profile worker\nset timeout=0\n" +
			"echo 'bellbuild: booting node alpha (profile worker) from tftp://127.0.0.1'\n" +
			"linux (tftp,127.0.0.1)/boot/52:54:00:00:00:0a/kernel console=ttyS0 bellbuild.node=alpha\n" +
			"initrd (tftp,127.0.0.1)/boot/52:54:00:00:00:0a/initrd\nboot\n")},
		{name: "symlink escape", file: "files/escape", err: "files/escape: forbidden"},
		{name: "absolute symlink", file: "boot/52:54:00:00:00:0c/kernel", err: "boot/52:54:00:00:00:0c/kernel: forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, size, err := f.get(t, tt.file, tt.blksize)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("got %d bytes, want %d (%.40q)", len(got), len(tt.want), got)
			}
			if size != int64(len(tt.want)) {
				t.Errorf("tsize %d, want %d", size, len(tt.want))
			}
		})
	}
}

// TestNodeFileOnlyToItsLease: the same request from an address leased to
// nobody is refused.
func TestNodeFileOnlyToItsLease(t *testing.T) {
	f := start(t, pxetest.Owners{pxetest.IPB: pxetest.MACB}, Config{})
	_, _, err := f.get(t, "files/node.json", 0)
	if err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("err = %v, want forbidden", err)
	}
	if n := metrics.Value(f.m.Dropped.WithLabelValues("tftp", "forbidden")); n != 1 {
		t.Errorf("forbidden drops = %v, want 1", n)
	}
}

// runClient runs a stock client's download to out and checks that out
// holds want.
func runClient(t *testing.T, cmd *exec.Cmd, out string, want []byte) {
	t.Helper()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, b)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
}

// TestStockClients downloads with busybox's and tftp-hpa's clients.
func TestStockClients(t *testing.T) {
	f := start(t, pxetest.Owners{loopback: pxetest.MACA}, Config{})
	port := strconv.Itoa(f.addr.Port)
	clients := []struct {
		name string
		bin  string
		args func(remote, local string) []string
	}{
		{"busybox blksize 1468", "busybox", func(r, l string) []string {
			return []string{"tftp", "-g", "-b", "1468", "-r", r, "-l", l, "127.0.0.1", port}
		}},
		{"busybox blksize 512", "busybox", func(r, l string) []string {
			return []string{"tftp", "-g", "-r", r, "-l", l, "127.0.0.1", port}
		}},
		{"tftp-hpa", "tftp", func(r, l string) []string {
			return []string{"-l", "-m", "binary", "127.0.0.1", port, "-c", "get", r, l}
		}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			if _, err := exec.LookPath(c.bin); err != nil {
				testtool.Skipf(t, "%s not installed (apt-get install busybox-static tftp-hpa)", c.bin)
			}
			out := filepath.Join(t.TempDir(), "kernel")
			runClient(t, exec.Command(c.bin, c.args("boot/52:54:00:00:00:0b/kernel", out)...), out, f.site.Big)
			// A refused request fails the stock client too.
			cmd := exec.Command(c.bin, c.args("../outside", filepath.Join(t.TempDir(), "x"))...)
			if b, err := cmd.CombinedOutput(); err == nil && !strings.Contains(string(b), "bad-name") {
				t.Errorf("../outside: client succeeded: %s", b)
			}
		})
	}
}

// TestMalformedRequests sends datagrams that are not requests: each is
// dropped and counted, and the server goes on serving.
func TestMalformedRequests(t *testing.T) {
	f := start(t, nil, Config{})
	conn, err := net.DialUDP("udp4", nil, f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bad := [][]byte{
		{},             // empty
		{0, 1},         // RRQ without a name
		{0, 4, 0, 1},   // an ACK to port 69
		{0, 9, 'x', 0}, // no such opcode
	}
	// pin reads these as requests for "a" (missing or unterminated mode):
	// refused as unknown files.
	lenient := [][]byte{
		{0, 1, 'a', 0},
		{0, 1, 'a', 0, 'o', 'c', 't', 'e', 't'},
	}
	for _, b := range append(bad, lenient...) {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	malformed := f.m.Dropped.WithLabelValues("tftp", "malformed")
	notFound := f.m.Dropped.WithLabelValues("tftp", "not-found")
	deadline := time.Now().Add(5 * time.Second)
	for (metrics.Value(malformed) < 4 || metrics.Value(notFound) < 2) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if m, n := metrics.Value(malformed), metrics.Value(notFound); m != 4 || n != 2 {
		t.Errorf("drops: malformed %v, not-found %v; want 4 and 2", m, n)
	}
	if got, _, err := f.get(t, "undionly.kpxe", 0); err != nil || string(got) != "LOADER" {
		t.Fatalf("after bad packets: %q, %v", got, err)
	}
}

// FuzzRequest sends arbitrary datagrams to a live server: it never
// crashes, and still serves a good request afterwards.
func FuzzRequest(f *testing.F) {
	for _, s := range [][]byte{
		[]byte("\x00\x01undionly.kpxe\x00octet\x00"),
		[]byte("\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00tsize\x000\x00"),
		[]byte("\x00\x01../outside\x00octet\x00"),
		[]byte("\x00\x01files/node.json\x00netascii\x00"),
		[]byte("\x00\x02upload\x00octet\x00"),
		[]byte("\x00\x01x\x00octet\x00blksize\x00999999999\x00"),
		[]byte("\x00\x01x\x00octet\x00blksize\x00-1\x00"),
		{0, 5, 0, 1, 'e', 0},
		{},
	} {
		f.Add(s)
	}
	fx := start(f, pxetest.Owners{loopback: pxetest.MACA}, Config{Timeout: 50 * time.Millisecond, Retries: 1})
	conn, err := net.DialUDP("udp4", nil, fx.addr)
	if err != nil {
		f.Fatal(err)
	}
	defer conn.Close()
	n := 0
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
		if n++; n%50 == 1 {
			if got, _, err := fx.get(t, "undionly.kpxe", 0); err != nil || string(got) != "LOADER" {
				t.Fatalf("after %q: %q, %v", b, got, err)
			}
		}
	})
}

// TestSendAheadRecovers downloads through a relay that loses chosen DATA
// and ACK datagrams, with the default send-ahead window and stock clients
// (which ACK only their latest block): every download completes intact.
// An ACK lost inside a window costs nothing, since the next ACK covers
// it; a lost DATA costs a resend of the window's unacknowledged rest.
func TestSendAheadRecovers(t *testing.T) {
	f := start(t, pxetest.Owners{loopback: pxetest.MACA}, Config{})
	const file = "boot/52:54:00:00:00:0b/kernel"
	clients := []struct {
		name    string
		bin     string
		blksize int
		// random: also lose 0.5% of all datagrams (tftp-hpa, which waits
		// 5 s before it re-ACKs, takes ~17 s for that: the targeted cases
		// cover it).
		random bool
		args   func(port, local string) []string
	}{
		{"busybox blksize 1468", "busybox", 1468, true, func(port, l string) []string {
			return []string{"tftp", "-g", "-b", "1468", "-r", file, "-l", l, "127.0.0.1", port}
		}},
		{"tftp-hpa", "tftp", 512, false, func(port, l string) []string {
			return []string{"-l", "-m", "binary", "127.0.0.1", port, "-c", "get", file, l}
		}},
	}
	for _, c := range clients {
		blocks := uint16(len(f.site.Big)/c.blksize + 1)
		w := uint16(DefaultWindow)
		type lossCase struct {
			name string
			drop func(bool, []byte) bool
			// resent bounds the DATA datagrams sent twice (-1: any).
			resent int
		}
		tests := []lossCase{
			{"nothing lost", func(bool, []byte) bool { return false }, 0},
			{"DATA lost mid-window", loseOnce(opData, 5, w*40+3), 2 * int(w)},
			{"first DATA of a window lost", loseOnce(opData, 1, w*20+1), 2 * int(w)},
			{"last DATA lost", loseOnce(opData, blocks), 1},
			{"ACK lost mid-window", loseOnce(opAck, 7, w*30+9), 0},
			{"last ACK of a window lost", loseOnce(opAck, w, w*10), 2},
			// The window adapts: a few losses find the ceiling, where a
			// fixed window would lose most of each window, and halving
			// alone (without the ceiling) resent 179 and 470 blocks.
			{"client holds only 4 blocks ahead", smallRing(4), 64},
		}
		if c.random {
			tests = append(tests, lossCase{"0.5% of datagrams lost each way", randomLoss(0.005), -1})
		}
		for _, tt := range tests {
			t.Run(c.name+"/"+tt.name, func(t *testing.T) {
				if _, err := exec.LookPath(c.bin); err != nil {
					testtool.Skipf(t, "%s not installed (apt-get install busybox-static tftp-hpa)", c.bin)
				}
				r, port := newRelay(t, f.addr.String(), 0, tt.drop)
				out := filepath.Join(t.TempDir(), "kernel")
				start := time.Now()
				runClient(t, exec.Command(c.bin, c.args(port, out)...), out, f.site.Big)
				resent := int(r.data.Load()) - int(blocks)
				t.Logf("%d blocks in %v, %d resent", blocks, time.Since(start).Round(time.Millisecond), resent)
				if tt.resent >= 0 && (resent < 0 || resent > tt.resent) {
					t.Errorf("%d DATA datagrams resent, want at most %d", resent, tt.resent)
				}
			})
		}
	}
}

// pinGet downloads name from port on 127.0.0.1 with pin's own client
// (blksize 1468), to out.
func pinGet(port, name, out string) error {
	c, err := tftp.NewClient("127.0.0.1:" + port)
	if err != nil {
		return err
	}
	c.SetTimeout(200 * time.Millisecond)
	c.SetBlockSize(1468)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if _, err := wt.WriteTo(&b); err != nil {
		return err
	}
	return os.WriteFile(out, b.Bytes(), 0o644)
}

// TestLoadersInLockStep: the iPXE loaders, which firmware fetches, go in
// lock-step, as seen on the wire: never more than one block beyond the
// client's last ACK. The kernel goes a window ahead. This fails if the
// pin fork stops providing SetWindow (read() then has nothing to put a
// transfer in lock-step with) or stops honouring it.
func TestLoadersInLockStep(t *testing.T) {
	f := start(t, pxetest.Owners{loopback: pxetest.MACA}, Config{})
	loader := f.site.Big[:200<<10]
	if err := os.WriteFile(f.site.Loaders["undionly.kpxe"], loader, 0o644); err != nil {
		t.Fatal(err)
	}
	clients := []struct {
		name string
		bin  string // "": pin's own client, in the test
		get  func(port, name, out string) *exec.Cmd
	}{
		{name: "pin"},
		{"busybox", "busybox", func(port, name, out string) *exec.Cmd {
			return exec.Command("busybox", "tftp", "-g", "-b", "1468", "-r", name, "-l", out, "127.0.0.1", port)
		}},
		{"tftp-hpa", "tftp", func(port, name, out string) *exec.Cmd {
			return exec.Command("tftp", "-l", "-m", "binary", "127.0.0.1", port, "-c", "get", name, out)
		}},
	}
	for _, c := range clients {
		for _, tt := range []struct {
			file  string
			want  []byte
			ahead uint16
		}{
			{"undionly.kpxe", loader, 1},
			{"boot/52:54:00:00:00:0b/kernel", f.site.Big, DefaultWindow},
		} {
			t.Run(c.name+"/"+tt.file, func(t *testing.T) {
				r, port := newRelay(t, f.addr.String(), 0, func(bool, []byte) bool { return false })
				out := filepath.Join(t.TempDir(), "got")
				if c.bin == "" {
					if err := pinGet(port, tt.file, out); err != nil {
						t.Fatal(err)
					}
					if got, _ := os.ReadFile(out); !bytes.Equal(got, tt.want) {
						t.Fatalf("got %d bytes, want %d", len(got), len(tt.want))
					}
				} else {
					if _, err := exec.LookPath(c.bin); err != nil {
						testtool.Skipf(t, "%s not installed (apt-get install busybox-static tftp-hpa)", c.bin)
					}
					runClient(t, c.get(port, tt.file, out), out, tt.want)
				}
				if got := r.maxAhead(); got != tt.ahead {
					t.Errorf("at most %d blocks in flight, want %d", got, tt.ahead)
				}
			})
		}
	}
}

// TestForkProvidesSetWindow: every transfer pin hands the handler can be
// given its own window (the fork's SetWindow), which is how read() sends
// the loaders in lock-step. Without it, read() would silently send them
// a whole window ahead.
func TestForkProvidesSetWindow(t *testing.T) {
	got := make(chan bool, 1)
	srv := tftp.NewServer(func(name string, rf io.ReaderFrom) error {
		_, ok := rf.(windowed)
		got <- ok
		return errors.New("refused")
	}, nil)
	srv.SetAnticipate(DefaultWindow)
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(conn) }()
	defer func() { srv.Shutdown(); <-done }()
	c, err := tftp.NewClient(conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Receive("file", "octet")
	if !<-got {
		t.Fatal("pin's transfer has no SetWindow(n uint): the fork's patch is gone (pxe/tftp/pin/PATCHES.md)")
	}
}

// TestForkUnitTests runs the pin fork's own tests of the bellbuild patch
// (pxe/tftp/pin/window_test.go: the window's rules case by case, and
// SetWindow). The fork is a module of its own, which `go test ./...`
// does not enter; the main module reaches it through its replace line.
func TestForkUnitTests(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		testtool.Skipf(t, "the go command is not on PATH: %v", err)
	}
	out, err := exec.Command(goBin, "test", "-count=1", "-run", "^TestBellbuild", "-v", "github.com/pin/tftp/v3").CombinedOutput()
	if err != nil {
		t.Fatalf("go test github.com/pin/tftp/v3: %v\n%s", err, out)
	}
	for _, name := range []string{"TestBellbuildWindowAdapts", "TestBellbuildSetWindow"} {
		if !strings.Contains(string(out), "--- PASS: "+name+" ") {
			t.Errorf("%s did not run and pass:\n%s", name, out)
		}
	}
}

// TestWindowOnTheWire watches the send-ahead window adapt on a real
// socket: through a relay adding a 4 ms round trip (far longer than the
// server takes to send a window, so each window shows as the new blocks
// sent after one ACK), one DATA datagram of the third window is lost.
// The window sizes are the ones the fork's unit test
// (TestBellbuildWindowAdapts) expects: full windows, a loss, half the
// window growing back by one to the new ceiling, 8 windows there, then a
// try at the full window that goes through.
func TestWindowOnTheWire(t *testing.T) {
	f := start(t, pxetest.Owners{loopback: pxetest.MACA}, Config{})
	r, port := newRelay(t, f.addr.String(), 4*time.Millisecond, loseOnce(opData, 2*DefaultWindow+5))
	out := filepath.Join(t.TempDir(), "kernel")
	if err := pinGet(port, "boot/52:54:00:00:00:0b/kernel", out); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, f.site.Big) {
		t.Fatalf("got %d bytes, want %d", len(got), len(f.site.Big))
	}
	want := []int{16, 16, 16, 8, 9, 10, 11, 12, 13, 14, 15, 15, 15, 15, 15, 15, 15, 15, 16, 16, 16}
	got := r.windowSizes()
	if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
		t.Errorf("window sizes on the wire:\n got %v\nwant %v…", got, want)
	}
}

// failingReader returns n bytes of zeros, then err.
type failingReader struct {
	n   int
	err error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

// TestSendAheadReadError: a file that fails to read midway ends the
// transfer with an error for the client (pin v3.1.0's send-ahead
// panicked on a nil error here, taking the server down).
func TestSendAheadReadError(t *testing.T) {
	errDisk := errors.New("disk read failed")
	srv := tftp.NewServer(func(name string, rf io.ReaderFrom) error {
		_, err := rf.ReadFrom(&failingReader{n: 100 << 10, err: errDisk})
		return err
	}, nil)
	srv.SetAnticipate(DefaultWindow)
	srv.SetTimeout(500 * time.Millisecond)
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(conn) }()
	defer func() { srv.Shutdown(); <-done }()
	c, err := tftp.NewClient(conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	for range 2 { // and the server still answers
		wt, err := c.Receive("file", "octet")
		if err != nil {
			t.Fatal(err)
		}
		_, err = wt.WriteTo(io.Discard)
		if err == nil || !strings.Contains(err.Error(), errDisk.Error()) {
			t.Fatalf("client's error = %v, want one saying %q", err, errDisk)
		}
	}
}
