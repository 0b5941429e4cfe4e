package boot

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/images/layout"
)

// DefaultRootWait bounds the wait for the root device: generous, as an
// emulated or slow machine takes seconds to probe its disks.
const DefaultRootWait = 90 * time.Second

// ErrNoDevice means no block device matched a source before the timeout.
var ErrNoDevice = errors.New("no such block device")

// Param returns the value of key=VALUE on a kernel command line (the last
// one wins, as in the kernel), and whether it is there.
func Param(cmdline, key string) (string, bool) {
	var v string
	found := false
	for _, f := range strings.Fields(cmdline) {
		if x, ok := strings.CutPrefix(f, key+"="); ok {
			v, found = x, true
		}
	}
	return v, found
}

// Source names a filesystem by a GPT partition name or a filesystem label,
// optionally with a file inside it (an ISO's root.squashfs).
type Source struct {
	// By is "PARTLABEL" or "LABEL".
	By, Name string
	// File, when set, is a path inside the filesystem found.
	File string
}

func (s Source) String() string {
	if s.File != "" {
		return s.By + "=" + s.Name + ":" + s.File
	}
	return s.By + "=" + s.Name
}

// ParseSource reads "PARTLABEL=NAME", "LABEL=NAME" or either with ":/FILE".
func ParseSource(v string) (Source, error) {
	by, rest, ok := strings.Cut(v, "=")
	if !ok || (by != "PARTLABEL" && by != "LABEL") {
		return Source{}, fmt.Errorf("%q: want PARTLABEL=NAME or LABEL=NAME[:/FILE]", v)
	}
	name, file, _ := strings.Cut(rest, ":")
	if name == "" || (file != "" && !strings.HasPrefix(file, "/")) {
		return Source{}, fmt.Errorf("%q: want PARTLABEL=NAME or LABEL=NAME[:/FILE]", v)
	}
	return Source{By: by, Name: name, File: file}, nil
}

// Device is a block device found under /sys/class/block.
type Device struct {
	// Name is the kernel's name (vda2, sr0); Dev its node under /dev.
	Name, Dev string
	// PartName is the GPT partition name; FSType and Label what the
	// filesystem's superblock says ("vfat", "iso9660", "squashfs", "ext2").
	PartName, FSType, Label string
}

// ScanDevices lists the block devices under sysClassBlock, reading each
// one's partition name from sysfs and its filesystem type and label from
// devDir/NAME. Devices that cannot be read are listed without a label.
func ScanDevices(sysClassBlock, devDir string) []Device {
	ents, _ := os.ReadDir(sysClassBlock)
	var out []Device
	for _, e := range ents {
		d := Device{Name: e.Name(), Dev: filepath.Join(devDir, e.Name())}
		if data, err := os.ReadFile(filepath.Join(sysClassBlock, e.Name(), "uevent")); err == nil {
			for _, l := range strings.Split(string(data), "\n") {
				if v, ok := strings.CutPrefix(l, "PARTNAME="); ok {
					d.PartName = v
				}
				if v, ok := strings.CutPrefix(l, "DEVNAME="); ok {
					d.Dev = filepath.Join(devDir, v)
				}
			}
		}
		d.FSType, d.Label = Probe(d.Dev)
		out = append(out, d)
	}
	return out
}

// Match reports whether d is what s names.
func (s Source) Match(d Device) bool {
	if s.By == "PARTLABEL" {
		return d.PartName == s.Name
	}
	return d.Label != "" && d.Label == s.Name
}

// Probe reads the filesystem type and label of a device or image file:
// FAT (label from the boot sector), ISO 9660 (volume ID), squashfs and
// ext2/3/4 (volume name). It returns empty strings when it knows neither.
func Probe(file string) (fstype, label string) {
	f, err := os.Open(file)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	buf := make([]byte, 34*1024)
	n, _ := io.ReadFull(f, buf)
	buf = buf[:n]
	trim := func(b []byte) string { return strings.TrimRight(string(bytes.TrimRight(b, "\x00")), " ") }
	switch {
	case len(buf) >= 4 && string(buf[:4]) == "hsqs":
		return "squashfs", ""
	case len(buf) >= 32768+72 && string(buf[32769:32774]) == "CD001":
		return "iso9660", trim(buf[32768+40 : 32768+72])
	case len(buf) >= 1024+136 && buf[1024+56] == 0x53 && buf[1024+57] == 0xEF:
		return "ext2", trim(buf[1024+120 : 1024+136])
	case len(buf) >= 512 && buf[510] == 0x55 && buf[511] == 0xAA && string(buf[0x52:0x5A]) == "FAT32   ":
		return "vfat", labelOrEmpty(trim(buf[0x47:0x52]))
	case len(buf) >= 512 && buf[510] == 0x55 && buf[511] == 0xAA && strings.HasPrefix(string(buf[0x36:0x3E]), "FAT1"):
		return "vfat", labelOrEmpty(trim(buf[0x2B:0x36]))
	}
	return "", ""
}

func labelOrEmpty(l string) string {
	if l == "NO NAME" {
		return ""
	}
	return l
}

// Find polls the block devices until one matches s or wait has passed
// (then ErrNoDevice, naming what was seen). waiting, when set, is called
// once if the device is not there at once.
func Find(s Source, sysClassBlock, devDir string, wait time.Duration, waiting func()) (Device, error) {
	deadline := time.Now().Add(wait)
	told := false
	for {
		devs := ScanDevices(sysClassBlock, devDir)
		for _, d := range devs {
			if s.Match(d) {
				return d, nil
			}
		}
		if time.Now().After(deadline) {
			var seen []string
			for _, d := range devs {
				desc := d.Name
				if d.PartName != "" || d.FSType != "" {
					desc += fmt.Sprintf("(%s %s %s)", d.PartName, d.FSType, d.Label)
				}
				seen = append(seen, desc)
			}
			if len(seen) == 0 {
				seen = []string{"none"}
			}
			return Device{}, fmt.Errorf("%s: %w after %s (block devices: %s)", s, ErrNoDevice, wait, strings.Join(seen, ", "))
		}
		if !told && waiting != nil {
			waiting()
			told = true
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// MediaRoot is what MountMedia did.
type MediaRoot struct {
	// Config is the configuration file the applier reads, as a path in
	// the new root ("" for the image's own bundle).
	Config string
	// Upper says where the overlay's writable layer is: "tmpfs" or the
	// data partition's device.
	Upper string
}

// Where a media boot mounts things in the initramfs before the switch.
const (
	newRoot  = "/run/bellbuild/root"
	lowerDir = "/run/bellbuild/lower"
	rwDir    = "/run/bellbuild/rw"
	mediaDir = "/run/bellbuild/media"
)

// MountMedia is the first half of a disk or ISO boot, run by the init in
// the initramfs after /proc, /sys and /dev are mounted and the modules
// loaded. The kernel command line (written by the bake, build/media.go,
// with images/layout's names) says where the root and the configuration
// volume are:
//
//	bellbuild.root=PARTLABEL=bellroot                   a squashfs partition
//	bellbuild.root=LABEL=BELLBUILD:/bellbuild/root.squashfs  a squashfs file on a volume
//	bellbuild.config=LABEL=BELLCONF                     the FAT config volume
//	bellbuild.rootwait=SECONDS                          how long to wait for the root (default 90)
//
// It does:
//
//  1. wait for the root source and mount its squashfs read-only (through a
//     read-only loop device when it is a file on an ISO);
//  2. mount a writable layer: the data partition (GPT name belldata) when
//     the disk has one, else a tmpfs;
//  3. mount an overlay of the two as the new root;
//  4. mount the config volume read-only at /run/bellbuild/config in it and
//     pick the configuration file: node.json, else bundle.json, else the
//     image's own bundle;
//  5. move /proc, /sys, /dev and the layers into the new root, free the
//     initramfs and make the new root "/" (as busybox's switch_root does).
//
// After it returns, the process runs in the new root.
func MountMedia(cmdline string, log func(format string, args ...any)) (*MediaRoot, error) {
	rootArg, _ := Param(cmdline, layout.RootParam)
	src, err := ParseSource(rootArg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", layout.RootParam, err)
	}
	wait := DefaultRootWait
	if v, ok := Param(cmdline, layout.RootWaitParam); ok {
		if s, err := strconv.Atoi(v); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
	}
	for _, d := range []string{newRoot, lowerDir, rwDir, mediaDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}

	// 1. The root image.
	dev, err := Find(src, "/sys/class/block", "/dev", wait, func() { log("waiting up to %s for the root %s", wait, src) })
	if err != nil {
		return nil, err
	}
	sq := dev.Dev
	if src.File != "" {
		if err := mount(dev.Dev, mediaDir, dev.FSType, unix.MS_RDONLY, ""); err != nil {
			return nil, err
		}
		if sq, err = loopAttach(filepath.Join(mediaDir, src.File)); err != nil {
			return nil, err
		}
	}
	if err := mount(sq, lowerDir, "squashfs", unix.MS_RDONLY, ""); err != nil {
		return nil, fmt.Errorf("root %s: %w", src, err)
	}

	// 2. The writable layer.
	res := &MediaRoot{Upper: "tmpfs"}
	data := Source{By: "PARTLABEL", Name: layout.DataPartition}
	if d, err := Find(data, "/sys/class/block", "/dev", 0, nil); err == nil {
		if err := mountData(d, log); errors.Is(err, errNoFormatter) {
			// An installed disk always has a data partition; an image
			// baked without persist: true carries no formatter for it.
			log("data partition %s: %v (the image is not persist: true); the writable layer is in memory", d.Dev, err)
		} else if err != nil {
			log("error: %v; the writable layer is in memory", err)
		} else {
			res.Upper = d.Dev
		}
	}
	if res.Upper == "tmpfs" {
		if err := mount("tmpfs", rwDir, "tmpfs", 0, "mode=0755"); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(rwDir, d), 0o755); err != nil {
			return nil, err
		}
	}

	// 3. The overlay.
	opts := "lowerdir=" + lowerDir + ",upperdir=" + rwDir + "/upper,workdir=" + rwDir + "/work"
	if err := mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return nil, err
	}
	// /run is a tmpfs the system's init finds mounted (systemd, and the
	// busybox stage's rcS, leave it then): what is mounted under
	// /run/bellbuild stays visible.
	if err := os.MkdirAll(filepath.Join(newRoot, "run"), 0o755); err != nil {
		return nil, err
	}
	if err := mount("tmpfs", filepath.Join(newRoot, "run"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return nil, err
	}

	// 4. The configuration.
	if arg, ok := Param(cmdline, layout.ConfigParam); ok {
		if err := mountConfig(arg, log); err != nil {
			log("error: config volume: %v; using the image's bundle", err)
		} else {
			for _, f := range []string{layout.ConfigNode, layout.ConfigBundle} {
				if _, err := os.Stat(filepath.Join(newRoot, layout.ConfigMount, f)); err == nil {
					res.Config = "/" + filepath.Join(layout.ConfigMount, f)
					break
				}
			}
		}
	}

	// 5. Switch.
	for _, m := range []struct{ from, to string }{
		{lowerDir, "run/bellbuild/lower"},
		{rwDir, "run/bellbuild/rw"},
		{"/proc", "proc"},
		{"/sys", "sys"},
		{"/dev", "dev"},
	} {
		to := filepath.Join(newRoot, m.to)
		if err := os.MkdirAll(to, 0o755); err != nil {
			return nil, err
		}
		if err := unix.Mount(m.from, to, "", unix.MS_MOVE, ""); err != nil {
			return nil, fmt.Errorf("moving %s into the new root: %w", m.from, err)
		}
	}
	if src.File != "" {
		// The ISO stays mounted (its loop device reads from it).
		to := filepath.Join(newRoot, "run/bellbuild/media")
		if err := os.MkdirAll(to, 0o755); err == nil {
			unix.Mount(mediaDir, to, "", unix.MS_MOVE, "")
		}
	}
	if err := switchRoot(newRoot); err != nil {
		return nil, err
	}
	return res, nil
}

func mount(source, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", source, fstype, target, err)
	}
	return nil
}

// mountConfig mounts the config volume read-only at layout.ConfigMount in the new
// root, waiting a little for it (it is normally on the root's disk).
func mountConfig(arg string, log func(string, ...any)) error {
	src, err := ParseSource(arg)
	if err != nil {
		return err
	}
	d, err := Find(src, "/sys/class/block", "/dev", 5*time.Second, nil)
	if err != nil {
		return err
	}
	dir := filepath.Join(newRoot, layout.ConfigMount)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fstype := d.FSType
	opts := ""
	if fstype == "vfat" {
		// The configuration holds password hashes: root only.
		opts = "umask=0077"
	}
	return mount(d.Dev, dir, fstype, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts)
}

// mountData mounts the data partition at rwDir, formatting it (ext2, with
// busybox mke2fs from the image) when it holds no filesystem yet.
func mountData(d Device, log func(string, ...any)) error {
	if d.FSType == "" {
		if !slices.ContainsFunc(mke2fs, func(p string) bool { _, err := os.Stat(p); return err == nil }) {
			return errNoFormatter
		}
		log("formatting the data partition %s", d.Dev)
		if err := mkfs(d.Dev); err != nil {
			return err
		}
	}
	for _, t := range []string{"ext4", "ext2"} {
		if err := unix.Mount(d.Dev, rwDir, t, unix.MS_NOATIME, ""); err == nil {
			return nil
		}
	}
	return fmt.Errorf("mount %s on %s: not an ext2/ext4 filesystem", d.Dev, rwDir)
}

// errNoFormatter is mountData's error for a data partition with no
// filesystem in an initramfs with no mke2fs.
var errNoFormatter = errors.New("no filesystem, and no mke2fs in the initramfs to make one")

// mke2fs are the places a formatter for the data partition may be in the
// initramfs (the bake adds busybox's when a disk has a data partition).
var mke2fs = []string{"/" + layout.Mke2fs, "/sbin/mke2fs", "/bin/mke2fs"}

// mkfs makes an ext2 filesystem labelled layout.DataPartition on dev.
func mkfs(dev string) error {
	for _, p := range mke2fs {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		out, err := exec.Command(p, "-L", layout.DataPartition, dev).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", p, dev, err, bytes.TrimSpace(out))
		}
		return nil
	}
	return fmt.Errorf("%s: no filesystem, and no mke2fs in the initramfs (%s)", dev, strings.Join(mke2fs, ", "))
}

// loopAttach binds a read-only loop device to file and returns its node.
func loopAttach(file string) (string, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("loop: %w", err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return "", fmt.Errorf("loop: %w", err)
	}
	dev := fmt.Sprintf("/dev/loop%d", n)
	var lf *os.File
	for i := 0; i < 50; i++ { // devtmpfs creates the node right after
		if lf, err = os.OpenFile(dev, os.O_RDONLY, 0); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return "", fmt.Errorf("loop: %w", err)
	}
	defer lf.Close()
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("loop: %w", err)
	}
	defer f.Close()
	cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
	cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY // no autoclear: it would detach when lf closes, before the mount
	copy(cfg.Info.File_name[:], file)
	if err := unix.IoctlLoopConfigure(int(lf.Fd()), &cfg); err != nil {
		return "", fmt.Errorf("loop %s on %s: %w", dev, file, err)
	}
	return dev, nil
}

// switchRoot makes dir the root, as busybox's switch_root does: delete the
// initramfs's files (freeing their memory; mounts are not crossed), move
// dir onto "/", chroot into it.
func switchRoot(dir string) error {
	if err := os.Chdir(dir); err != nil {
		return err
	}
	var rootSt unix.Stat_t
	if err := unix.Stat("/", &rootSt); err != nil {
		return err
	}
	removeSameDev("/", rootSt.Dev)
	if err := unix.Mount(dir, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving %s to /: %w", dir, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return os.Chdir("/")
}

// removeSameDev removes what is under dir on device dev, not crossing into
// other filesystems (the new root and the moved mounts).
func removeSameDev(dir string, dev uint64) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != dev {
			continue
		}
		if e.IsDir() {
			removeSameDev(p, dev)
			unix.Rmdir(p) // fails, as it should, above a mount point
			continue
		}
		os.Remove(p)
	}
}

// mediaBoot loads the initramfs's modules and runs MountMedia, printing
// on the console; it returns the options Run continues with. When the root
// cannot be mounted, it says why and Run continues in the initramfs (which
// has no system to hand over to, so the machine powers off).
func mediaBoot(cmdline string) Options {
	var con io.Writer = os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		defer f.Close()
		con = f
	}
	log := func(format string, args ...any) { fmt.Fprintf(con, "bellbuild: "+format+"\n", args...) }
	names, err := ReadModuleList("/" + layout.Modules)
	if err != nil {
		log("error: %v", err)
	}
	for _, err := range LoadModules("/"+layout.ModulesDir(kernelRelease()), names) {
		log("error: %v", err)
	}
	mr, err := MountMedia(cmdline, log)
	if err != nil {
		log("error: cannot mount the root: %v", err)
		return Options{Mount: true}
	}
	cfg := mr.Config
	if cfg == "" {
		cfg = "/" + layout.Bundle + " (the image's)"
	}
	log("root %s, writable layer %s, configuration %s", rootDesc(cmdline), mr.Upper, cfg)
	if mr.Config != "" {
		if _, err := AddWatch("/", mr.Config); err != nil {
			log("error: rerun on config changes: %v", err)
		}
	}
	return Options{Mount: true, Config: mr.Config}
}

func rootDesc(cmdline string) string {
	v, _ := Param(cmdline, layout.RootParam)
	return v
}

// The systemd units a media boot adds to a systemd stage (see AddWatch).
const (
	ApplyService = "etc/systemd/system/bellbuild-apply.service"
	ApplyPath    = "etc/systemd/system/bellbuild-apply.path"
)

// AddWatch makes the new root's init rerun the applier whenever config (a
// file on the config volume, a path in the root) changes. A busybox root
// gets a respawn line in /etc/inittab running `bellbuild apply --watch`;
// a systemd root gets a path unit, bellbuild-apply.path, watching config's
// directory (or config, a directory), which starts the oneshot
// bellbuild-apply.service; its output goes to the journal and the console.
// The service also runs once per boot after network-online.target: what
// the init could not do before the network and udev (apt packages, say)
// converges then; a rerun with nothing to do changes nothing. The units
// live in the writable layer, not in the image. A root with neither init is
// left alone (false).
func AddWatch(root, config string) (bool, error) {
	inittab := filepath.Join(root, "etc/inittab")
	if data, err := os.ReadFile(inittab); err == nil && bytes.Contains(data, []byte("::")) {
		if bytes.Contains(data, []byte(" apply --config ")) {
			return true, nil
		}
		f, err := os.OpenFile(inittab, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return false, err
		}
		_, err = fmt.Fprintf(f, "# bellbuild: rerun the applier when the config volume changes\n::respawn:/%s apply --config %s --root / --watch\n", layout.Applier, config)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err == nil, err
	}
	if _, err := os.Lstat(filepath.Join(root, "lib/systemd/systemd")); err != nil {
		return false, nil
	}
	watched := filepath.Dir(config)
	if fi, err := os.Stat(filepath.Join(root, config)); err == nil && fi.IsDir() {
		watched = config
	}
	service := applyService(config, "")
	path := "[Unit]\nDescription=bellbuild: rerun the applier when the config volume changes\n\n" +
		"[Path]\nPathChanged=" + watched + "\nUnit=" + filepath.Base(ApplyService) + "\n\n" +
		"[Install]\nWantedBy=multi-user.target\n"
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return false, err
	}
	for _, u := range []struct{ name, content string }{{ApplyService, service}, {ApplyPath, path}} {
		if err := os.WriteFile(filepath.Join(root, u.name), []byte(u.content), 0o644); err != nil {
			return false, err
		}
	}
	for _, u := range []string{ApplyPath, ApplyService} {
		link := filepath.Join(wants, filepath.Base(u))
		if err := os.Symlink("/"+u, link); err != nil && !errors.Is(err, os.ErrExist) {
			return false, err
		}
	}
	return true, nil
}

// applyService is bellbuild-apply.service: one run of the applier on config
// (for node, when set) after network-online.target, its output to the
// journal and the console.
func applyService(config, node string) string {
	args := " apply --config " + config + " --root /"
	if node != "" {
		args += " --node " + node
	}
	return "[Unit]\nDescription=bellbuild: apply the config volume's configuration\n" +
		"Wants=network-online.target\nAfter=network-online.target\n\n" +
		"[Service]\nType=oneshot\nExecStart=/" + layout.Applier + args + "\n" +
		"StandardOutput=journal+console\nStandardError=journal+console\n\n" +
		"[Install]\nWantedBy=multi-user.target\n"
}

// AddRecheck makes a systemd root run the applier once after the boot
// (bellbuild-apply.service, enabled, without the path unit) on config for
// node, unless AddWatch already arranged it: the init calls it when it
// deferred something to the system (a sysctl key left to systemd-sysctl),
// so that the run after the boot, strict again, reports what is still
// missing. A root without systemd is left alone (false).
func AddRecheck(root, config, node string) (bool, error) {
	if _, err := os.Lstat(filepath.Join(root, "lib/systemd/systemd")); err != nil {
		return false, nil
	}
	if _, err := os.Lstat(filepath.Join(root, ApplyService)); err == nil {
		return true, nil
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return false, err
	}
	if err := os.WriteFile(filepath.Join(root, ApplyService), []byte(applyService(config, node)), 0o644); err != nil {
		return false, err
	}
	if err := os.Symlink("/"+ApplyService, filepath.Join(wants, filepath.Base(ApplyService))); err != nil && !errors.Is(err, os.ErrExist) {
		return false, err
	}
	return true, nil
}
