package firstboot

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// aptModule manages Debian packages as Divingbell's apt DaemonSet did,
// without its bugs:
//
//   - Repositories go to /etc/apt/sources.list.d/bellbuild.list, each with
//     its key in /etc/apt/keyrings/bellbuild-HASH.asc and signed-by, beside
//     the root's own sources (Divingbell replaced sources.list and deleted
//     every other source and trusted key).
//   - Debconf answers are given to debconf-set-selections on its standard
//     input before any install, and again only when they change; answers to
//     password questions never appear in a log, a plan or the report.
//   - An interrupted dpkg (a package left unpacked or half-configured) is
//     finished with `dpkg --configure -a` before anything else.
//   - Requested packages are installed when missing or at another version
//     than the one requested (name=version); an older version needs
//     allow_downgrade, else it is an error before anything changes. The
//     ledger keys packages by name, so a versioned package stays installed
//     on a rerun (Divingbell's list mixed "name=version" with names and
//     purged versioned packages on every rerun).
//   - A package bellbuild installed and that leaves the configuration is
//     purged, with the dependencies that only it needed (apt's autoremove
//     candidates that appeared with that purge — never older orphans). A
//     package that was already installed when first requested is left
//     installed when it leaves the configuration.
//   - Blacklisted packages are purged whenever they are installed.
//   - Strict mode purges every installed package that strictKeep does not
//     keep (Divingbell's strict purged everything not requested, essential
//     packages included). apt first simulates the purge, and nothing is
//     removed when apt would remove more than that list.
//   - upgrade runs apt-get dist-upgrade when it has something to do.
//
// A plan reads the dpkg status file and runs nothing: it shows repository
// and key files, debconf answers, dpkg recovery, installs, purges,
// blacklist and strict removals (upgrades are only known to apt).
//
// apt and dpkg run inside the root (inRoot: chroot in a private mount
// namespace with /proc and /dev) with DEBIAN_FRONTEND=noninteractive,
// keeping changed configuration files (--force-confdef --force-confold),
// waiting up to 120 s for the dpkg lock.
//
// Ledger (module "apt"): "pkg/NAME" with Extra version (as requested) and
// preexisting (the version installed before bellbuild first installed it,
// "" when it was not installed); "sources" and "key/HASH" are files;
// "debconf/PKG/QUESTION" has Hash, the hash of the answer line.
type aptModule struct{}

func init() { register(aptModule{}) }

func (aptModule) Name() string { return "apt" }

const (
	aptSourcesPath = nodeconf.AptSourcesFile
	aptKeyringDir  = "/etc/apt/keyrings"
)

var (
	debNameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$`)
	debVersionRE = regexp.MustCompile(`^([0-9]+:)?[0-9][A-Za-z0-9.+~:-]*$`)
	aptWordRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/+~-]*$`)
	aptURLRE     = regexp.MustCompile(`^(https?|file|cdrom|mirror\+https?|mirror\+file|tor\+https?)://[^\s\[\]]+$`)
	debconfQRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]*/\S+$`)
	debconfTypes = map[string]bool{"boolean": true, "string": true, "select": true, "multiselect": true, "password": true, "note": true, "text": true, "title": true, "error": true}
)

func (aptModule) Check(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	a := conf.Apt
	if a == nil {
		return nil
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	seen := map[string]bool{}
	black := map[string]bool{}
	for _, n := range a.BlacklistPkgs {
		black[n] = true
		if !debNameRE.MatchString(n) {
			bad("blacklistpkgs: %q: not a package name", n)
		}
	}
	for _, n := range a.WhitelistPkgs {
		if !debNameRE.MatchString(n) {
			bad("whitelistpkgs: %q: not a package name", n)
		}
		if black[n] {
			bad("%s: both whitelisted and blacklisted", n)
		}
	}
	if len(a.WhitelistPkgs) > 0 && !a.Strict {
		bad("whitelistpkgs: only used with strict: true")
	}
	db, err := readDpkgStatus(h)
	if err != nil {
		return append(errs, err)
	}
	for i, p := range a.Packages {
		if !debNameRE.MatchString(p.Name) {
			bad("packages[%d]: %q: not a package name", i, p.Name)
			continue
		}
		if seen[p.Name] {
			bad("%s: listed twice", p.Name)
		}
		seen[p.Name] = true
		if black[p.Name] {
			bad("%s: both requested and blacklisted", p.Name)
		}
		if p.Version != "" && !debVersionRE.MatchString(p.Version) {
			bad("%s: version %q: not a Debian version", p.Name, p.Version)
		}
		if p.Repo != "" && !aptWordRE.MatchString(p.Repo) {
			bad("%s: repo %q: not a release name", p.Name, p.Repo)
		}
		for j, d := range p.Debconf {
			if !debconfQRE.MatchString(d.Question) {
				bad("%s: debconf[%d]: question %q: want OWNER/NAME", p.Name, j, d.Question)
			}
			if !debconfTypes[d.QuestionType] {
				bad("%s: debconf[%d]: question_type %q: want boolean, string, select, multiselect, password, note, text or title", p.Name, j, d.QuestionType)
			}
			if !oneLine(d.Answer) {
				bad("%s: debconf[%d]: the answer must be one line", p.Name, j)
			}
		}
		if cur, ok := db[p.Name]; ok && cur.present() && p.Version != "" && debVersionRE.MatchString(p.Version) &&
			compareDebVersions(p.Version, cur.Version) < 0 && !p.AllowDowngrade {
			bad("%s: version %s is older than the installed %s: set allow_downgrade to downgrade", p.Name, p.Version, cur.Version)
		}
	}
	for i, r := range a.Repositories {
		if !aptURLRE.MatchString(r.URL) {
			bad("repositories[%d]: url %q: want an http(s)://, file:// or cdrom:// URL", i, r.URL)
		}
		if len(r.Distributions) == 0 || len(r.Components) == 0 {
			bad("repositories[%d]: needs distributions and components", i)
		}
		for _, w := range append(append(append([]string(nil), r.Distributions...), r.Components...), r.Subrepos...) {
			if !aptWordRE.MatchString(w) {
				bad("repositories[%d]: %q: not a distribution, component or subrepo name", i, w)
			}
		}
		if r.GPGKey != "" && !strings.Contains(r.GPGKey, "-----BEGIN PGP PUBLIC KEY BLOCK-----") {
			bad("repositories[%d]: gpgkey: want an ASCII-armored public key (-----BEGIN PGP PUBLIC KEY BLOCK-----)", i)
		}
	}
	return errs
}

// aptRun is one run of the module.
type aptRun struct {
	ctx  context.Context
	h    *host.Host
	conf *nodeconf.Apt
	db   dpkgDB
	errs []error
	// updated says apt-get update ran in this run.
	updated bool
	// purged are the packages this run purges (or, in a plan, would).
	purged map[string]bool
}

func (a *aptRun) change(item, action, from, to string) {
	a.h.Record(host.Change{Module: "apt", Item: item, Action: action, From: from, To: to})
}

func (a *aptRun) fail(err error) { a.errs = append(a.errs, err) }

func (aptModule) Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	c := conf.Apt
	if c == nil {
		c = &nodeconf.Apt{}
	}
	if len(h.Ledger.Keys("apt")) == 0 && len(c.Packages) == 0 && len(c.Repositories) == 0 &&
		len(c.BlacklistPkgs) == 0 && !c.Strict && !c.Upgrade {
		return nil
	}
	db, err := readDpkgStatus(h)
	if err != nil {
		return []error{err}
	}
	a := &aptRun{ctx: ctx, h: h, conf: c, db: db, purged: map[string]bool{}}
	sourcesChanged := a.repositories()
	a.debconf()
	a.recover()
	if sourcesChanged && !h.Plan {
		a.update()
	}
	a.install()
	a.purgeStale()
	a.blacklist()
	if c.Strict {
		a.strict()
	}
	if c.Upgrade && !h.Plan {
		a.upgrade()
	}
	return a.errs
}

// repositories writes the sources file and keys; it reports whether the
// sources changed (so that apt-get update must run).
func (a *aptRun) repositories() bool {
	var lines []string
	wantKeys := map[string]bool{}
	changed := false
	for _, r := range a.conf.Repositories {
		opt := ""
		if r.GPGKey != "" {
			key := strings.TrimSpace(r.GPGKey) + "\n"
			id := host.Hash([]byte(key))[:16]
			file := path.Join(aptKeyringDir, "bellbuild-"+id+".asc")
			wantKeys["key/"+id] = true
			ch, err := a.h.EnsureFile("apt", "key/"+id, host.FileSpec{Path: file, Data: []byte(key), Mode: 0o644})
			if err != nil {
				a.fail(err)
			}
			changed = changed || ch
			opt = "[signed-by=" + file + "] "
		}
		for _, d := range r.Distributions {
			comps := strings.Join(r.Components, " ")
			lines = append(lines, fmt.Sprintf("deb %s%s %s %s", opt, r.URL, d, comps))
			for _, s := range r.Subrepos {
				lines = append(lines, fmt.Sprintf("deb %s%s %s-%s %s", opt, r.URL, d, s, comps))
			}
		}
	}
	if len(lines) > 0 {
		data := "# Written by bellbuild apply (apt repositories).\n" + strings.Join(lines, "\n") + "\n"
		ch, err := a.h.EnsureFile("apt", "sources", host.FileSpec{Path: aptSourcesPath, Data: []byte(data), Mode: 0o644})
		if err != nil {
			a.fail(err)
		}
		changed = changed || ch
	} else if ch, err := a.h.ReleaseFile("apt", "sources", aptSourcesPath); err != nil {
		a.fail(err)
	} else {
		changed = changed || ch
	}
	for _, key := range stale(a.h, "apt", "key/", wantKeys) {
		ch, err := a.h.ReleaseFile("apt", key, path.Join(aptKeyringDir, "bellbuild-"+strings.TrimPrefix(key, "key/")+".asc"))
		if err != nil {
			a.fail(err)
		}
		changed = changed || ch
	}
	return changed
}

// debconf gives debconf the answers that changed since bellbuild last gave
// them. The hash in the ledger (0600) is all that is kept of an answer.
func (a *aptRun) debconf() {
	var in bytes.Buffer
	want := map[string]bool{}
	type put struct {
		key, hash string
	}
	var puts []put
	for _, p := range a.conf.Packages {
		for _, d := range p.Debconf {
			key := "debconf/" + p.Name + "/" + d.Question
			want[key] = true
			line := fmt.Sprintf("%s %s %s %s\n", p.Name, d.Question, d.QuestionType, d.Answer)
			hash := host.Hash([]byte(line))
			if rec, ok := a.h.Ledger.Get("apt", key); ok && rec.Hash == hash {
				continue
			}
			shown := d.Answer
			if d.QuestionType == "password" {
				shown = "(password, not shown)"
			}
			a.change("debconf "+p.Name+" "+d.Question, "set", "", shown)
			in.WriteString(line)
			puts = append(puts, put{key, hash})
		}
	}
	for _, key := range stale(a.h, "apt", "debconf/", want) {
		// debconf has no "unset": the answer stays, bellbuild forgets it.
		if !a.h.Plan {
			a.h.Ledger.Delete("apt", key)
		}
	}
	if in.Len() == 0 || a.h.Plan {
		return
	}
	cmd := inRoot(a.ctx, a.h, nil, "debconf-set-selections")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		// The output may quote the input: it is not passed on.
		a.fail(fmt.Errorf("debconf-set-selections: %w (%d bytes of output withheld: answers may be secrets)", err, len(out)))
		return
	}
	for _, p := range puts {
		a.h.Ledger.Put("apt", p.key, host.Record{Hash: p.hash})
	}
	if err := a.h.SaveLedger(); err != nil {
		a.fail(err)
	}
}

// recover finishes what an interrupted dpkg left.
func (a *aptRun) recover() {
	var broken []string
	for name, p := range a.db {
		if p.interrupted() {
			broken = append(broken, name)
		}
	}
	if len(broken) == 0 {
		return
	}
	sort.Strings(broken)
	a.change("dpkg", "recover", strings.Join(broken, " "), "dpkg --configure -a")
	if a.h.Plan {
		return
	}
	if _, err := a.run("dpkg", "--configure", "-a"); err != nil {
		a.fail(err)
	}
	a.reload()
}

func (a *aptRun) reload() {
	db, err := readDpkgStatus(a.h)
	if err != nil {
		a.fail(err)
		return
	}
	a.db = db
}

// aptEnv is the environment of every apt and dpkg run.
var aptEnv = []string{"DEBIAN_FRONTEND=noninteractive", "DEBCONF_NONINTERACTIVE_SEEN=true", "APT_LISTCHANGES_FRONTEND=none"}

// aptOpts are the options of every apt-get run that changes packages.
var aptOpts = []string{"-y", "-q", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", "-o", "DPkg::Lock::Timeout=120"}

// run runs a command in the root and logs its output line by line.
func (a *aptRun) run(name string, args ...string) ([]byte, error) {
	cmd := inRoot(a.ctx, a.h, aptEnv, name, args...)
	out, err := cmd.CombinedOutput()
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		a.h.Log.Debug("apt: output", "cmd", name, "line", sc.Text())
	}
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(out, 5))
	}
	return out, nil
}

// lastLines returns the last n lines of out, on one line.
func lastLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func (a *aptRun) update() {
	if a.updated {
		return
	}
	a.updated = true
	if _, err := a.run("apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=120"); err != nil {
		a.fail(err)
	}
}

// install installs what is missing or at another version.
func (a *aptRun) install() {
	var targets []string
	byRepo := map[string][]string{}
	downgrade := map[string]bool{}
	for _, p := range a.conf.Packages {
		cur, ok := a.db[p.Name]
		have := ok && cur.installed()
		if have && (p.Version == "" || p.Version == cur.Version) {
			continue
		}
		from := ""
		if ok && cur.present() {
			from = cur.Version
		}
		target := p.Name
		if p.Version != "" {
			target += "=" + p.Version
		}
		action := "install"
		if from != "" {
			action = "update"
		}
		a.change("package "+p.Name, action, from, orDash(p.Version))
		if a.h.Plan {
			continue
		}
		key := "pkg/" + p.Name
		rec, known := a.h.Ledger.Get("apt", key)
		if rec.Extra == nil {
			rec.Extra = map[string]string{}
		}
		if !known {
			rec.Extra["preexisting"] = from
		}
		rec.Extra["version"] = p.Version
		a.h.Ledger.Put("apt", key, rec)
		targets = append(targets, p.Name)
		byRepo[p.Repo] = append(byRepo[p.Repo], target)
		if p.AllowDowngrade {
			downgrade[p.Repo] = true
		}
	}
	if len(targets) == 0 {
		return
	}
	if err := a.h.SaveLedger(); err != nil {
		a.fail(err)
		return
	}
	a.update()
	for _, repo := range sortedKeys(byRepo) {
		args := append([]string{"install"}, aptOpts...)
		if downgrade[repo] {
			args = append(args, "--allow-downgrades")
		}
		if repo != "" {
			args = append(args, "-t", repo)
		}
		if _, err := a.run("apt-get", append(args, byRepo[repo]...)...); err != nil {
			a.fail(err)
		}
	}
	a.reload()
	for _, p := range a.conf.Packages {
		cur, ok := a.db[p.Name]
		switch {
		case !ok || !cur.installed():
			a.fail(fmt.Errorf("%s: not installed after apt-get install", p.Name))
		case p.Version != "" && cur.Version != p.Version:
			a.fail(fmt.Errorf("%s: installed version %s, want %s", p.Name, cur.Version, p.Version))
		}
	}
}

// purgeStale purges what bellbuild installed and the configuration no
// longer has.
func (a *aptRun) purgeStale() {
	want := map[string]bool{}
	for _, p := range a.conf.Packages {
		want["pkg/"+p.Name] = true
	}
	var purge []string
	var forget []string
	for _, key := range stale(a.h, "apt", "pkg/", want) {
		name := strings.TrimPrefix(key, "pkg/")
		rec, _ := a.h.Ledger.Get("apt", key)
		if p, ok := a.db[name]; ok && p.present() && rec.Extra["preexisting"] == "" {
			a.change("package "+name, "purge", p.Version, "")
			purge = append(purge, name)
			a.purged[name] = true
		}
		forget = append(forget, key)
	}
	if a.h.Plan {
		return
	}
	if len(purge) > 0 {
		if err := a.purge(purge); err != nil {
			a.fail(err)
			return
		}
	}
	for _, key := range forget {
		a.h.Ledger.Delete("apt", key)
	}
	if err := a.h.SaveLedger(); err != nil {
		a.fail(err)
	}
}

func (a *aptRun) blacklist() {
	var purge []string
	for _, name := range a.conf.BlacklistPkgs {
		if p, ok := a.db[name]; ok && p.present() && !a.purged[name] {
			a.change("package "+name, "purge", p.Version, "blacklisted")
			purge = append(purge, name)
			a.purged[name] = true
		}
	}
	if len(purge) > 0 && !a.h.Plan {
		if err := a.purge(purge); err != nil {
			a.fail(err)
		}
	}
}

func (a *aptRun) strict() {
	var requested []string
	for _, p := range a.conf.Packages {
		requested = append(requested, p.Name)
	}
	// A held package (its debconf answers wait for a secret) is kept.
	for name := range a.db {
		if a.h.Holds("apt", "pkg/"+name) {
			requested = append(requested, name)
		}
	}
	var remove []string
	for _, name := range strictRemovals(a.db, requested, a.conf.WhitelistPkgs) {
		if !a.purged[name] {
			a.change("package "+name, "purge", a.db[name].Version, "strict")
			remove = append(remove, name)
		}
	}
	if len(remove) == 0 || a.h.Plan {
		return
	}
	// apt must agree: a simulation that removes anything else stops it.
	out, err := a.run("apt-get", append([]string{"-s", "purge"}, remove...)...)
	if err != nil {
		a.fail(err)
		return
	}
	allowed := map[string]bool{}
	for _, n := range remove {
		allowed[n] = true
	}
	var extra []string
	for _, n := range aptRemovals(out) {
		if !allowed[n] {
			extra = append(extra, n)
		}
	}
	if len(extra) > 0 {
		a.fail(fmt.Errorf("strict: apt would also remove %s: nothing removed", strings.Join(extra, " ")))
		return
	}
	if _, err := a.run("apt-get", append(append([]string{"purge"}, aptOpts...), remove...)...); err != nil {
		a.fail(err)
	}
	a.reload()
}

// aptRemovals lists the packages a simulated apt-get run removes or purges
// ("Remv NAME [VERSION]" and "Purg NAME [VERSION]" lines).
func aptRemovals(out []byte) []string {
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && (f[0] == "Remv" || f[0] == "Purg") {
			names = append(names, f[1])
		}
	}
	sort.Strings(names)
	return names
}

// purge purges pkgs, then the packages that became autoremovable with it
// (and not those that were before: bellbuild removes only what it caused).
func (a *aptRun) purge(pkgs []string) error {
	before, err := a.autoremovable()
	if err != nil {
		return err
	}
	if _, err := a.run("apt-get", append(append([]string{"purge"}, aptOpts...), pkgs...)...); err != nil {
		return err
	}
	after, err := a.autoremovable()
	if err != nil {
		return err
	}
	var orphans []string
	for _, n := range sortedKeys(after) {
		if !before[n] {
			orphans = append(orphans, n)
		}
	}
	if len(orphans) > 0 {
		for _, n := range orphans {
			a.change("package "+n, "purge", "", "no longer needed")
		}
		if _, err := a.run("apt-get", append(append([]string{"purge"}, aptOpts...), orphans...)...); err != nil {
			return err
		}
	}
	a.reload()
	return nil
}

func (a *aptRun) autoremovable() (map[string]bool, error) {
	out, err := a.run("apt-get", "-s", "autoremove")
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, n := range aptRemovals(out) {
		set[n] = true
	}
	return set, nil
}

// upgrade runs apt-get dist-upgrade when a simulation shows it would
// install or upgrade something.
func (a *aptRun) upgrade() {
	a.update()
	out, err := a.run("apt-get", "-s", "dist-upgrade")
	if err != nil {
		a.fail(err)
		return
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "Inst" {
			names = append(names, f[1])
		}
	}
	if len(names) == 0 {
		return
	}
	sort.Strings(names)
	a.change("packages", "upgrade", "", strings.Join(names, " "))
	if _, err := a.run("apt-get", append([]string{"dist-upgrade"}, aptOpts...)...); err != nil {
		a.fail(err)
	}
	a.reload()
}
