// Package report is the applier's report client: after each run (at
// boot, `bellbuild apply`, --watch, the DaemonSet) it sends what the run
// did to `bellbuild serve` (protocol of package pxe/fleet/wire), over the
// node's enrolment endpoint — mutual TLS with the host certificate once
// the node is enrolled, else plain TLS, which serve takes only from the
// node's leased address.
//
// A report that cannot be sent waits in ROOT/var/lib/bellbuild/reports/
// queue.json (at most Keep, the newest kept, written durably before
// anything is sent) and goes with the next. Sending is bounded by a short
// timeout: a machine is never held up by an unreachable serve.
package report

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/fleet/wire"
)

// Dir is where unsent reports wait, relative to the root.
const Dir = "var/lib/bellbuild/reports"

// queueFile is the unsent reports, oldest first.
const queueFile = "queue.json"

// Defaults of Options.
const (
	DefaultTimeout = 10 * time.Second
	DefaultKeep    = wire.MaxBatch
)

// Poster sends a request to serve (an enrolment Client).
type Poster interface {
	Post(ctx context.Context, path string, in, out any) (mutual bool, code int, err error)
}

// Options configure Send.
type Options struct {
	// Root is the node's root (the queue is ROOT/Dir/queue.json).
	Root string
	// Poster reaches serve.
	Poster Poster
	// Timeout bounds the sending (default DefaultTimeout); Keep the
	// reports kept unsent (default DefaultKeep, at most wire.MaxBatch).
	Timeout time.Duration
	Keep    int
	// Log (default slog.Default()).
	Log *slog.Logger
}

// ErrNotSent means the reports stay queued for the next run.
var ErrNotSent = errors.New("report not sent")

// Send queues rep with the reports not sent yet and sends them all:
//
//  1. rep is cut to the protocol's bounds and queued durably (the
//     oldest dropped beyond Keep);
//  2. the queue goes to serve in one request, within Timeout;
//  3. once serve has it (or refused it as malformed: sending it again
//     would not help), the queue is emptied.
//
// It returns serve's answer, or an error wrapping ErrNotSent when the
// reports stay queued.
func Send(ctx context.Context, o Options, rep wire.Report) (wire.Answer, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Keep <= 0 || o.Keep > wire.MaxBatch {
		o.Keep = DefaultKeep
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	dir := filepath.Join(o.Root, Dir)
	// 1. Queued.
	rep.Shorten()
	q, err := readQueue(dir)
	if err != nil {
		o.Log.Warn("report: unsent reports unreadable; starting again", "err", err)
		q = nil
	}
	q = append(q, rep)
	if len(q) > o.Keep {
		q = q[len(q)-o.Keep:]
	}
	if err := writeQueue(dir, q); err != nil {
		o.Log.Warn("report: cannot keep the report for later", "err", err)
	}
	// 2. Sent.
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var ans wire.Answer
	_, code, err := o.Poster.Post(ctx, wire.ReportsPath(rep.Node), wire.Batch{Reports: q}, &ans)
	switch {
	case err == nil:
	case code == http.StatusBadRequest || code == http.StatusRequestEntityTooLarge:
		// Malformed as serve sees it: sending it again would not help.
		o.Log.Warn("report: serve refused the reports; dropping them", "count", len(q), "err", err)
	default:
		return ans, fmt.Errorf("%w (%d kept for the next run): %w", ErrNotSent, len(q), err)
	}
	// 3. Emptied.
	if err := os.Remove(filepath.Join(dir, queueFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return ans, err
	}
	return ans, err
}

// Queued returns the reports waiting in root's queue, oldest first.
func Queued(root string) ([]wire.Report, error) { return readQueue(filepath.Join(root, Dir)) }

func readQueue(dir string) ([]wire.Report, error) {
	data, err := os.ReadFile(filepath.Join(dir, queueFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var q []wire.Report
	if err := json.Unmarshal(data, &q); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, queueFile), err)
	}
	return q, nil
}

// writeQueue replaces the queue: temporary file, fsync, rename, fsync of
// the directory.
func writeQueue(dir string, q []wire.Report) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(q)
	if err != nil {
		return err
	}
	p := filepath.Join(dir, queueFile)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", p, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Run is one run as FromRun needs it.
type Run struct {
	// Node is the configuration applied, Report what Apply made of it.
	Node   *nodeconf.Node
	Report *firstboot.Report
	// Root is the root applied to (for /run/reboot-required).
	Root string
	// Trigger is "boot", "apply", "watch".
	Trigger string
	// Image and Slot are the running image's, when known.
	Image, Slot string
	Start       time.Time
	Duration    time.Duration
}

// FromRun makes the report of a run: its errors split into module, item
// and message ("MODULE: ITEM: MESSAGE", as the applier writes them).
func FromRun(r Run) wire.Report {
	rep := wire.Report{
		Node: r.Report.Node, Profile: r.Report.Profile, Image: r.Image, Slot: r.Slot, Trigger: r.Trigger,
		Changes: []wire.Change{}, Errors: []wire.Error{},
		Deferred: r.Report.Deferred, Pending: r.Report.Pending,
		Start: r.Start.UTC(), DurationMS: r.Duration.Milliseconds(),
	}
	if r.Node != nil {
		if h, err := nodeconf.ConfigHash(r.Node); err == nil {
			rep.Config = h
		}
	}
	for _, c := range r.Report.Changes {
		rep.Changes = append(rep.Changes, wire.Change{Module: c.Module, Action: c.Action, Item: c.Item})
	}
	for _, e := range r.Report.Errors {
		rep.Errors = append(rep.Errors, SplitError(e))
	}
	if _, err := os.Stat(filepath.Join(r.Root, "run/reboot-required")); err == nil {
		rep.RebootRequired = true
	}
	// The image and slot serve booted the machine with, when the run
	// did not say.
	if data, err := os.ReadFile(filepath.Join(r.Root, "proc/cmdline")); err == nil {
		for _, f := range strings.Fields(string(data)) {
			if v, ok := strings.CutPrefix(f, wire.ParamImage+"="); ok && rep.Image == "" {
				rep.Image = v
			}
			if v, ok := strings.CutPrefix(f, wire.ParamSlot+"="); ok && rep.Slot == "" {
				rep.Slot = v
			}
		}
	}
	return rep
}

// SplitError splits an applier's error line: "MODULE: rest" when MODULE
// is one of the applier's modules, and rest "ITEM: MESSAGE" when ITEM is
// one word (a path, a key, a name).
func SplitError(s string) wire.Error {
	e := wire.Error{Message: s}
	mod, rest, ok := strings.Cut(s, ": ")
	if !ok || !slices.Contains(nodeconf.Modules, mod) {
		return e
	}
	e.Module, e.Message = mod, rest
	if item, msg, ok := strings.Cut(rest, ": "); ok && item != "" && !strings.ContainsAny(item, " \t") {
		e.Item, e.Message = item, msg
	}
	return e
}

// Client is a Poster over the node's enrolment endpoint, for a root
// where the boot recorded one (ROOT/var/lib/bellbuild/enrol/enrol.json);
// nil when there is none: the node does not report.
func Client(root string) (Poster, error) {
	dir := filepath.Join(root, enrol.Dir)
	ep, err := enrol.ReadEndpoint(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	c, err := enrol.New(enrol.Options{Endpoint: ep, Dir: dir, Timeout: DefaultTimeout})
	if err != nil {
		return nil, err
	}
	return c, nil
}
