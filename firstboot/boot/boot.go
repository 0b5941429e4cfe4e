// Package boot is the init of a baked image: the first process the kernel
// starts from the initramfs (/init, a link to /bellbuild/bellbuild). It
//
//  1. mounts /proc, /sys and /dev (devtmpfs: the Debian kernel does not
//     mount it by itself);
//  2. loads the kernel modules the image lists in /etc/bellbuild/modules
//     (with their dependencies from modules.dep, in dependency order);
//  3. reads the image's bundle (/etc/bellbuild/bundle.json) and picks this
//     machine's node: bellbuild.node= on the kernel command line, else a
//     MAC address of one of its NICs, else the profile's defaults;
//  4. runs the applier (package firstboot) live on "/" (not at all when
//     the bundle cannot be read or does not verify: nothing is applied
//     from a configuration cut short); a sysctl key the kernel lacks makes
//     it load the modules the stage's modules-load.d names (StageModules)
//     and look again; when the command line names serve's enrolment
//     endpoint (bellbuild.enrol=), it then enrols the node (enrolAtBoot:
//     the node's key, the pending line, the wait for approval) and, once
//     approved, applies the node's whole configuration again;
//  5. prints exactly one summary line on the console,
//     "bellbuild: node=NAME profile=PROFILE changes=N errors=M", with
//     " deferred=D" when it left D items to the stage's init (a sysctl key
//     for systemd-sysctl) and " enrol=STATE" for a node that enrols,
//     preceded by one line per error and per
//     deferred item and by the output of exec scripts;
//  6. hands over to the stage's own init (init= on the command line, else
//     /sbin/init, ...), as the same process (PID 1).
//
// Day 1 and day 2 run the same applier on the same schema: only the way
// the node is chosen differs.
package boot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// inits are tried in order when the command line has no init=.
var inits = []string{"/sbin/init", "/etc/init", "/bin/init", "/lib/systemd/systemd", "/bin/sh"}

// InitParam returns init= from a kernel command line (the last one wins,
// as in the kernel). The kernel does not run it when it boots an
// initramfs; the init hands over to it.
func InitParam(cmdline string) string {
	var v string
	for _, f := range strings.Fields(cmdline) {
		if x, ok := strings.CutPrefix(f, "init="); ok {
			v = x
		}
	}
	return v
}

// Choose picks the node to apply with firstboot.Select, as `bellbuild
// apply` does on day 2: bellbuild.node= on the command line, else a MAC,
// else the bundle's default. A bellbuild.node= that is not in the bundle
// is returned as an error together with the default node, so a mistyped
// name still boots with the profile's defaults and says so.
func Choose(b *nodeconf.Bundle, cmdline string, macs []net.HardwareAddr) (*nodeconf.Node, string, error) {
	n, by, err := firstboot.Select(firstboot.BundleInventory(b), firstboot.Machine{Cmdline: cmdline, MACs: macs})
	if err == nil {
		return n, by, nil
	}
	d := b.Default
	if d.Profile == "" {
		d.Profile = b.Profile
	}
	return &d, "default", err
}

// ReadBundle reads a bundle file written by nodeconf.Encode; one that does
// not verify (cut short, changed) is refused (firstboot.ReadConfig).
func ReadBundle(file string) (*nodeconf.Bundle, error) {
	_, b, err := firstboot.ReadConfig(file)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("%s: a single node, not a bundle", file)
	}
	return b, nil
}

// MACs lists the hardware addresses of the network interfaces under
// sysClassNet (/sys/class/net), in name order, loopback excluded.
func MACs(sysClassNet string) []net.HardwareAddr {
	ents, _ := os.ReadDir(sysClassNet)
	var out []net.HardwareAddr
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(sysClassNet, e.Name(), "address"))
		if err != nil {
			continue
		}
		mac, err := net.ParseMAC(strings.TrimSpace(string(data)))
		if err != nil || len(mac) != 6 || mac.String() == "00:00:00:00:00:00" {
			continue
		}
		out = append(out, mac)
	}
	return out
}

// ReadModuleList reads /etc/bellbuild/modules: one module name per line,
// blank lines and # comments ignored. A missing file is an empty list.
func ReadModuleList(file string) ([]string, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

// modulesLoadDirs are the directories of modules-load.d(5), in order of
// precedence: a file name in an earlier one hides the same name in a later
// one.
var modulesLoadDirs = []string{"etc/modules-load.d", "run/modules-load.d", "usr/local/lib/modules-load.d", "usr/lib/modules-load.d", "lib/modules-load.d"}

// StageModules lists the kernel modules the root's modules-load.d names,
// as systemd-modules-load reads them: the *.conf files of modulesLoadDirs,
// by file name (an earlier directory's file hides a later one's of the
// same name), one module per line, # and ; comments; a link to nothing
// names none. A name is listed once, in the order first seen.
func StageModules(root string) ([]string, error) {
	files := map[string]string{}
	for _, d := range modulesLoadDirs {
		ents, err := os.ReadDir(filepath.Join(root, d))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		for _, e := range ents {
			if _, seen := files[e.Name()]; !seen && strings.HasSuffix(e.Name(), ".conf") {
				files[e.Name()] = filepath.Join(root, d, e.Name())
			}
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []string
	seen := map[string]bool{}
	var errs []error
	for _, n := range names {
		data, err := os.ReadFile(files[n])
		if errors.Is(err, os.ErrNotExist) {
			continue // a dangling link (Debian's modules.conf -> ../modules without kmod): none
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || l[0] == '#' || l[0] == ';' || seen[l] {
				continue
			}
			seen[l] = true
			out = append(out, l)
		}
	}
	return out, errors.Join(errs...)
}

// Options configure Run. The zero value is the real init.
type Options struct {
	// Root is the filesystem root (default "/"); tests point it elsewhere.
	Root string
	// Console receives the summary, errors and script output (default
	// /dev/console, else stdout).
	Console io.Writer
	// Mount mounts /proc, /sys and /dev (the real init does).
	Mount bool
	// LoadModules loads the listed kernel modules (the real init does).
	LoadModules bool
	// Config, when set, is the configuration file to read instead of the
	// image's bundle: a bundle or a single rendered node (a config
	// volume's node.json), a path inside Root.
	Config string
	// Enrol tunes the enrolment (bellbuild.enrol= on the command line).
	Enrol EnrolOptions
}

// Result is what Run did, for the caller to hand over.
type Result struct {
	// Node is the node applied (nil when no configuration could be read:
	// then nothing was applied).
	Node *nodeconf.Node
	// By says how the node was chosen ("cmdline", "mac ...", "default").
	By     string
	Report *firstboot.Report
	// Init is the program to exec next ("" when none was found).
	Init string
	// Reboot says to reboot rather than hand over: the slot booted is on
	// trial, failed, and systemd-boot has another to fall back to.
	Reboot bool
}

// Run does steps 1–5 of the package doc and returns the init to exec.
// Failures to mount, to load a module or to read the bundle are printed and
// do not stop the boot: a machine that boots with its stage's defaults can
// be reached and fixed; one that hangs in its initramfs cannot.
func Run(ctx context.Context, opts Options) *Result {
	root := opts.Root
	if root == "" {
		root = "/"
	}
	con := opts.Console
	if con == nil {
		con = os.Stdout
	}
	printf := func(format string, args ...any) { fmt.Fprintf(con, "bellbuild: "+format+"\n", args...) }

	// 1. The kernel's filesystems.
	if opts.Mount {
		for _, err := range mountEssentials(root) {
			printf("error: %v", err)
		}
		if opts.Console == nil {
			if f, err := os.OpenFile(filepath.Join(root, "dev/console"), os.O_WRONLY, 0); err == nil {
				con = f
			}
		}
	}

	// 2. Modules.
	if opts.LoadModules {
		names, err := ReadModuleList(filepath.Join(root, layout.Modules))
		if err != nil {
			printf("error: %v", err)
		}
		if len(names) > 0 {
			dir := filepath.Join(root, layout.ModulesDir(kernelRelease()))
			for _, err := range LoadModules(dir, names) {
				printf("error: %v", err)
			}
		}
	}

	// 3. Which node.
	res := &Result{}
	var errs []string
	cmdline := readCmdline(root)
	if opts.Config != "" {
		cmdline = WithDiskParams(root, cmdline)
	}
	var node *nodeconf.Node
	var by string
	config := "/" + layout.Bundle // the file the node came from
	if opts.Config != "" {
		n, b, err := firstboot.ReadConfig(filepath.Join(root, opts.Config))
		switch {
		case err != nil:
			errs = append(errs, err.Error())
		case n != nil:
			node, by, config = n, opts.Config, opts.Config
		default:
			if node, by, err = Choose(b, cmdline, MACs(filepath.Join(root, "sys/class/net"))); err != nil {
				errs = append(errs, err.Error())
			}
			config = opts.Config
		}
	}
	if node == nil {
		// A bundle that cannot be read (missing, cut short) gives no node:
		// nothing is applied, rather than an empty configuration that
		// would revert what an earlier boot set (a persistent layer).
		b, err := ReadBundle(filepath.Join(root, layout.Bundle))
		if err != nil {
			errs = append(errs, err.Error())
		} else if node, by, err = Choose(b, cmdline, MACs(filepath.Join(root, "sys/class/net"))); err != nil {
			errs = append(errs, err.Error())
		}
	}
	res.Node, res.By = node, by

	// 4. Apply, live. A sysctl key the kernel lacks may be a module's
	// that the stage's modules-load.d names: systemd-modules-load would
	// load it later, the applier has it loaded now.
	apply := func(node *nodeconf.Node) *firstboot.Report {
		log := slog.New(&consoleHandler{w: con})
		fo := firstboot.Options{RootDir: root, Live: root == "/", Boot: true, Log: log}
		if fo.Live {
			fo.LoadModules = func() []error {
				names, err := StageModules(root)
				var errs []error
				if err != nil {
					errs = append(errs, fmt.Errorf("modules-load.d: %w", err))
				}
				if len(names) > 0 {
					errs = append(errs, LoadModules(filepath.Join(root, layout.ModulesDir(kernelRelease())), names)...)
				}
				return errs
			}
		}
		rep, err := firstboot.Apply(ctx, fo, node)
		if rep == nil {
			rep = &firstboot.Report{Node: node.Node, Profile: node.Profile}
		}
		if err != nil && len(rep.Errors) == 0 {
			rep.Errors = append(rep.Errors, err.Error())
		}
		return rep
	}
	rep := &firstboot.Report{}
	enrolState := ""
	start := time.Now()
	if node != nil {
		rep = apply(node)
		// A node that enrols (docs/enrolment.md) applies its whole
		// configuration once its key is approved; until then the day-2
		// run keeps asking.
		var full *nodeconf.Node
		full, enrolState = enrolAtBoot(ctx, root, cmdline, node, opts.Enrol, con)
		// The day-2 run keeps asking: every minute until the key is
		// approved, then every hour (renewals, the CRL, the
		// configuration).
		every := time.Minute
		if full != nil {
			rep = mergeReports(rep, apply(full))
			res.Node = full
			every = time.Hour
		}
		if enrolState != "" {
			if _, err := AddEnrolPoll(root, config, node.Node, every); err != nil {
				rep.Errors = append(rep.Errors, fmt.Sprintf("the day-2 enrolment: %v", err))
			}
		}
	}
	rep.Errors = append(errs, rep.Errors...)
	if len(rep.Deferred) > 0 {
		// What was deferred is checked by a run after the boot (on a
		// disk with a config volume, AddWatch arranged it already).
		if _, err := AddRecheck(root, config, node.Node); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("the run after the boot, for what was deferred: %v", err))
		}
	}
	res.Report = rep

	res.Init = findInit(root, InitParam(cmdline))

	// A disk's root slot: the summary names it; the real init keeps its
	// boot entry (marked good, or rebooted from to try again).
	if slot, ok := Param(cmdline, layout.SlotParam); ok {
		rep.Slot = slot
		rep.Image, _ = Param(cmdline, layout.ImageParam)
		if opts.Mount {
			ok := len(rep.Errors) == 0 && node != nil && res.Init != ""
			res.Reboot = SlotBoot(con, slot, rep.Image, ok, MountESP)
			// A good boot upgrades (package upgrade), when serve has
			// another image for the node.
			if ok && !res.Reboot {
				u := Upgrade(ctx, con, cmdline, res.Node, UpgradeOptions{NetUp: opts.Enrol.Net})
				res.Reboot, rep.Reboot = u.Reboot, u.Pending
				if !u.At.IsZero() {
					rep.RebootAt = u.At.Format(time.RFC3339)
				}
			}
		}
	}

	// 5. One line, after the errors and what was deferred.
	for _, e := range rep.Errors {
		printf("error: %s", e)
	}
	for _, d := range rep.Deferred {
		printf("deferred: %s", d)
	}
	summary := rep.Summary()
	if enrolState != "" {
		summary += " enrol=" + enrolState
	}
	fmt.Fprintln(con, summary)

	// 6. The report to serve, for a node that enrols (it knows serve's
	// endpoint): sent within a few seconds, else kept for the next run.
	if enrolState != "" && res.Node != nil {
		sendReport(ctx, root, res.Node, rep, start, con)
	}
	if res.Init == "" {
		printf("error: no init to hand over to (tried init=, %s)", strings.Join(inits, ", "))
	}
	return res
}

// WithDiskParams adds to cmdline what an installed disk's configuration
// volume (mounted under root) says its boots need too: the parameters of
// the installer's command line (serve's URL, the enrolment endpoint, the
// NIC's settings; DiskBootParams).
func WithDiskParams(root, cmdline string) string {
	if extra, err := os.ReadFile(filepath.Join(root, layout.ConfigMount, layout.ConfigCmdline)); err == nil {
		cmdline = strings.TrimSpace(cmdline + " " + strings.Join(strings.Fields(string(extra)), " "))
	}
	return cmdline
}

// Cmdline is the kernel command line of the system at root, with
// WithDiskParams' additions.
func Cmdline(root string) string { return WithDiskParams(root, readCmdline(root)) }

func readCmdline(root string) string {
	data, _ := os.ReadFile(filepath.Join(root, "proc/cmdline"))
	return strings.TrimSpace(string(data))
}

// findInit returns the first executable of want and the usual places, as a
// path inside the root.
func findInit(root, want string) string {
	cands := inits
	if want != "" {
		cands = append([]string{want}, inits...)
	}
	for _, c := range cands {
		// Stat follows symlinks relative to the host's /, which is the
		// root itself when the init really runs; good enough for tests.
		if st, err := os.Stat(filepath.Join(root, c)); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return c
		}
		if root == "/" {
			continue
		}
		// In a test root, absolute symlinks point outside it: accept a link
		// whose target exists in the root.
		if t, err := os.Readlink(filepath.Join(root, c)); err == nil {
			if !filepath.IsAbs(t) {
				t = filepath.Join(filepath.Dir(c), t)
			}
			if _, err := os.Stat(filepath.Join(root, t)); err == nil {
				return c
			}
		}
	}
	return ""
}

// consoleHandler prints what a person at the console wants to see during
// the first boot: each line an exec script prints, as "[SCRIPT] LINE", and
// warnings and errors; other progress is dropped.
type consoleHandler struct {
	w     io.Writer
	attrs []slog.Attr
}

func (h *consoleHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *consoleHandler) Handle(_ context.Context, r slog.Record) error {
	attrs := map[string]string{}
	var kv []string
	add := func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		kv = append(kv, a.Key+"="+a.Value.String())
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	switch {
	case r.Message == "exec: output":
		_, err := fmt.Fprintf(h.w, "[%s] %s\n", attrs["script"], attrs["line"])
		return err
	case r.Level >= slog.LevelWarn:
		_, err := fmt.Fprintf(h.w, "bellbuild: %s: %s %s\n", strings.ToLower(r.Level.String()), r.Message, strings.Join(kv, " "))
		return err
	}
	return nil
}

func (h *consoleHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &consoleHandler{w: h.w, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *consoleHandler) WithGroup(string) slog.Handler { return h }
