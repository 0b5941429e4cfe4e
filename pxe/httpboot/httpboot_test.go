package httpboot

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bellbuild/bellbuild/pxe/catalog"
	"github.com/bellbuild/bellbuild/pxe/internal/pxetest"
	"github.com/bellbuild/bellbuild/pxe/metrics"
)

type fixture struct {
	site *pxetest.Site
	url  string
	m    *metrics.Metrics
}

func start(t *testing.T, owners pxetest.Owners) *fixture {
	t.Helper()
	return startWith(t, owners, Limits{}, nil)
}

// startWith serves the fixture's site within lim, after prep (when not
// nil) has added to it.
func startWith(t *testing.T, owners pxetest.Owners, lim Limits, prep func(*pxetest.Site)) *fixture {
	t.Helper()
	site := pxetest.New(t)
	if prep != nil {
		prep(site)
	}
	cat, err := catalog.New(catalog.Config{Loaders: site.Loaders, Artifacts: site.Artifacts, Files: site.Files},
		site.Backend, owners)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, slog.New(slog.DiscardHandler))
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, New(Config{Gatherer: reg}, cat, m), lim) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		cat.Close()
	})
	return &fixture{site: site, url: "http://" + l.Addr().String(), m: m}
}

func (f *fixture) get(t *testing.T, path string, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", f.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

func TestRoutes(t *testing.T) {
	loop := netip.MustParseAddr("127.0.0.1")
	f := start(t, pxetest.Owners{loop: pxetest.MACA})
	host := strings.TrimPrefix(f.url, "http://")
	tests := []struct {
		name string
		path string
		code int
		want string
	}{
		{"script", "/ipxe?mac=52:54:00:00:00:0a", 200, "#!ipxe\necho bellbuild: booting node alpha (profile worker) from http://" + host + "\n" +
			"kernel http://" + host + "/boot/52:54:00:00:00:0a/kernel initrd=initrd console=ttyS0 bellbuild.node=alpha\n" +
			"initrd --name initrd http://" + host + "/boot/52:54:00:00:00:0a/initrd\nboot\n"},
		{"script of an unknown MAC", "/ipxe?mac=52:54:00:00:00:ff", 404, "Not Found\n"},
		{"script without a MAC", "/ipxe", 400, "want ?mac=MAC\n"},
		{"kernel", "/boot/52:54:00:00:00:0a/kernel", 200, "KERNEL worker"},
		{"initrd", "/boot/52:54:00:00:00:0a/initrd", 200, "INITRD worker"},
		{"own node file", "/files/node.json", 200, `{"node":"alpha"}`},
		{"other node's file", "/files/secret", 404, "Not Found\n"},
		{"symlink escape", "/files/escape", 403, "Forbidden\n"},
		{"absolute symlink", "/boot/52:54:00:00:00:0c/kernel", 403, "Forbidden\n"},
		{"encoded dot-dot", "/files/..%2f..%2fetc%2fpasswd", 400, "Bad Request\n"},
		{"loader", "/undionly.kpxe", 200, "LOADER"},
		{"healthz", "/healthz", 200, "ok\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, body := f.get(t, tt.path)
			if code != tt.code || string(body) != tt.want {
				t.Errorf("GET %s = %d %q, want %d %q", tt.path, code, body, tt.code, tt.want)
			}
		})
	}
}

func TestNodeFileOnlyToItsLease(t *testing.T) {
	f := start(t, pxetest.Owners{pxetest.IPB: pxetest.MACB})
	if code, _, body := f.get(t, "/files/node.json"); code != 403 {
		t.Fatalf("from an address not leased: %d %q, want 403", code, body)
	}
}

func TestRange(t *testing.T) {
	f := start(t, nil)
	big := f.site.Big
	code, hdr, body := f.get(t, "/boot/52:54:00:00:00:0b/kernel", "Range", "bytes=1000-1999")
	if code != http.StatusPartialContent || !bytes.Equal(body, big[1000:2000]) {
		t.Fatalf("range: %d, %d bytes", code, len(body))
	}
	if want := fmt.Sprintf("bytes 1000-1999/%d", len(big)); hdr.Get("Content-Range") != want {
		t.Errorf("Content-Range %q, want %q", hdr.Get("Content-Range"), want)
	}
	code, _, body = f.get(t, "/boot/52:54:00:00:00:0b/kernel")
	if code != 200 || !bytes.Equal(body, big) {
		t.Fatalf("whole: %d, %d bytes", code, len(body))
	}
	// One boot line for the kernel, however many Range requests.
	if n := metrics.Value(f.m.Boots.WithLabelValues(string(metrics.PhaseKernel))); n != 1 {
		t.Errorf("kernel phases = %v, want 1", n)
	}
	if n := metrics.Value(f.m.Bytes.WithLabelValues("http")); n != float64(len(big)+1000) {
		t.Errorf("bytes counted %v, want %d", n, len(big)+1000)
	}
}

func TestMetrics(t *testing.T) {
	f := start(t, nil)
	f.get(t, "/ipxe?mac=52:54:00:00:00:0a")
	f.get(t, "/files/../../etc/passwd")
	code, _, body := f.get(t, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`bellbuild_pxe_boots_total{phase="ipxe-script"} 1`,
		`bellbuild_pxe_http_requests_total{code="200",handler="ipxe"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
