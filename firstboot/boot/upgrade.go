package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/install"
	"github.com/bellbuild/bellbuild/firstboot/slots"
	"github.com/bellbuild/bellbuild/firstboot/upgrade"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	enrolwire "github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
)

// UpgradeOptions configure Upgrade.
type UpgradeOptions struct {
	// Force upgrades whatever the node's upgrade mode says (bellbuild
	// apply --upgrade).
	Force bool
	// NetUp brings the boot NIC up first (bellbuild.net=; the init).
	NetUp bool
	// Mount mounts the ESP (default MountESP).
	Mount func() (slots.ESP, func() error, error)
	// Now is the clock a reboot window is read on, in UTC (nil:
	// time.Now).
	Now func() time.Time
	// Reboot, when set, reboots the machine when the policy says now
	// (apply wires reboot(8)); a reboot that fails leaves the upgrade
	// pending. Without it the caller reboots on UpgradeResult.Reboot
	// (the init, once its summary is printed).
	Reboot func(ctx context.Context) error
	// Timer, when set, has systemd reboot at a window's next minute
	// (a one-shot apply on a systemd machine), and drops a reboot it
	// arranged before that is no longer wanted.
	Timer *RebootTimer
}

// UpgradeResult is what Upgrade did.
type UpgradeResult struct {
	// Reboot says to reboot now into the slot written (reboot: now).
	Reboot bool
	// Pending is the summary's reboot= ("pending" when an image waits in
	// the other slot for a reboot the policy leaves to later).
	Pending string
	// At is when that reboot is due: the next minute of the node's
	// reboot window (zero: no time is set).
	At time.Time
}

// Upgrade is the upgrade of a machine that booted slot (running image)
// of an installed disk, after its apply: it tells serve what it runs
// (and an upgrade that failed), takes the node's current configuration
// from serve when it can (the image it should run), and when that names
// another image and the node's upgrade is auto (or o.Force), writes it
// into the other slot (package upgrade). cmdline is the kernel's, with
// the configuration volume's additions.
func Upgrade(ctx context.Context, con io.Writer, cmdline string, node *nodeconf.Node, o UpgradeOptions) UpgradeResult {
	printf := func(format string, args ...any) { fmt.Fprintf(con, "bellbuild: upgrade: "+format+"\n", args...) }
	var res UpgradeResult
	slot, _ := Param(cmdline, layout.SlotParam)
	running, _ := Param(cmdline, layout.ImageParam)
	if slot == "" || node == nil {
		return res
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	// The systemd timer of a window's reboot: set when an upgrade waits
	// for the window, dropped when none waits any more.
	setTimer := func(at time.Time) {
		if o.Timer != nil {
			if err := o.Timer.Set(ctx, at); err != nil {
				printf("error: %v", err)
			}
		}
	}
	serve, _ := Param(cmdline, layout.ServeParam)
	if serve == "" && node.Image != nil {
		serve, _, _ = strings.Cut(node.Image.URL, wire.ImagePrefix)
	}
	if serve == "" {
		return res
	}
	if o.NetUp {
		if v, ok := Param(cmdline, enrolwire.ParamNet); ok {
			if spec, err := ParseNetSpec(v); err == nil {
				if _, err := NetUp(spec, 10*time.Second); err != nil {
					printf("error: the network: %v", err)
				}
			}
		}
	}
	mount := o.Mount
	if mount == nil {
		mount = MountESP
	}
	esp, unmount, err := mount()
	if err != nil {
		printf("error: %v", err)
		return res
	}
	defer func() {
		if err := unmount(); err != nil {
			printf("error: %v", err)
		}
	}()
	client := &http.Client{Timeout: 30 * time.Second}
	// The configuration serve has for the node now (an image baked
	// since the disk's configuration volume was written).
	if fresh, err := freshNode(ctx, client, serve, node.Node); err == nil {
		node = fresh
	}
	// What it runs, and an upgrade that failed, for serve's node list.
	install.Report(ctx, client, serve, wire.Report{Event: wire.EventRunning, Running: running, Slot: slot})
	failed, _ := esp.Failed()
	if len(failed) > 0 && node.Image != nil && failed[len(failed)-1] == node.Image.Root {
		install.Report(ctx, client, serve, wire.Report{Event: wire.EventUpgradeFailed, Image: node.Image.Root, Running: running, Slot: slot})
	}
	if !upgrade.Pending(node, running) {
		setTimer(time.Time{})
		return res
	}
	if !o.Force && !node.Upgrade.Auto() {
		printf("image %s is available, running %s: upgrade: manual (bellbuild apply --upgrade)", shortHash(node.Image.Root), shortHash(running))
		return res
	}
	r, err := upgrade.Run(ctx, upgrade.Options{Node: node, Slot: slot, Running: running, Arch: runtime.GOARCH, ESP: esp,
		SysBlock: "/sys/class/block", Serve: serve, Console: con,
		RebootAt: func() time.Time {
			at, _, _ := rebootAt(node.Upgrade, now())
			return at
		}})
	if err != nil {
		if errors.Is(err, upgrade.ErrRefused) {
			printf("%v", err)
		} else {
			printf("error: %v", err)
		}
		return res
	}
	if !r.Written && !r.Waiting {
		setTimer(time.Time{})
		return res
	}
	p := node.Upgrade.RebootPolicy()
	at, inWindow, err := rebootAt(node.Upgrade, now())
	switch {
	case err != nil:
		printf("error: slot %s waits for a reboot (reboot: %s): %v", r.Slot, p, err)
		res.Pending = "pending"
	case p == nodeconf.RebootNow:
		printf("rebooting into slot %s", r.Slot)
		res.Reboot = true
	case inWindow:
		printf("rebooting into slot %s: %s is in the window (reboot: %s)", r.Slot, at.Format(time.RFC3339), p)
		res.Reboot = true
	case !at.IsZero():
		printf("slot %s waits for the window: rebooting at %s (reboot: %s)", r.Slot, at.Format(time.RFC3339), p)
		res.Pending, res.At = "pending", at
	default:
		printf("slot %s waits for a reboot (reboot: %s)", r.Slot, p)
		res.Pending = "pending"
	}
	if res.Reboot && o.Reboot != nil {
		if err := o.Reboot(ctx); err != nil {
			printf("error: reboot: %v", err)
			res.Reboot, res.Pending, res.At = false, "pending", time.Time{}
		}
	}
	if !res.Reboot {
		setTimer(res.At)
	}
	return res
}

// rebootAt is when a reboot window reboots a machine into an upgrade
// waiting in its other slot, seen at now (in UTC): at now's minute when
// it is in the window (inWindow), else at the window's next minute; zero
// for the other policies (reboot: now reboots at once, manual never).
func rebootAt(u *nodeconf.Upgrade, now time.Time) (at time.Time, inWindow bool, err error) {
	now = now.UTC()
	c, ok := u.Window()
	if !ok {
		return time.Time{}, false, nil
	}
	if c.MatchTime(now) {
		return now.Truncate(time.Minute), true, nil
	}
	at, err = c.Next(now)
	return at, false, err
}

// freshNode fetches the node's configuration from serve (its own file,
// served only to its address) and checks that it is that node's.
func freshNode(ctx context.Context, c *http.Client, serve, name string) (*nodeconf.Node, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, serve+wire.NodeFile, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", req.URL, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	n, _, err := nodeconf.Decode(data)
	if err != nil {
		return nil, err
	}
	if n == nil || n.Node != name {
		return nil, fmt.Errorf("serve's node.json is not node %s's", name)
	}
	return n, nil
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
