package firstboot

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// unitsModule writes systemd units to /etc/systemd/system and enables or
// disables them the way systemctl does, by symlinks in the root (so it
// works offline, on a root no systemd runs in): enabling links the unit
// into every TARGET.wants/ (or .requires/) its [Install] section names,
// plus its Alias= names; disabling removes such links, remembering them so
// that removing the item from the configuration puts them back.
//
// Ledger keys: "file:NAME" for a unit file it wrote, "link:PATH" for a link
// it made or removed. When Live and systemd runs (day 2 with --root /), a
// change is followed by `systemctl daemon-reload`, and the running system
// is made to match: a unit that leaves the configuration or is disabled is
// stopped before its file or links go, a newly enabled unit is started,
// and an active unit whose file changed is restarted (try-restart). At
// boot, before systemd, there is nothing to stop and systemd starts what
// is enabled itself.
type unitsModule struct{}

func init() { register(unitsModule{}) }

func (unitsModule) Name() string { return "units" }

const unitDir = nodeconf.UnitDir

// unitSearchPath is where systemd looks for unit files, first wins.
var unitSearchPath = []string{"/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"}

var unitNameRE = regexp.MustCompile(`^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(service|socket|target|timer|mount|automount|path|slice|swap)$`)

// unitInstall is a unit's [Install] section.
type unitInstall struct {
	WantedBy, RequiredBy, Alias []string
}

func parseInstall(text string) unitInstall {
	var in unitInstall
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section != "Install" {
			continue
		}
		f := strings.Fields(v)
		switch strings.TrimSpace(k) {
		case "WantedBy":
			in.WantedBy = append(in.WantedBy, f...)
		case "RequiredBy":
			in.RequiredBy = append(in.RequiredBy, f...)
		case "Alias":
			in.Alias = append(in.Alias, f...)
		}
	}
	return in
}

// unitSource finds the text and path of unit name: the configured content
// (to be written to /etc/systemd/system) or an installed unit file. An
// instance ("getty@tty1.service") falls back to its template's file.
func unitSource(h *host.Host, name string, u nodeconf.Unit) (text, file string, ok bool) {
	if u.Content != "" {
		return u.Content, path.Join(unitDir, name), true
	}
	names := []string{name}
	if at := strings.Index(name, "@"); at > 0 && !strings.HasPrefix(name[at:], "@.") {
		names = append(names, name[:at+1]+name[strings.LastIndex(name, "."):])
	}
	for _, n := range names {
		for _, dir := range unitSearchPath {
			p := path.Join(dir, n)
			if data, err := h.ReadFile(p); err == nil {
				return string(data), p, true
			}
		}
	}
	return "", "", false
}

// unitLinks are the symlinks that enable name: link path → target.
func unitLinks(name, text, file string) map[string]string {
	in := parseInstall(text)
	links := map[string]string{}
	for _, t := range in.WantedBy {
		links[path.Join(unitDir, t+".wants", name)] = file
	}
	for _, t := range in.RequiredBy {
		links[path.Join(unitDir, t+".requires", name)] = file
	}
	for _, a := range in.Alias {
		links[path.Join(unitDir, a)] = file
	}
	return links
}

func (unitsModule) Check(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	for _, name := range sortedKeys(conf.Units) {
		u := conf.Units[name]
		if !unitNameRE.MatchString(name) || strings.HasSuffix(name, "@.service") && u.Enabled != nil && *u.Enabled {
			errs = append(errs, fmt.Errorf("%s: not a unit name that can be managed (NAME.service, NAME@INSTANCE.timer, ...)", name))
			continue
		}
		if u.Content == "" && u.Enabled == nil {
			errs = append(errs, fmt.Errorf("%s: neither content nor enabled is set", name))
			continue
		}
		text, _, ok := unitSource(h, name, u)
		if !ok && u.Enabled != nil && *u.Enabled {
			errs = append(errs, fmt.Errorf("%s: no such unit in %s and no content given", name, strings.Join(unitSearchPath, ", ")))
			continue
		}
		if u.Enabled != nil && *u.Enabled && len(unitLinks(name, text, "")) == 0 {
			errs = append(errs, fmt.Errorf("%s: cannot be enabled: its [Install] section has no WantedBy=, RequiredBy= or Alias=", name))
		}
	}
	return errs
}

func (unitsModule) Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	before := len(h.Changes())
	live := systemdRunning(h)
	if live {
		// What stops running goes first, while its unit file is there.
		for _, name := range leavingUnits(h, conf) {
			if err := unitAction(ctx, h, "stop", name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	want := map[string]bool{}
	// The unit files, then the links that enable them, each a batch.
	var files []host.FileItem
	for _, name := range sortedKeys(conf.Units) {
		if u := conf.Units[name]; u.Content != "" {
			want["file:"+name] = true
			files = append(files, host.FileItem{Key: "file:" + name, Spec: host.FileSpec{Path: path.Join(unitDir, name), Data: []byte(u.Content), Mode: 0o644}})
		}
	}
	failed := map[string]bool{}
	fchanged, ferrs := h.EnsureFiles("units", files)
	for _, err := range ferrs {
		name, ok := strings.CutPrefix(itemKey(err), "file:")
		if !ok {
			return append(errs, err) // the ledger could not be saved
		}
		failed[name] = true
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	var links []host.LinkItem
	linkUnit := map[string]string{}
	for _, name := range sortedKeys(conf.Units) {
		u := conf.Units[name]
		if u.Enabled == nil || failed[name] {
			continue
		}
		if *u.Enabled {
			text, file, _ := unitSource(h, name, u)
			targets := unitLinks(name, text, file)
			for _, l := range sortedKeys(targets) {
				want["link:"+l] = true
				links = append(links, host.LinkItem{Key: "link:" + l, Link: l, Target: targets[l]})
				linkUnit["link:"+l] = name
			}
			continue
		}
		for _, l := range enabledLinks(h, name) {
			want["link:"+l] = true
			target, _ := h.Root().Readlink(strings.TrimPrefix(l, "/"))
			if _, err := h.RemoveSymlink("units", "link:"+l, l, target); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
		// Links this module removed earlier stay wanted (removed).
		for _, k := range h.Ledger.Keys("units") {
			if strings.HasPrefix(k, "link:") && path.Base(k) == name {
				want[k] = true
			}
		}
	}
	lchanged, lerrs := h.EnsureSymlinks("units", links)
	for _, err := range lerrs {
		if name, ok := linkUnit[itemKey(err)]; ok {
			err = fmt.Errorf("%s: %w", name, err)
		}
		errs = append(errs, err)
	}
	// Links first, then the unit files they point to.
	for _, k := range stale(h, "units", "link:", want) {
		if _, err := h.ReleaseSymlink("units", k, strings.TrimPrefix(k, "link:")); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range stale(h, "units", "file:", want) {
		name := strings.TrimPrefix(k, "file:")
		if _, err := h.ReleaseFile("units", k, path.Join(unitDir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(h.Changes()) > before && !h.Plan {
		if err := daemonReload(ctx, h); err != nil {
			errs = append(errs, err)
		}
	}
	if !live {
		return errs
	}
	// Then what starts: a unit enabled by this run, and a changed one
	// that runs.
	started := map[string]bool{}
	for _, k := range sortedKeys(lchanged) {
		if name := linkUnit[k]; name != "" && !started[name] {
			started[name] = true
			if err := unitAction(ctx, h, "start", name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, k := range sortedKeys(fchanged) {
		if name := strings.TrimPrefix(k, "file:"); !started[name] {
			if err := unitAction(ctx, h, "try-restart", name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// leavingUnits are the units this run takes away from the running system:
// those whose file or enabling links leave the configuration, and those
// the configuration now disables while they are enabled.
func leavingUnits(h *host.Host, conf *nodeconf.Conf) []string {
	out := map[string]bool{}
	for _, k := range h.Ledger.Keys("units") {
		name := ""
		switch {
		case strings.HasPrefix(k, "file:"):
			name = strings.TrimPrefix(k, "file:")
		case strings.HasPrefix(k, "link:"):
			name = path.Base(k)
		}
		if u, ok := conf.Units[name]; name != "" && (!ok || strings.HasPrefix(k, "file:") && u.Content == "") {
			out[name] = true
		}
	}
	for _, name := range sortedKeys(conf.Units) {
		if u := conf.Units[name]; u.Enabled != nil && !*u.Enabled && len(enabledLinks(h, name)) > 0 {
			out[name] = true
		}
	}
	return sortedKeys(out)
}

// unitAction makes a running systemd stop, start or try-restart unit name
// when that changes anything (stop: it is active; start: it is not;
// try-restart: it is active), recording the change. Start and restart do
// not wait for the unit (--no-block): a slow unit must not hold the run.
func unitAction(ctx context.Context, h *host.Host, action, name string) error {
	active := h.Command(ctx, nil, "systemctl", "is-active", "--quiet", name).Run() == nil
	if active == (action == "start") {
		return nil
	}
	h.Record(host.Change{Module: "units", Item: name, Action: action})
	if h.Plan {
		return nil
	}
	args := []string{action, name}
	if action != "stop" {
		args = []string{action, "--no-block", name}
	}
	if out, err := h.Command(ctx, nil, "systemctl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: systemctl %s: %w: %s", name, action, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// enabledLinks are the links under /etc/systemd/system that enable name.
func enabledLinks(h *host.Host, name string) []string {
	var out []string
	for _, pat := range []string{"*.wants/" + globQuote(name), "*.requires/" + globQuote(name)} {
		m, _ := globRoot(h, path.Join(unitDir, pat))
		for _, p := range m {
			if fi, err := h.Lstat(p); err == nil && fi.Mode().Type() == fs.ModeSymlink {
				out = append(out, p)
			}
		}
	}
	return out
}

// daemonReload tells a running systemd to reread unit files; nothing to do
// when the root is not a host running systemd.
func daemonReload(ctx context.Context, h *host.Host) error {
	if !systemdRunning(h) {
		return nil
	}
	if out, err := h.Command(ctx, nil, "systemctl", "daemon-reload").CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl daemon-reload: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
