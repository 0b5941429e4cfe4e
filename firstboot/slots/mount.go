package slots

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/images/layout"
)

// MountPoint is where the init and the upgrader mount the ESP, in the
// booted system.
const MountPoint = "/run/bellbuild/esp"

// LowerDir is where the init mounted the running slot's root image: the
// ESP looked for is on the same disk.
const LowerDir = "/run/bellbuild/lower"

// FindESP returns the device node of the ESP (GPT name esp) on the disk
// that holds the filesystem mounted at near (the running root image),
// else of the only ESP there is. sysBlock is /sys/class/block.
func FindESP(sysBlock, near string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(near, &st); err == nil {
		link := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
		if p, err := filepath.EvalSymlinks(link); err == nil {
			if _, err := os.Stat(filepath.Join(p, "partition")); err == nil {
				if dev, ok := espIn(filepath.Dir(p)); ok {
					return dev, nil
				}
			}
		}
	}
	ents, _ := os.ReadDir(sysBlock)
	var found []string
	for _, e := range ents {
		if name, dev, ok := partInfo(filepath.Join(sysBlock, e.Name())); ok && name == layout.ESPPartition {
			found = append(found, dev)
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("want one partition named %q, found %d (%s)", layout.ESPPartition, len(found), strings.Join(found, ", "))
	}
	return found[0], nil
}

// espIn looks for the ESP among the partitions of the disk whose sysfs
// directory is disk.
func espIn(disk string) (string, bool) {
	ents, _ := os.ReadDir(disk)
	for _, e := range ents {
		if name, dev, ok := partInfo(filepath.Join(disk, e.Name())); ok && name == layout.ESPPartition {
			return dev, true
		}
	}
	return "", false
}

// partInfo reads a block device's GPT name and device node from its
// sysfs uevent.
func partInfo(dir string) (name, dev string, ok bool) {
	data, err := os.ReadFile(filepath.Join(dir, "uevent"))
	if err != nil {
		return "", "", false
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, found := strings.CutPrefix(l, "PARTNAME="); found {
			name = v
		}
		if v, found := strings.CutPrefix(l, "DEVNAME="); found {
			dev = "/dev/" + v
		}
	}
	return name, dev, name != "" && dev != ""
}

// Mount mounts the running disk's ESP read-write at MountPoint; unmount
// syncs it and unmounts it.
func Mount() (esp ESP, unmount func() error, err error) {
	dev, err := FindESP("/sys/class/block", LowerDir)
	if err != nil {
		return ESP{}, nil, fmt.Errorf("the ESP: %w", err)
	}
	if err := os.MkdirAll(MountPoint, 0o700); err != nil {
		return ESP{}, nil, err
	}
	if err := unix.Mount(dev, MountPoint, "vfat", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "umask=0077"); err != nil {
		if !errors.Is(err, unix.EBUSY) {
			return ESP{}, nil, fmt.Errorf("mount %s (vfat) on %s: %w", dev, MountPoint, err)
		}
		// Mounted already (another run holds it): use it as it is.
		return ESP{Dir: MountPoint}, func() error { unix.Sync(); return nil }, nil
	}
	return ESP{Dir: MountPoint}, func() error {
		unix.Sync()
		if err := unix.Unmount(MountPoint, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", MountPoint, err)
		}
		return nil
	}, nil
}
