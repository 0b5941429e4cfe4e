package firstboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// DefaultWatchInterval is how often Watch looks at the configuration.
const DefaultWatchInterval = 5 * time.Second

// maxRetryWait bounds the wait between retries of a failing run.
const maxRetryWait = 5 * time.Minute

// WatchOptions configure Watch.
type WatchOptions struct {
	// Run is the run to repeat; Run.Source.Path is what is watched.
	Run RunOptions
	// Interval is how often the configuration's content is looked at
	// (0: DefaultWatchInterval).
	Interval time.Duration
	// Resync, when positive, applies again that long after the last run
	// even if nothing changed, to undo drift (a sysctl set by hand, a
	// managed file's mode changed).
	Resync time.Duration
}

// Watch runs the configuration, then again whenever its content changes,
// until ctx is cancelled (SIGTERM): the day-2 rerun of a running machine
// (its config volume rewritten in place) or of a DaemonSet (its ConfigMap
// updated).
//
// The content is looked at every Interval, by its SHA-256, so a rewrite
// with the same bytes does nothing and a file replaced by rename (or a
// ConfigMap's ..data symlink swapped) is seen like one written in place.
// Only a complete, stable configuration is run: the same content on two
// consecutive looks, and, for a rendered node or bundle, one that verifies
// (nodeconf.Decode). A file caught half-written is waited for; one that
// stays incomplete or invalid is reported once, never run. A failed run
// is reported and retried after Interval, then after twice as long each
// time, up to five minutes, or at once on a change. An upgrade that waits
// for its reboot window (RebootState.At) is run again at that minute,
// which reboots into it.
func Watch(ctx context.Context, o WatchOptions) error {
	interval := o.Interval
	if interval == 0 {
		interval = DefaultWatchInterval
	}
	if interval < 0 {
		return fmt.Errorf("watch interval %s: must be positive", o.Interval)
	}
	if o.Resync < 0 {
		return fmt.Errorf("resync %s: must not be negative", o.Resync)
	}
	stderr := orDiscard(o.Run.Stderr)
	path := o.Run.Source.Path
	// wake is when the last run's upgrade waits for a reboot window: the
	// run then, in the window, reboots.
	var wake time.Time
	if up := o.Run.Upgrade; up != nil {
		o.Run.Upgrade = func(ctx context.Context, n *nodeconf.Node) RebootState {
			r := up(ctx, n)
			wake = r.At
			return r
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var (
		seen, applied, said string
		lastRun, retryAt    time.Time
		failing             bool
		wait                = interval
	)
	// say reports a problem once, until it changes or goes away.
	say := func(msg string) {
		if msg != said {
			fmt.Fprintf(stderr, "bellbuild apply: watch: %s\n", msg)
			said = msg
		}
	}
	for {
		sum, bad, err := look(path)
		now := time.Now()
		stable := err == nil && sum == seen
		seen = sum
		switch {
		case err != nil:
			// A volume being replaced may be missing for a moment.
			say(err.Error())
		case !stable:
			// Changing (or looked at once): look again.
		case bad != nil:
			say(fmt.Sprintf("%v; not applied: waiting for a complete configuration", bad))
		case sum != applied,
			failing && !now.Before(retryAt),
			o.Resync > 0 && now.Sub(lastRun) >= o.Resync,
			!wake.IsZero() && !now.Before(wake):
			if sum != applied {
				wait = interval
			}
			said, applied, lastRun, wake = "", sum, now, time.Time{}
			err := Run(ctx, o.Run)
			failing = err != nil
			if failing {
				if !errors.Is(err, ErrFailed) {
					fmt.Fprintf(stderr, "bellbuild apply: %v\n", err)
				}
				retryAt = time.Now().Add(wait)
				fmt.Fprintf(stderr, "bellbuild apply: watch: retrying in %s\n", wait)
				wait = min(2*wait, maxRetryWait)
			} else {
				wait = interval
			}
		default:
			said = ""
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// look returns the SHA-256 of a configuration file, or of every regular
// file under a directory (a site) with its relative path; and, for a file
// that is a rendered node or bundle, why it does not verify (nil when it
// does, or when it is a values file, which has nothing to verify).
func look(p string) (sum string, bad, err error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", nil, err
	}
	if !fi.IsDir() {
		data, err := os.ReadFile(p)
		if err != nil {
			return "", nil, err
		}
		h := sha256.Sum256(data)
		if _, _, err := decodeConfig(p, data); err != nil && !errors.Is(err, nodeconf.ErrNotRendered) {
			bad = err
		}
		return hex.EncodeToString(h[:]), bad, nil
	}
	h := sha256.New()
	err = filepath.WalkDir(p, func(f string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(p, f)
		fmt.Fprintf(h, "%d:%s", len(rel), rel)
		return hashFile(h, f)
	})
	if err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(h.Sum(nil)), nil, nil
}

func hashFile(w io.Writer, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%x", h.Sum(nil))
	return err
}
