package firstboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// sysctlFile is the one file that persists every sysctl bellbuild sets.
// One file (not one per key) keeps a thousand keys one read on a rerun;
// "60-" lets an administrator's 99-*.conf still win, as in Divingbell.
const sysctlFile = nodeconf.SysctlFile

// sysctlFileKey is the ledger key of sysctlFile; every other key of the
// module is a sysctl name.
const sysctlFileKey = "file:" + sysctlFile

// procSys is where the running kernel's sysctls are (a variable so that the
// VM tests and a DaemonSet with the host's /proc elsewhere can point it).
var procSys = "/proc/sys"

var sysctlKeyRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.\-/@+]*$`)

// sysctlModule persists kernel parameters under /etc/sysctl.d and, when
// Live, sets them in the running kernel and reads them back. A key the
// kernel does not have, or a value it refuses, is an error and is not
// persisted. Removing a key restores the value that was live before
// bellbuild first set it (recorded in the ledger) and drops its line.
//
// At boot (the init runs before udev and systemd-modules-load) a missing
// key may belong to a module not loaded yet (net.bridge.* needs
// br_netfilter): the module has the init load what the root's
// modules-load.d names (host.Options.LoadModules) and looks again. A key
// still missing is deferred (ErrDeferred: persisted for systemd-sysctl,
// which runs after the modules load; the run after the boot is strict)
// when the root has systemd-sysctl, and an error when nothing will set it
// later.
//
// Ledger: key "file:/etc/sysctl.d/60-bellbuild.conf" for the file; one
// record per sysctl name with Original = the live value before bellbuild
// touched it (HadOriginal only when it was read live) and
// Extra["value"] = the value last accepted.
type sysctlModule struct{}

func init() { register(sysctlModule{}) }

func (sysctlModule) Name() string { return "sysctl" }

// sysctlPath maps "net.ipv4.ip_forward" (or "net/ipv4/ip_forward", the form
// for names with dots such as VLAN interfaces) to its /proc/sys path.
func sysctlPath(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return path.Join(procSys, key)
}

// normSysctl compares values as the kernel prints them: fields separated
// by tabs ("32768\t60999") equal the same fields separated by spaces.
func normSysctl(v string) string { return strings.Join(strings.Fields(v), " ") }

func (sysctlModule) Check(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	for _, k := range sortedKeys(conf.Sysctl) {
		v := conf.Sysctl[k]
		p := sysctlPath(k)
		switch {
		case !sysctlKeyRE.MatchString(k) || strings.Contains(k, "..") || !strings.HasPrefix(p, procSys+"/"):
			errs = append(errs, fmt.Errorf("%s: not a valid sysctl name", k))
			continue
		case normSysctl(v) == "" || !oneLine(v):
			errs = append(errs, fmt.Errorf("%s: value %q must be one non-empty line", k, v))
			continue
		}
		if !h.Live {
			continue
		}
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) && h.Boot {
			continue // a module loaded later in the boot brings it (see set)
		}
		if err != nil || !fi.Mode().IsRegular() {
			errs = append(errs, fmt.Errorf("%s: unknown key: the running kernel has no %s", k, p))
		} else if fi.Mode().Perm()&0o200 == 0 {
			errs = append(errs, fmt.Errorf("%s: read-only in the running kernel", k))
		}
	}
	return errs
}

func (m sysctlModule) Apply(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	persist := map[string]string{}
	want := map[string]bool{sysctlFileKey: true}
	// At boot, the modules of modules-load.d are loaded once, for the
	// first key found missing.
	loaded := false
	loadModules := func() bool {
		if loaded || h.LoadModules == nil {
			return false
		}
		loaded = true
		for _, err := range h.LoadModules() {
			h.Log.Warn("sysctl: loading the kernel modules of modules-load.d", "err", err)
		}
		return true
	}
	for _, k := range sortedKeys(conf.Sysctl) {
		want[k] = true
		v, err := m.set(h, k, conf.Sysctl[k], loadModules)
		switch {
		case errors.Is(err, ErrDeferred):
			errs = append(errs, err)
			persist[k] = conf.Sysctl[k] // for systemd-sysctl
		case err != nil:
			errs = append(errs, err)
			if v != "" {
				persist[k] = v // keep the value accepted before
			}
		default:
			persist[k] = conf.Sysctl[k]
		}
	}
	for _, k := range stale(h, "sysctl", "", want) {
		if err := m.revert(h, k); err != nil {
			errs = append(errs, err)
		}
	}
	// A held key (its value waits for a secret) keeps its line.
	for k, v := range heldSysctls(h) {
		if _, ok := persist[k]; !ok {
			persist[k] = v
		}
	}
	if len(persist) == 0 {
		if _, err := h.ReleaseFile("sysctl", sysctlFileKey, sysctlFile); err != nil {
			errs = append(errs, err)
		}
		return errs
	}
	var b strings.Builder
	b.WriteString("# Written by bellbuild apply: kernel parameters of this node.\n# Edits are reported as conflicts; change the site instead.\n")
	for _, k := range sortedKeys(persist) {
		fmt.Fprintf(&b, "%s = %s\n", k, persist[k])
	}
	if _, err := h.EnsureFile("sysctl", sysctlFileKey, host.FileSpec{Path: sysctlFile, Data: []byte(b.String()), Mode: 0o644}); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// set makes key hold val. Offline it only records the key. Live it writes
// /proc/sys, reads the value back, and on a refusal puts the old value back
// and returns the value accepted before (if any) with the error. At boot,
// a missing key makes it call loadModules (which says whether it loaded
// anything) and look again; a key still missing is deferred or an error
// (see sysctlModule).
func (sysctlModule) set(h *host.Host, key, val string, loadModules func() bool) (string, error) {
	rec, owned := h.Ledger.Get("sysctl", key)
	prev := rec.Extra["value"]
	if !h.Live {
		if owned && prev == val {
			return "", nil
		}
		if !h.Plan {
			rec.Extra = map[string]string{"value": val}
			h.Ledger.Put("sysctl", key, rec)
		}
		return "", nil
	}
	p := sysctlPath(key)
	cur, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) && h.Boot && loadModules() {
		cur, err = os.ReadFile(p)
	}
	if errors.Is(err, fs.ErrNotExist) && h.Boot {
		if !systemdSysctl(h) {
			return prev, fmt.Errorf("%s: unknown key: the running kernel has no %s, even with the modules of modules-load.d loaded, and nothing in this system (no systemd-sysctl) sets it later", key, p)
		}
		// systemd-sysctl, which runs after systemd-modules-load and
		// udev have loaded their modules, sets it from /etc/sysctl.d.
		if !h.Plan && (!owned || prev != val) {
			rec.Extra = map[string]string{"value": val}
			h.Ledger.Put("sysctl", key, rec)
		}
		return "", fmt.Errorf("%s: not in the running kernel (no %s), even with the modules of modules-load.d loaded: %w to systemd-sysctl (%s); the run after the boot fails if it is still missing", key, p, ErrDeferred, sysctlFile)
	}
	if err != nil {
		return prev, fmt.Errorf("%s: unknown key: %w", key, err)
	}
	curV := strings.TrimSpace(string(cur))
	if normSysctl(curV) == normSysctl(val) {
		if !owned || prev != val {
			if !h.Plan {
				if !owned {
					rec.HadOriginal, rec.Original = true, curV
				}
				rec.Extra = map[string]string{"value": val}
				h.Ledger.Put("sysctl", key, rec)
			}
		}
		return "", nil
	}
	change := host.Change{Module: "sysctl", Item: key, Action: "set", From: curV, To: val}
	if h.Plan {
		h.Record(change)
		return "", nil
	}
	if !owned {
		// Write-ahead: the original is on disk before the kernel changes.
		rec.HadOriginal, rec.Original = true, curV
		h.Ledger.Put("sysctl", key, rec)
		if err := h.SaveLedger(); err != nil {
			return prev, err
		}
	}
	werr := os.WriteFile(p, []byte(val+"\n"), 0)
	got, rerr := os.ReadFile(p)
	if werr == nil && rerr == nil && normSysctl(string(got)) == normSysctl(val) {
		h.Record(change) // only what took is a change
		rec.Extra = map[string]string{"value": val}
		h.Ledger.Put("sysctl", key, rec)
		return "", nil
	}
	// Refused (EINVAL) or silently changed (clamped): undo, don't persist.
	os.WriteFile(p, []byte(curV+"\n"), 0)
	if !owned {
		h.Ledger.Delete("sysctl", key)
	}
	if werr != nil {
		return prev, fmt.Errorf("%s: the kernel refused %q: %w", key, val, werr)
	}
	if rerr != nil {
		return prev, fmt.Errorf("%s: reading back: %w", key, rerr)
	}
	return prev, fmt.Errorf("%s: the kernel turned %q into %q; not persisted", key, val, strings.TrimSpace(string(got)))
}

// systemdSysctlPaths are where a root may have systemd-sysctl.
var systemdSysctlPaths = []string{"/usr/lib/systemd/systemd-sysctl", "/lib/systemd/systemd-sysctl"}

// systemdSysctl reports whether the root has systemd-sysctl, which sets
// the keys of /etc/sysctl.d once the system's modules are loaded.
func systemdSysctl(h *host.Host) bool {
	for _, p := range systemdSysctlPaths {
		if fi, err := h.Stat(p); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}

// revert drops key from bellbuild's care, restoring its original live value.
func (sysctlModule) revert(h *host.Host, key string) error {
	rec, _ := h.Ledger.Get("sysctl", key)
	if h.Live && rec.HadOriginal {
		p := sysctlPath(key)
		cur, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", key, err)
		}
		if err == nil && normSysctl(string(cur)) != normSysctl(rec.Original) {
			h.Record(host.Change{Module: "sysctl", Item: key, Action: "revert", From: strings.TrimSpace(string(cur)), To: rec.Original})
			if !h.Plan {
				if err := os.WriteFile(p, []byte(rec.Original+"\n"), 0); err != nil {
					return fmt.Errorf("%s: restoring %q: %w", key, rec.Original, err)
				}
			}
		}
	} else {
		h.Record(host.Change{Module: "sysctl", Item: key, Action: "remove"})
	}
	if !h.Plan {
		h.Ledger.Delete("sysctl", key)
	}
	return nil
}

// heldSysctls returns the lines of sysctlFile whose keys this run holds
// (see hold.go), as the file has them.
func heldSysctls(h *host.Host) map[string]string {
	out := map[string]string{}
	if h.Hold == nil {
		return out
	}
	data, err := h.ReadFile(sysctlFile)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, " = ")
		if ok && !strings.HasPrefix(k, "#") && h.Holds("sysctl", k) {
			out[k] = v
		}
	}
	return out
}
