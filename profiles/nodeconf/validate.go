package nodeconf

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// FieldError is one problem with one field of a Conf. Path names the field
// from the Conf down, e.g. `uamlite.users[0].user_crypt_passwd` or
// `exec["001-setup.sh"].rerun_interval` (see Key for how map keys are
// written), so that the site model can map it back to the file and line
// that set the value.
type FieldError struct {
	Path string
	Msg  string
	// Related are the paths of other fields that take part in the
	// problem (e.g. the rerun_policy a rerun_interval contradicts).
	Related []string
}

// Error formats e as PATH: MESSAGE.
func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// Key returns the path segment for the map key k: ".k" when k is a plain
// identifier, `["k"]` (Go-quoted) otherwise, so that keys holding dots or
// slashes (sysctl names, file paths) stay one segment.
func Key(k string) string {
	if isIdent(k) {
		return "." + k
	}
	return "[" + strconv.Quote(k) + "]"
}

// isIdent reports whether k matches [A-Za-z_][A-Za-z0-9_-]*.
func isIdent(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Index returns the path segment for list index i: "[i]".
func Index(i int) string { return "[" + strconv.Itoa(i) + "]" }

// MinInterval is the smallest rerun or retry interval in seconds, as in
// Divingbell (whose exec loop sleeps 60 s between passes).
const MinInterval = 60

// MaxSeconds is the largest timeout, rerun_interval or retry_interval: 100
// years. The applier counts time in nanoseconds (at most 292 years), so a
// value near the integer maximum overflowed: the script was killed at
// once, or ran again on every run.
const MaxSeconds = 100 * 365 * 24 * 3600

// MaxFileName is the longest name (one path component) of a file the
// applier writes: a name has at most 255 bytes, and the applier writes
// NAME through its temporary name ".NAME.bellbuild-tmp", 15 bytes longer.
const MaxFileName = 255 - len(".") - len(".bellbuild-tmp")

// MaxScriptName is the longest exec script name: the applier also writes
// the script's log, NAME.log, through ".NAME.log.bellbuild-tmp".
const MaxScriptName = MaxFileName - len(".log")

// maxPath is the longest path the kernel takes (PATH_MAX, 4096, with its
// NUL).
const maxPath = 4095

// Allowed values of enumerated fields.
var (
	RerunPolicies    = []string{"always", "never", "once_successfully"}
	BlockingPolicies = []string{"foreground", "background", "foreground_halt_pod_on_failure"}
	LimitTypes       = []string{"soft", "hard", "-"}
	// LimitItems are the items pam_limits(8) knows.
	LimitItems = []string{"core", "data", "fsize", "memlock", "nofile", "rss", "stack", "cpu",
		"nproc", "as", "maxlogins", "maxsyslogins", "nonewprivs", "priority", "locks",
		"sigpending", "msgqueue", "nice", "rtprio", "chroot"}
	// SSHKeyPrefixes are the key forms Divingbell accepts: dsa, ecdsa,
	// ed25519 and rsa.
	SSHKeyPrefixes = []string{"ssh-dss ", "ecdsa-", "ssh-ed25519 ", "ssh-rsa "}
	// DebconfTypes are debconf's question types.
	DebconfTypes = []string{"boolean", "string", "select", "multiselect", "note", "text", "password", "title", "error"}
)

var (
	cryptRE    = regexp.MustCompile(`^(\$2a\$|\$[156]\$).*\$.*`)
	userRE     = regexp.MustCompile(`^[a-z_][a-z0-9_-]*\$?$`)
	envRE      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	unitSuffix = []string{".service", ".socket", ".mount", ".automount", ".timer", ".target",
		".path", ".slice", ".swap", ".device", ".scope"}
)

// Validate checks c the way Divingbell's templates check values before they
// render (crypt hashes, SSH key forms, exec policies and intervals, ethtool
// on/off), plus what the applier needs (absolute paths, octal modes,
// required fields). It returns every problem as a *FieldError, in a
// deterministic order; nil means valid.
func (c *Conf) Validate() []error {
	v := &validator{}
	v.sysctl(c.Sysctl)
	v.limits(c.Limits)
	if c.Perm != nil {
		v.perm(c.Perm)
	}
	v.mounts(c.Mounts)
	v.ethtool(c.Ethtool)
	if c.Uamlite != nil {
		v.uamlite(c.Uamlite)
	}
	if c.Apt != nil {
		v.apt(c.Apt)
	}
	v.files(c.Files)
	v.units(c.Units)
	v.credentials(c.Credentials)
	if c.X509 != nil {
		v.x509(c.X509, c.Credentials)
	}
	v.exec(c.Exec)
	if c.Apparmor != nil {
		v.apparmor(c.Apparmor)
	}
	v.errs = append(v.errs, c.ClaimConflicts(nil)...)
	return v.errs
}

type validator struct{ errs []error }

func (v *validator) add(p, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: p, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) addRelated(p, related, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: p, Msg: fmt.Sprintf(format, args...), Related: []string{related}})
}

func (v *validator) required(p, field, val string) {
	if strings.TrimSpace(val) == "" {
		v.add(p+"."+field, "required")
	}
}

// The checks below take the path as base and field (".type", or "" for
// base itself) and join them only when there is something to report.

func (v *validator) oneOf(base, field, val string, allowed []string) {
	if !slices.Contains(allowed, val) {
		v.add(base+field, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
}

func (v *validator) absPath(base, field, val string) {
	if !path.IsAbs(val) {
		v.add(base+field, "%q is not an absolute path", val)
	} else if path.Clean(val) != val {
		v.add(base+field, "%q is not a clean path (want %q)", val, path.Clean(val))
	}
}

func (v *validator) octal(base, field, val string) {
	if !isOctalMode(val) {
		v.add(base+field, "%q is not an octal mode like 0644", val)
	}
}

// isOctalMode accepts three or four octal digits (0644, 644, 1777).
func isOctalMode(s string) bool {
	if len(s) != 3 && len(s) != 4 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '7' {
			return false
		}
	}
	return true
}

// controlChar returns the first control character (NUL, newline, tab,
// escape, DEL, ...) in s, and whether there is one.
func controlChar(s string) (byte, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return s[i], true
		}
	}
	return 0, false
}

// fileName checks name, which the applier writes as (part of) a file name
// with extra more bytes (a prefix and suffix of its own): no control
// characters, and short enough for its temporary name (MaxFileName).
func (v *validator) fileName(p, what, name string, extra int) {
	if c, bad := controlChar(name); bad {
		v.add(p, "%q contains the control character %q: not in a %s", name, c, what)
	}
	if len(name)+extra > MaxFileName {
		v.add(p, "%s is %d bytes long: at most %d", what, len(name), MaxFileName-extra)
	}
}

// seconds checks a duration in seconds against MaxSeconds.
func (v *validator) seconds(p string, val int) {
	if val > MaxSeconds {
		v.add(p, "%d seconds is more than 100 years (%d)", val, MaxSeconds)
	}
}

func (v *validator) noNewline(base, field, val string) {
	if strings.ContainsAny(val, "\n\r") {
		v.add(base+field, "must be one line")
	}
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (v *validator) sysctl(m map[string]string) {
	for _, k := range sortedKeys(m) {
		if !isSysctlName(k) {
			v.add("sysctl"+Key(k), "%q is not a sysctl name like net.ipv4.ip_forward", k)
		}
		if m[k] == "" {
			v.add("sysctl"+Key(k), "empty value")
		}
		if strings.ContainsAny(m[k], "\n\r") {
			v.add("sysctl"+Key(k), "must be one line")
		}
	}
}

// isSysctlName reports whether k is dot-separated non-empty words of
// letters, digits and _ * : @ - (the characters /proc/sys names use).
func isSysctlName(k string) bool {
	if k == "" || k[0] == '.' || k[len(k)-1] == '.' || strings.Contains(k, "..") {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == '*' || c == ':' || c == '@' || c == '-':
		default:
			return false
		}
	}
	return true
}

func (v *validator) limits(m map[string]Limit) {
	for _, k := range sortedKeys(m) {
		l, p := m[k], "limits"+Key(k)
		if strings.Contains(k, "/") || k == "." || k == ".." {
			v.add(p, "%q cannot be a file name", k)
		}
		v.fileName(p, "limits item name", k, len("bellbuild-.conf"))
		v.required(p, "domain", l.Domain)
		v.required(p, "item", l.Item)
		v.required(p, "value", l.Value)
		v.oneOf(p, ".type", l.Type, LimitTypes)
		if l.Item != "" {
			v.oneOf(p, ".item", l.Item, LimitItems)
		}
		if strings.ContainsAny(l.Domain, " \t\n") {
			v.add(p+".domain", "%q contains white space", l.Domain)
		}
		if strings.ContainsAny(l.Value, " \t\n") {
			v.add(p+".value", "%q contains white space", l.Value)
		}
	}
}

func (v *validator) perm(pm *Perm) {
	seen := map[string]int{}
	for i, pp := range pm.Paths {
		p := "perm.paths" + Index(i)
		if pp.Path == "" {
			v.add(p+".path", "required")
		} else {
			v.absPath(p, ".path", pp.Path)
			if j, dup := seen[pp.Path]; dup {
				v.add(p+".path", "%q is also perm.paths[%d]", pp.Path, j)
			}
			seen[pp.Path] = i
		}
		v.required(p, "owner", pp.Owner)
		v.required(p, "group", pp.Group)
		v.octal(p, ".permissions", pp.Permissions)
	}
	v.rerun("perm", pm.RerunPolicy, pm.RerunInterval, 0)
}

// rerun checks a rerun_policy and its intervals with Divingbell's rules: a
// finite rerun_interval needs rerun_policy always; a finite retry_interval
// needs always or once_successfully; both are at least MinInterval.
func (v *validator) rerun(p, policy string, rerunInterval, retryInterval int) {
	eff := policy
	known := true
	if policy == "" {
		eff = "always"
	} else if known = slices.Contains(RerunPolicies, policy); !known {
		v.oneOf(p, ".rerun_policy", policy, RerunPolicies)
	}
	v.seconds(p+".rerun_interval", rerunInterval)
	v.seconds(p+".retry_interval", retryInterval)
	if rerunInterval != 0 {
		if rerunInterval < MinInterval {
			v.add(p+".rerun_interval", "%d is less than %d seconds", rerunInterval, MinInterval)
		}
		if known && eff != "always" {
			v.addRelated(p+".rerun_interval", p+".rerun_policy", "needs rerun_policy always, not %q", eff)
		}
	}
	if retryInterval != 0 {
		if retryInterval < MinInterval {
			v.add(p+".retry_interval", "%d is less than %d seconds", retryInterval, MinInterval)
		}
		if known && eff != "always" && eff != "once_successfully" {
			v.addRelated(p+".retry_interval", p+".rerun_policy", "needs rerun_policy always or once_successfully, not %q", eff)
		}
	}
}

func (v *validator) mounts(m map[string]Mount) {
	for _, k := range sortedKeys(m) {
		mt, p := m[k], "mounts"+Key(k)
		if mt.MntTgt == "" {
			v.add(p+".mnt_tgt", "required")
		} else {
			v.absPath(p, ".mnt_tgt", mt.MntTgt)
		}
		v.required(p, "device", mt.Device)
		v.required(p, "type", mt.Type)
		v.noNewline(p, ".options", mt.Options)
		v.noNewline(p, ".before", mt.Before)
		v.noNewline(p, ".after", mt.After)
	}
}

func (v *validator) ethtool(m map[string]map[string]string) {
	for _, dev := range sortedKeys(m) {
		p := "ethtool" + Key(dev)
		if dev == "" || len(dev) > 15 || strings.ContainsAny(dev, "/ \t\n:") {
			v.add(p, "%q is not an interface name", dev)
		}
		for _, feat := range sortedKeys(m[dev]) {
			if val := m[dev][feat]; val != "on" && val != "off" {
				v.add(p+Key(feat), "%q is neither on nor off", val)
			}
		}
	}
}

func (v *validator) uamlite(u *Uamlite) {
	seen := map[string]int{}
	for i, usr := range u.Users {
		p := "uamlite.users" + Index(i)
		if usr.UserName == "" {
			v.add(p+".user_name", "required")
		} else {
			if !userRE.MatchString(usr.UserName) || len(usr.UserName) > 32 {
				v.add(p+".user_name", "%q is not a valid user name", usr.UserName)
			}
			if j, dup := seen[usr.UserName]; dup {
				v.add(p+".user_name", "%q is also uamlite.users[%d]", usr.UserName, j)
			}
			seen[usr.UserName] = i
		}
		// The hash is a secret: never repeat it in a message.
		if usr.UserCryptPasswd != "" && !cryptRE.MatchString(usr.UserCryptPasswd) {
			v.add(p+".user_crypt_passwd", "not a crypt(3) hash of the form $1$, $2a$, $5$ or $6$ (SALT$HASH)")
		}
		if len(usr.UserSSHKeys) == 1 && usr.UserSSHKeys[0] == UnmanagedKeys {
			continue
		}
		for j, key := range usr.UserSSHKeys {
			kp := p + ".user_sshkeys" + Index(j)
			if key == UnmanagedKeys {
				v.add(kp, "%s must be the only key", UnmanagedKeys)
				continue
			}
			ok := false
			for _, pre := range SSHKeyPrefixes {
				ok = ok || strings.HasPrefix(key, pre)
			}
			if !ok {
				v.add(kp, "not a dsa, ecdsa, ed25519 or rsa public key (ssh-dss, ecdsa-, ssh-ed25519, ssh-rsa)")
			}
			v.noNewline(kp, "", key)
		}
	}
}

func (v *validator) apt(a *Apt) {
	seen := map[string]int{}
	for i, pkg := range a.Packages {
		p := "apt.packages" + Index(i)
		if pkg.Name == "" {
			v.add(p+".name", "required")
			continue
		}
		if j, dup := seen[pkg.Name]; dup {
			v.add(p+".name", "%q is also apt.packages[%d]", pkg.Name, j)
		}
		seen[pkg.Name] = i
		for j, d := range pkg.Debconf {
			dp := p + ".debconf" + Index(j)
			v.required(dp, "question", d.Question)
			v.oneOf(dp, ".question_type", d.QuestionType, DebconfTypes)
		}
	}
	for i, r := range a.Repositories {
		p := "apt.repositories" + Index(i)
		v.required(p, "url", r.URL)
		if len(r.Distributions) == 0 {
			v.add(p+".distributions", "required")
		}
		if len(r.Components) == 0 {
			v.add(p+".components", "required")
		}
	}
	for i, b := range a.BlacklistPkgs {
		p := "apt.blacklistpkgs" + Index(i)
		if b == "" {
			v.add(p, "empty package name")
		} else if j, ok := seen[b]; ok {
			v.add(p, "%q is also requested in apt.packages[%d]", b, j)
		}
	}
}

func (v *validator) files(m map[string]File) {
	for _, k := range sortedKeys(m) {
		f, p := m[k], "files"+Key(k)
		v.absPath(p, "", k)
		if c, bad := controlChar(k); bad {
			v.add(p, "%q contains the control character %q: not in a path", k, c)
		}
		if len(k) > maxPath {
			v.add(p, "path is %d bytes long: at most %d", len(k), maxPath)
		}
		dir, base := path.Split(k)
		for _, c := range strings.Split(dir, "/") {
			if len(c) > 255 {
				v.add(p, "directory name %.20q... is %d bytes long: at most 255", c, len(c))
			}
		}
		if len(base) > MaxFileName {
			v.add(p, "file name is %d bytes long: at most %d", len(base), MaxFileName)
		}
		if f.Mode != "" {
			v.octal(p, ".mode", f.Mode)
		}
	}
}

func (v *validator) units(m map[string]Unit) {
	for _, k := range sortedKeys(m) {
		u, p := m[k], "units"+Key(k)
		ok := false
		for _, s := range unitSuffix {
			ok = ok || (strings.HasSuffix(k, s) && len(k) > len(s))
		}
		if !ok || strings.Contains(k, "/") {
			v.add(p, "%q is not a unit name like kubelet.service", k)
		}
		v.fileName(p, "unit name", k, 0)
		if u.Content == "" && u.Enabled == nil {
			v.add(p, "sets neither content nor enabled")
		}
	}
}

func (v *validator) exec(m map[string]Exec) {
	for _, k := range sortedKeys(m) {
		e, p := m[k], "exec"+Key(k)
		if strings.Contains(k, "/") || k == "." || k == ".." {
			v.add(p, "%q cannot be a script file name", k)
		}
		v.fileName(p, "script name", k, len(".log"))
		v.required(p, "data", e.Data)
		if e.BlockingPolicy != "" {
			v.oneOf(p, ".blocking_policy", e.BlockingPolicy, BlockingPolicies)
		}
		if e.Timeout < 0 {
			v.add(p+".timeout", "%d is negative", e.Timeout)
		}
		v.seconds(p+".timeout", e.Timeout)
		v.rerun(p, e.RerunPolicy, e.RerunInterval, e.RetryInterval)
		if e.RerunIntervalPersist != nil && e.RerunInterval == 0 {
			v.add(p+".rerun_interval_persist", "set without rerun_interval")
		}
		if e.RetryIntervalPersist != nil && e.RetryInterval == 0 {
			v.add(p+".retry_interval_persist", "set without retry_interval")
		}
		for _, ek := range sortedKeys(e.Env) {
			if !envRE.MatchString(ek) {
				v.add(p+".env"+Key(ek), "%q is not an environment variable name", ek)
			}
		}
	}
}

func (v *validator) apparmor(a *Apparmor) {
	for _, k := range sortedKeys(a.Profiles) {
		p := "apparmor.profiles" + Key(k)
		if k == "" || strings.Contains(k, "/") || strings.HasPrefix(k, ".") {
			v.add(p, "%q cannot be a file name under /etc/apparmor.d", k)
		}
		v.fileName(p, "profile name", k, len("bellbuild."))
		if strings.TrimSpace(a.Profiles[k]) == "" {
			v.add(p, "empty profile")
		}
	}
}

// The files the applier writes for each module: one definition, used by
// the applier and by the check that no two modules manage one file.
const (
	// SysctlFile persists every sysctl key bellbuild sets.
	SysctlFile = "/etc/sysctl.d/60-bellbuild.conf"
	// UnitDir is where units, mounts and ethtool write systemd units.
	UnitDir = "/etc/systemd/system"
	// AptSourcesFile lists the apt repositories.
	AptSourcesFile = "/etc/apt/sources.list.d/bellbuild.list"
	// StateDir is the applier's own state: ledger, backups, scripts.
	StateDir = "/var/lib/bellbuild"
	// CredentialsDir holds the credentials module's files: ca.pem, crl.pem
	// and NAME/{client,server}/{cert,private_key}.pem.
	CredentialsDir = "/etc/credentials/x509"
)

// AccountFiles are the files uamlite rewrites.
var AccountFiles = []string{"/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"}

// LimitsFile is the pam_limits file of limits item name.
func LimitsFile(name string) string { return "/etc/security/limits.d/bellbuild-" + name + ".conf" }

// SudoersFile is the sudoers fragment uamlite writes for user.
func SudoersFile(user string) string { return "/etc/sudoers.d/bellbuild-" + user }

// ApparmorFile is the file of AppArmor profile name; ApparmorComplainLink
// is the link that puts it in complain mode.
func ApparmorFile(name string) string { return "/etc/apparmor.d/bellbuild." + name }

// ApparmorComplainLink is the force-complain link of profile name.
func ApparmorComplainLink(name string) string {
	return "/etc/apparmor.d/force-complain/bellbuild." + name
}

// EthtoolUnit is the name of the unit that re-applies dev's features.
func EthtoolUnit(dev string) string { return "bellbuild-ethtool-" + dev + ".service" }

// MountUnit is the name of the .mount unit of mount point where, as
// systemd requires it (`systemd-escape --path`): /var/lib/data gives
// var-lib-data.mount.
func MountUnit(where string) string { return EscapePath(where) + ".mount" }

// EscapePath is `systemd-escape --path`.
func EscapePath(p string) string {
	p = strings.Trim(path.Clean(p), "/")
	if p == "" {
		return "-"
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '/':
			b.WriteByte('-')
		case c == '.' && i == 0, !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ':' || c == '_' || c == '.'):
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// DefaultHome is the home of a user bellbuild creates (/home/NAME), and
// what the claims check assumes for a user it adopts (root: /root) when it
// does not know the root's /etc/passwd.
func DefaultHome(user string) string {
	if user == "root" {
		return "/root"
	}
	return "/home/" + user
}

// Claim is one file a module manages: a path, or for perm a glob.
type Claim struct {
	Path string
	// Module is the module that manages it; Field the configuration
	// field that makes it do so.
	Module, Field string
	// Glob is set for a perm path: Path is a glob, matched against the
	// other modules' paths.
	Glob bool
}

// Claims returns the files c's modules manage: sysctl its file; limits,
// files, units (with content) and apparmor their files; mounts and ethtool
// their units and the links that enable them; uamlite the account files,
// each sudoers fragment and each user's ~/.ssh and authorized_keys (unless
// Unmanaged); apt its sources list; perm its globs. home gives a user's
// home directory (nil: DefaultHome; the applier passes the target root's
// /etc/passwd).
func (c *Conf) Claims(home func(user string) string) []Claim {
	if home == nil {
		home = DefaultHome
	}
	var out []Claim
	add := func(p, module, field string) { out = append(out, Claim{Path: p, Module: module, Field: field}) }
	if len(c.Sysctl) > 0 {
		add(SysctlFile, "sysctl", "sysctl")
	}
	for _, k := range sortedKeys(c.Limits) {
		add(LimitsFile(k), "limits", "limits"+Key(k))
	}
	if c.Perm != nil {
		for i, pp := range c.Perm.Paths {
			out = append(out, Claim{Path: pp.Path, Module: "perm", Field: "perm.paths" + Index(i) + ".path", Glob: true})
		}
	}
	for _, k := range sortedKeys(c.Mounts) {
		unit := MountUnit(c.Mounts[k].MntTgt)
		add(path.Join(UnitDir, unit), "mounts", "mounts"+Key(k))
		add(path.Join(UnitDir, "local-fs.target.wants", unit), "mounts", "mounts"+Key(k))
	}
	for _, dev := range sortedKeys(c.Ethtool) {
		unit := EthtoolUnit(dev)
		add(path.Join(UnitDir, unit), "ethtool", "ethtool"+Key(dev))
		add(path.Join(UnitDir, "multi-user.target.wants", unit), "ethtool", "ethtool"+Key(dev))
	}
	if c.Uamlite != nil && len(c.Uamlite.Users) > 0 {
		for _, f := range AccountFiles {
			add(f, "uamlite", "uamlite.users")
		}
		for i, u := range c.Uamlite.Users {
			p := "uamlite.users" + Index(i)
			if u.UserSudo {
				add(SudoersFile(u.UserName), "uamlite", p+".user_sudo")
			}
			if len(u.UserSSHKeys) == 1 && u.UserSSHKeys[0] == UnmanagedKeys {
				continue
			}
			ssh := path.Join(home(u.UserName), ".ssh")
			add(ssh, "uamlite", p+".user_sshkeys")
			add(path.Join(ssh, "authorized_keys"), "uamlite", p+".user_sshkeys")
		}
	}
	if c.Apt != nil && len(c.Apt.Repositories) > 0 {
		add(AptSourcesFile, "apt", "apt.repositories")
	}
	for _, k := range sortedKeys(c.Files) {
		add(k, "files", "files"+Key(k))
	}
	for _, k := range sortedKeys(c.Units) {
		if c.Units[k].Content != "" {
			add(path.Join(UnitDir, k), "units", "units"+Key(k))
		}
	}
	if c.Apparmor != nil {
		for _, k := range sortedKeys(c.Apparmor.Profiles) {
			add(ApparmorFile(k), "apparmor", "apparmor.profiles"+Key(k))
			if c.Apparmor.ComplainMode {
				add(ApparmorComplainLink(k), "apparmor", "apparmor.profiles"+Key(k))
			}
		}
	}
	return out
}

// namespaces are names a module owns whether or not this configuration
// gives it anything to do there (it may revert what an earlier one made):
// one path (exact), or every path that starts with prefix. Module "" is
// the applier's own state.
var namespaces = []struct {
	prefix, module string
	exact          bool
}{
	{"/etc/passwd", "uamlite", true}, {"/etc/shadow", "uamlite", true},
	{"/etc/group", "uamlite", true}, {"/etc/gshadow", "uamlite", true},
	{SysctlFile, "sysctl", true},
	{"/etc/security/limits.d/bellbuild-", "limits", false},
	{"/etc/sudoers.d/bellbuild-", "uamlite", false},
	{"/etc/apt/sources.list.d/bellbuild", "apt", false},
	{"/etc/apt/keyrings/bellbuild-", "apt", false},
	{"/etc/apparmor.d/bellbuild.", "apparmor", false},
	{"/etc/apparmor.d/force-complain/bellbuild.", "apparmor", false},
	{UnitDir + "/bellbuild-ethtool-", "ethtool", false},
	{CredentialsDir + "/", "credentials", false},
	{StateDir + "/", "", false},
}

// genericRank orders the modules that manage files of any name: a
// conflict is reported at the most generic of the two claims (perm over
// files over units over the modules with files of their own).
func genericRank(module string) int {
	switch module {
	case "perm":
		return 3
	case "files":
		return 2
	case "units":
		return 1
	}
	return 0
}

// ClaimConflicts reports every file two modules manage (Claims): the same
// path claimed twice, a perm glob matching another module's path, or a path
// in another module's name space. Each is a *FieldError at the more
// generic of the two claims, naming the path and both modules; the two
// would otherwise fight on every run (perm making /etc/shadow
// world-readable until uamlite puts it back; files writing the
// authorized_keys user_sshkeys manages, then finding it changed). home is
// as for Claims.
func (c *Conf) ClaimConflicts(home func(user string) string) []error {
	claims := c.Claims(home)
	v := &validator{}
	byPath := map[string][]Claim{}
	for _, cl := range claims {
		if !cl.Glob {
			byPath[cl.Path] = append(byPath[cl.Path], cl)
		}
	}
	report := func(at, other Claim, msg string) {
		if genericRank(other.Module) > genericRank(at.Module) || genericRank(other.Module) == genericRank(at.Module) && other.Field > at.Field {
			at, other = other, at
		}
		v.addRelated(at.Field, other.Field, "%s", strings.ReplaceAll(msg, "OTHER", fmt.Sprintf("%s (%s)", other.Module, other.Field)))
	}
	for _, p := range sortedKeys(byPath) {
		cls := byPath[p]
		conflict := false
		for i := 1; i < len(cls); i++ {
			// Twice in one module (a user listed twice, two mounts
			// on one mount point) is that module's check to report.
			if cls[i].Module != cls[0].Module {
				report(cls[0], cls[i], p+" is also managed by OTHER; two modules cannot manage one file")
				conflict = true
			}
		}
		if conflict {
			continue
		}
		for _, ns := range namespaces {
			if !(p == ns.prefix || !ns.exact && strings.HasPrefix(p, ns.prefix)) || cls[0].Module == ns.module {
				continue
			}
			if ns.module == "" {
				v.add(cls[0].Field, "%s is in %s, the applier's own state", p, StateDir)
			} else {
				v.add(cls[0].Field, "%s is managed by %s; configure it there", p, ns.module)
			}
			break
		}
	}
	// A glob can only match the paths that start with its part before
	// the first metacharacter: those are one range of the sorted paths.
	paths := sortedKeys(byPath)
	for _, g := range claims {
		if !g.Glob {
			continue
		}
		prefix := g.Path
		if i := strings.IndexAny(prefix, `*?[\`); i >= 0 {
			prefix = prefix[:i]
		}
		for _, p := range paths[sort.SearchStrings(paths, prefix):] {
			if !strings.HasPrefix(p, prefix) {
				break
			}
			other := byPath[p][0]
			if other.Module == "perm" {
				continue
			}
			if ok, _ := path.Match(g.Path, p); ok {
				report(g, other, fmt.Sprintf("%q matches %s, which OTHER manages; two modules cannot manage one file", g.Path, p))
			}
		}
	}
	return v.errs
}
