package boot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The units through which a one-shot apply on a systemd machine has
// systemd reboot it at its reboot window's next minute: a timer for that
// minute (in UTC, to the second) and the service it starts, which runs
// reboot(8), the command apply reboots with. They live under /run, so a
// reboot forgets them.
const (
	RebootTimerUnit   = "run/systemd/system/bellbuild-reboot.timer"
	RebootServiceUnit = "run/systemd/system/bellbuild-reboot.service"
)

// RebootTimer sets or clears the reboot RebootTimerUnit arranges on the
// systemd machine at Root.
type RebootTimer struct {
	// Root is the machine's root ("/").
	Root string
	// Systemctl runs systemctl with args (cmd wires systemctl(1)).
	Systemctl func(ctx context.Context, args ...string) error
}

// SystemdRuns reports whether systemd runs the system at root: it made
// /run/systemd/system (what sd_booted(3) checks).
func SystemdRuns(root string) bool {
	fi, err := os.Stat(filepath.Join(root, "run/systemd/system"))
	return err == nil && fi.IsDir()
}

// Set makes systemd reboot the machine at at (a minute), or, for a zero
// at, removes a reboot Set arranged before. Running it again with the
// same at changes nothing and adds no second timer: the units are
// rewritten (then systemd reloaded and the timer restarted) only when
// their content changes; otherwise the timer is only started, which does
// nothing to one that runs. A timer systemd was not told of is not left
// written. Without systemd at Root it does nothing.
func (t *RebootTimer) Set(ctx context.Context, at time.Time) error {
	if !SystemdRuns(t.Root) {
		return nil
	}
	timer, service := filepath.Join(t.Root, RebootTimerUnit), filepath.Join(t.Root, RebootServiceUnit)
	name := filepath.Base(RebootTimerUnit)
	if at.IsZero() {
		if _, err := os.Lstat(timer); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		// Stopped first: a timer whose unit is gone cannot be.
		if err := t.Systemctl(ctx, "stop", name); err != nil {
			return fmt.Errorf("the reboot timer: %w", err)
		}
		for _, f := range []string{timer, service} {
			if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("the reboot timer: %w", err)
			}
		}
		if err := t.Systemctl(ctx, "daemon-reload"); err != nil {
			return fmt.Errorf("the reboot timer: %w", err)
		}
		return nil
	}
	units := []struct{ path, content string }{
		{service, "[Unit]\nDescription=bellbuild: reboot into the upgrade in the other slot, in the reboot window\n\n" +
			"[Service]\nType=oneshot\nExecStart=reboot\n"},
		{timer, "[Unit]\nDescription=bellbuild: reboot into the upgrade in the other slot at " + at.UTC().Format(time.RFC3339) + "\n\n" +
			"[Timer]\nOnCalendar=" + OnCalendar(at) + "\nAccuracySec=1s\nUnit=" + filepath.Base(RebootServiceUnit) + "\n"},
	}
	changed := false
	for _, u := range units {
		if old, err := os.ReadFile(u.path); err == nil && bytes.Equal(old, []byte(u.content)) {
			continue
		}
		if err := writeUnit(u.path, u.content); err != nil {
			return fmt.Errorf("the reboot timer: %w", err)
		}
		changed = true
	}
	args := [][]string{{"start", name}}
	if changed {
		args = [][]string{{"daemon-reload"}, {"restart", name}}
	}
	for _, a := range args {
		if err := t.Systemctl(ctx, a...); err != nil {
			// Not left looking set: the next run writes it again and
			// tells systemd again.
			if changed {
				os.Remove(timer)
			}
			return fmt.Errorf("the reboot timer: %w", err)
		}
	}
	return nil
}

// OnCalendar is a systemd calendar event for at's minute, in UTC.
func OnCalendar(at time.Time) string {
	return at.UTC().Format("2006-01-02 15:04") + ":00 UTC"
}

// writeUnit writes a unit file through a temporary file beside it,
// synced, then renamed in place.
func writeUnit(path, content string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(content)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
