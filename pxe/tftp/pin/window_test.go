package tftp

// bellbuild patch: unit tests of the adaptive send-ahead window and of
// SetWindow (see PATCHES.md). pxe/tftp runs them (TestForkUnitTests) and
// checks the same behaviour on the wire.

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// sizes expands "16 8-15 15*7" into 16, 8, 9, ..., 15, then seven 15s.
func sizes(t *testing.T, s string) []uint {
	t.Helper()
	var out []uint
	num := func(s string) uint {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			t.Fatalf("bad size %q", s)
		}
		return uint(n)
	}
	for _, f := range strings.Fields(s) {
		switch {
		case strings.Contains(f, "-"):
			a, b, _ := strings.Cut(f, "-")
			for i := num(a); i <= num(b); i++ {
				out = append(out, i)
			}
		case strings.Contains(f, "*"):
			v, n, _ := strings.Cut(f, "*")
			for i := uint(0); i < num(n); i++ {
				out = append(out, num(v))
			}
		default:
			out = append(out, num(f))
		}
	}
	return out
}

// windows expands "x .*9 x" into one bool per window: lost (x) or clean (.).
func windows(t *testing.T, s string) []bool {
	t.Helper()
	var out []bool
	for _, f := range strings.Fields(s) {
		c, n := f, "1"
		if strings.Contains(f, "*") {
			c, n, _ = strings.Cut(f, "*")
		}
		k, err := strconv.Atoi(n)
		if err != nil || (c != "x" && c != ".") {
			t.Fatalf("bad window pattern %q", f)
		}
		for i := 0; i < k; i++ {
			out = append(out, c == "x")
		}
	}
	return out
}

// TestBellbuildWindowAdapts drives the window through its rules: each case
// is the transfer's window, which windows lose a packet, and the size of
// every window sent.
func TestBellbuildWindowAdapts(t *testing.T) {
	tests := []struct {
		name   string
		window uint   // the transfer's window (the server's, or SetWindow's)
		lost   string // per window sent: x lost a packet, . clean
		want   string // the size of each window sent
		probe  uint   // the wait for the next try above the ceiling, at the end (0: not checked)
	}{{
		name:   "clean windows stay full",
		window: 16,
		lost:   ".*5",
		want:   "16*5",
	}, {
		name:   "a loss halves it, one less becomes the ceiling, and it grows back by one per clean window",
		window: 16,
		lost:   ". x .*8",
		want:   "16 16 8-15",
	}, {
		name:   "at the ceiling it tries one more after 8 clean windows; a try that goes through is the new ceiling",
		window: 16,
		lost:   "x .*7 .*8 .*3",
		want:   "16 8-15 15*7 16*3",
		probe:  8,
	}, {
		name:   "a try that loses doubles the wait before the next (8, 16, 32)",
		window: 16,
		// Lose at 16, regrow to 15, 8 clean at 15, the try at 16 loses;
		// regrow, 16 clean at 15, the try loses; regrow, 32 at 15.
		lost:  "x .*7 .*8 x .*7 .*16 x .*7 .*32 .",
		want:  "16 8-15 15*7 16 8-15 15*15 16 8-15 15*31 16",
		probe: 32,
	}, {
		name:   "the wait stops doubling at 1024",
		window: 4,
		// Window 4, ceiling 3: every try at 4 loses, after 8, 16, ...,
		// 1024 clean windows at 3, then 1024 again.
		lost:  "x . " + tries(8, 1024) + tries(1024, 1024),
		want:  "4 2 " + triesWant(8, 1024) + triesWant(1024, 1024),
		probe: 1024,
	}, {
		name:   "a loss below the ceiling is noise: the wait goes back to 8",
		window: 16,
		// The try at 16 loses (the wait doubles to 16), then a loss at
		// 15 (the wait is 8 again): the next try comes after 8 at 14.
		lost:  "x .*7 .*8 x .*7 .*3 x .*7 .*8 .",
		want:  "16 8-15 15*7 16 8-15 15*3 7-14 14*7 15",
		probe: 8,
	}, {
		name:   "losses in a row end in lock-step, never below",
		window: 16,
		lost:   "x*6 .",
		want:   "16 8 4 2 1 1 1",
	}, {
		name:   "from lock-step it climbs back to its ceiling, then tries above it",
		window: 16,
		lost:   "x*5 .*8 .*3",
		want:   "16 8 4 2 1 1*8 2*3",
	}, {
		name:   "a transfer limited by SetWindow(4) keeps to 4",
		window: 4,
		lost:   ".*3 x . .*8 .*20",
		want:   "4*3 4 2 3*8 4*20",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sA senderAnticipate
			sendAInit(&sA, 516, anticipateWindowDefMax)
			sA.limit = tt.window
			max := sA.start()
			if max != tt.window {
				t.Fatalf("start() = %d, want the transfer's window %d", max, tt.window)
			}
			var got []uint
			for _, lost := range windows(t, tt.lost) {
				got = append(got, sA.cwnd)
				sA.lost = lost
				sA.adapt(max)
			}
			want := sizes(t, tt.want)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("window sizes:\n got %v\nwant %v", compact(got), compact(want))
			}
			if tt.probe != 0 && sA.probe != tt.probe {
				t.Errorf("wait before the next try = %d windows, want %d", sA.probe, tt.probe)
			}
		})
	}
}

// tries is the loss pattern of a window of 4 with a ceiling of 3 whose
// every try at 4 loses: wait clean windows at 3, the try, a clean window
// at 2; for each wait from, 2×from, ... up to to.
func tries(from, to int) string {
	var b strings.Builder
	for w := from; w <= to; w *= 2 {
		fmt.Fprintf(&b, ".*%d x . ", w)
	}
	return b.String()
}

// triesWant is the window sizes of tries(from, to).
func triesWant(from, to int) string {
	var b strings.Builder
	for w := from; w <= to; w *= 2 {
		fmt.Fprintf(&b, "3*%d 4 2 ", w)
	}
	return b.String()
}

// compact shortens runs of one size as "v*n" for a readable failure.
func compact(s []uint) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] == s[i] {
			j++
		}
		if j-i > 1 {
			fmt.Fprintf(&b, "%d*%d ", s[i], j-i)
		} else {
			fmt.Fprintf(&b, "%d ", s[i])
		}
		i = j
	}
	return strings.TrimSpace(b.String())
}

// TestBellbuildSetWindow: what SetWindow makes of a transfer on a server
// sending 16 ahead. Lock-step (n ≤ 1) is what pxe/tftp sends the iPXE
// loaders with: the transfer then takes pin's lock-step sender, not the
// send-ahead one.
func TestBellbuildSetWindow(t *testing.T) {
	tests := []struct {
		name      string
		set       uint // 0: SetWindow not called
		call      bool
		sendAhead bool
		window    uint
	}{
		{name: "not called: the server's window", sendAhead: true, window: 16},
		{name: "SetWindow(1): lock-step", call: true, set: 1},
		{name: "SetWindow(0): lock-step", call: true, set: 0},
		{name: "SetWindow(8): a smaller window", call: true, set: 8, sendAhead: true, window: 8},
		{name: "SetWindow(60): no more than the server's", call: true, set: 60, sendAhead: true, window: 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &sender{sendA: senderAnticipate{enabled: true}}
			sendAInit(&s.sendA, 516, 16)
			if tt.call {
				s.SetWindow(tt.set)
			}
			if s.sendA.enabled != tt.sendAhead {
				t.Fatalf("send-ahead = %v, want %v", s.sendA.enabled, tt.sendAhead)
			}
			if !tt.sendAhead {
				return
			}
			if got := s.sendA.start(); got != tt.window || s.sendA.cwnd != tt.window {
				t.Errorf("window = %d (first %d), want %d", got, s.sendA.cwnd, tt.window)
			}
		})
	}
}
