package firstboot

import (
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Items held for a secret. A public configuration (an image's bundle, what
// serve sends over plain HTTP or TFTP) lacks the values of the node's
// secrets (nodeconf.SecretRef.Withheld); the item each belongs to
// (nodeconf.HeldItem: a file, a user, a script, a sysctl key, a unit, a
// package, ...) is held, in one place: the run applies the configuration
// without it (nodeconf.Conf.Without) and reverts none of its ledger keys
// (host.Host.Hold, which stale consults), so what an earlier run applied
// of it stays as it is. Each held item is reported pending; the rest of
// the configuration is applied. A module that writes one thing for all
// its items keeps a held item's part as it is (sysctl's file), apt's
// strict mode keeps a held package, and uamlite leaves the built-in
// account alone while a user is held.

// holds is what one run holds.
type holds struct {
	items map[string]map[string]bool // module → held items
	whole map[string]bool            // modules held whole
	// pending is one line per held item, for Report.Pending.
	pending []string
}

// holdOf returns the configuration to apply to node: its Conf without the
// items of its withheld secrets, and those items.
func holdOf(node *nodeconf.Node) (nodeconf.Conf, *holds, error) {
	hs := &holds{items: map[string]map[string]bool{}, whole: map[string]bool{}}
	held, err := node.HeldItems()
	if err != nil {
		return node.Conf, hs, err
	}
	if len(held) == 0 {
		return node.Conf, hs, nil
	}
	conf, err := node.Conf.Without(held)
	if err != nil {
		return node.Conf, hs, err
	}
	waits := map[string][]string{} // "module: item" → the secrets it waits for
	for _, it := range held {
		what := it.Item
		if what == "" {
			hs.whole[it.Module] = true
			what = "the whole module"
		} else {
			if hs.items[it.Module] == nil {
				hs.items[it.Module] = map[string]bool{}
			}
			hs.items[it.Module][it.Item] = true
		}
		k := it.Module + ": " + what
		waits[k] = append(waits[k], it.Ref.String())
	}
	for k, refs := range waits {
		hs.pending = append(hs.pending, fmt.Sprintf("%s (waits for %s)", k, strings.Join(refs, ", ")))
	}
	sort.Slice(hs.pending, func(i, j int) bool {
		mi, _, _ := strings.Cut(hs.pending[i], ":")
		mj, _, _ := strings.Cut(hs.pending[j], ":")
		if mi != mj {
			return moduleIndex(mi) < moduleIndex(mj)
		}
		return hs.pending[i] < hs.pending[j]
	})
	return conf, hs, nil
}

// holds reports whether the ledger key of module belongs to a held item
// (the host.Host.Hold of a run).
func (hs *holds) holds(module, key string) bool {
	if hs.whole[module] {
		return true
	}
	items := hs.items[module]
	if len(items) == 0 {
		return false
	}
	f := keyItem[module]
	if f == nil {
		return false
	}
	it := f(key)
	return it != "" && items[it]
}

// keyItem maps a ledger key of each module whose items a secret can hold
// one by one to the item it belongs to, as nodeconf.HeldItem names it
// ("" for a key of the module as a whole). The keys are each module's
// (see its doc comment).
var keyItem = map[string]func(key string) string{
	"files":  func(k string) string { return k },
	"limits": func(k string) string { return k },
	"sysctl": func(k string) string {
		if k == sysctlFileKey {
			return ""
		}
		return k
	},
	"units": func(k string) string {
		if name, ok := strings.CutPrefix(k, "file:"); ok {
			return name
		}
		if l, ok := strings.CutPrefix(k, "link:"); ok {
			return path.Base(l)
		}
		return ""
	},
	"mounts": func(k string) string {
		for _, p := range []string{"unit:", "live:"} {
			if unit, ok := strings.CutPrefix(k, p); ok {
				return unit
			}
		}
		if l, ok := strings.CutPrefix(k, "link:"); ok {
			return path.Base(l)
		}
		return ""
	},
	"exec": func(k string) string {
		for _, p := range []string{"script/", "state/"} {
			if name, ok := strings.CutPrefix(k, p); ok {
				return name
			}
		}
		return ""
	},
	"uamlite": func(k string) string {
		for _, p := range []string{"user/", "sudo/", "keys/"} {
			if name, ok := strings.CutPrefix(k, p); ok {
				return name
			}
		}
		return ""
	},
	"apt": func(k string) string {
		if name, ok := strings.CutPrefix(k, "pkg/"); ok {
			return name
		}
		if rest, ok := strings.CutPrefix(k, "debconf/"); ok {
			name, _, _ := strings.Cut(rest, "/")
			return name
		}
		return ""
	},
	"apparmor": func(k string) string {
		for _, p := range []string{"load:", "complain:"} {
			if name, ok := strings.CutPrefix(k, p); ok {
				return name
			}
		}
		return k
	},
}
