package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/images/kmod"
	"github.com/bellbuild/bellbuild/images/layout"
)

// Main is the init: Run, then exec the stage's init as PID 1. It returns
// only when there is nothing to exec; the caller then powers off.
//
// With bellbuild.install=1 on the command line, it is the installer
// (InstallMain) instead.
//
// With bellbuild.root= on the command line (a disk or an ISO), the
// initramfs only finds the root: MountMedia switches to an overlay of the
// root image before the applier runs there with the config volume's
// configuration.
func Main(ctx context.Context) error {
	// The kernel starts init without a PATH: the applier's commands
	// (apt-get, exec scripts) and the stage's init need one.
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	opts := Options{Mount: true, LoadModules: true, Enrol: EnrolOptions{Net: true}}
	mountEssentials("/") // Run reports what failed
	cmdline, _ := os.ReadFile("/proc/cmdline")
	if v, _ := Param(string(cmdline), layout.InstallParam); v == "1" {
		return InstallMain(ctx, strings.TrimSpace(string(cmdline)))
	}
	if _, ok := Param(string(cmdline), layout.RootParam); ok {
		opts = mediaBoot(strings.TrimSpace(string(cmdline)))
		opts.Enrol = EnrolOptions{Net: true}
	}
	res := Run(ctx, opts)
	if res.Reboot {
		return ErrReboot
	}
	if res.Init == "" {
		return errors.New("no init to hand over to")
	}
	err := unix.Exec(res.Init, []string{res.Init}, os.Environ())
	return fmt.Errorf("exec %s: %w", res.Init, err)
}

// ErrReboot is Main's way to say the machine must reboot: the slot it
// booted failed on trial (SlotBoot: to try it again or fall back), or an
// upgrade was written with reboot: now. Why was said on the console.
var ErrReboot = errors.New("rebooting")

// Reboot restarts the machine (at once: nothing else runs yet).
func Reboot() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// PowerOff stops the machine (the last resort of an init with nowhere to
// hand over to: a kernel panic would only say "attempted to kill init").
func PowerOff() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// mountEssentials mounts proc, sysfs and devtmpfs under root when they are
// not mounted yet, creating the directories.
func mountEssentials(root string) []error {
	var errs []error
	for _, m := range []struct {
		dir, fstype string
		flags       uintptr
		data        string
	}{
		{"proc", "proc", unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV, ""},
		{"sys", "sysfs", unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV, ""},
		{"dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	} {
		dir := filepath.Join(root, m.dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if mounted(dir) {
			continue
		}
		if err := unix.Mount(m.fstype, dir, m.fstype, m.flags, m.data); err != nil {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, dir, err))
		}
	}
	return errs
}

// mounted reports whether dir is a mount point (its device differs from
// its parent's).
func mounted(dir string) bool {
	var st, pst unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// LoadModules loads names (and their dependencies) from dir
// (/lib/modules/RELEASE) with finit_module, in the order modules.dep gives
// (images/kmod, the reader the bake chose them with). A module that is
// already loaded or built in is not an error.
func LoadModules(dir string, names []string) []error {
	mods, err := kmod.Open(dir)
	if err != nil {
		return []error{fmt.Errorf("modules: %w", err)}
	}
	order, unknown := mods.Plan(names...)
	var errs []error
	for _, n := range unknown {
		errs = append(errs, fmt.Errorf("module %s: not in %s/modules.dep", n, dir))
	}
	for _, p := range order {
		if err := loadModule(filepath.Join(dir, p)); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func loadModule(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("module: %w", err)
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(file, ".xz") || strings.HasSuffix(file, ".zst") || strings.HasSuffix(file, ".gz") {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("module %s: %w", kmod.Name(file), err)
	}
	return nil
}
