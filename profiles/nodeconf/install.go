package nodeconf

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Install says that a node installs itself onto one of its disks
// (docs/boot-media.md): serve boots it into the installer until it is
// installed, then from that disk.
type Install struct {
	// Disk picks the target disk: a device path (/dev/sda), a
	// /dev/disk/by-path/ or /dev/disk/by-id/ glob, "largest" or
	// "first-empty". Matching none or several stops the install.
	Disk string `json:"disk" yaml:"disk"`
	// Wipe lets the installer write over a disk that holds a partition
	// table or a filesystem; without it such a disk is refused.
	Wipe bool `json:"wipe,omitempty" yaml:"wipe,omitempty"`
}

// The disk specs that are not paths.
const (
	DiskLargest    = "largest"
	DiskFirstEmpty = "first-empty"
)

// Check reports what is wrong with i.
func (i *Install) Check() error {
	if i == nil {
		return nil
	}
	switch {
	case i.Disk == DiskLargest || i.Disk == DiskFirstEmpty:
	case strings.HasPrefix(i.Disk, "/dev/") && !strings.ContainsAny(i.Disk, " \t\n") && !strings.Contains(i.Disk, ".."):
	default:
		return fmt.Errorf("install.disk %q: want a device path (/dev/...), a /dev/disk/by-path/ or by-id/ glob, %s or %s", i.Disk, DiskLargest, DiskFirstEmpty)
	}
	return nil
}

// Upgrade says how an installed node takes a new image of its profile.
type Upgrade struct {
	// Mode is UpgradeAuto (an apply that sees the configuration name
	// another image writes it into the other slot) or UpgradeManual
	// (the default: only `bellbuild apply --upgrade` does).
	Mode string `json:"mode,omitempty" yaml:"mode,omitempty"`
	// Reboot is when the machine reboots into the new image: RebootNow
	// (the default), "window CRON" (a minute CRON matches, in UTC: at
	// once when the minute the image is written in matches, else at the
	// next one; never outside the window) or RebootManual (the summary
	// and serve say a reboot is pending).
	Reboot string `json:"reboot,omitempty" yaml:"reboot,omitempty"`
}

// Upgrade modes and reboot policies.
const (
	UpgradeAuto   = "auto"
	UpgradeManual = "manual"
	RebootNow     = "now"
	RebootManual  = "manual"
	RebootWindow  = "window"
)

// Auto reports whether u upgrades by itself.
func (u *Upgrade) Auto() bool { return u != nil && u.Mode == UpgradeAuto }

// RebootPolicy is u's reboot policy, defaulted: "now", "manual" or
// "window CRON".
func (u *Upgrade) RebootPolicy() string {
	if u == nil || u.Reboot == "" {
		return RebootNow
	}
	return u.Reboot
}

// Check reports what is wrong with u.
func (u *Upgrade) Check() error {
	if u == nil {
		return nil
	}
	switch u.Mode {
	case "", UpgradeAuto, UpgradeManual:
	default:
		return fmt.Errorf("upgrade %q: want auto or manual", u.Mode)
	}
	switch r := u.RebootPolicy(); {
	case r == RebootNow || r == RebootManual:
	case strings.HasPrefix(r, RebootWindow+" "):
		c, err := ParseCron(strings.TrimPrefix(r, RebootWindow+" "))
		if err == nil {
			// A day that never comes (31 2, 30 2, 31 4): a window that
			// never opens.
			if _, err = c.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
				err = fmt.Errorf("%w: no day it names exists (the window never opens)", ErrNeverMatches)
			}
		}
		if err != nil {
			return fmt.Errorf("reboot %q: %w", r, err)
		}
	default:
		return fmt.Errorf("reboot %q: want now, manual or window CRON (five fields: minute hour day month weekday)", r)
	}
	return nil
}

// Window is u's reboot window: ok is false unless its policy is "window
// CRON" with a CRON that parses (Check says what is wrong with one that
// does not).
func (u *Upgrade) Window() (c Cron, ok bool) {
	expr, ok := strings.CutPrefix(u.RebootPolicy(), RebootWindow+" ")
	if !ok {
		return c, false
	}
	c, err := ParseCron(expr)
	return c, err == nil
}

// Image names the image a node should run: its profile's current bake,
// as serve has it (the manifest's root hash). serve sets it on the
// configuration it hands out; an installed node's applier upgrades to it.
type Image struct {
	// Profile and Arch are the bake's (manifest.json's profile and
	// disk.arch): an upgrader refuses an image for another.
	Profile string `json:"profile" yaml:"profile"`
	Arch    string `json:"arch" yaml:"arch"`
	// Root is the SHA-256 of the root image (hex).
	Root string `json:"root" yaml:"root"`
	// URL is where serve hands out this node's image
	// (http://SERVER:PORT/image/MAC): URL/manifest.json, URL/root,
	// URL/kernel, URL/initrd, URL/disk.
	URL string `json:"url" yaml:"url"`
}

var hexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Check reports what is wrong with im.
func (im *Image) Check() error {
	if im == nil {
		return nil
	}
	if !hexRE.MatchString(im.Root) {
		return fmt.Errorf("image.root %q: want a SHA-256 (64 lower-case hex digits)", im.Root)
	}
	if !strings.HasPrefix(im.URL, "http://") && !strings.HasPrefix(im.URL, "https://") {
		return fmt.Errorf("image.url %q: want an http:// or https:// URL", im.URL)
	}
	return nil
}

// Cron is a five-field cron expression (minute hour day-of-month month
// day-of-week), each field *, a number, a range A-B, a list of those, and
// an optional /STEP: the times a reboot window opens.
type Cron [5]map[int]bool

var cronRanges = [5][2]int{{0, 59}, {0, 23}, {1, 31}, {1, 12}, {0, 7}}

// ParseCron parses a cron expression.
func ParseCron(s string) (Cron, error) {
	var c Cron
	f := strings.Fields(s)
	if len(f) != 5 {
		return c, fmt.Errorf("cron %q: want five fields (minute hour day month weekday)", s)
	}
	for i, field := range f {
		lo, hi := cronRanges[i][0], cronRanges[i][1]
		c[i] = map[int]bool{}
		for _, part := range strings.Split(field, ",") {
			rng, step := part, 1
			if r, st, ok := strings.Cut(part, "/"); ok {
				n, err := strconv.Atoi(st)
				if err != nil || n < 1 {
					return c, fmt.Errorf("cron %q: bad step %q", s, st)
				}
				rng, step = r, n
			}
			a, b := lo, hi
			if rng != "*" {
				x, y, isRange := strings.Cut(rng, "-")
				var err1, err2 error
				a, err1 = strconv.Atoi(x)
				b = a
				if isRange {
					b, err2 = strconv.Atoi(y)
				} else if step > 1 {
					b = hi
				}
				if err1 != nil || err2 != nil || a < lo || b > hi || a > b {
					return c, fmt.Errorf("cron %q: %q is not in %d-%d", s, part, lo, hi)
				}
			}
			for v := a; v <= b; v += step {
				c[i][v] = true
			}
		}
	}
	if c[4][7] { // Sunday, as 0
		delete(c[4], 7)
		c[4][0] = true
	}
	return c, nil
}

// Match reports whether the minute of (minute, hour, day, month, weekday)
// is one the expression names.
func (c Cron) Match(minute, hour, day, month, weekday int) bool {
	return c[0][minute] && c[1][hour] && c.matchDay(day, month, weekday)
}

// MatchTime reports whether t's minute (in t's location) is one the
// expression names.
func (c Cron) MatchTime(t time.Time) bool {
	return c.Match(t.Minute(), t.Hour(), t.Day(), int(t.Month()), int(t.Weekday()))
}

// matchDay is the day part of Match, the one rule for days: the month,
// and day-of-month and day-of-week both restricted: either matches, as
// cron does (a field is unrestricted when it names every value).
func (c Cron) matchDay(day, month, weekday int) bool {
	if !c[3][month] {
		return false
	}
	dayAll, wdAll := len(c[2]) == 31, len(c[4]) >= 7
	switch {
	case dayAll && wdAll:
		return true
	case dayAll:
		return c[4][weekday]
	case wdAll:
		return c[2][day]
	}
	return c[2][day] || c[4][weekday]
}

// NextBound is how far Next looks: eight years, the longest gap between
// two 29ths of February (2096 to 2104).
const NextBound = 8 * 366 * 24 * time.Hour

// ErrNeverMatches is returned (wrapped) by Next for an expression that
// names no minute within NextBound: a day that does not exist, like
// "0 0 31 2 *".
var ErrNeverMatches = errors.New("matches no minute")

// Next is the first minute after after (in after's location) that the
// expression names: its start, strictly later than after.
func (c Cron) Next(after time.Time) (time.Time, error) {
	loc := after.Location()
	from := time.Date(after.Year(), after.Month(), after.Day(), after.Hour(), after.Minute(), 0, 0, loc).Add(time.Minute)
	day := time.Date(from.Year(), from.Month(), from.Day(), 0, 0, 0, 0, loc)
	for d := day; d.Sub(day) <= NextBound; d = d.AddDate(0, 0, 1) {
		if !c.matchDay(d.Day(), int(d.Month()), int(d.Weekday())) {
			continue
		}
		for h := 0; h < 24; h++ {
			if !c[1][h] {
				continue
			}
			for m := 0; m < 60; m++ {
				t := time.Date(d.Year(), d.Month(), d.Day(), h, m, 0, 0, loc)
				// MatchTime again: a local time a clock change skips
				// lands on another hour.
				if c[0][m] && !t.Before(from) && c.MatchTime(t) {
					return t, nil
				}
			}
		}
	}
	return time.Time{}, fmt.Errorf("%w in the %d years after %s", ErrNeverMatches, NextBound/(366*24*time.Hour), after.Format(time.RFC3339))
}
