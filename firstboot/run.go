package firstboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Source is where `bellbuild apply` finds the configuration to apply.
type Source struct {
	// Path is a file written by nodeconf.Encode (a rendered node or a
	// bundle), or a site: a directory, or a file with none of a rendered
	// document's keys (a Divingbell values file).
	Path string
	// Machine is the machine to choose a node for.
	Machine Machine
	// OpenSite opens a site as an Inventory (cmd wires the site model);
	// nil accepts rendered files only.
	OpenSite func(path string) (Inventory, error)
}

// Load reads the configuration and returns this machine's node: a
// rendered node as it is (it must be Machine.Node's, when that is set);
// from a bundle or a site, the node Select chooses. How it was chosen is
// logged on log (nil: slog's default).
func (s Source) Load(log *slog.Logger) (*nodeconf.Node, error) {
	if log == nil {
		log = slog.Default()
	}
	fi, err := os.Stat(s.Path)
	if err != nil {
		return nil, err
	}
	var inv Inventory
	if fi.IsDir() {
		if inv, err = s.openSite(); err != nil {
			return nil, err
		}
	} else {
		node, bundle, err := ReadConfig(s.Path)
		switch {
		case errors.Is(err, nodeconf.ErrNotRendered):
			if inv, err = s.openSite(); err != nil {
				return nil, err
			}
		case err != nil:
			return nil, err
		case node != nil:
			if s.Machine.Node != "" && node.Node != s.Machine.Node {
				return nil, fmt.Errorf("%s is the configuration of node %q, not %q", s.Path, node.Node, s.Machine.Node)
			}
			return node, nil
		default:
			inv = BundleInventory(bundle)
		}
	}
	n, how, err := Select(inv, s.Machine)
	if err != nil {
		return nil, err
	}
	log.Info("node selected", "node", n.Node, "profile", n.Profile, "by", how)
	return n, nil
}

func (s Source) openSite() (Inventory, error) {
	if s.OpenSite == nil {
		return nil, fmt.Errorf("%s: %w", s.Path, nodeconf.ErrNotRendered)
	}
	return s.OpenSite(s.Path)
}

// RunOptions configure Run.
type RunOptions struct {
	// Source is the configuration.
	Source Source
	// Options are the run's: root, live, plan, log.
	Options Options
	// Stdout gets the plan and the summary line, Stderr every error
	// (nil: discarded).
	Stdout, Stderr io.Writer
	// Enrol, when set, is the node's enrolment with serve
	// (docs/enrolment.md): given the loaded node, it returns the one to
	// apply (the whole configuration, with its credentials' certificates,
	// once the node is enrolled; else the node as it is) and the
	// enrolment's state for the summary line.
	Enrol func(ctx context.Context, node *nodeconf.Node) (*nodeconf.Node, string)
	// Report, when set, is given every run's report but a plan's, once
	// the summary is printed, with the node applied, when the run
	// started and how long it took: cmd sends it to serve (package
	// firstboot/report), within a short timeout.
	Report func(ctx context.Context, node *nodeconf.Node, rep *Report, start time.Time, took time.Duration)
	// Upgrade, when set, runs after an apply without errors (not a
	// plan): the upgrader of an installed disk (firstboot/upgrade),
	// given the node applied. It returns what waits for a reboot.
	Upgrade func(ctx context.Context, node *nodeconf.Node) RebootState
}

// RebootState is what an upgrade left waiting for a reboot.
type RebootState struct {
	// Pending is the summary's reboot= ("" or "pending").
	Pending string
	// At is when the reboot is due: the next minute of the node's
	// reboot window (zero: no time is set, as with reboot: manual).
	At time.Time
}

var (
	// ErrFailed means Run failed and has printed why.
	ErrFailed = errors.New("apply failed")
	// ErrPending means a plan found changes to make.
	ErrPending = errors.New("changes pending")
)

// Run is one `bellbuild apply`:
//
//  1. load the node (Source.Load), and with Enrol, have it enrolled
//     and replaced by its whole configuration;
//  2. apply it (Apply), then with Upgrade, upgrade an installed disk;
//  3. print each error on Stderr, one per line ("bellbuild apply: ..."),
//     then the plan (with Options.Plan) and the summary line on Stdout;
//  4. hand the report to Report (not a plan's).
//
// It returns nil when the root is converged, ErrPending when a plan has
// changes to make, ErrFailed when errors were printed, or the error that
// kept the configuration from loading (printed by nobody yet).
func Run(ctx context.Context, o RunOptions) error {
	stdout, stderr := orDiscard(o.Stdout), orDiscard(o.Stderr)
	// 1. The node's configuration.
	node, err := o.Source.Load(o.Options.Log)
	if err != nil {
		return err
	}
	enrolled := ""
	if o.Enrol != nil && !o.Options.Plan {
		node, enrolled = o.Enrol(ctx, node)
	}
	summary := func(rep *Report) string {
		if enrolled != "" {
			return rep.Summary() + " enrol=" + enrolled
		}
		return rep.Summary()
	}

	// 2. Apply, report.
	start := time.Now()
	rep, err := Apply(ctx, o.Options, node)
	if o.Report != nil && !o.Options.Plan {
		defer func() { o.Report(ctx, node, rep, start, time.Since(start)) }()
	}
	if rep != nil && o.Options.RootDir == "/" {
		rep.Slot, rep.Image = Running("/")
	}
	if err != nil {
		printErrors(stderr, err)
		fmt.Fprintln(stdout, summary(rep))
		return ErrFailed
	}
	if o.Options.Plan {
		fmt.Fprint(stdout, PlanText(rep))
	} else if o.Upgrade != nil && len(rep.Errors) == 0 {
		r := o.Upgrade(ctx, node)
		rep.Reboot = r.Pending
		if !r.At.IsZero() {
			rep.RebootAt = r.At.UTC().Format(time.RFC3339)
		}
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(stderr, "bellbuild apply: %s\n", e)
	}
	fmt.Fprintln(stdout, summary(rep))
	switch {
	case len(rep.Errors) > 0:
		return ErrFailed
	case o.Options.Plan && len(rep.Changes) > 0:
		return ErrPending
	}
	return nil
}

// printErrors lists each of a joined error's errors on its own line.
func printErrors(w io.Writer, err error) {
	var j interface{ Unwrap() []error }
	if errors.As(err, &j) {
		for _, e := range j.Unwrap() {
			printErrors(w, e)
		}
		return
	}
	fmt.Fprintf(w, "bellbuild apply: %v\n", err)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
