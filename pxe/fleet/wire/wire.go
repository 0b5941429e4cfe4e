// Package wire is the report protocol between the applier (package
// firstboot/report, on every node) and `bellbuild serve` (package
// pxe/enrol's endpoint, recorded by package pxe/fleet): JSON over the
// enrolment endpoint's HTTPS. It imports nothing of bellbuild's, so both
// sides share it without sharing anything else.
//
// A node POSTs a Batch to ReportsPath(NODE): the reports it could not send
// before, oldest first, then the run's own. With the node's host
// certificate (mutual TLS) the reports are verified; without one, serve
// takes them only from the address it leased to one of the node's MACs,
// and marks them unverified.
package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// PathNodes starts a node's paths (as package pxe/enrol/wire's).
const PathNodes = "/v1/nodes/"

// Kernel command line parameters serve gives a machine it boots: the
// image (its manifest's "sha256:HEX") and the slot it boots from; the
// report client reads them back from /proc/cmdline.
const (
	ParamImage = "bellbuild.image"
	ParamSlot  = "bellbuild.slot"
)

// ReportsPath is where node's reports go.
func ReportsPath(node string) string { return PathNodes + node + "/reports" }

// Bounds of what serve takes.
const (
	// MaxBody is the largest request body.
	MaxBody = 1 << 20
	// MaxBatch is the most reports in one request (and what a node
	// keeps unsent).
	MaxBatch = 16
	// MaxItems bounds each list of a report (changes, errors, deferred,
	// pending); a node cuts a longer list and says so in Truncated.
	MaxItems = 200
	// MaxText bounds each string of a report.
	MaxText = 1024
)

// Report is what one applier run did.
type Report struct {
	// Node and Profile are the node's inventory name and its profile.
	Node    string `json:"node"`
	Profile string `json:"profile"`
	// Image is the running image's manifest root hash, Slot the A/B slot
	// it was booted from ("" when not known).
	Image string `json:"image,omitempty"`
	Slot  string `json:"slot,omitempty"`
	// Config is the hash of the configuration applied
	// (nodeconf.ConfigHash).
	Config string `json:"config"`
	// Trigger says what ran the applier: "boot", "apply", "watch".
	Trigger string `json:"trigger,omitempty"`
	// Changes, Errors, Deferred and Pending are the run's (see
	// firstboot.Report); Truncated says a list was cut at MaxItems.
	Changes   []Change `json:"changes"`
	Errors    []Error  `json:"errors"`
	Deferred  []string `json:"deferred,omitempty"`
	Pending   []string `json:"pending,omitempty"`
	Truncated bool     `json:"truncated,omitempty"`
	// RebootRequired says the node waits for a reboot
	// (/run/reboot-required).
	RebootRequired bool `json:"reboot_required,omitempty"`
	// Start is when the run started (the node's clock), DurationMS how
	// long it took.
	Start      time.Time `json:"start"`
	DurationMS int64     `json:"duration_ms"`
}

// Change is one change a run made.
type Change struct {
	Module string `json:"module"`
	Action string `json:"action"`
	Item   string `json:"item"`
}

// Error is one error of a run: the module and the item it is about (each
// "" when the error is the run's own) and what went wrong.
type Error struct {
	Module  string `json:"module,omitempty"`
	Item    string `json:"item,omitempty"`
	Message string `json:"message"`
}

// Batch is one request: reports oldest first.
type Batch struct {
	Reports []Report `json:"reports"`
}

// Answer is serve's answer to a Batch.
type Answer struct {
	// Accepted reports were recorded; Ignored ones were already there
	// (a batch sent again, a replay).
	Accepted int `json:"accepted"`
	Ignored  int `json:"ignored"`
	// Verified says serve knew the node by its host certificate.
	Verified bool `json:"verified"`
}

// ID is the report's identity: the SHA-256 of its JSON (a report sent
// twice is recognised).
func (r *Report) ID() string {
	data, _ := json.Marshal(r)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:16])
}

// ErrInvalid is a report that breaks the protocol's rules.
var ErrInvalid = errors.New("invalid report")

// Check refuses a report of node that is not well formed: another node's,
// no time, lists or strings over the bounds.
func (r *Report) Check(node string) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	if r.Node != node {
		return bad("report of node %q sent for node %q", r.Node, node)
	}
	if r.Start.IsZero() {
		return bad("no start time")
	}
	if r.DurationMS < 0 {
		return bad("negative duration")
	}
	if len(r.Changes) > MaxItems || len(r.Errors) > MaxItems || len(r.Deferred) > MaxItems || len(r.Pending) > MaxItems {
		return bad("more than %d items in a list", MaxItems)
	}
	texts := []string{r.Node, r.Profile, r.Image, r.Slot, r.Config, r.Trigger}
	for _, c := range r.Changes {
		texts = append(texts, c.Module, c.Action, c.Item)
	}
	for _, e := range r.Errors {
		texts = append(texts, e.Module, e.Item, e.Message)
	}
	texts = append(append(texts, r.Deferred...), r.Pending...)
	for _, s := range texts {
		if len(s) > MaxText {
			return bad("a text of %d bytes (at most %d)", len(s), MaxText)
		}
	}
	return nil
}

// Shorten cuts what would break the bounds: long texts and lists (marking
// Truncated). The node calls it before keeping or sending a report.
func (r *Report) Shorten() {
	cut := func(s *string) {
		if len(*s) > MaxText {
			*s = (*s)[:MaxText-3] + "..."
			r.Truncated = true
		}
	}
	if len(r.Changes) > MaxItems {
		r.Changes, r.Truncated = r.Changes[:MaxItems], true
	}
	if len(r.Errors) > MaxItems {
		r.Errors, r.Truncated = r.Errors[:MaxItems], true
	}
	if len(r.Deferred) > MaxItems {
		r.Deferred, r.Truncated = r.Deferred[:MaxItems], true
	}
	if len(r.Pending) > MaxItems {
		r.Pending, r.Truncated = r.Pending[:MaxItems], true
	}
	for _, p := range []*string{&r.Profile, &r.Image, &r.Slot, &r.Config, &r.Trigger} {
		cut(p)
	}
	for i := range r.Changes {
		cut(&r.Changes[i].Module)
		cut(&r.Changes[i].Action)
		cut(&r.Changes[i].Item)
	}
	for i := range r.Errors {
		cut(&r.Errors[i].Module)
		cut(&r.Errors[i].Item)
		cut(&r.Errors[i].Message)
	}
	for i := range r.Deferred {
		cut(&r.Deferred[i])
	}
	for i := range r.Pending {
		cut(&r.Pending[i])
	}
}
