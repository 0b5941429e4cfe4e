package firstboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// permModule sets owner, group and mode of existing paths. Paths are globs
// matched inside the root; owner and group names are resolved from the
// root's /etc/passwd and /etc/group. A glob that matches nothing is an
// error, and then nothing of the module is applied, unless ignore_missing.
//
// Ledger: one record per matched path (absolute), Original = the "0644
// 0:0" it had before bellbuild first changed it, Extra["set"] = what
// bellbuild set. A path that leaves the configuration gets its original
// back, unless someone changed it since (a conflict).
//
// Links: perm changes files and directories themselves. A symbolic link a
// glob matches is an error. So is a file (not a directory: those cannot be
// hard-linked) with more than one hard link whose owner, group or mode
// would change: the change would reach the same inode under every other
// name, and those may be outside the root (a root that is a directory of a
// larger file system, linked to the host's /etc/shadow) or be another file
// of the root linked into a directory the glob covers; nothing finds them
// short of reading the whole file system. Such a file already as wanted is
// left alone and adopted (nothing changes); a revert that would change
// one is refused. The change itself is made through a handle opened
// without following links and checked again (host.SetMetaOneLink), so the
// path cannot be swapped for a link in between.
type permModule struct{}

func init() { register(permModule{}) }

func (permModule) Name() string { return "perm" }

// permTargets expands the configuration into path → wanted Meta.
func permTargets(h *host.Host, conf *nodeconf.Conf) (map[string]host.Meta, []error) {
	out := map[string]host.Meta{}
	from := map[string]string{}
	if conf.Perm == nil {
		return out, nil
	}
	var errs []error
	for i, p := range conf.Perm.Paths {
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("paths[%d] %s: %s", i, p.Path, fmt.Sprintf(format, a...)))
		}
		if !absClean(p.Path) {
			bad("not an absolute, clean path")
			continue
		}
		if _, err := path.Match(p.Path, ""); err != nil {
			bad("bad glob: %v", err)
			continue
		}
		mode, merr := host.ParseMode(p.Permissions)
		if merr != nil {
			bad("permissions: %v", merr)
		}
		uid, uerr := h.LookupUser(p.Owner)
		if uerr != nil {
			bad("owner: %v", uerr)
		}
		gid, gerr := h.LookupGroup(p.Group)
		if gerr != nil {
			bad("group: %v", gerr)
		}
		matches, err := fs.Glob(h.Root().FS(), strings.TrimPrefix(p.Path, "/"))
		if err != nil {
			bad("%v", err)
			continue
		}
		if p.Path == "/" {
			matches = []string{"."}
		}
		if len(matches) == 0 && !p.IgnoreMissing {
			bad("matches nothing in the root (set ignore_missing to allow this)")
		}
		if merr != nil || uerr != nil || gerr != nil {
			continue
		}
		m := host.Meta{Mode: mode, UID: uid, GID: gid}
		for _, r := range matches {
			abs := path.Join("/", r)
			// chown and chmod follow links: a link planted where a glob
			// looks (a user-writable directory) would hand another file
			// to the owner named here. perm manages files and
			// directories themselves, never what a link points at.
			fi, err := h.Lstat(abs)
			if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
				bad("%s is a symbolic link; perm sets files and directories only", abs)
				continue
			}
			if err == nil && !fi.IsDir() && host.Links(fi) > 1 {
				if cur, err := h.StatMeta(abs); err != nil || cur != m {
					bad("%s has %d hard links: perm changes no file that has other names (they may be outside the root); give it a copy of its own", abs, host.Links(fi))
					continue
				}
			}
			if prev, ok := out[abs]; ok && prev != m {
				bad("%s: conflicts with %s, which wants %s", abs, from[abs], prev)
				continue
			}
			out[abs], from[abs] = m, p.Path
		}
	}
	return out, errs
}

func (permModule) Check(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	_, errs := permTargets(h, conf)
	return errs
}

func (permModule) Apply(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	targets, errs := permTargets(h, conf)
	if len(errs) > 0 {
		return errs // nothing of perm is applied
	}
	want := map[string]bool{}
	var todo []string
	for _, p := range sortedKeys(targets) {
		want[p] = true
		m := targets[p]
		cur, err := h.StatMeta(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		rec, owned := h.Ledger.Get("perm", p)
		if cur == m && owned && rec.Extra["set"] == m.String() {
			continue
		}
		if !owned {
			rec = host.Record{HadOriginal: true, Original: cur.String()}
		}
		rec.Extra = map[string]string{"set": m.String()}
		if cur == m {
			// Already right: take ownership (so removal restores it)
			// without changing the path.
			if !h.Plan {
				h.Ledger.Put("perm", p, rec)
			}
			continue
		}
		h.Record(host.Change{Module: "perm", Item: p, Action: "update", From: cur.String(), To: m.String()})
		if h.Plan {
			continue
		}
		h.Ledger.Put("perm", p, rec)
		todo = append(todo, p)
	}
	// Write-ahead, once for the batch: every original is durable before
	// the first path changes.
	if len(todo) > 0 {
		if err := h.SaveLedger(); err != nil {
			return append(errs, err)
		}
	}
	for _, p := range todo {
		if err := h.SetMetaOneLink(p, targets[p]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		}
	}
	for _, p := range stale(h, "perm", "", want) {
		if err := permRevert(h, p); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func permRevert(h *host.Host, p string) error {
	rec, _ := h.Ledger.Get("perm", p)
	cur, err := h.StatMeta(p)
	if errors.Is(err, fs.ErrNotExist) {
		if !h.Plan {
			h.Ledger.Delete("perm", p)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	orig, ok := host.ParseMeta(rec.Original)
	if !ok {
		return fmt.Errorf("%s: ledger holds no usable original (%q)", p, rec.Original)
	}
	if cur.String() != rec.Extra["set"] && cur != orig {
		return fmt.Errorf("%s: %w (now %s, bellbuild set %s); not reverted", p, host.ErrConflict, cur, rec.Extra["set"])
	}
	if cur != orig {
		if fi, err := h.Lstat(p); err == nil && !fi.IsDir() && host.Links(fi) > 1 {
			return fmt.Errorf("%s: %w (%d): not reverted to %s", p, host.ErrHardLinked, host.Links(fi), orig)
		}
		h.Record(host.Change{Module: "perm", Item: p, Action: "revert", From: cur.String(), To: orig.String()})
		if !h.Plan {
			if err := h.SetMetaOneLink(p, orig); err != nil {
				return fmt.Errorf("%s: %w; not reverted", p, err)
			}
		}
	}
	if !h.Plan {
		h.Ledger.Delete("perm", p)
	}
	return nil
}
