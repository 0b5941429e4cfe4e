package boot

import (
	"fmt"
	"io"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/firstboot/slots"
	"github.com/bellbuild/bellbuild/images/layout"
)

// MountESP mounts the running disk's ESP (slots.Mount); tests give
// SlotBoot a directory instead.
var MountESP = slots.Mount

// SlotBoot keeps the boot entries of a machine that booted slot (running
// the root image image) from a disk with two root slots, after the init's
// apply:
//
//  1. an upgrade systemd-boot gave up on (the other slot's newer entry,
//     no tries left) is reported on the console, "upgrade to HASH failed,
//     running HASH", its image recorded so that it is not tried again
//     until the configuration names another, and its entry removed;
//  2. when the apply went well (ok), the slot's entry is marked good (its
//     boot counter dropped): systemd-boot boots it from now on;
//  3. when it did not, and the slot is on trial with another slot to fall
//     back to, it returns true: the init reboots, and systemd-boot tries
//     the slot again until its tries are used up, then boots the other.
//
// Problems with the ESP are printed and change nothing else.
func SlotBoot(con io.Writer, slot, image string, ok bool, mount func() (slots.ESP, func() error, error)) (reboot bool) {
	printf := func(format string, args ...any) { fmt.Fprintf(con, "bellbuild: "+format+"\n", args...) }
	esp, unmount, err := mount()
	if err != nil {
		printf("error: slot %s: %v", slot, err)
		return false
	}
	defer func() {
		if err := unmount(); err != nil {
			printf("error: %v", err)
		}
	}()
	ents, err := esp.Entries()
	if err != nil {
		printf("error: slot %s: %v", slot, err)
		return false
	}
	// 1. A failed upgrade.
	if f := slots.FailedUpgrade(ents, slot); f != nil {
		printf("upgrade to %s failed, running %s", f.Image, image)
		if err := esp.AddFailed(f.Image); err != nil {
			printf("error: recording the failed upgrade: %v", err)
		} else if err := esp.Remove(f.Slot); err != nil {
			printf("error: removing the failed slot's entry: %v", err)
		}
	}
	own := slots.Find(ents, slot)
	if own == nil {
		printf("error: slot %s has no boot entry on the ESP", slot)
		return false
	}
	// 2. Good.
	if ok {
		if own.Counting {
			if _, err := esp.MarkGood(slot); err != nil {
				printf("error: marking slot %s good: %v", slot, err)
			} else {
				printf("slot %s marked good (image %s)", slot, firstboot.ShortImage(image))
			}
		}
		return false
	}
	// 3. Failed on trial: try again, or fall back.
	other := slots.Find(ents, layout.OtherSlot(slot))
	if own.Counting && other != nil && !other.Bad() {
		printf("slot %s failed its boot: rebooting (%d more tries, then slot %s)", slot, own.Left, other.Slot)
		return true
	}
	return false
}
