// Package install is serve's side of installing machines onto their disks
// and upgrading them (docs/boot-media.md): one record per node in serve's
// state (package state) — installed or not, onto which disk, when, which
// image; what it runs now, an upgrade written and waiting for a reboot,
// the last upgrade that failed — kept from the reports machines POST
// (package wire), and read by the boot scripts (installed: boot from the
// disk) and by `bellbuild node list`; `bellbuild node reinstall` clears
// the install.
package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
	"github.com/bellbuild/bellbuild/pxe/state"
)

// Record is what serve knows of one node's disk.
type Record struct {
	Node string `json:"node"`
	MAC  string `json:"mac,omitempty"`
	// Installed is when the install finished (zero: not installed, the
	// node boots the installer); Disk, Size and Image what it wrote.
	Installed time.Time `json:"installed,omitzero"`
	Disk      string    `json:"disk,omitempty"`
	Size      int64     `json:"size,omitempty"`
	Image     string    `json:"image,omitempty"`
	// Phase is the last install event (install-start, install-failed,
	// install-done) and Error why an install failed.
	Phase string `json:"phase,omitempty"`
	Error string `json:"error,omitempty"`
	// Running and Slot are what the machine last said it runs; Pending
	// an upgrade written to its other slot, waiting for a reboot
	// (Reboot: its policy, RebootAt: when it is due, RFC 3339); Failed
	// the last image systemd-boot gave up on.
	Running  string `json:"running,omitempty"`
	Slot     string `json:"slot,omitempty"`
	Pending  string `json:"pending,omitempty"`
	Reboot   string `json:"reboot,omitempty"`
	RebootAt string `json:"reboot_at,omitempty"`
	Failed   string `json:"failed,omitempty"`
	// Updated is when the record last changed.
	Updated time.Time `json:"updated"`
}

// Store keeps the records in a state.Store, under install/NODE.
type Store struct {
	st  state.Store
	now func() time.Time
}

// New returns the records of st; now is the clock (nil: time.Now).
func New(st state.Store, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{st: st, now: now}
}

const prefix = "install/"

func key(name string) (string, error) {
	k := prefix + name
	if err := state.CheckKey(k); err != nil {
		return "", err
	}
	return k, nil
}

// Get returns name's record (nil: none).
func (s *Store) Get(ctx context.Context, name string) (*Record, error) {
	k, err := key(name)
	if err != nil {
		return nil, err
	}
	data, err := s.st.Get(ctx, k)
	if err != nil || data == nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("install record %s: %w", name, err)
	}
	return &r, nil
}

// Installed reports whether name is installed (it boots from its disk).
func (s *Store) Installed(ctx context.Context, name string) (bool, error) {
	r, err := s.Get(ctx, name)
	return r != nil && !r.Installed.IsZero(), err
}

// Apply records r, from mac, on name's record, durably.
func (s *Store) Apply(ctx context.Context, name, mac string, r wire.Report) (*Record, error) {
	if err := r.Check(); err != nil {
		return nil, err
	}
	k, err := key(name)
	if err != nil {
		return nil, err
	}
	var out Record
	err = s.st.Update(ctx, k, func(old []byte) ([]byte, error) {
		rec := Record{Node: name}
		if old != nil {
			if err := json.Unmarshal(old, &rec); err != nil {
				return nil, fmt.Errorf("install record %s: %w", name, err)
			}
		}
		rec.MAC, rec.Updated = mac, s.now().UTC()
		switch r.Event {
		case wire.EventInstallStart, wire.EventInstallFailed:
			rec.Phase, rec.Error = r.Event, r.Error
		case wire.EventInstallDone:
			rec.Phase, rec.Error = r.Event, ""
			rec.Installed, rec.Disk, rec.Size, rec.Image = rec.Updated, r.Disk, r.Size, r.Image
			rec.Running, rec.Slot, rec.Pending, rec.Reboot, rec.RebootAt, rec.Failed = r.Image, "a", "", "", "", ""
		case wire.EventUpgradeWritten:
			rec.Pending, rec.Reboot, rec.RebootAt = r.Image, r.Reboot, r.RebootAt
		case wire.EventUpgradeFailed:
			rec.Failed, rec.Running, rec.Slot = r.Image, r.Running, r.Slot
			if rec.Pending == r.Image {
				rec.Pending, rec.Reboot, rec.RebootAt = "", "", ""
			}
		case wire.EventRunning:
			rec.Running, rec.Slot = r.Running, r.Slot
			if rec.Pending == r.Running {
				rec.Pending, rec.Reboot, rec.RebootAt = "", "", ""
			}
		}
		out = rec
		return json.Marshal(rec)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Reinstall clears name's install: it boots the installer again. It says
// whether there was one.
func (s *Store) Reinstall(ctx context.Context, name string) (bool, error) {
	k, err := key(name)
	if err != nil {
		return false, err
	}
	was := false
	err = s.st.Update(ctx, k, func(old []byte) ([]byte, error) {
		if old == nil {
			return nil, state.ErrUnchanged
		}
		var rec Record
		if err := json.Unmarshal(old, &rec); err != nil {
			return nil, fmt.Errorf("install record %s: %w", name, err)
		}
		if rec.Installed.IsZero() {
			return nil, state.ErrUnchanged
		}
		was = true
		rec.Installed, rec.Phase, rec.Error, rec.Pending, rec.Reboot, rec.RebootAt = time.Time{}, "reinstall", "", "", "", ""
		rec.Updated = s.now().UTC()
		return json.Marshal(rec)
	})
	if errors.Is(err, state.ErrUnchanged) {
		err = nil
	}
	return was, err
}

// List returns every record, by node name.
func (s *Store) List(ctx context.Context) ([]*Record, error) {
	keys, err := s.st.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []*Record
	for _, k := range keys {
		r, err := s.Get(ctx, strings.TrimPrefix(k, prefix))
		if err != nil {
			return nil, err
		}
		if r != nil {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// Owners maps a client's address to the MAC address it is leased to.
type Owners interface {
	MACFor(ip netip.Addr) (net.HardwareAddr, bool)
}

// Handler serves POST wire.ReportPath: a machine's report, taken as the
// report of the node whose MAC the request's source address is leased to
// (any other source is refused), recorded durably before the answer,
// and logged as a boot phase of that MAC (phase=install-done disk=...).
func Handler(s *Store, owners Owners, b node.Backend, m *metrics.Metrics) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from := netip.Addr{}
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			from = ap.Addr().Unmap()
		}
		mac, ok := net.HardwareAddr(nil), false
		if owners != nil {
			mac, ok = owners.MACFor(from)
		}
		if !ok {
			http.Error(w, "not leased to a known machine", http.StatusForbidden)
			return
		}
		mach, err := b.Lookup(r.Context(), mac)
		if err != nil || mach.Name == "" {
			http.Error(w, "not an inventory node", http.StatusForbidden)
			return
		}
		var rep wire.Report
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&rep); err != nil {
			http.Error(w, "want a JSON report", http.StatusBadRequest)
			return
		}
		if err := rep.Check(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if _, err := s.Apply(r.Context(), mach.Name, mac.String(), rep); err != nil {
			m.Error("install", err, "node", mach.Name)
			http.Error(w, "could not record it", http.StatusInternalServerError)
			return
		}
		args := []any{"node", mach.Name, "from", from.String()}
		for _, kv := range []struct{ k, v string }{{"disk", rep.Disk}, {"image", short(rep.Image)}, {"slot", rep.Slot},
			{"running", short(rep.Running)}, {"reboot", rep.Reboot}, {"reboot_at", rep.RebootAt}, {"error", rep.Error}} {
			if kv.v != "" {
				args = append(args, kv.k, kv.v)
			}
		}
		m.Boot(metrics.Phase(rep.Event), mac, args...)
		w.WriteHeader(http.StatusNoContent)
	})
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
