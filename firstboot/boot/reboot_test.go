package boot

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/slots"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// systemctlLog records the systemctl commands a RebootTimer runs.
type systemctlLog struct {
	mu   sync.Mutex
	cmds []string
	err  error
}

func (l *systemctlLog) run(_ context.Context, args ...string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cmds = append(l.cmds, strings.Join(args, " "))
	return l.err
}

func (l *systemctlLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.cmds
	l.cmds = nil
	return c
}

// systemdRoot is a root where systemd runs (run/systemd/system exists).
func systemdRoot(t *testing.T) string {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "run/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestUpgradeRebootWindow runs the day-2 upgrade of a machine running
// slot a whose slot b already holds the image its configuration names
// (written before, waiting for a reboot), at a given time, with the
// reboot action apply wires replaced by one that counts: reboot: now
// and a window whose minute it is reboot; outside the window nothing
// reboots, the console and the result say when it will, a systemd
// machine gets a timer for that minute, and serve is told.
func TestUpgradeRebootWindow(t *testing.T) {
	running, want := strings.Repeat("1", 64), strings.Repeat("2", 64)
	for _, tc := range []struct {
		name, policy, now string
		rebootErr         error
		wantReboot        bool
		wantAt            string // "" : none
		wantLine          string
		wantTimer         bool
	}{
		{name: "outside the window", policy: "window 0 2 * * *", now: "2026-12-07T10:52:34Z",
			wantAt: "2026-12-08T02:00:00Z", wantTimer: true,
			wantLine: "bellbuild: upgrade: slot b waits for the window: rebooting at 2026-12-08T02:00:00Z (reboot: window 0 2 * * *)"},
		{name: "a minute before the window", policy: "window 0 2 * * *", now: "2026-12-08T01:59:59Z",
			wantAt: "2026-12-08T02:00:00Z", wantTimer: true,
			wantLine: "bellbuild: upgrade: slot b waits for the window: rebooting at 2026-12-08T02:00:00Z (reboot: window 0 2 * * *)"},
		{name: "in the window", policy: "window 0 2 * * *", now: "2026-12-08T02:00:40Z", wantReboot: true,
			wantLine: "bellbuild: upgrade: rebooting into slot b: 2026-12-08T02:00:00Z is in the window (reboot: window 0 2 * * *)"},
		{name: "just after the window", policy: "window 0 2 * * *", now: "2026-12-08T02:01:00Z",
			wantAt: "2026-12-09T02:00:00Z", wantTimer: true,
			wantLine: "bellbuild: upgrade: slot b waits for the window: rebooting at 2026-12-09T02:00:00Z (reboot: window 0 2 * * *)"},
		{name: "weekdays, on a saturday", policy: "window 0-29 3 * * 1-5", now: "2026-12-12T03:10:00Z",
			wantAt: "2026-12-14T03:00:00Z", wantTimer: true,
			wantLine: "bellbuild: upgrade: slot b waits for the window: rebooting at 2026-12-14T03:00:00Z (reboot: window 0-29 3 * * 1-5)"},
		{name: "in the window, the reboot fails", policy: "window * * * * *", now: "2026-12-07T10:52:34Z", rebootErr: errors.New("no reboot(8)"),
			wantLine: "bellbuild: upgrade: error: reboot: no reboot(8)"},
		{name: "now", policy: "now", now: "2026-12-07T10:52:34Z", wantReboot: true,
			wantLine: "bellbuild: upgrade: rebooting into slot b"},
		{name: "manual", policy: "manual", now: "2026-12-07T10:52:34Z",
			wantLine: "bellbuild: upgrade: slot b waits for a reboot (reboot: manual)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// serve: no fresher node.json; the reports it is sent.
			var mu sync.Mutex
			var reports []wire.Report
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost {
					var rep wire.Report
					json.NewDecoder(r.Body).Decode(&rep)
					mu.Lock()
					reports = append(reports, rep)
					mu.Unlock()
					return
				}
				http.NotFound(w, r)
			}))
			defer srv.Close()
			// The ESP: slot b's entry names the image, three tries.
			esp := slots.ESP{Dir: t.TempDir()}
			if err := os.MkdirAll(filepath.Join(esp.Dir, layout.EntriesDir), 0o755); err != nil {
				t.Fatal(err)
			}
			gen, err := esp.Begin(layout.SlotB)
			if err == nil {
				err = esp.Commit(layout.SlotB, gen, layout.DefaultTries, "test (slot b)", layout.SlotCmdline("console=ttyS0", layout.SlotB, want))
			}
			if err != nil {
				t.Fatal(err)
			}
			node := &nodeconf.Node{Node: "u1", Profile: "upg",
				Image:   &nodeconf.Image{Profile: "upg", Arch: "amd64", Root: want, URL: srv.URL + "/image/52:54:00:00:00:31"},
				Upgrade: &nodeconf.Upgrade{Mode: nodeconf.UpgradeAuto, Reboot: tc.policy}}
			now, err := time.Parse(time.RFC3339, tc.now)
			if err != nil {
				t.Fatal(err)
			}
			reboots := 0
			root, sc := systemdRoot(t), &systemctlLog{}
			var con strings.Builder
			cmdline := layout.SlotParam + "=a " + layout.ImageParam + "=" + running + " " + layout.ServeParam + "=" + srv.URL
			res := Upgrade(context.Background(), &con, cmdline, node, UpgradeOptions{
				Mount:  func() (slots.ESP, func() error, error) { return esp, func() error { return nil }, nil },
				Now:    func() time.Time { return now },
				Reboot: func(context.Context) error { reboots++; return tc.rebootErr },
				Timer:  &RebootTimer{Root: root, Systemctl: sc.run},
			})

			if wantReboots := map[bool]int{false: 0, true: 1}[tc.wantReboot || tc.rebootErr != nil]; reboots != wantReboots {
				t.Errorf("%d reboots, want %d\n%s", reboots, wantReboots, con.String())
			}
			if !strings.Contains(con.String(), tc.wantLine+"\n") {
				t.Errorf("console:\n%s\nwant the line %q", con.String(), tc.wantLine)
			}
			gotAt := ""
			if !res.At.IsZero() {
				gotAt = res.At.Format(time.RFC3339)
			}
			if res.Reboot != tc.wantReboot || gotAt != tc.wantAt || (res.Pending == "pending") == tc.wantReboot {
				t.Errorf("result %+v, want reboot %v at %q", res, tc.wantReboot, tc.wantAt)
			}
			timer, err := os.ReadFile(filepath.Join(root, RebootTimerUnit))
			if tc.wantTimer {
				wantCal := "OnCalendar=" + strings.Replace(strings.TrimSuffix(tc.wantAt, "Z"), "T", " ", 1) + " UTC\n"
				if err != nil || !strings.Contains(string(timer), wantCal) {
					t.Errorf("the reboot timer: %v\n%s\nwant %q", err, timer, wantCal)
				}
				if got := sc.take(); !reflect.DeepEqual(got, []string{"daemon-reload", "restart bellbuild-reboot.timer"}) {
					t.Errorf("systemctl %q", got)
				}
			} else if err == nil || len(sc.take()) != 0 {
				t.Errorf("a reboot timer, or systemctl run, when none is due:\n%s", timer)
			}
			// serve was told what runs (the upgrade was written before).
			mu.Lock()
			defer mu.Unlock()
			if len(reports) != 1 || reports[0].Event != wire.EventRunning || reports[0].Running != running {
				t.Errorf("serve was sent %+v, want the running report", reports)
			}
		})
	}
}

// TestRebootTimer sets, resets and drops the reboot timer of a systemd
// root: the units are written once per time (a rerun adds no timer and
// reloads nothing), systemd is told, and a root without systemd gets
// nothing. systemd-analyze, when there, checks the units and that the
// calendar event is that minute.
func TestRebootTimer(t *testing.T) {
	ctx := context.Background()
	root, sc := systemdRoot(t), &systemctlLog{}
	rt := &RebootTimer{Root: root, Systemctl: sc.run}
	at := time.Date(2026, 12, 8, 2, 0, 0, 0, time.UTC)
	units := func() []string {
		ents, _ := os.ReadDir(filepath.Join(root, "run/systemd/system"))
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	steps := []struct {
		name  string
		at    time.Time
		cmds  []string
		units []string
	}{
		{"set", at, []string{"daemon-reload", "restart bellbuild-reboot.timer"}, []string{"bellbuild-reboot.service", "bellbuild-reboot.timer"}},
		{"set again", at, []string{"start bellbuild-reboot.timer"}, []string{"bellbuild-reboot.service", "bellbuild-reboot.timer"}},
		{"another minute", at.Add(24 * time.Hour), []string{"daemon-reload", "restart bellbuild-reboot.timer"}, []string{"bellbuild-reboot.service", "bellbuild-reboot.timer"}},
		{"dropped", time.Time{}, []string{"stop bellbuild-reboot.timer", "daemon-reload"}, nil},
		{"dropped again", time.Time{}, nil, nil},
	}
	for _, s := range steps {
		if err := rt.Set(ctx, s.at); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := sc.take(); !reflect.DeepEqual(got, s.cmds) {
			t.Errorf("%s: systemctl %q, want %q", s.name, got, s.cmds)
		}
		if got := units(); !reflect.DeepEqual(got, s.units) {
			t.Errorf("%s: units %q, want %q", s.name, got, s.units)
		}
		if s.name == "another minute" {
			data, _ := os.ReadFile(filepath.Join(root, RebootTimerUnit))
			if !strings.Contains(string(data), "\nOnCalendar=2026-12-09 02:00:00 UTC\nAccuracySec=1s\n") {
				t.Errorf("the timer:\n%s", data)
			}
		}
	}

	// A failed systemctl is an error, and the next run tells systemd
	// again.
	sc.err = errors.New("exit status 1")
	if err := rt.Set(ctx, at); err == nil || !strings.Contains(err.Error(), "the reboot timer: exit status 1") {
		t.Errorf("systemctl failing: %v", err)
	}
	sc.err = nil
	sc.take()
	if err := rt.Set(ctx, at); err != nil {
		t.Fatal(err)
	}
	if got := sc.take(); !reflect.DeepEqual(got, []string{"daemon-reload", "restart bellbuild-reboot.timer"}) {
		t.Errorf("after a failed systemctl: systemctl %q", got)
	}

	// Without systemd, nothing.
	plain := t.TempDir()
	if err := (&RebootTimer{Root: plain, Systemctl: sc.run}).Set(ctx, at); err != nil || len(sc.take()) != 0 {
		t.Errorf("a root without systemd: %v", err)
	}
	if ents, _ := os.ReadDir(plain); len(ents) != 0 {
		t.Errorf("a root without systemd got %v", ents)
	}

	// systemd's own view of the units and of the calendar event.
	sa := testtool.LookPath(t, "systemd-analyze", "systemd")
	if err := rt.Set(ctx, at); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "run/systemd/system")
	if out, err := exec.Command(sa, "verify", filepath.Join(dir, "bellbuild-reboot.timer"), filepath.Join(dir, "bellbuild-reboot.service")).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(sa, "calendar", OnCalendar(at)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Normalized form: 2026-12-08 02:00:00 UTC\n") {
		t.Errorf("systemd-analyze calendar %q: %v\n%s", OnCalendar(at), err, out)
	}
}
