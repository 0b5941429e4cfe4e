package firstboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// filesModule puts whole files in place (beyond Divingbell): content, mode
// (default 0644), owner and group by name from the root's databases (group
// defaults to the owner's primary group; the
// uamlite module runs first, so a file may belong to a user it creates).
// The ledger key is the absolute path; a file that was there before is
// backed up and comes back when the item is removed. A file whose mode
// lets no one but its owner and group read it is treated as a secret: its
// content never appears in plans or reports.
type filesModule struct{}

func init() { register(filesModule{}) }

func (filesModule) Name() string { return "files" }

func fileMode(f nodeconf.File) (fs.FileMode, error) {
	if f.Mode == "" {
		return 0o644, nil
	}
	return host.ParseMode(f.Mode)
}

// uamliteNames are the users (and same-named primary groups) the uamlite
// module will create in this run, so a file may name them before they exist.
func uamliteNames(conf *nodeconf.Conf) map[string]bool {
	names := map[string]bool{}
	if conf.Uamlite != nil {
		for _, u := range conf.Uamlite.Users {
			names[u.UserName] = true
		}
	}
	return names
}

// forbiddenPrefixes are pseudo file systems no file item may write into.
var forbiddenPrefixes = []string{"/proc/", "/sys/", "/dev/", "/run/"}

func (filesModule) Check(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	later := uamliteNames(conf)
	for _, p := range sortedKeys(conf.Files) {
		f := conf.Files[p]
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", p, fmt.Sprintf(format, a...)))
		}
		if !absClean(p) || p == "/" {
			bad("not an absolute, clean file path")
			continue
		}
		for _, pre := range forbiddenPrefixes {
			if strings.HasPrefix(p, pre) {
				bad("%s is not a place for files", strings.TrimSuffix(pre, "/"))
			}
		}
		if _, err := fileMode(f); err != nil {
			bad("%v", err)
		}
		if f.Owner != "" && !later[f.Owner] && !heldUser(h, f.Owner) {
			if _, err := h.LookupUser(f.Owner); err != nil {
				bad("owner: %v", err)
			}
		}
		if f.Group != "" && !later[f.Group] && !heldUser(h, f.Group) {
			if _, err := h.LookupGroup(f.Group); err != nil {
				bad("group: %v", err)
			}
		}
		if fi, err := h.Lstat(p); err == nil && !fi.Mode().IsRegular() {
			bad("exists and is not a regular file (%s)", fi.Mode().Type())
		}
	}
	return errs
}

func (filesModule) Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	want := map[string]bool{}
	var items []host.FileItem
	for _, p := range sortedKeys(conf.Files) {
		want[p] = true
		spec, err := fileSpec(h, p, conf.Files[p])
		if f := conf.Files[p]; err != nil && (heldUser(h, f.Owner) || heldUser(h, f.Group)) {
			// Its owner waits for a secret (a held user): so does it.
			errs = append(errs, &pendingError{item: p, why: "its owner is a user held for a secret"})
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		if err := checkSudoersFile(ctx, h, spec); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w; not written", p, err))
			continue
		}
		items = append(items, host.FileItem{Key: p, Spec: spec})
	}
	_, ferrs := h.EnsureFiles("files", items)
	errs = append(errs, ferrs...)
	for _, p := range stale(h, "files", "", want) {
		if _, err := h.ReleaseFile("files", p, p); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func fileSpec(h *host.Host, p string, f nodeconf.File) (host.FileSpec, error) {
	mode, err := fileMode(f)
	if err != nil {
		return host.FileSpec{}, err
	}
	spec := host.FileSpec{Path: p, Data: []byte(f.Content), Mode: mode, Secret: f.Private() || mode&0o004 == 0}
	var uerr, gerr error
	if f.Owner != "" {
		spec.UID, uerr = h.LookupUser(f.Owner)
	}
	switch {
	case f.Group != "":
		spec.GID, gerr = h.LookupGroup(f.Group)
	case f.Owner != "" && uerr == nil:
		// No group: the owner's primary group, as chown OWNER: does.
		if _, err := strconv.Atoi(f.Owner); err != nil {
			spec.GID, gerr = h.PrimaryGroup(f.Owner)
		}
	}
	return spec, errors.Join(uerr, gerr)
}

// sudoersFile reports whether sudo reads p as sudoers: /etc/sudoers, or a
// file of /etc/sudoers.d whose name has no '.' and does not end in '~'
// (the names sudo's #includedir skips).
func sudoersFile(p string) bool {
	if p == "/etc/sudoers" {
		return true
	}
	dir, name := path.Split(p)
	return dir == "/etc/sudoers.d/" && !strings.Contains(name, ".") && !strings.HasSuffix(name, "~")
}

// checkSudoersFile checks a sudoers file with the root's visudo before it
// is written, as uamlite checks its fragments: a file sudo cannot parse
// locks every user out of sudo. Only a file that would change is checked.
func checkSudoersFile(ctx context.Context, h *host.Host, spec host.FileSpec) error {
	if !sudoersFile(spec.Path) || h.Plan {
		return nil
	}
	if cur, err := h.ReadFile(spec.Path); err == nil && string(cur) == string(spec.Data) {
		return nil
	}
	tmp := path.Join(path.Dir(spec.Path), ".bellbuild-check-"+path.Base(spec.Path))
	return visudoCheck(ctx, h, tmp, spec.Data, host.Meta{Mode: spec.Mode, UID: spec.UID, GID: spec.GID})
}

// heldUser reports whether name is a user (or its same-named group) that
// this run holds (see hold.go).
func heldUser(h *host.Host, name string) bool {
	return name != "" && h.Holds("uamlite", "user/"+name)
}
