package fleet

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// States of a node in the fleet's view, most urgent first (a node is in
// the first that applies).
const (
	// StateNeverSeen: no report yet (and no enrolment waiting).
	StateNeverSeen = "never seen"
	// StateFailing: the last run had errors.
	StateFailing = "failing"
	// StateStale: the last report is older than the view's Stale.
	StateStale = "stale"
	// StatePending: the node's key waits for an operator's approval.
	StatePending = "pending approval"
	// StateReboot: the node waits for a reboot.
	StateReboot = "reboot pending"
	// StateDrifted: the node runs another configuration or image than
	// the site's.
	StateDrifted = "drifted"
	// StateOK: the node applied the site's configuration, without error.
	StateOK = "ok"
)

// States lists the states in the order above.
var States = []string{StateNeverSeen, StateFailing, StateStale, StatePending, StateReboot, StateDrifted, StateOK}

// DefaultStale is how old a last report may be before a node is stale.
const DefaultStale = 24 * time.Hour

// Want is what the site wants of one inventory node.
type Want struct {
	Node    string            `json:"node"`
	Profile string            `json:"profile"`
	Labels  map[string]string `json:"labels,omitempty"`
	// Config is the hash of its configuration (nodeconf.ConfigHash);
	// Image the image it should run ("" when not known).
	Config string `json:"config"`
	Image  string `json:"image,omitempty"`
	// ImageRoot is the SHA-256 (hex) of that image's disk root, which a
	// machine booted from a slot of its installed disk reports instead
	// of Image ("" without a disk).
	ImageRoot string `json:"image_root,omitempty"`
}

// runs says whether img, a report's image, is the one w wants (or not
// known on either side).
func (w Want) runs(img string) bool {
	return w.Image == "" || img == "" || img == w.Image || w.ImageRoot != "" && img == w.ImageRoot
}

// Inventory gives what the site wants of every node (cmd adapts the
// site).
type Inventory interface {
	Wants(ctx context.Context) ([]Want, error)
}

// Enrolments says which nodes wait for an operator (serve's enrolment
// registry).
type Enrolments interface {
	PendingApproval(ctx context.Context, node string) (bool, error)
}

// Row is one node in the fleet's view.
type Row struct {
	Node    string            `json:"node"`
	Profile string            `json:"profile"`
	Labels  map[string]string `json:"labels,omitempty"`
	State   string            `json:"state"`
	// Desired and applied configuration, desired and running image.
	DesiredConfig string `json:"desired_config"`
	AppliedConfig string `json:"applied_config,omitempty"`
	DesiredImage  string `json:"desired_image,omitempty"`
	RunningImage  string `json:"running_image,omitempty"`
	// LastSeen is when serve took the last report (zero: never); Verified
	// whether it came with the node's host certificate.
	LastSeen time.Time `json:"last_seen,omitzero"`
	Verified bool      `json:"verified,omitempty"`
	// Errors counts the last run's errors; Error is them in one line.
	Errors  int    `json:"errors"`
	Error   string `json:"error,omitempty"`
	Changes int    `json:"changes"`
}

// ViewOptions configure View.
type ViewOptions struct {
	// Stale is how old a last report may be (default DefaultStale).
	Stale time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// View is the fleet, one row per inventory node, sorted by name: each
// node's state from its last report, its enrolment and what the site
// wants of it.
func View(ctx context.Context, inv Inventory, rec *Recorder, enr Enrolments, o ViewOptions) ([]Row, error) {
	if o.Stale <= 0 {
		o.Stale = DefaultStale
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	wants, err := inv.Wants(ctx)
	if err != nil {
		return nil, err
	}
	now := o.Now()
	rows := make([]Row, 0, len(wants))
	for _, w := range wants {
		h, err := rec.History(ctx, w.Node)
		if err != nil {
			return nil, err
		}
		pending := false
		if enr != nil {
			if pending, err = enr.PendingApproval(ctx, w.Node); err != nil {
				return nil, err
			}
		}
		rows = append(rows, row(w, h.Last(), pending, now, o.Stale))
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Node < rows[j].Node })
	return rows, nil
}

func row(w Want, last *Stored, pending bool, now time.Time, stale time.Duration) Row {
	r := Row{Node: w.Node, Profile: w.Profile, Labels: w.Labels, DesiredConfig: w.Config, DesiredImage: w.Image}
	if last == nil {
		r.State = StateNeverSeen
		if pending {
			r.State = StatePending
		}
		return r
	}
	r.AppliedConfig, r.RunningImage = last.Config, last.Image
	r.LastSeen, r.Verified = last.Received, last.Verified
	r.Errors, r.Changes = len(last.Errors), len(last.Changes)
	if len(last.Errors) > 0 {
		r.Error = oneLine(last)
	}
	switch {
	case len(last.Errors) > 0:
		r.State = StateFailing
	case now.Sub(last.Received) > stale:
		r.State = StateStale
	case pending:
		r.State = StatePending
	case last.RebootRequired:
		r.State = StateReboot
	case last.Config != w.Config || !w.runs(last.Image):
		r.State = StateDrifted
	default:
		r.State = StateOK
	}
	return r
}

// oneLine is a run's errors in one line: the first, and how many more.
func oneLine(s *Stored) string {
	e := s.Errors[0]
	var b strings.Builder
	if e.Module != "" {
		b.WriteString(e.Module + ": ")
	}
	if e.Item != "" {
		b.WriteString(e.Item + ": ")
	}
	b.WriteString(e.Message)
	if n := len(s.Errors) - 1; n > 0 {
		fmt.Fprintf(&b, " (+%d more)", n)
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// Counts are how many rows are in each state.
func Counts(rows []Row) map[string]int {
	out := make(map[string]int, len(States))
	for _, s := range States {
		out[s] = 0
	}
	for _, r := range rows {
		out[r.State]++
	}
	return out
}

// Status is the fleet as serve sends it (status.json): the rows and the
// count of each state.
type Status struct {
	Counts map[string]int `json:"counts"`
	Nodes  []Row          `json:"nodes"`
}
