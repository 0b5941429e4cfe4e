package firstboot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// apparmorModule installs AppArmor profiles as /etc/apparmor.d/bellbuild.NAME
// (the prefix keeps them apart from packages' profiles, and a name can never
// replace one). Every profile is first compiled by `apparmor_parser -Q -K`
// against the root's own /etc/apparmor.d includes, before anything changes:
// a profile the parser rejects fails the whole run, so a broken profile is
// never installed. With complain_mode each gets a link in
// /etc/apparmor.d/force-complain (honoured at boot). When Live, changed
// profiles are loaded with `apparmor_parser -r` (-C for complain mode), and
// a profile that leaves the configuration is unloaded (-R) before its file
// is removed; a profile the kernel refuses to load is taken out again.
//
// Ledger keys: NAME (the file), "complain:NAME" (the link), "load:NAME"
// (loaded live; Extra hash and mode).
type apparmorModule struct{}

func init() { register(apparmorModule{}) }

func (apparmorModule) Name() string { return "apparmor" }

const apparmorDir = "/etc/apparmor.d"

var apparmorNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func apparmorPath(name string) string { return nodeconf.ApparmorFile(name) }

// parserArgs confine the parser's includes to the target root's
// /etc/apparmor.d (or, when the root has none, to empty, never the build
// host's).
func parserArgs(h *host.Host, empty string, args ...string) []string {
	dir := filepath.Join(h.RootDir, apparmorDir)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		dir = empty
	}
	return append([]string{"-b", dir, "-I", dir, "-K", "-q"}, args...)
}

// runParser runs apparmor_parser and turns a failure into the parser's own
// error lines, with file names as installed.
func runParser(ctx context.Context, h *host.Host, name, file string, args ...string) error {
	empty, err := os.MkdirTemp("", "bellbuild-apparmor-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(empty)
	bin, err := lookTool("apparmor_parser")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, parserArgs(h, empty, append(args, file)...)...)
	cmd.Env = []string{"PATH=" + toolPath, "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	var msgs []string
	for _, line := range strings.Split(string(out), "\n") {
		if line == "" || strings.HasPrefix(line, "Cache read/write disabled") || strings.Contains(line, "is not a directory, skipping") {
			continue
		}
		msgs = append(msgs, strings.ReplaceAll(line, file, apparmorPath(name)))
	}
	if len(msgs) == 0 {
		msgs = append(msgs, err.Error())
	}
	return fmt.Errorf("apparmor_parser: %s", strings.Join(msgs, "; "))
}

func (apparmorModule) Check(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	if conf.Apparmor == nil || len(conf.Apparmor.Profiles) == 0 {
		return nil
	}
	var errs []error
	tmp, err := os.MkdirTemp("", "bellbuild-apparmor-")
	if err != nil {
		return []error{err}
	}
	defer os.RemoveAll(tmp)
	for _, name := range sortedKeys(conf.Apparmor.Profiles) {
		if !apparmorNameRE.MatchString(name) {
			errs = append(errs, fmt.Errorf("%s: not a valid profile file name", name))
			continue
		}
		p := filepath.Join(tmp, "bellbuild."+name)
		if err := os.WriteFile(p, []byte(conf.Apparmor.Profiles[name]), 0o600); err != nil {
			return append(errs, err)
		}
		if err := runParser(ctx, h, name, p, "-Q"); err != nil {
			errs = append(errs, fmt.Errorf("%s: rejected: %w", name, err))
		}
	}
	return errs
}

func (m apparmorModule) Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	aa := conf.Apparmor
	if aa == nil {
		aa = &nodeconf.Apparmor{}
	}
	want := map[string]bool{}
	for _, name := range sortedKeys(aa.Profiles) {
		file := apparmorPath(name)
		data := []byte(aa.Profiles[name])
		want[name] = true
		if _, err := h.EnsureFile("apparmor", name, host.FileSpec{Path: file, Data: data, Mode: 0o644}); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		if aa.ComplainMode {
			want["complain:"+name] = true
			link := nodeconf.ApparmorComplainLink(name)
			if _, err := h.EnsureSymlink("apparmor", "complain:"+name, link, file); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
		if h.Live {
			want["load:"+name] = true
			if err := m.load(ctx, h, name, host.Hash(data), aa.ComplainMode); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	}
	for _, k := range stale(h, "apparmor", "load:", want) {
		if err := m.unload(ctx, h, strings.TrimPrefix(k, "load:")); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range stale(h, "apparmor", "complain:", want) {
		name := strings.TrimPrefix(k, "complain:")
		if _, err := h.ReleaseSymlink("apparmor", k, nodeconf.ApparmorComplainLink(name)); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range stale(h, "apparmor", "", want) {
		if strings.Contains(k, ":") {
			continue
		}
		if _, err := h.ReleaseFile("apparmor", k, apparmorPath(k)); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// load (re)loads profile name into the kernel when its text or mode
// changed since bellbuild last loaded it. A profile the kernel refuses is
// taken back out of /etc/apparmor.d.
func (apparmorModule) load(ctx context.Context, h *host.Host, name, hash string, complain bool) error {
	mode := "enforce"
	if complain {
		mode = "complain"
	}
	rec, owned := h.Ledger.Get("apparmor", "load:"+name)
	if owned && rec.Extra["hash"] == hash && rec.Extra["mode"] == mode {
		return nil
	}
	h.Record(host.Change{Module: "apparmor", Item: name, Action: "load", From: rec.Extra["mode"], To: mode})
	if h.Plan {
		return nil
	}
	h.Ledger.Put("apparmor", "load:"+name, host.Record{Extra: map[string]string{"hash": hash, "mode": mode}})
	if err := h.SaveLedger(); err != nil {
		return err
	}
	if err := mountSecurityfs(); err != nil {
		return err
	}
	args := []string{"-r"}
	if complain {
		args = append(args, "-C")
	}
	if err := runParser(ctx, h, name, filepath.Join(h.RootDir, apparmorPath(name)), args...); err != nil {
		h.Ledger.Delete("apparmor", "load:"+name)
		if _, rerr := h.ReleaseFile("apparmor", name, apparmorPath(name)); rerr != nil {
			return fmt.Errorf("load: %w; and taking it out: %v", err, rerr)
		}
		return fmt.Errorf("load: %w (profile taken out)", err)
	}
	return nil
}

// unload removes a profile bellbuild loaded from the kernel, while its file
// (which names the profiles to remove) is still there.
func (apparmorModule) unload(ctx context.Context, h *host.Host, name string) error {
	h.Record(host.Change{Module: "apparmor", Item: name, Action: "unload"})
	if h.Plan {
		return nil
	}
	if h.Live && h.Exists(apparmorPath(name)) {
		if err := runParser(ctx, h, name, filepath.Join(h.RootDir, apparmorPath(name)), "-R"); err != nil {
			return fmt.Errorf("%s: unload: %w", name, err)
		}
	}
	h.Ledger.Delete("apparmor", "load:"+name)
	return nil
}

// mountSecurityfs mounts securityfs when the running system has not (a
// busybox init does not), since apparmor_parser loads profiles through
// /sys/kernel/security/apparmor. A kernel without AppArmor is an error.
func mountSecurityfs() error {
	const dir = "/sys/kernel/security"
	if _, err := os.Stat(dir + "/apparmor"); err == nil {
		return nil
	}
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("load: %s is missing: is sysfs mounted?", dir)
	}
	if err := unix.Mount("securityfs", dir, "securityfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("load: mounting securityfs: %w", err)
	}
	if _, err := os.Stat(dir + "/apparmor"); err != nil {
		return fmt.Errorf("load: the running kernel has no AppArmor (%s/apparmor is missing)", dir)
	}
	return nil
}
