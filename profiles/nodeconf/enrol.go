package nodeconf

import (
	"fmt"
	"regexp"
	"time"
)

// Enrol says how a node enrols with `bellbuild serve` (docs/enrolment.md):
// how its key is approved (serve reads that) and how long its boot waits
// for the approval (the applier reads that). A node without it is
// approved manually and waits DefaultEnrolWait.
type Enrol struct {
	// Policy is EnrolManual (the default), EnrolFirstKey or EnrolPinned.
	Policy string `json:"policy,omitempty" yaml:"policy,omitempty"`
	// Pinned is the fingerprint ("sha256:" and 64 hex digits) the
	// pinned policy approves.
	Pinned string `json:"pinned,omitempty" yaml:"pinned,omitempty"`
	// Wait is how long the boot waits for approval before it carries on
	// without what only an enrolled node gets (a Go duration; "0s": not
	// at all); the day-2 run keeps asking.
	Wait string `json:"wait,omitempty" yaml:"wait,omitempty"`
}

// Enrolment policies.
const (
	EnrolManual   = "manual"
	EnrolFirstKey = "first-key"
	EnrolPinned   = "pinned"
)

// DefaultEnrolWait is how long a boot waits for approval by default.
const DefaultEnrolWait = 10 * time.Minute

// FingerprintRE is a key's fingerprint in its canonical form.
var FingerprintRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// WaitFor is how long the boot waits for approval (DefaultEnrolWait for
// a nil Enrol or an empty Wait).
func (e *Enrol) WaitFor() (time.Duration, error) {
	if e == nil || e.Wait == "" {
		return DefaultEnrolWait, nil
	}
	d, err := time.ParseDuration(e.Wait)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("enrol wait %q: want a duration like 10m, or 0s", e.Wait)
	}
	return d, nil
}

// Check reports what is wrong with e.
func (e *Enrol) Check() error {
	if e == nil {
		return nil
	}
	switch e.Policy {
	case "", EnrolManual, EnrolFirstKey:
		if e.Pinned != "" {
			return fmt.Errorf("enrol: a pinned fingerprint with policy %q", e.Policy)
		}
	case EnrolPinned:
		if !FingerprintRE.MatchString(e.Pinned) {
			return fmt.Errorf("enrol: pinned %q: want sha256: and 64 lower-case hex digits", e.Pinned)
		}
	default:
		return fmt.Errorf("enrol: policy %q: want manual, first-key or pinned", e.Policy)
	}
	_, err := e.WaitFor()
	return err
}
