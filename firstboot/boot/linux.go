package boot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Main is the init: Run, then exec the stage's init as PID 1. It returns
// only when there is nothing to exec; the caller then powers off.
//
// With bellbuild.root= on the command line (a disk or an ISO), the
// initramfs only finds the root: MountMedia switches to an overlay of the
// root image before the applier runs there with the config volume's
// configuration.
func Main(ctx context.Context) error {
	opts := Options{Mount: true, LoadModules: true}
	mountEssentials("/") // Run reports what failed
	cmdline, _ := os.ReadFile("/proc/cmdline")
	if _, ok := Param(string(cmdline), RootParam); ok {
		opts = mediaBoot(strings.TrimSpace(string(cmdline)))
	}
	res := Run(ctx, opts)
	if res.Init == "" {
		return errors.New("no init to hand over to")
	}
	env := os.Environ()
	if os.Getenv("PATH") == "" {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	err := unix.Exec(res.Init, []string{res.Init}, env)
	return fmt.Errorf("exec %s: %w", res.Init, err)
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

// ModuleDeps reads a modules.dep file: module path (relative to its
// directory) → the paths it depends on.
func ModuleDeps(file string) (map[string][]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
	}
	return deps, sc.Err()
}

// ModuleName is the name a module file is known by: its base name without
// .ko (and a compression suffix), with '-' read as '_' as modprobe does.
func ModuleName(p string) string {
	b := filepath.Base(p)
	for _, s := range []string{".xz", ".zst", ".gz"} {
		b = strings.TrimSuffix(b, s)
	}
	return strings.ReplaceAll(strings.TrimSuffix(b, ".ko"), "-", "_")
}

// LoadOrder returns the module files to load for names, dependencies
// first, each once. Names not in deps are reported as errors (they may be
// built into the kernel, which modules.builtin would say; the caller
// decides).
func LoadOrder(deps map[string][]string, names []string) ([]string, []string) {
	byName := map[string]string{}
	for p := range deps {
		byName[ModuleName(p)] = p
	}
	var order, missing []string
	seen := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		// modules.dep lists a module's dependencies so that loading them
		// from last to first works; visiting each one's own dependencies
		// first gives the same guarantee independently of that order.
		ds := deps[p]
		for i := len(ds) - 1; i >= 0; i-- {
			visit(ds[i])
		}
		order = append(order, p)
	}
	for _, n := range names {
		p, ok := byName[ModuleName(n)]
		if !ok {
			missing = append(missing, n)
			continue
		}
		visit(p)
	}
	return order, missing
}

// LoadModules loads names (and their dependencies) from dir
// (/lib/modules/RELEASE) with finit_module. A module that is already
// loaded or built in is not an error.
func LoadModules(dir string, names []string) []error {
	deps, err := ModuleDeps(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return []error{fmt.Errorf("modules: %w", err)}
	}
	builtin := map[string]bool{}
	if data, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(data)) {
			builtin[ModuleName(l)] = true
		}
	}
	order, missing := LoadOrder(deps, names)
	var errs []error
	for _, n := range missing {
		if !builtin[ModuleName(n)] {
			errs = append(errs, fmt.Errorf("module %s: not in %s/modules.dep", n, dir))
		}
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
		return fmt.Errorf("module %s: %w", ModuleName(file), err)
	}
	return nil
}
