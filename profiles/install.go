package profiles

import (
	"strconv"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Installing a node onto its disk and upgrading it (docs/boot-media.md), at
// a profile's top level (inherited by replacement, like stage):
//
//	install: {disk: largest, wipe: false, slot_size: 2G}
//	upgrade: auto | manual
//	reboot: now | window CRON | manual
//
// and on an inventory entry, install: {disk: SPEC, wipe: BOOL}, which
// replaces its profile's disk and wipe (slot_size is the bake's, per
// profile).

// installKeys are install's keys; a node may not set slot_size.
var installKeys = []string{"disk", "wipe", "slot_size"}

// parseInstall checks an install value; node is true on an inventory
// entry.
func parseInstall(v *value, path string, node bool, errs *ErrorList) (nodeconf.Install, int64, bool) {
	var in nodeconf.Install
	var slot int64
	if !expectMap(v, path, errs) {
		return in, 0, false
	}
	ok := true
	for _, e := range v.ents {
		fp := joinKey(path, e.key)
		switch e.key {
		case "disk":
			in.Disk, _ = scalarString(e.val, fp, errs)
		case "wipe":
			b, good := scalarBool(e.val)
			if !good {
				errs.Add(e.val.pos, fp, "want true or false, got %s", e.val.describe())
				ok = false
			}
			in.Wipe = b
		case "slot_size":
			if node {
				errs.Add(e.kpos, fp, "slot_size belongs to the profile: its disk.raw is baked once for every node")
				ok = false
				continue
			}
			n, good := parseSize(e.val)
			if !good {
				errs.Add(e.val.pos, fp, "want a size like 2G, 512M or a number of bytes, got %s", e.val.describe())
				ok = false
			}
			slot = n
		default:
			errs.Add(e.kpos, fp, "unknown key %q%s", e.key, suggestList(e.key, installKeys))
			ok = false
		}
	}
	if in.Disk == "" {
		errs.Add(v.pos, path+".disk", "required: a device path, a /dev/disk/by-path/ or by-id/ glob, largest or first-empty")
		return in, slot, false
	}
	if err := in.Check(); err != nil {
		errs.Add(v.get("disk").pos, path+".disk", "%s", strings.TrimPrefix(err.Error(), "install.disk "))
		ok = false
	}
	return in, slot, ok
}

// parseSize reads a size: bytes, or a number with K, M, G or T (powers of
// 1024, optionally followed by iB or B).
func parseSize(v *value) (int64, bool) {
	if v.kind != kScalar {
		return 0, false
	}
	s := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(v.text), "B"), "i")
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'K', 'k':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			s = s[:n-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, false
	}
	return n * mult, true
}

// parseUpgrade checks an upgrade value.
func parseUpgrade(v *value, path string, errs *ErrorList) bool {
	if v.kind == kScalar && (v.text == nodeconf.UpgradeAuto || v.text == nodeconf.UpgradeManual) {
		return true
	}
	errs.Add(v.pos, path, "want auto or manual, got %s", v.describe())
	return false
}

// parseReboot checks a reboot value.
func parseReboot(v *value, path string, errs *ErrorList) bool {
	if v.kind == kScalar {
		u := nodeconf.Upgrade{Reboot: v.text}
		err := u.Check()
		if err == nil {
			return true
		}
		errs.Add(v.pos, path, "%s", strings.TrimPrefix(err.Error(), "reboot "))
		return false
	}
	errs.Add(v.pos, path, "want now, manual or window CRON, got %s", v.describe())
	return false
}

// renderInstall is a rendered node's install, upgrade and reboot: the
// profile chain's, with the inventory entry's install (own, nil when it
// sets none) over them.
func renderInstall(r *resolved, own *value, n *nodeconf.Node) {
	var discard ErrorList
	iv := r.fields["install"]
	if own != nil {
		iv = own
	}
	if iv != nil && iv.kind != kNull {
		in, _, ok := parseInstall(iv, "install", own != nil, &discard)
		if ok {
			n.Install = &in
		}
	}
	uv, rv := r.fields["upgrade"], r.fields["reboot"]
	if (uv == nil || uv.kind == kNull) && (rv == nil || rv.kind == kNull) {
		return
	}
	u := &nodeconf.Upgrade{}
	if uv != nil && uv.kind == kScalar {
		u.Mode = uv.text
	}
	if rv != nil && rv.kind == kScalar {
		u.Reboot = rv.text
	}
	n.Upgrade = u
}

// slotSize is a profile's install.slot_size (0 when it sets none).
func slotSize(r *resolved) int64 {
	v := r.fields["install"]
	if v == nil || v.kind != kMap {
		return 0
	}
	var discard ErrorList
	_, n, _ := parseInstall(v, "install", false, &discard)
	return n
}
