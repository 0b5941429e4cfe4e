package install

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
	"github.com/bellbuild/bellbuild/pxe/state"
)

var (
	h1 = strings.Repeat("1", 64)
	h2 = strings.Repeat("2", 64)
	h3 = strings.Repeat("3", 64)
)

func store(t *testing.T, now *time.Time) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := state.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return New(st, func() time.Time { return *now }), dir
}

// TestRecords: reports change a node's record as they say, durably (a
// store opened again on the directory reads the same), and reinstall
// clears only the install.
func TestRecords(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	s, dir := store(t, &now)
	ctx := context.Background()
	step := func(r wire.Report) {
		t.Helper()
		now = now.Add(time.Minute)
		if _, err := s.Apply(ctx, "n1", "52:54:00:00:00:01", r); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := s.Installed(ctx, "n1"); ok || err != nil {
		t.Fatalf("installed before anything: %v %v", ok, err)
	}
	step(wire.Report{Event: wire.EventInstallStart, Disk: "/dev/vda"})
	if ok, _ := s.Installed(ctx, "n1"); ok {
		t.Fatal("installed after install-start")
	}
	step(wire.Report{Event: wire.EventInstallDone, Disk: "/dev/vda", Size: 1 << 30, Image: h1})
	step(wire.Report{Event: wire.EventUpgradeWritten, Image: h2, Reboot: "window 0 2 * * *", RebootAt: "2026-03-05T02:00:00Z"})
	st2, _ := state.OpenDir(dir)
	r, err := New(st2, nil).Get(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	want := Record{Node: "n1", MAC: "52:54:00:00:00:01", Installed: time.Date(2026, 3, 4, 5, 8, 7, 0, time.UTC), Disk: "/dev/vda", Size: 1 << 30,
		Image: h1, Phase: "install-done", Running: h1, Slot: "a", Pending: h2, Reboot: "window 0 2 * * *", RebootAt: "2026-03-05T02:00:00Z", Updated: time.Date(2026, 3, 4, 5, 9, 7, 0, time.UTC)}
	if *r != want {
		t.Errorf("record\n%+v\nwant\n%+v", *r, want)
	}
	step(wire.Report{Event: wire.EventRunning, Slot: "b", Running: h2})
	if r, _ := s.Get(ctx, "n1"); r.Pending != "" || r.Reboot != "" || r.RebootAt != "" {
		t.Errorf("after the reboot into the upgrade: %+v", r)
	}
	step(wire.Report{Event: wire.EventUpgradeWritten, Image: h3, Reboot: "now"})
	step(wire.Report{Event: wire.EventUpgradeFailed, Image: h3, Running: h2, Slot: "b"})
	r, _ = s.Get(ctx, "n1")
	if r.Running != h2 || r.Slot != "b" || r.Pending != "" || r.Failed != h3 {
		t.Errorf("after a failed upgrade: %+v", r)
	}
	was, err := s.Reinstall(ctx, "n1")
	if !was || err != nil {
		t.Fatalf("reinstall: %v %v", was, err)
	}
	if ok, _ := s.Installed(ctx, "n1"); ok {
		t.Error("installed after reinstall")
	}
	if was, _ := s.Reinstall(ctx, "n1"); was {
		t.Error("a second reinstall found an install")
	}
	if was, _ := s.Reinstall(ctx, "nobody"); was {
		t.Error("reinstall of a node never installed")
	}
	if _, err := s.Apply(ctx, "n1", "m", wire.Report{Event: "bogus"}); err == nil {
		t.Error("a bad report was recorded")
	}
	if _, err := s.Apply(ctx, "../x", "m", wire.Report{Event: wire.EventRunning}); err == nil {
		t.Error("a bad node name was accepted")
	}
	list, _ := s.List(ctx)
	if len(list) != 1 || list[0].Node != "n1" {
		t.Errorf("list %+v", list)
	}
}

type owners map[netip.Addr]net.HardwareAddr

func (o owners) MACFor(ip netip.Addr) (net.HardwareAddr, bool) { m, ok := o[ip]; return m, ok }

// TestHandler: a report from the address leased to a node's MAC is
// recorded as that node's and logged as its boot phase; from any other
// address, or malformed, it is refused and nothing is recorded.
func TestHandler(t *testing.T) {
	now := time.Now()
	s, _ := store(t, &now)
	mac, _ := net.ParseMAC("52:54:00:00:00:01")
	other, _ := net.ParseMAC("52:54:00:00:00:99")
	b := node.Static{mac.String(): {Name: "n1", Profile: "p"}}
	var log bytes.Buffer
	m := metrics.New(nil, slog.New(slog.NewTextHandler(&log, nil)))
	h := Handler(s, owners{netip.MustParseAddr("192.0.2.10"): mac, netip.MustParseAddr("192.0.2.11"): other}, b, m)
	post := func(from string, body any) int {
		data, _ := json.Marshal(body)
		req := httptest.NewRequest(http.MethodPost, wire.ReportPath, bytes.NewReader(data))
		req.RemoteAddr = from + ":1234"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	for _, tc := range []struct {
		name string
		from string
		body any
		code int
	}{
		{"not leased", "192.0.2.99", wire.Report{Event: wire.EventInstallDone, Disk: "/dev/vda", Image: h1}, http.StatusForbidden},
		{"leased to a MAC not in the inventory", "192.0.2.11", wire.Report{Event: wire.EventInstallDone, Disk: "/dev/vda", Image: h1}, http.StatusForbidden},
		{"not JSON", "192.0.2.10", "x", http.StatusBadRequest},
		{"bad report", "192.0.2.10", wire.Report{Event: wire.EventInstallDone, Image: "x"}, http.StatusBadRequest},
		{"install done", "192.0.2.10", wire.Report{Event: wire.EventInstallDone, Disk: "/dev/vda", Size: 1 << 30, Image: h1}, http.StatusNoContent},
	} {
		if got := post(tc.from, tc.body); got != tc.code {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.code)
		}
	}
	r, _ := s.Get(context.Background(), "n1")
	if r == nil || r.Installed.IsZero() || r.Disk != "/dev/vda" || r.MAC != mac.String() {
		t.Errorf("record %+v", r)
	}
	if list, _ := s.List(context.Background()); len(list) != 1 {
		t.Errorf("records %+v", list)
	}
	if !strings.Contains(log.String(), "phase=install-done mac=52:54:00:00:00:01 node=n1 from=192.0.2.10 disk=/dev/vda image=111111111111") {
		t.Errorf("log:\n%s", log.String())
	}
}
