package nodeconf

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCron(t *testing.T) {
	for _, tt := range []struct {
		expr string
		// minute hour day month weekday
		at   [5]int
		want bool
	}{
		{"0 3 * * *", [5]int{0, 3, 17, 6, 2}, true},
		{"0 3 * * *", [5]int{1, 3, 17, 6, 2}, false},
		{"*/15 * * * *", [5]int{45, 9, 1, 1, 0}, true},
		{"*/15 * * * *", [5]int{44, 9, 1, 1, 0}, false},
		{"0 2-4 * * 1-5", [5]int{0, 4, 1, 1, 5}, true},
		{"0 2-4 * * 1-5", [5]int{0, 4, 1, 1, 6}, false},
		{"30 1 * * 7", [5]int{30, 1, 3, 3, 0}, true},
		{"0 0 1 * 1", [5]int{0, 0, 1, 2, 3}, true},  // day 1 (either matches)
		{"0 0 1 * 1", [5]int{0, 0, 9, 2, 1}, true},  // a Monday
		{"0 0 1 * 1", [5]int{0, 0, 9, 2, 2}, false}, // neither
		{"5,10 0 * 1,7 *", [5]int{10, 0, 9, 7, 2}, true},
	} {
		c, err := ParseCron(tt.expr)
		if err != nil {
			t.Fatalf("%q: %v", tt.expr, err)
		}
		if got := c.Match(tt.at[0], tt.at[1], tt.at[2], tt.at[3], tt.at[4]); got != tt.want {
			t.Errorf("%q at %v = %v, want %v", tt.expr, tt.at, got, tt.want)
		}
	}
	for _, bad := range []string{"", "* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "5-1 * * * *", "*/0 * * * *", "a * * * *"} {
		if _, err := ParseCron(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestChecks(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"install ok", (&Install{Disk: "/dev/disk/by-id/virtio-*"}).Check(), ""},
		{"install bad", (&Install{Disk: "sda"}).Check(), `install.disk "sda": want`},
		{"upgrade ok", (&Upgrade{Mode: "auto", Reboot: "window 0 3 * * *"}).Check(), ""},
		{"upgrade bad mode", (&Upgrade{Mode: "always"}).Check(), `upgrade "always": want auto or manual`},
		{"upgrade bad reboot", (&Upgrade{Reboot: "window x"}).Check(), `reboot "window x": cron "x"`},
		{"image ok", (&Image{Root: strings.Repeat("a", 64), URL: "http://192.0.2.1:8080/image/52:54:00:00:00:01"}).Check(), ""},
		{"image bad root", (&Image{Root: "abc", URL: "http://x"}).Check(), `image.root "abc"`},
		{"image bad url", (&Image{Root: strings.Repeat("a", 64), URL: "ftp://x"}).Check(), `image.url "ftp://x"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if tt.err != nil {
				got = tt.err.Error()
			}
			if tt.want == "" && got != "" || tt.want != "" && !strings.HasPrefix(got, tt.want) {
				t.Errorf("error %q, want %q", got, tt.want)
			}
		})
	}
	if (*Upgrade)(nil).RebootPolicy() != RebootNow || (*Upgrade)(nil).Auto() {
		t.Error("a nil upgrade: reboot now, not auto")
	}
}

func TestCronNext(t *testing.T) {
	at := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// 2026-12-07 is a Monday.
	for _, tt := range []struct {
		name, expr, after string
		want              string // "" : ErrNeverMatches
	}{
		{"every minute", "* * * * *", "2026-12-07T10:52:34Z", "2026-12-07T10:53:00Z"},
		{"later today", "0 2 * * *", "2026-12-07T01:59:59Z", "2026-12-07T02:00:00Z"},
		{"strictly after a match", "0 2 * * *", "2026-12-07T02:00:00Z", "2026-12-08T02:00:00Z"},
		{"within a matching minute", "0 2 * * *", "2026-12-07T02:00:30Z", "2026-12-08T02:00:00Z"},
		{"tomorrow", "0 2 * * *", "2026-12-07T10:52:34Z", "2026-12-08T02:00:00Z"},
		{"steps", "*/20 */6 * * *", "2026-12-07T10:52:34Z", "2026-12-07T12:00:00Z"},
		{"range of minutes", "0-29 3 * * *", "2026-12-07T03:29:00Z", "2026-12-08T03:00:00Z"},
		{"weekday", "30 3 * * 6", "2026-12-07T10:52:34Z", "2026-12-12T03:30:00Z"},
		{"sunday as 7", "0 12 * * 7", "2026-12-07T10:52:34Z", "2026-12-13T12:00:00Z"},
		{"day of month", "0 0 15 * *", "2026-12-07T10:52:34Z", "2026-12-15T00:00:00Z"},
		{"day or weekday: the weekday first", "0 0 15 * 5", "2026-12-07T10:52:34Z", "2026-12-11T00:00:00Z"},
		{"day or weekday: the day first", "0 0 15 * 5", "2026-12-12T00:00:00Z", "2026-12-15T00:00:00Z"},
		{"month and year wrap", "0 0 1 1 *", "2026-12-07T10:52:34Z", "2027-01-01T00:00:00Z"},
		{"29 february", "0 0 29 2 *", "2026-12-07T10:52:34Z", "2028-02-29T00:00:00Z"},
		{"29 february past 2100", "0 0 29 2 *", "2096-03-01T00:00:00Z", "2104-02-29T00:00:00Z"},
		{"31 february", "0 0 31 2 *", "2026-12-07T10:52:34Z", ""},
		{"31 april or june", "0 0 31 4,6 *", "2026-12-07T10:52:34Z", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseCron(tt.expr)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Next(at(tt.after))
			if tt.want == "" {
				if !errors.Is(err, ErrNeverMatches) {
					t.Fatalf("Next(%s) = %v, %v; want ErrNeverMatches", tt.after, got, err)
				}
				return
			}
			if err != nil || !got.Equal(at(tt.want)) {
				t.Fatalf("Next(%s) = %v, %v; want %s", tt.after, got, err, tt.want)
			}
			if !c.MatchTime(got) {
				t.Errorf("Next gave %v, which does not match", got)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	if c, ok := (&Upgrade{Reboot: "window 0 2 * * *"}).Window(); !ok || !c.Match(0, 2, 1, 1, 1) {
		t.Errorf("window 0 2 * * *: %v %v", c, ok)
	}
	for _, p := range []string{"", "now", "manual", "window x"} {
		if _, ok := (&Upgrade{Reboot: p}).Window(); ok {
			t.Errorf("reboot %q: a window", p)
		}
	}
	err := (&Upgrade{Reboot: "window 0 0 31 2 *"}).Check()
	if !errors.Is(err, ErrNeverMatches) || !strings.HasPrefix(err.Error(), `reboot "window 0 0 31 2 *": matches no minute: no day it names exists (the window never opens)`) {
		t.Errorf("a window that never opens: %v", err)
	}
}
