package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/firstboot/boot"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// dayTwoUpgrade is apply's upgrade of a machine booted from a slot of an
// installed disk (--root /, bellbuild.slot= on its command line): after
// an apply without errors, the image the node's configuration names is
// written into the other slot when its upgrade: is auto, or always with
// --upgrade (force); with reboot: now, or a window whose minute it is,
// the machine then reboots (rebootSystem). A window's later minute is
// waited for by --watch (firstboot.Watch runs again then), else left to
// a systemd timer where systemd runs the machine, else to the next run
// in the window. nil elsewhere (with --upgrade, it says why nothing can
// be upgraded).
func dayTwoUpgrade(root string, force, watch bool, console io.Writer) func(context.Context, *nodeconf.Node) firstboot.RebootState {
	cmdline := ""
	if root == "/" {
		cmdline = boot.Cmdline(root)
	}
	if _, ok := boot.Param(cmdline, layout.SlotParam); !ok {
		if force {
			fmt.Fprintf(console, "bellbuild apply: --upgrade: this system did not boot from a slot of an installed disk (no %s= on its command line): nothing to upgrade\n", layout.SlotParam)
		}
		return nil
	}
	o := boot.UpgradeOptions{Force: force, Reboot: rebootSystem}
	if !watch {
		o.Timer = &boot.RebootTimer{Root: root, Systemctl: systemctl}
	}
	return func(ctx context.Context, node *nodeconf.Node) firstboot.RebootState {
		u := boot.Upgrade(ctx, console, cmdline, node, o)
		return firstboot.RebootState{Pending: u.Pending, At: u.At}
	}
}

// rebootSystem is apply's reboot into the slot written: reboot(8), which
// asks the system's init (systemd, busybox) to reboot cleanly.
func rebootSystem(ctx context.Context) error {
	if out, err := exec.CommandContext(ctx, "reboot").CombinedOutput(); err != nil {
		return fmt.Errorf("%w %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// systemctl runs systemctl(1) with args.
func systemctl(ctx context.Context, args ...string) error {
	if out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl %s: %w %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
