package profiles

import (
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// How a node enrols with serve (docs/enrolment.md), at a profile's top
// level (inherited by replacement, like stage) or on an inventory entry
// (enrol only):
//
//	enrol: manual | first-key | {pinned: sha256:HEX}
//	enrol_wait: 10m

// parseEnrol checks an enrol value and returns it (policy, pinned).
func parseEnrol(v *value, path string, errs *ErrorList) (string, string, bool) {
	switch v.kind {
	case kScalar:
		switch v.text {
		case nodeconf.EnrolManual, nodeconf.EnrolFirstKey:
			return v.text, "", true
		case nodeconf.EnrolPinned:
			errs.Add(v.pos, path, "pinned needs the key's fingerprint: enrol: {pinned: sha256:HEX}")
			return "", "", false
		}
	case kMap:
		if len(v.ents) == 1 && v.ents[0].key == nodeconf.EnrolPinned {
			fp, ok := scalarString(v.ents[0].val, path+".pinned", errs)
			if !ok {
				return "", "", false
			}
			canon := strings.ReplaceAll(strings.ToLower(strings.TrimSpace(fp)), ":", "")
			canon = "sha256:" + strings.TrimPrefix(canon, "sha256")
			if !nodeconf.FingerprintRE.MatchString(canon) {
				errs.Add(v.ents[0].val.pos, path+".pinned", "%q is not a key's fingerprint: want sha256: and 64 hex digits (the node prints it on its console; bellbuild node list shows it)", short(fp))
				return "", "", false
			}
			return nodeconf.EnrolPinned, canon, true
		}
	}
	errs.Add(v.pos, path, "want manual, first-key or {pinned: sha256:HEX}, got %s", v.describe())
	return "", "", false
}

func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// parseEnrolWait checks an enrol_wait value.
func parseEnrolWait(v *value, path string, errs *ErrorList) (string, bool) {
	if v.kind == kScalar {
		d, err := time.ParseDuration(v.text)
		if v.text == "0" {
			d, err = 0, nil
		}
		if err == nil && d >= 0 {
			return d.String(), true
		}
	}
	errs.Add(v.pos, path, "want how long a boot waits for approval, like 10m or 0s, got %s", v.describe())
	return "", false
}

// renderEnrol is a rendered node's enrol: the profile chain's, with the
// inventory entry's policy (own, nil when it sets none) over it; nil when
// neither sets anything.
func renderEnrol(r *resolved, own *value) *nodeconf.Enrol {
	pv, wv := r.fields["enrol"], r.fields["enrol_wait"]
	if own != nil {
		pv = own
	}
	if pv == nil && wv == nil {
		return nil
	}
	var discard ErrorList
	e := &nodeconf.Enrol{}
	if pv != nil {
		e.Policy, e.Pinned, _ = parseEnrol(pv, "enrol", &discard)
	}
	if wv != nil {
		e.Wait, _ = parseEnrolWait(wv, "enrol_wait", &discard)
	}
	return e
}
