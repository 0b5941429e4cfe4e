package firstboot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// mountsModule manages systemd .mount units in /etc/systemd/system, named
// from the mount point as systemd requires (/var/lib/data →
// var-lib-data.mount), enabled by a link in local-fs.target.wants written
// directly in the root (so it works offline). When Live, the mount is also
// made in the running system: with systemctl when systemd runs, else with
// mount(2) (the busybox-init images bellbuild bakes); a changed item is
// remounted, a dropped one unmounted before its unit is removed.
//
// Ledger keys: "unit:NAME.mount" (the unit file), "link:PATH" (the
// enabling link) and "live:NAME.mount" with Extra what/where/type/options
// of the mount bellbuild made in the running system.
type mountsModule struct{}

func init() { register(mountsModule{}) }

func (mountsModule) Name() string { return "mounts" }

// escapePath is `systemd-escape --path`: the unit name of a mount point.
func escapePath(p string) string { return nodeconf.EscapePath(p) }

func mountUnitName(m nodeconf.Mount) string { return nodeconf.MountUnit(m.MntTgt) }

func mountUnitText(name string, m nodeconf.Mount) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by bellbuild apply (mounts item %s).\n[Unit]\nDescription=bellbuild mount %s\n", name, m.MntTgt)
	if m.Before != "" {
		fmt.Fprintf(&b, "Before=%s\n", m.Before)
	}
	if m.After != "" {
		fmt.Fprintf(&b, "After=%s\n", m.After)
	}
	fmt.Fprintf(&b, "\n[Mount]\nWhat=%s\nWhere=%s\nType=%s\n", m.Device, m.MntTgt, m.Type)
	if m.Options != "" {
		fmt.Fprintf(&b, "Options=%s\n", m.Options)
	}
	b.WriteString("\n[Install]\nWantedBy=local-fs.target\n")
	return b.String()
}

func (mountsModule) Check(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	seen := map[string]string{}
	for _, name := range sortedKeys(conf.Mounts) {
		m := conf.Mounts[name]
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, a...)))
		}
		if !absClean(m.MntTgt) || m.MntTgt == "/" {
			bad("mnt_tgt %q: want an absolute, clean path other than /", m.MntTgt)
			continue
		}
		if other, ok := seen[m.MntTgt]; ok {
			bad("mnt_tgt %s is also the mount point of %s", m.MntTgt, other)
		}
		seen[m.MntTgt] = name
		for field, v := range map[string]string{"device": m.Device, "type": m.Type} {
			if strings.TrimSpace(v) == "" {
				bad("%s is required", field)
			}
		}
		for field, v := range map[string]string{"device": m.Device, "type": m.Type, "options": m.Options, "before": m.Before, "after": m.After} {
			if !oneLine(v) {
				bad("%s must be one line", field)
			}
		}
		if strings.ContainsAny(m.Options, " \t") {
			bad("options %q: comma separated, no spaces", m.Options)
		}
	}
	return errs
}

func (mm mountsModule) Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	want := map[string]bool{}
	type liveWork struct {
		unit string
		m    nodeconf.Mount
	}
	// The unit files, then their links, each a batch (one ledger save).
	nameOf := map[string]string{}
	var files []host.FileItem
	var links []host.LinkItem
	for _, name := range sortedKeys(conf.Mounts) {
		m := conf.Mounts[name]
		unit := mountUnitName(m)
		file := path.Join(unitDir, unit)
		link := path.Join(unitDir, "local-fs.target.wants", unit)
		want["unit:"+unit], want["link:"+link], want["live:"+unit] = true, true, true
		nameOf["unit:"+unit], nameOf["link:"+link] = name, name
		files = append(files, host.FileItem{Key: "unit:" + unit, Spec: host.FileSpec{Path: file, Data: []byte(mountUnitText(name, m)), Mode: 0o644}})
		links = append(links, host.LinkItem{Key: "link:" + link, Link: link, Target: file})
	}
	failed := map[string]bool{}
	fail := func(err error) {
		name, ok := nameOf[itemKey(err)]
		if !ok {
			// Not one item's (the ledger could not be saved): none of
			// the batch was written.
			for _, n := range nameOf {
				failed[n] = true
			}
			errs = append(errs, err)
			return
		}
		failed[name] = true
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	changedFiles, ferrs := h.EnsureFiles("mounts", files)
	for _, err := range ferrs {
		fail(err)
	}
	var okLinks []host.LinkItem
	for _, l := range links {
		if !failed[nameOf[l.Key]] {
			okLinks = append(okLinks, l)
		}
	}
	changedLinks, lerrs := h.EnsureSymlinks("mounts", okLinks)
	for _, err := range lerrs {
		fail(err)
	}
	unitsChanged := len(changedFiles) > 0 || len(changedLinks) > 0
	var live []liveWork
	for _, name := range sortedKeys(conf.Mounts) {
		if !failed[name] {
			live = append(live, liveWork{mountUnitName(conf.Mounts[name]), conf.Mounts[name]})
		}
	}
	// Drop what left: unmount first, then the link, then the unit.
	for _, k := range stale(h, "mounts", "live:", want) {
		if err := mm.unmount(ctx, h, strings.TrimPrefix(k, "live:")); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range stale(h, "mounts", "link:", want) {
		if _, err := h.ReleaseSymlink("mounts", k, strings.TrimPrefix(k, "link:")); err != nil {
			errs = append(errs, err)
		} else {
			unitsChanged = true
		}
	}
	for _, k := range stale(h, "mounts", "unit:", want) {
		if _, err := h.ReleaseFile("mounts", k, path.Join(unitDir, strings.TrimPrefix(k, "unit:"))); err != nil {
			errs = append(errs, err)
		} else {
			unitsChanged = true
		}
	}
	if unitsChanged && !h.Plan {
		if err := daemonReload(ctx, h); err != nil {
			errs = append(errs, err)
		}
	}
	if h.Live {
		for _, w := range live {
			if err := mm.mount(ctx, h, w.unit, w.m); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", w.unit, err))
			}
		}
	}
	return errs
}

// liveWhere is where a mount point of the root is in the running system.
func liveWhere(h *host.Host, where string) string { return filepath.Join(h.RootDir, where) }

// mount makes the running system have m mounted as configured: mounted when
// it is not, remounted when its options changed, unmounted and mounted again
// when its device or type changed.
func (mountsModule) mount(ctx context.Context, h *host.Host, unit string, m nodeconf.Mount) error {
	where := liveWhere(h, m.MntTgt)
	if h.Boot && strings.HasPrefix(m.Device, "/dev/") {
		if _, err := os.Stat(m.Device); errors.Is(err, fs.ErrNotExist) {
			// At boot the init runs before udev makes /dev/disk/by-*
			// (and loads the drivers): the unit, enabled in
			// local-fs.target, mounts it when the device appears.
			h.Log.Info("mounts: device not present yet at boot; its unit mounts it when it appears", "device", m.Device, "unit", unit)
			return nil
		}
	}
	state := map[string]string{"what": m.Device, "where": where, "type": m.Type, "options": m.Options, "mnt_tgt": m.MntTgt}
	rec, owned := h.Ledger.Get("mounts", "live:"+unit)
	cur, mounted := mountedAt(where)
	if mounted && owned && sameMount(rec.Extra, state) {
		return nil
	}
	action := "mount"
	switch {
	case mounted && owned && rec.Extra["what"] == m.Device && rec.Extra["type"] == m.Type:
		action = "remount"
	case mounted && owned:
		action = "replace"
	case mounted:
		// Someone else's mount is there: do not stack on it.
		return fmt.Errorf("%s is already mounted (%s, %s) and not by bellbuild", where, cur.source, cur.fstype)
	}
	h.Record(host.Change{Module: "mounts", Item: m.MntTgt, Action: action, From: rec.Extra["options"], To: m.Options})
	if h.Plan {
		return nil
	}
	h.Ledger.Put("mounts", "live:"+unit, host.Record{Extra: state})
	if err := h.SaveLedger(); err != nil {
		return err
	}
	if systemdRunning(h) {
		verb := "start"
		if action != "mount" {
			verb = "restart"
		}
		if out, err := h.Command(ctx, nil, "systemctl", verb, unit).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl %s %s: %w: %s", verb, unit, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	flags, data := mountFlags(m.Options)
	switch action {
	case "remount":
		rf := flags | unix.MS_REMOUNT
		if err := unix.Mount(m.Device, where, m.Type, rf, data); err == nil {
			return nil
		}
		fallthrough // not every change can be remounted: mount afresh
	case "replace":
		if err := unix.Unmount(where, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", where, err)
		}
	}
	if err := os.MkdirAll(where, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(m.Device, where, m.Type, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s, %q): %w", m.Device, where, m.Type, m.Options, err)
	}
	if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
		// A bind mount ignores MS_RDONLY until remounted.
		if err := unix.Mount("", where, "", flags|unix.MS_REMOUNT, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", where, err)
		}
	}
	return nil
}

func sameMount(a, b map[string]string) bool {
	for _, k := range []string{"what", "where", "type", "options"} {
		if a[k] != b[k] {
			return false
		}
	}
	return true
}

// unmount undoes a live mount bellbuild made (the ledger's "live:" record).
func (mountsModule) unmount(ctx context.Context, h *host.Host, unit string) error {
	rec, _ := h.Ledger.Get("mounts", "live:"+unit)
	where := rec.Extra["where"]
	if _, mounted := mountedAt(where); h.Live && where != "" && mounted {
		h.Record(host.Change{Module: "mounts", Item: rec.Extra["mnt_tgt"], Action: "unmount"})
		if h.Plan {
			return nil
		}
		if systemdRunning(h) {
			if out, err := h.Command(ctx, nil, "systemctl", "stop", unit).CombinedOutput(); err != nil {
				return fmt.Errorf("systemctl stop %s: %w: %s", unit, err, strings.TrimSpace(string(out)))
			}
		} else if err := unix.Unmount(where, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", where, err)
		}
	}
	if !h.Plan {
		h.Ledger.Delete("mounts", "live:"+unit)
	}
	return nil
}

// mountFlagBits are the mount(8) options that are mount(2) flags; the rest
// is passed to the file system as data.
var mountFlagBits = map[string]struct {
	set   bool
	flags uintptr
}{
	"ro": {true, unix.MS_RDONLY}, "rw": {false, unix.MS_RDONLY},
	"nosuid": {true, unix.MS_NOSUID}, "suid": {false, unix.MS_NOSUID},
	"nodev": {true, unix.MS_NODEV}, "dev": {false, unix.MS_NODEV},
	"noexec": {true, unix.MS_NOEXEC}, "exec": {false, unix.MS_NOEXEC},
	"sync": {true, unix.MS_SYNCHRONOUS}, "async": {false, unix.MS_SYNCHRONOUS},
	"dirsync": {true, unix.MS_DIRSYNC}, "noatime": {true, unix.MS_NOATIME}, "atime": {false, unix.MS_NOATIME},
	"nodiratime": {true, unix.MS_NODIRATIME}, "diratime": {false, unix.MS_NODIRATIME},
	"relatime": {true, unix.MS_RELATIME}, "norelatime": {false, unix.MS_RELATIME},
	"strictatime": {true, unix.MS_STRICTATIME}, "lazytime": {true, unix.MS_LAZYTIME},
	"bind": {true, unix.MS_BIND}, "rbind": {true, unix.MS_BIND | unix.MS_REC},
	"defaults": {true, 0}, "auto": {true, 0}, "noauto": {true, 0}, "nofail": {true, 0},
}

// mountFlags splits mount(8)-style options into mount(2) flags and data.
// systemd-only options (x-systemd.*, _netdev) are dropped.
func mountFlags(opts string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range strings.Split(opts, ",") {
		if o == "" || strings.HasPrefix(o, "x-") || o == "_netdev" {
			continue
		}
		if f, ok := mountFlagBits[o]; ok {
			if f.set {
				flags |= f.flags
			} else {
				flags &^= f.flags
			}
			continue
		}
		data = append(data, o)
	}
	return flags, strings.Join(data, ",")
}

type mountEntry struct{ source, fstype string }

// mountedAt reports whether where is a mount point of this process's mount
// namespace, from /proc/self/mountinfo.
func mountedAt(where string) (mountEntry, bool) {
	if where == "" {
		return mountEntry{}, false
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return mountEntry{}, false
	}
	var found mountEntry
	ok := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
		f := strings.Fields(sc.Text())
		if len(f) < 10 || unescapeMountinfo(f[4]) != where {
			continue
		}
		for i := 6; i < len(f)-2; i++ {
			if f[i] == "-" {
				found, ok = mountEntry{source: unescapeMountinfo(f[i+2]), fstype: f[i+1]}, true
				break
			}
		}
	}
	return found, ok
}

// unescapeMountinfo decodes the octal escapes (\040 for a space) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
