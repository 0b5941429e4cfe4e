package firstboot

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// limitsModule writes one pam_limits file per item,
// /etc/security/limits.d/bellbuild-NAME.conf. The ledger key is NAME; on
// removal only files the ledger says bellbuild wrote are removed (or their
// originals put back) — never another package's or an administrator's
// file in the same directory, which Divingbell deleted.
type limitsModule struct{}

func init() { register(limitsModule{}) }

func (limitsModule) Name() string { return "limits" }

func limitsPath(name string) string { return nodeconf.LimitsFile(name) }

var (
	limitNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	limitDomRE  = regexp.MustCompile(`^(\*|%?@?[A-Za-z0-9_.$-]+|%|[0-9]*:[0-9]*|@?[0-9]*:[0-9]*)$`)
	limitSigned = map[string]bool{"priority": true, "nice": true}
)

func (limitsModule) Check(_ context.Context, _ *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	for _, name := range sortedKeys(conf.Limits) {
		l := conf.Limits[name]
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, a...)))
		}
		if !limitNameRE.MatchString(name) {
			bad("not a valid item name (letters, digits, '_', '.', '-')")
		}
		if !limitDomRE.MatchString(l.Domain) {
			bad("domain %q: want a user, @group, %%group, *, or uid:uid range", l.Domain)
		}
		if !slices.Contains(nodeconf.LimitTypes, l.Type) {
			bad("type %q: want soft, hard or -", l.Type)
		}
		if !slices.Contains(nodeconf.LimitItems, l.Item) {
			bad("item %q: not a pam_limits item", l.Item)
		}
		if !validLimitValue(l.Item, l.Value) {
			bad("value %q: want a number, unlimited or infinity", l.Value)
		}
	}
	return errs
}

func validLimitValue(item, v string) bool {
	switch v {
	case "unlimited", "infinity", "-1":
		return true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return false
	}
	return n >= 0 || limitSigned[item]
}

func (limitsModule) Apply(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	want := map[string]bool{}
	var items []host.FileItem
	for _, name := range sortedKeys(conf.Limits) {
		l := conf.Limits[name]
		want[name] = true
		data := fmt.Sprintf("# Written by bellbuild apply (limits item %s).\n%s %s %s %s\n", name, l.Domain, l.Type, l.Item, l.Value)
		items = append(items, host.FileItem{Key: name, Spec: host.FileSpec{Path: limitsPath(name), Data: []byte(data), Mode: 0o644}})
	}
	_, ferrs := h.EnsureFiles("limits", items)
	errs = append(errs, ferrs...)
	for _, name := range stale(h, "limits", "", want) {
		if _, err := h.ReleaseFile("limits", name, limitsPath(name)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errs
}
