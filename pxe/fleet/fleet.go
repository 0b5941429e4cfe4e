// Package fleet is what serve knows of its machines' applier runs: the
// reports each node sends (package pxe/fleet/wire, taken by pxe/enrol's
// endpoint), kept per node in the state store (package pxe/state, so that
// several serve instances sharing an etcd cluster share them), and the
// view `bellbuild status` and the status page make of them.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/pxe/fleet/wire"
	"github.com/bellbuild/bellbuild/pxe/state"
)

// KeyPrefix is where the reports live in the state store: one key per
// node, KeyPrefix+NODE.
const KeyPrefix = "fleet/reports/"

// DefaultKeep is how many reports a node's history keeps.
const DefaultKeep = 20

// Stored is a report as serve recorded it.
type Stored struct {
	wire.Report
	// ID is the report's (wire.Report.ID).
	ID string `json:"id"`
	// Verified says the node sent it with its host certificate; else it
	// came from the address leased to the node's MAC.
	Verified bool `json:"verified"`
	// From is the address it came from, Received when serve took it.
	From     string    `json:"from"`
	Received time.Time `json:"received"`
}

// History is a node's reports, oldest first.
type History struct {
	Reports []Stored `json:"reports"`
}

// Last is the newest report (nil when there is none).
func (h *History) Last() *Stored {
	if len(h.Reports) == 0 {
		return nil
	}
	return &h.Reports[len(h.Reports)-1]
}

// Options configure a Recorder.
type Options struct {
	// Keep is how many reports per node (default DefaultKeep).
	Keep int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Recorder keeps reports in a state store.
type Recorder struct {
	st   state.Store
	keep int
	now  func() time.Time
}

// NewRecorder records into st.
func NewRecorder(st state.Store, o Options) *Recorder {
	if o.Keep <= 0 {
		o.Keep = DefaultKeep
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Recorder{st: st, keep: o.Keep, now: o.Now}
}

// Key is node's key in the state store.
func Key(node string) string { return KeyPrefix + node }

// Record adds node's reports (oldest first, each checked by the caller)
// to its history in one update, in the order they arrive (a node's clock
// may go back: its report is still its newest): a report already there
// (the same ID: a batch sent again, a replay) is ignored; the history
// keeps the newest Options.Keep.
func (r *Recorder) Record(ctx context.Context, node string, reps []wire.Report, verified bool, from string) (wire.Answer, error) {
	ans := wire.Answer{Verified: verified}
	if err := state.CheckKey(Key(node)); err != nil {
		return ans, err
	}
	now := r.now().UTC()
	err := r.st.Update(ctx, Key(node), func(old []byte) ([]byte, error) {
		ans.Accepted, ans.Ignored = 0, 0
		h, err := decode(old)
		if err != nil {
			return nil, fmt.Errorf("state %s: %w", Key(node), err)
		}
		have := map[string]bool{}
		for _, s := range h.Reports {
			have[s.ID] = true
		}
		for _, rep := range reps {
			id := rep.ID()
			if have[id] {
				ans.Ignored++
				continue
			}
			have[id] = true
			h.Reports = append(h.Reports, Stored{Report: rep, ID: id, Verified: verified, From: from, Received: now})
			ans.Accepted++
		}
		if ans.Accepted == 0 {
			return nil, state.ErrUnchanged
		}
		if n := len(h.Reports); n > r.keep {
			h.Reports = h.Reports[n-r.keep:]
		}
		return json.Marshal(h)
	})
	return ans, err
}

// History returns node's history (empty when it never reported).
func (r *Recorder) History(ctx context.Context, node string) (*History, error) {
	if err := state.CheckKey(Key(node)); err != nil {
		return nil, err
	}
	data, err := r.st.Get(ctx, Key(node))
	if err != nil {
		return nil, err
	}
	h, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", Key(node), err)
	}
	return h, nil
}

// Nodes lists the nodes that have reported, sorted.
func (r *Recorder) Nodes(ctx context.Context) ([]string, error) {
	keys, err := r.st.List(ctx, KeyPrefix)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if n, ok := strings.CutPrefix(k, KeyPrefix); ok && !strings.Contains(n, "/") {
			out = append(out, n)
		}
	}
	return out, nil
}

func decode(data []byte) (*History, error) {
	h := &History{}
	if data == nil {
		return h, nil
	}
	if err := json.Unmarshal(data, h); err != nil {
		return nil, errors.Join(errors.New("not a report history"), err)
	}
	return h, nil
}
