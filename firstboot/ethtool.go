package firstboot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// ethtoolModule sets NIC offload features (ethtool -K). Its configuration
// maps a device to feature → "on"/"off". It writes, per device, a oneshot
// unit bellbuild-ethtool-DEV.service (enabled for multi-user.target) that
// re-applies the settings at boot, and when Live it first checks that the
// device and each feature exist (`ethtool -k`) and that a feature the
// driver marks [fixed] is not asked to change, then sets the features and
// reads them back. Two names for one feature ("tso" and
// "tcp-segmentation-offload"), or a parent and one of its children, set to
// different values are a conflict. Removing a feature puts back the value
// it had before bellbuild first changed it.
//
// Ledger keys: "unit:DEV" and "link:PATH" for the boot unit and its link;
// "feat:DEV/FEATURE" (long name) with Original = the value before
// bellbuild changed it, recorded only when Live.
type ethtoolModule struct{}

func init() { register(ethtoolModule{}) }

func (ethtoolModule) Name() string { return "ethtool" }

// ethtoolAliases maps `ethtool -K`'s short names to the long names that
// `ethtool -k` prints.
var ethtoolAliases = map[string]string{
	"rx": "rx-checksumming", "tx": "tx-checksumming", "sg": "scatter-gather",
	"tso": "tcp-segmentation-offload", "ufo": "udp-fragmentation-offload",
	"gso": "generic-segmentation-offload", "gro": "generic-receive-offload",
	"lro": "large-receive-offload", "rxvlan": "rx-vlan-offload", "txvlan": "tx-vlan-offload",
	"ntuple": "ntuple-filters", "rxhash": "receive-hashing",
}

func longFeature(f string) string {
	if l, ok := ethtoolAliases[f]; ok {
		return l
	}
	return f
}

var (
	netdevRE  = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,15}$`)
	featureRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
)

func ethtoolUnitName(dev string) string { return nodeconf.EthtoolUnit(dev) }

// feature is one line of `ethtool -k DEV`.
type feature struct {
	on, fixed bool
	parent    string // "" for a top-level feature
}

// parseFeatures reads `ethtool -k` output: "name: on|off [fixed]", children
// indented under their parent.
func parseFeatures(out string) map[string]feature {
	feats := map[string]feature{}
	parent := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Features for ") {
			continue
		}
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		ft := feature{on: f[0] == "on", fixed: strings.Contains(rest, "[fixed]")}
		if strings.HasPrefix(line, "\t") || strings.HasPrefix(line, " ") {
			ft.parent = parent
		} else {
			parent = name
		}
		feats[name] = ft
	}
	return feats
}

// errNoDevice means a network device does not exist (yet).
var errNoDevice = errors.New("no such network device")

func readFeatures(ctx context.Context, dev string) (map[string]feature, error) {
	if _, err := os.Stat(path.Join("/sys/class/net", dev)); err != nil {
		return nil, fmt.Errorf("device %s: %w", dev, errNoDevice)
	}
	out, err := liveCommand(ctx, "ethtool", "-k", dev)
	if err != nil {
		return nil, err
	}
	return parseFeatures(string(out)), nil
}

func (ethtoolModule) Check(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	for _, dev := range sortedKeys(conf.Ethtool) {
		nerrs := len(errs)
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", dev, fmt.Sprintf(format, a...)))
		}
		if !netdevRE.MatchString(dev) {
			bad("not a network device name")
			continue
		}
		settings := conf.Ethtool[dev]
		byLong := map[string]string{}
		for _, f := range sortedKeys(settings) {
			v := settings[f]
			if !featureRE.MatchString(f) {
				bad("%q: not a feature name", f)
				continue
			}
			if v != "on" && v != "off" {
				bad("%s: value %q: want on or off", f, v)
				continue
			}
			l := longFeature(f)
			if other, ok := byLong[l]; ok && settings[other] != v {
				bad("%s=%s conflicts with %s=%s (the same feature)", f, v, other, settings[other])
			}
			byLong[l] = f
		}
		if !h.Live || len(errs) > nerrs {
			continue
		}
		feats, err := readFeatures(ctx, dev)
		if errors.Is(err, errNoDevice) && h.Boot {
			continue // named by udev later in the boot: its unit applies it
		}
		if err != nil {
			bad("%v", err)
			continue
		}
		for _, l := range sortedKeys(byLong) {
			f := byLong[l]
			ft, ok := feats[l]
			switch {
			case !ok:
				bad("%s: the device has no such feature", f)
			case ft.fixed && ft.on != (settings[f] == "on"):
				bad("%s is fixed %s by the driver and cannot be set %s", f, onOff(ft.on), settings[f])
			case ft.parent != "":
				if pf, ok := byLong[ft.parent]; ok && settings[pf] != settings[f] {
					bad("%s=%s conflicts with its parent %s=%s", f, settings[f], pf, settings[pf])
				}
			}
		}
	}
	return errs
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func ethtoolUnitText(dev string, settings map[string]string) string {
	args := []string{"-K", dev}
	for _, f := range sortedKeys(settings) {
		args = append(args, f, settings[f])
	}
	return fmt.Sprintf(`# Written by bellbuild apply: NIC features of %[1]s, re-applied at boot.
[Unit]
Description=bellbuild ethtool settings for %[1]s
BindsTo=sys-subsystem-net-devices-%[2]s.device
After=sys-subsystem-net-devices-%[2]s.device
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ethtool %[3]s

[Install]
WantedBy=multi-user.target
`, dev, escapePath(dev), strings.Join(args, " "))
}

func (m ethtoolModule) Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	want := map[string]bool{}
	for _, dev := range sortedKeys(conf.Ethtool) {
		settings := conf.Ethtool[dev]
		unit := ethtoolUnitName(dev)
		file := path.Join(unitDir, unit)
		link := path.Join(unitDir, "multi-user.target.wants", unit)
		want["unit:"+dev], want["link:"+link] = true, true
		for f := range settings {
			want["feat:"+dev+"/"+longFeature(f)] = true
		}
		if h.Live {
			err := m.setLive(ctx, h, dev, settings)
			switch {
			case errors.Is(err, errNoDevice) && h.Boot:
				// Before udev has named it: the unit written below
				// applies the settings once the device appears.
				h.Log.Info("ethtool: device not present yet at boot; its unit applies the settings when it appears", "device", dev, "unit", unit)
			case err != nil:
				errs = append(errs, fmt.Errorf("%s: %w", dev, err))
				continue // not persisted
			}
		}
		if _, err := h.EnsureFile("ethtool", "unit:"+dev, host.FileSpec{Path: file, Data: []byte(ethtoolUnitText(dev, settings)), Mode: 0o644}); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", dev, err))
			continue
		}
		if _, err := h.EnsureSymlink("ethtool", "link:"+link, link, file); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", dev, err))
		}
	}
	for _, k := range stale(h, "ethtool", "feat:", want) {
		if err := m.restore(ctx, h, strings.TrimPrefix(k, "feat:")); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range stale(h, "ethtool", "link:", want) {
		if _, err := h.ReleaseSymlink("ethtool", k, strings.TrimPrefix(k, "link:")); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range stale(h, "ethtool", "unit:", want) {
		dev := strings.TrimPrefix(k, "unit:")
		if _, err := h.ReleaseFile("ethtool", k, path.Join(unitDir, ethtoolUnitName(dev))); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// setLive changes the features of dev that differ, recording each one's
// original value first, and verifies they took.
func (ethtoolModule) setLive(ctx context.Context, h *host.Host, dev string, settings map[string]string) error {
	feats, err := readFeatures(ctx, dev)
	if err != nil {
		return err
	}
	args := []string{"-K", dev}
	for _, f := range sortedKeys(settings) {
		l := longFeature(f)
		cur := onOff(feats[l].on)
		key := "feat:" + dev + "/" + l
		if _, owned := h.Ledger.Get("ethtool", key); !owned && !h.Plan {
			h.Ledger.Put("ethtool", key, host.Record{HadOriginal: true, Original: cur})
		}
		if cur == settings[f] {
			continue
		}
		h.Record(host.Change{Module: "ethtool", Item: dev + " " + l, Action: "set", From: cur, To: settings[f]})
		args = append(args, f, settings[f])
	}
	if len(args) == 2 || h.Plan {
		return nil
	}
	if err := h.SaveLedger(); err != nil {
		return err
	}
	if _, err := liveCommand(ctx, "ethtool", args...); err != nil {
		return err
	}
	after, err := readFeatures(ctx, dev)
	if err != nil {
		return err
	}
	var bad []string
	for _, f := range sortedKeys(settings) {
		if got := onOff(after[longFeature(f)].on); got != settings[f] {
			bad = append(bad, fmt.Sprintf("%s is %s, not %s", f, got, settings[f]))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("the driver did not take the settings: %s", strings.Join(bad, "; "))
	}
	return nil
}

// restore puts a feature bellbuild no longer manages back to its original
// value ("DEV/FEATURE").
func (ethtoolModule) restore(ctx context.Context, h *host.Host, devFeat string) error {
	dev, f, _ := strings.Cut(devFeat, "/")
	rec, _ := h.Ledger.Get("ethtool", "feat:"+devFeat)
	if h.Live && rec.HadOriginal {
		feats, err := readFeatures(ctx, dev)
		if err == nil && onOff(feats[f].on) != rec.Original {
			h.Record(host.Change{Module: "ethtool", Item: dev + " " + f, Action: "revert", From: onOff(feats[f].on), To: rec.Original})
			if !h.Plan {
				if _, err := liveCommand(ctx, "ethtool", "-K", dev, f, rec.Original); err != nil {
					return fmt.Errorf("%s: restoring %s %s: %w", dev, f, rec.Original, err)
				}
			}
		}
	}
	if !h.Plan {
		h.Ledger.Delete("ethtool", "feat:"+devFeat)
	}
	return nil
}
