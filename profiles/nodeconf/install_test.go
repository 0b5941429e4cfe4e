package nodeconf

import (
	"strings"
	"testing"
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
