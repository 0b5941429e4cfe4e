package tftp

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/catalog"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// benchFile is what the benchmarks download: boot/MAC/kernel from
// bellbuild, the same path from dnsmasq's tftp-root.
const benchFile = "boot/52:54:00:00:00:0b/kernel"

// benchSite writes a random file of size bytes as benchFile under a
// tftp-root and returns the root.
func benchSite(b *testing.B, size int64) string {
	b.Helper()
	root := b.TempDir()
	p := filepath.Join(root, benchFile)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return root
}

// startBellbuild serves root's benchFile on 127.0.0.1 (any port) with
// window blocks sent ahead (0: the default); it returns the port.
func startBellbuild(b *testing.B, root string, window uint) string {
	b.Helper()
	mac, _ := net.ParseMAC("52:54:00:00:00:0b")
	backend := node.Static{mac.String(): {Name: "bench", Kernel: benchFile, Initrd: benchFile}}
	cat, err := catalog.New(catalog.Config{Artifacts: root}, backend, nil)
	if err != nil {
		b.Fatal(err)
	}
	srv := New(Config{Window: window}, cat, metrics.New(nil, slog.New(slog.DiscardHandler)))
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, conn); close(done) }()
	b.Cleanup(func() { cancel(); <-done; cat.Close() })
	return strconv.Itoa(conn.LocalAddr().(*net.UDPAddr).Port)
}

// startDnsmasq serves root with dnsmasq's TFTP on 127.0.0.1:69 (dnsmasq's
// TFTP port cannot be changed); it returns "" and why when dnsmasq is
// missing or the port is taken.
func startDnsmasq(b *testing.B, root string) (string, string) {
	b.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		return "", "SKIPPING: dnsmasq not installed (apt-get install dnsmasq-base)"
	}
	probe, err := net.ListenPacket("udp4", "127.0.0.1:69")
	if err != nil {
		return "", fmt.Sprintf("SKIPPING dnsmasq: 127.0.0.1:69 is taken: %v", err)
	}
	probe.Close()
	cmd := exec.Command("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--enable-tftp", "--tftp-root="+root, "--listen-address=127.0.0.1", "--bind-interfaces",
		"--tftp-max=1000", "--user=root", "--group=root", "--pid-file", "--log-facility=/dev/null")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Wait for its TFTP socket.
	for range 100 {
		if c, err := net.ListenPacket("udp4", "127.0.0.1:69"); err != nil {
			return "69", ""
		} else {
			c.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatal("dnsmasq did not bind 127.0.0.1:69")
	return "", ""
}

// client is a stock TFTP client command line.
type client struct {
	name string
	bin  string
	args func(port, remote, local string) []string
}

var clients = []client{
	{"busybox-1468", "busybox", func(port, r, l string) []string {
		return []string{"tftp", "-g", "-b", "1468", "-r", r, "-l", l, "127.0.0.1", port}
	}},
	{"tftp-hpa-512", "tftp", func(port, r, l string) []string {
		return []string{"-l", "-m", "binary", "127.0.0.1", port, "-c", "get", r, l}
	}},
}

func download(c client, port, local string, size int64) error {
	out, err := exec.Command(c.bin, c.args(port, benchFile, local)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", c.name, err, out)
	}
	if st, err := os.Stat(local); err != nil || st.Size() != size {
		return fmt.Errorf("%s: downloaded %v bytes (%v), want %d", c.name, st.Size(), err, size)
	}
	return nil
}

// server is a running TFTP server to compare: its port, or why it is not
// running.
type server struct{ name, port, skip string }

// servers starts, once for the whole benchmark, the servers compared.
func servers(b *testing.B, root string) []server {
	dport, skip := startDnsmasq(b, root)
	return []server{
		{"bellbuild", startBellbuild(b, root, 0), ""},
		{"bellbuild-lockstep", startBellbuild(b, root, 1), ""},
		{"dnsmasq", dport, skip},
	}
}

// BenchmarkTFTP64MiB downloads a 64 MiB file on loopback with stock
// clients, from bellbuild (its default send-ahead window, and lock-step)
// and from dnsmasq.
func BenchmarkTFTP64MiB(b *testing.B) {
	const size = 64 << 20
	root := benchSite(b, size)
	for _, s := range servers(b, root) {
		for _, c := range clients {
			b.Run(s.name+"/"+c.name, func(b *testing.B) {
				if _, err := exec.LookPath(c.bin); err != nil {
					testtool.Skipf(b, "%s not installed", c.bin)
				}
				if s.skip != "" {
					testtool.Skipf(b, "%v", s.skip)
				}
				port := s.port
				local := filepath.Join(b.TempDir(), "got")
				b.SetBytes(size)
				b.ResetTimer()
				for range b.N {
					if err := download(c, port, local, size); err != nil {
						b.Error(err)
					}
				}
			})
		}
	}
}

// BenchmarkTFTP100Clients has 100 busybox clients (blksize 1468) download
// a 4 MiB file at once; it reports the aggregate rate and the slowest
// client's time.
func BenchmarkTFTP100Clients(b *testing.B) {
	const size, n = 4 << 20, 100
	root := benchSite(b, size)
	c := clients[0]
	if _, err := exec.LookPath(c.bin); err != nil {
		testtool.Skipf(b, "%s not installed", c.bin)
	}
	for _, s := range servers(b, root) {
		b.Run(s.name, func(b *testing.B) {
			if s.skip != "" {
				testtool.Skipf(b, "%v", s.skip)
			}
			port := s.port
			dir := b.TempDir()
			b.SetBytes(size * n)
			var slowest time.Duration
			failed := 0
			b.ResetTimer()
			for range b.N {
				var wg sync.WaitGroup
				var mu sync.Mutex
				for i := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						start := time.Now()
						err := download(c, port, filepath.Join(dir, fmt.Sprint(i)), size)
						mu.Lock()
						defer mu.Unlock()
						if err != nil {
							failed++
							return
						}
						slowest = max(slowest, time.Since(start))
					}()
				}
				wg.Wait()
			}
			// Under load a client may give up (busybox: "tftp: timeout"):
			// counted, for both servers alike.
			b.ReportMetric(slowest.Seconds(), "slowest-s")
			b.ReportMetric(float64(failed)/float64(b.N), "failed/op")
		})
	}
}

// BenchmarkTFTPLoss downloads a 3 MiB file with busybox (blksize 1468)
// through a relay that loses 0.5% of the datagrams each way.
func BenchmarkTFTPLoss(b *testing.B) {
	const size = 3 << 20
	root := benchSite(b, size)
	c := clients[0]
	if _, err := exec.LookPath(c.bin); err != nil {
		testtool.Skipf(b, "%s not installed", c.bin)
	}
	for _, s := range servers(b, root) {
		b.Run(s.name, func(b *testing.B) {
			if s.skip != "" {
				testtool.Skipf(b, "%v", s.skip)
			}
			_, port := newRelay(b, "127.0.0.1:"+s.port, 0, randomLoss(0.005))
			local := filepath.Join(b.TempDir(), "got")
			b.SetBytes(size)
			failed := 0
			b.ResetTimer()
			for range b.N {
				// A client that gives up is counted, for every server alike.
				if err := download(c, port, local, size); err != nil {
					failed++
				}
			}
			b.ReportMetric(float64(failed)/float64(b.N), "failed/op")
		})
	}
}

// BenchmarkTFTPDelay downloads a 4 MiB file with both stock clients
// through a relay that adds a fixed round trip to every exchange, 0.2 ms
// and 1 ms, as a LAN does (loopback's own is a few tens of µs, which
// favours lock-step servers: they wait a round trip per block, send-ahead
// ones one per window). It also reports the round trip the relay gave
// (rtt-ms: the median of pings through it, loopback and the relay's own
// wake-ups included).
//
//	go test ./pxe/tftp -run '^$' -bench BenchmarkTFTPDelay -benchtime 3x
func BenchmarkTFTPDelay(b *testing.B) {
	const size = 4 << 20
	root := benchSite(b, size)
	srvs := servers(b, root)
	for _, rtt := range []time.Duration{200 * time.Microsecond, time.Millisecond} {
		for _, s := range srvs {
			for _, c := range clients {
				name := fmt.Sprintf("rtt-%gms/%s/%s", float64(rtt)/float64(time.Millisecond), s.name, c.name)
				b.Run(name, func(b *testing.B) {
					if _, err := exec.LookPath(c.bin); err != nil {
						testtool.Skipf(b, "%s not installed", c.bin)
					}
					if s.skip != "" {
						testtool.Skipf(b, "%v", s.skip)
					}
					_, port := newRelay(b, "127.0.0.1:"+s.port, rtt, func(bool, []byte) bool { return false })
					local := filepath.Join(b.TempDir(), "got")
					b.SetBytes(size)
					b.ResetTimer()
					for range b.N {
						if err := download(c, port, local, size); err != nil {
							b.Error(err)
						}
					}
					b.StopTimer()
					b.ReportMetric(relayRTT(b, rtt).Seconds()*1000, "rtt-ms")
				})
			}
		}
	}
}

// relayRTT is the median round trip of 100 pings through a relay adding
// rtt, to an echo server on loopback.
func relayRTT(tb testing.TB, rtt time.Duration) time.Duration {
	tb.Helper()
	echo, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := echo.ReadFromUDP(buf)
			if err != nil {
				return
			}
			echo.WriteToUDP(buf[:n], from)
		}
	}()
	_, port := newRelay(tb, echo.LocalAddr().String(), rtt, func(bool, []byte) bool { return false })
	to, err := net.ResolveUDPAddr("udp4", "127.0.0.1:"+port)
	if err != nil {
		tb.Fatal(err)
	}
	// Not connected: the answers come from the relay's other socket.
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	var rtts []time.Duration
	buf := make([]byte, 1500)
	for range 100 {
		start := time.Now()
		if _, err := c.WriteToUDP([]byte{0, opAck, 0, 0}, to); err != nil {
			tb.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := c.ReadFromUDP(buf); err != nil {
			tb.Fatalf("ping through the relay: %v", err)
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2]
}
