// Package firstboot is the applier: it enforces one node's rendered
// configuration (package nodeconf) on a root filesystem, idempotently, and
// puts back what was there before when an item leaves the configuration.
// The same code runs inside a baked image at first boot and on day 2 from a
// config volume or a Kubernetes DaemonSet; it never reads the site model.
package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"syscall"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Module enforces one part of the configuration. Apply brings the host to
// conf (recording every change through h.Record, touching nothing when
// h.Plan is set) and reverts items the ledger says it owns that conf no
// longer has. It returns every error it met, after doing what it could.
type Module interface {
	Name() string
	Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error
}

// Checker is implemented by a module that can find problems before anything
// changes (a glob that matches nothing, an unknown sysctl key, a profile the
// parser rejects). Apply asks every Checker first and changes nothing when
// one of them reports an error. Check must not modify the host.
type Checker interface {
	Check(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error
}

// modules is the registry, filled by each module's init, run in
// nodeconf.Modules order.
var modules = map[string]Module{}

func register(m Module) { modules[m.Name()] = m }

// Options configure one run.
type Options = host.Options

// Report is what a run did, written to ROOT/var/lib/bellbuild/last-run.json.
type Report struct {
	Node    string        `json:"node"`
	Profile string        `json:"profile"`
	Plan    bool          `json:"plan,omitempty"`
	Changes []host.Change `json:"changes"`
	Errors  []string      `json:"errors"`
	// Pending are items that wait for something the configuration does
	// not carry yet (a credential's private key): neither changes nor
	// errors.
	Pending []string `json:"pending,omitempty"`
	// Deferred are the items a boot run left to the system's own init
	// (see ErrDeferred), each with the reason; never an error.
	Deferred []string `json:"deferred,omitempty"`
	// Slot and Image say what a machine installed on a disk with two
	// root slots runs: the slot it booted (a or b) and its root image's
	// hash (bellbuild.slot= and bellbuild.image= on its command line).
	Slot  string `json:"slot,omitempty"`
	Image string `json:"image,omitempty"`
	// Reboot is "pending" when an upgrade waits for a reboot to run;
	// RebootAt when it is due (RFC 3339, UTC: the next minute of the
	// node's reboot window), when it has a time.
	Reboot   string `json:"reboot,omitempty"`
	RebootAt string `json:"reboot_at,omitempty"`
}

// pendingError is what a module returns for an item that waits (see
// Report.Pending).
type pendingError struct{ item, why string }

func (e *pendingError) Error() string { return e.item + ": pending (" + e.why + ")" }

// ErrDeferred marks (wrapped) an item a boot run cannot do yet and leaves
// to the system that starts after it: a sysctl key that is missing even
// after the modules of modules-load.d were loaded, in a system whose
// systemd-sysctl sets it from /etc/sysctl.d once systemd-modules-load and
// udev have loaded their modules. A module returns it among its errors;
// the report counts it apart (deferred=N), and the run after the boot
// (bellbuild-apply.service) is strict again, so an item still missing
// then is an error.
var ErrDeferred = errors.New("deferred")

// Summary is the one line a run prints:
//
//	bellbuild: node=N profile=P [slot=S image=HASH12] changes=C errors=E [pending=N] [deferred=D] [reboot=pending [reboot_at=TIME]]
//
// slot= and image= on a machine booted from a disk's root slot, the
// others only when there are such items.
func (r *Report) Summary() string {
	s := fmt.Sprintf("bellbuild: node=%s profile=%s", orDash(r.Node), orDash(r.Profile))
	if r.Slot != "" {
		s += fmt.Sprintf(" slot=%s image=%s", r.Slot, ShortImage(r.Image))
	}
	s += fmt.Sprintf(" changes=%d errors=%d", len(r.Changes), len(r.Errors))
	if len(r.Pending) > 0 {
		s += fmt.Sprintf(" pending=%d", len(r.Pending))
	}
	if len(r.Deferred) > 0 {
		s += fmt.Sprintf(" deferred=%d", len(r.Deferred))
	}
	if r.Reboot != "" {
		s += " reboot=" + r.Reboot
	}
	if r.RebootAt != "" {
		s += " reboot_at=" + r.RebootAt
	}
	return s
}

// ShortImage is how an image (a root hash) is printed: its first 12 hex
// digits ("-" for none).
func ShortImage(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return orDash(h)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ErrLocked means another applier holds the root's lock.
var ErrLocked = errors.New("another bellbuild apply is running on this root")

// Apply enforces node on opts.RootDir:
//  1. validate the whole configuration but the items held for a secret
//     value it lacks (hold.go), and let every module check the root
//     (nothing changes, not even the state directory, if any fails);
//  2. take the root's lock, (re)load the ledger, and remove the temporary
//     files a killed run left;
//  3. run every module in order, each reverting what left the config;
//  4. write the ledger's snapshot and the run report (not under Plan).
//
// The returned error is non-nil only when the run could not start (invalid
// configuration, lock, unreadable ledger); per-item errors are in the Report.
func Apply(ctx context.Context, opts Options, node *nodeconf.Node) (*Report, error) {
	// What the run says never holds a secret value (redact.go).
	red := newRedactor(node)
	if opts.Log != nil {
		opts.Log = slog.New(red.handler(opts.Log.Handler()))
	}
	rep, err := apply(ctx, opts, node, red)
	red.report(rep)
	return rep, red.err(err)
}

func apply(ctx context.Context, opts Options, node *nodeconf.Node, red *redactor) (*Report, error) {
	rep := &Report{Node: node.Node, Profile: node.Profile, Plan: opts.Plan, Changes: []host.Change{}, Errors: []string{}}
	// What waits for a secret value this configuration lacks is held:
	// neither applied nor reverted (hold.go).
	conf, hold, err := holdOf(node)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return rep, err
	}
	if errs := conf.Validate(); len(errs) > 0 {
		for _, err := range errs {
			rep.Errors = append(rep.Errors, err.Error())
		}
		return rep, errors.Join(errs...)
	}
	h, err := host.Open(opts)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return rep, err
	}
	defer h.Close()
	h.Hold = hold.holds

	// Every module checks the host before any module changes it (reads
	// only: not even the state directory is created for a bad config).
	var checkErrs []error
	for _, name := range nodeconf.Modules {
		if c, ok := modules[name].(Checker); ok {
			for _, err := range c.Check(ctx, h, &conf) {
				checkErrs = append(checkErrs, fmt.Errorf("%s: %w", name, err))
			}
		}
	}
	if len(checkErrs) > 0 {
		for _, err := range checkErrs {
			rep.Errors = append(rep.Errors, err.Error())
		}
		return rep, errors.Join(checkErrs...)
	}

	unlock, err := lock(h, opts.Plan)
	if err != nil {
		// Counted, so that the summary does not say errors=0.
		rep.Errors = append(rep.Errors, err.Error())
		return rep, err
	}
	defer unlock()
	// What a previous applier wrote before we got the lock counts.
	if err := h.ReloadLedger(); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return rep, err
	}
	// What a killed run left (temporary files) goes first.
	for _, err := range h.CleanTemps() {
		rep.Errors = append(rep.Errors, err.Error())
	}

	for _, name := range nodeconf.Modules {
		m, ok := modules[name]
		if !ok || hold.whole[name] {
			continue
		}
		if err := ctx.Err(); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
			break
		}
		for _, err := range m.Apply(ctx, h, &conf) {
			var p *pendingError
			if errors.As(err, &p) {
				rep.Pending = append(rep.Pending, name+": "+p.item)
				continue
			}
			if errors.Is(err, ErrDeferred) {
				rep.Deferred = append(rep.Deferred, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: %v", name, err))
		}
		h.ForgetDirs()
		if err := h.SaveLedger(); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
	// The directories bellbuild made for items that are gone now.
	if ctx.Err() == nil {
		for _, err := range h.PruneDirs() {
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
	// One snapshot of the whole ledger; the journal is emptied, which
	// tells the next run that this one finished.
	if err := h.Checkpoint(); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}
	rep.Pending = append(rep.Pending, hold.pending...)
	rep.Changes = append(rep.Changes, h.Changes()...)
	red.report(rep)
	if !opts.Plan {
		data, _ := json.MarshalIndent(rep, "", "  ")
		if err := h.WriteFile("var/lib/bellbuild/last-run.json", append(data, '\n'), 0o600, 0, 0); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
	return rep, nil
}

// lock takes an exclusive flock on ROOT/var/lib/bellbuild/lock (a plan only
// needs the directory to exist to read, so it takes the lock shared).
func lock(h *host.Host, shared bool) (func(), error) {
	if shared {
		// A plan creates nothing: with no state directory yet, there is no
		// applier to wait for either.
		f, err := h.Root().OpenFile("var/lib/bellbuild/lock", os.O_RDONLY, 0)
		if errors.Is(err, os.ErrNotExist) {
			return func() {}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("lock: %w", err)
		}
		return flock(f, syscall.LOCK_SH)
	}
	if err := host.MkdirState(h); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	f, err := h.Root().OpenFile("var/lib/bellbuild/lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	return flock(f, syscall.LOCK_EX)
}

func flock(f *os.File, how int) (func(), error) {
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

// PlanText renders a report's changes grouped by module, for --plan.
func PlanText(r *Report) string {
	var b strings.Builder
	by := map[string][]host.Change{}
	for _, c := range r.Changes {
		by[c.Module] = append(by[c.Module], c)
	}
	names := make([]string, 0, len(by))
	for n := range by {
		names = append(names, n)
	}
	sort.SliceStable(names, func(i, j int) bool { return moduleIndex(names[i]) < moduleIndex(names[j]) })
	for _, n := range names {
		fmt.Fprintf(&b, "%s:\n", n)
		for _, c := range by[n] {
			mark := "~"
			switch c.Action {
			case "create", "install", "add", "start":
				mark = "+"
			case "remove", "revert", "purge", "expire", "unload", "stop":
				mark = "-"
			}
			fmt.Fprintf(&b, "  %s %s %s", mark, c.Action, c.Item)
			if c.From != "" || c.To != "" {
				fmt.Fprintf(&b, ": %q -> %q", c.From, c.To)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func moduleIndex(name string) int {
	for i, n := range nodeconf.Modules {
		if n == name {
			return i
		}
	}
	return len(nodeconf.Modules)
}
