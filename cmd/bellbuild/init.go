package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/boot"
)

// The init command is hidden: it is registered only when bellbuild runs as
// a baked image's /init (a symlink to /bellbuild/bellbuild) or is asked for
// by name, so `bellbuild help` does not list it.
func init() {
	switch {
	case len(os.Args) > 0 && os.Args[0] == "/init":
		os.Args = append([]string{os.Args[0], "init"}, os.Args[1:]...)
	case len(os.Args) > 1 && os.Args[1] == "init":
	default:
		return
	}
	register(&command{
		name:    "init",
		summary: "be a baked image's init (PID 1): apply this node's configuration, then hand over",
		usage:   "",
		help: `Run as /init by the kernel from a baked initramfs: mounts /proc, /sys and
/dev, loads the image's kernel modules, picks this machine's node from
/etc/bellbuild/bundle.json (bellbuild.node= on the kernel command line, else
a MAC address, else the profile's defaults), applies it to the running
system, prints one line

  bellbuild: node=NAME profile=PROFILE changes=N errors=M

on the console (with " deferred=D" when it left D sysctl keys the kernel
lacks, even with the modules of the stage's modules-load.d loaded, to
systemd-sysctl; the run after the boot is strict again), and execs the
stage's init (init= on the command line, else /sbin/init). Not meant to be
run by hand.

When the command line names serve's enrolment endpoint (bellbuild.enrol=,
which serve adds with bellbuild.enrol_ca= and bellbuild.net=), the node
enrols after its first apply: it brings the boot NIC up, makes its key
(ECDSA P-256, /var/lib/bellbuild/enrol), prints

  bellbuild: node=NAME enrolment pending fingerprint=sha256:HEX

and waits for approval as long as its enrol_wait says (default 10m); once
approved it applies its whole configuration with its credentials, and the
summary line ends with " enrol=approved". See docs/enrolment.md.

Booted from a disk or ISO (bellbuild.root=PARTLABEL=bellroot or
bellbuild.root=LABEL=BELLBUILD:/bellbuild/root.squashfs on the command line),
it first mounts the read-only squashfs root under a writable overlay (a
tmpfs, or the belldata partition of a persist: true disk), the config volume
(bellbuild.config=LABEL=BELLCONF) read-only at /run/bellbuild/config, and
switches to that root; the node comes from the volume's node.json, else its
bundle.json, and 'bellbuild apply --watch' is left rerunning on its changes.
Booted from a slot of an installed disk (bellbuild.slot=), a good boot marks
the slot good, and when serve names another image for the node and its
upgrade: is auto, writes it into the other slot (then reboots, with reboot:
now or in a minute its reboot window names; outside the window, the
day-2 applier reboots at the window's next minute). See
docs/boot-media.md.

With bellbuild.install=1 (serve boots a node with install: so until it is
installed) it is the installer instead: it brings the boot NIC up, picks the
disk, copies the node's disk.raw from serve (bellbuild.serve=) onto it,
writes its configuration volume and partition tables, tells serve and
reboots; a refused install powers the machine off.`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			return func(ctx context.Context, _ []string) error {
				if os.Getpid() != 1 {
					return fmt.Errorf("init must run as PID 1 (it mounts filesystems and execs the system's init)")
				}
				err := boot.Main(ctx)
				if errors.Is(err, boot.ErrInstalled) {
					return boot.Reboot()
				}
				if errors.Is(err, boot.ErrReboot) {
					fmt.Fprintf(os.Stderr, "bellbuild: %v\n", err)
					return boot.Reboot()
				}
				if errors.Is(err, boot.ErrInstallAgain) {
					fmt.Fprintf(os.Stderr, "bellbuild: install: %v; rebooting in 30 s\n", err)
					time.Sleep(30 * time.Second)
					return boot.Reboot()
				}
				fmt.Fprintf(os.Stderr, "bellbuild: %v; powering off\n", err)
				return boot.PowerOff()
			}
		},
	})
}
