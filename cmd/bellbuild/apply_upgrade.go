package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"

	"github.com/bellbuild/bellbuild/firstboot/boot"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// dayTwoUpgrade is apply's upgrade of a machine booted from a slot of an
// installed disk (--root /, bellbuild.slot= on its command line): after
// an apply without errors, the image the node's configuration names is
// written into the other slot when its upgrade: is auto, or always with
// --upgrade (force); with reboot: now the machine then reboots. nil
// elsewhere (with --upgrade, it says why nothing can be upgraded).
func dayTwoUpgrade(root string, force bool, console io.Writer) func(context.Context, *nodeconf.Node) string {
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
	return func(ctx context.Context, node *nodeconf.Node) string {
		u := boot.Upgrade(ctx, console, cmdline, node, boot.UpgradeOptions{Force: force})
		if u.Reboot {
			if out, err := exec.CommandContext(ctx, "reboot").CombinedOutput(); err != nil {
				fmt.Fprintf(console, "bellbuild apply: reboot: %v %s\n", err, out)
				return "pending"
			}
		}
		return u.Pending
	}
}
