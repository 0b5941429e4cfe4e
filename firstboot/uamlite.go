package firstboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// uamliteModule manages local accounts as Divingbell's uamlite did, but
// writes ROOT/etc/passwd, shadow, group and gshadow itself (no useradd:
// a busybox root has none), under the lckpwdf lock, each file replaced
// atomically. Shadow files are 0640 root:shadow, or 0600 root:root when the
// root has no shadow group — never world-readable.
//
// A user that does not exist is created like useradd --create-home with a
// user private group: uid one above the highest in UID_MIN..UID_MAX of
// login.defs (gid the same number when free), GECOS "bellbuild", shell
// /bin/bash (or /bin/sh when the root has no bash), home /home/NAME made
// HOME_MODE (default 0700, see readLoginDefs) from /etc/skel. The password
// is the crypt hash given, else "*" (no password login; keys still work).
// A user that already exists is adopted: its password, expiry, sudo and
// keys are managed, and put back when it leaves the configuration.
//
// Sudo is /etc/sudoers.d/bellbuild-NAME (0440), "NAME ALL=(ALL)
// NOPASSWD:ALL" as in Divingbell, checked with the root's visudo when it has
// one. ~/.ssh/authorized_keys (0600, ~/.ssh 0700) holds the keys, unless
// user_sshkeys is [Unmanaged]; with no keys, the file bellbuild wrote is
// removed (as Divingbell did) and a file it found is emptied (Divingbell
// deleted it; an emptied file can be put back). The home is the user's:
// see uamlite_keys.go for how bellbuild writes there safely.
//
// A user created by bellbuild that leaves the configuration is expired
// (shadow expire = 1: no login of any kind), its sudo file and keys
// removed, its uid and home kept so that re-adding it gives the same uid
// back; with purge_expired_users it is deleted with its group and home
// instead.
//
// The built-in account (Divingbell's "ubuntu") is expired when at least
// one other configured user has a password and sudo, and at least one
// other configured user has sudo and SSH keys (Divingbell's two votes: a
// console login and a network login must both remain). When the votes are
// lost, bellbuild un-expires it — only if bellbuild expired it (Divingbell
// un-expired it whoever had expired it). When it is itself configured, the
// configuration wins.
//
// Ledger (module "uamlite"): "user/NAME" with Extra created, uid, gid,
// state (active, expired, purging), home (created home), and for an adopted
// user orig_pw and orig_expire (the ledger is 0600, like shadow);
// "sudo/NAME" and "keys/NAME" are files (EnsureFile); "builtin/NAME"
// remembers that bellbuild expired the built-in account.
type uamliteModule struct{}

func init() { register(uamliteModule{}) }

func (uamliteModule) Name() string { return "uamlite" }

// builtinAccount is the image's default account that Divingbell disabled
// once other accounts could log in.
const builtinAccount = "ubuntu"

const keysHeader = "# Managed by bellbuild apply (uamlite): edits are overwritten.\n"

var (
	userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	cryptRE    = regexp.MustCompile(`^\$(1|2[aby]|5|6|y|gy|7)\$[./0-9A-Za-z$=,]+$`)
	sshKeyRE   = regexp.MustCompile(`^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n\x00]*)?$`)
)

func sudoPath(user string) string { return nodeconf.SudoersFile(user) }

func sudoLine(user string) string { return user + " ALL=(ALL) NOPASSWD:ALL\n" }

// keysManaged reports whether bellbuild writes the user's authorized_keys.
func keysManaged(u nodeconf.User) bool {
	return !(len(u.UserSSHKeys) == 1 && u.UserSSHKeys[0] == nodeconf.UnmanagedKeys)
}

func (uamliteModule) Check(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	if conf.Uamlite == nil {
		return nil
	}
	var errs []error
	seen := map[string]bool{}
	passwd, _ := loadAccountDB(h, "/etc/passwd", host.Meta{})
	group, _ := loadAccountDB(h, "/etc/group", host.Meta{})
	for i, u := range conf.Uamlite.Users {
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("users[%d] %s: %s", i, u.UserName, fmt.Sprintf(format, a...)))
		}
		if !userNameRE.MatchString(u.UserName) {
			bad("user_name: want 1 to 32 of a-z, 0-9, '_' and '-', not starting with a digit or '-'")
			continue
		}
		if seen[u.UserName] {
			bad("user_name: listed twice")
		}
		seen[u.UserName] = true
		if u.UserCryptPasswd != "" && !cryptRE.MatchString(u.UserCryptPasswd) {
			// Never print the value: it may be a password pasted by mistake.
			bad("user_crypt_passwd: not a crypt(3) hash ($1$, $2a$, $2b$, $2y$, $5$, $6$, $y$, $gy$ or $7$)")
		}
		for j, k := range u.UserSSHKeys {
			if k == nodeconf.UnmanagedKeys {
				if len(u.UserSSHKeys) != 1 {
					bad("user_sshkeys[%d]: %s must be the only element", j, nodeconf.UnmanagedKeys)
				}
				continue
			}
			if !sshKeyRE.MatchString(k) {
				bad("user_sshkeys[%d]: not one SSH public key line (ssh-rsa, ssh-dss, ssh-ed25519, ecdsa-sha2-*, sk-*)", j)
			}
		}
		if passwd != nil && group != nil && passwd.get(u.UserName, 7) == nil && group.get(u.UserName, 4) != nil {
			if rec, ok := h.Ledger.Get("uamlite", "user/"+u.UserName); !ok || rec.Extra["created"] != "true" {
				bad("a group %s exists but no user: refusing to create the user over a foreign group", u.UserName)
			}
		}
	}
	// Validate assumed every home is /home/NAME: an adopted user's home
	// is where the root's /etc/passwd says, and its authorized_keys must
	// not be another module's file there either.
	home := func(user string) string {
		if passwd != nil {
			if f := passwd.get(user, 7); f != nil && path.IsAbs(f[5]) {
				return path.Clean(f[5])
			}
		}
		return nodeconf.DefaultHome(user)
	}
	return append(errs, conf.ClaimConflicts(home)...)
}

// uam is one run of the module.
type uam struct {
	h                              *host.Host
	defs                           loginDefs
	passwd, shadow, group, gshadow *accountDB
	errs                           []error
}

func (u *uam) fail(format string, a ...any) { u.errs = append(u.errs, fmt.Errorf(format, a...)) }

func (u *uam) change(item, action, detail string) {
	u.h.Record(host.Change{Module: "uamlite", Item: item, Action: action, To: detail})
}

func (uamliteModule) Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var users []nodeconf.User
	purge := false
	if conf.Uamlite != nil {
		users, purge = conf.Uamlite.Users, conf.Uamlite.PurgeExpiredUsers
	}
	if len(users) == 0 && len(h.Ledger.Keys("uamlite")) == 0 {
		return nil
	}
	if !h.Plan {
		unlock, err := lockAccounts(h)
		if err != nil {
			return []error{err}
		}
		defer unlock()
	}
	u := &uam{h: h, defs: readLoginDefs(h)}
	if err := u.load(); err != nil {
		return []error{err}
	}

	// 1. Accounts: the configured ones, then those that left, then the
	// built-in account; the ledger is saved before the files change.
	want := map[string]bool{}
	for _, usr := range users {
		want[usr.UserName] = true
		u.ensureAccount(usr)
	}
	var gone []string
	for _, key := range stale(h, "uamlite", "user/", prefixed("user/", want)) {
		gone = append(gone, strings.TrimPrefix(key, "user/"))
	}
	for _, name := range gone {
		u.retire(ctx, name, purge)
	}
	u.builtin(users, want)
	if err := u.save(); err != nil {
		return append(u.errs, err)
	}

	// 2. What lives in files: homes, sudo, keys, each a batch written
	// ahead in one ledger save.
	u.ensureHomes(users)
	u.ensureSudo(ctx, users)
	u.ensureKeysAll(users)
	// 3. Finish purges: homes go once the accounts are gone.
	for _, name := range gone {
		u.finishPurge(name, purge)
	}
	if err := h.SaveLedger(); err != nil {
		u.errs = append(u.errs, err)
	}
	return u.errs
}

func prefixed(prefix string, names map[string]bool) map[string]bool {
	out := map[string]bool{}
	for n := range names {
		out[prefix+n] = true
	}
	return out
}

func (u *uam) load() error {
	shadowMeta := host.Meta{Mode: 0o600}
	var err error
	if u.group, err = loadAccountDB(u.h, "/etc/group", host.Meta{Mode: 0o644}); err != nil {
		return err
	}
	if f := u.group.get("shadow", 4); f != nil {
		if gid, err := strconv.Atoi(f[2]); err == nil {
			shadowMeta = host.Meta{Mode: 0o640, GID: gid}
		}
	}
	if u.passwd, err = loadAccountDB(u.h, "/etc/passwd", host.Meta{Mode: 0o644}); err != nil {
		return err
	}
	if u.shadow, err = loadAccountDB(u.h, "/etc/shadow", shadowMeta); err != nil {
		return err
	}
	if u.gshadow, err = loadAccountDB(u.h, "/etc/gshadow", shadowMeta); err != nil {
		return err
	}
	// Secrets are never world- or group-writable, nor world-readable, nor
	// readable by a group other than shadow.
	for _, d := range []*accountDB{u.shadow, u.gshadow} {
		if d.meta != shadowMeta {
			d.meta = shadowMeta
			if d.exists {
				u.change(d.path, "update", "mode "+shadowMeta.String())
			}
		}
	}
	return nil
}

// rec returns the ledger record of user name (a zero one with Extra).
func (u *uam) rec(name string) (host.Record, bool) {
	r, ok := u.h.Ledger.Get("uamlite", "user/"+name)
	if r.Extra == nil {
		r.Extra = map[string]string{}
	}
	return r, ok
}

func (u *uam) put(name string, r host.Record) { u.h.Ledger.Put("uamlite", "user/"+name, r) }

// shadowEntry returns name's shadow fields, creating the entry (from the
// passwd entry's own password field) when there is none.
func (u *uam) shadowEntry(name string) []string {
	if f := u.shadow.get(name, 9); f != nil {
		return f
	}
	pw := "*"
	if p := u.passwd.get(name, 7); p != nil && p[1] != "x" && p[1] != "" {
		pw = p[1]
	}
	return []string{name, pw, u.today(), "0", "99999", "7", "", "", ""}
}

func (u *uam) today() string { return strconv.FormatInt(u.h.Now().Unix()/86400, 10) }

func (u *uam) ensureAccount(usr nodeconf.User) {
	name := usr.UserName
	pw := usr.UserCryptPasswd
	if pw == "" {
		pw = "*"
	}
	r, known := u.rec(name)
	pf := u.passwd.get(name, 7)
	if pf == nil {
		if err := u.create(name, pw, r); err != nil {
			u.fail("%s: %w", name, err)
		}
		return
	}
	if !known {
		// Adopted: remember what to put back (for the built-in account,
		// what it was before bellbuild expired it).
		sf := u.shadowEntry(name)
		r.Extra["created"] = "false"
		r.Extra["orig_pw"], r.Extra["orig_lastchg"], r.Extra["orig_expire"] = sf[1], sf[2], sf[7]
		if b, ok := u.h.Ledger.Get("uamlite", "builtin/"+name); ok {
			r.Extra["orig_expire"] = b.Original
		}
		r.HadOriginal = true
	}
	r.Extra["uid"], r.Extra["gid"] = pf[2], pf[3]
	if u.shadow.get(name, 9) == nil {
		u.change("user "+name, "update", "shadow entry")
	}
	sf := u.shadowEntry(name)
	if sf[1] != pw {
		// The value is a secret: the change says only what changed.
		u.change("user "+name, "update", "password")
		sf[1], sf[2] = pw, u.today()
	}
	if sf[7] != "" {
		u.change("user "+name, "update", "unexpired")
		sf[7] = ""
	}
	if pf[1] != "x" {
		// The password lives in shadow (shadowEntry took it from here).
		u.change("user "+name, "update", "password moved to /etc/shadow")
		pf[1] = "x"
		u.passwd.set(pf)
	}
	u.shadow.set(sf)
	if !known || r.Extra["state"] != "active" {
		r.Extra["state"] = "active"
		u.put(name, r)
	}
}

func (u *uam) create(name, pw string, r host.Record) error {
	if f := u.group.get(name, 4); f != nil && r.Extra["created"] != "true" {
		return fmt.Errorf("a group %s exists but no user", name)
	}
	uid, gid := -1, -1
	// A run killed after the ledger was saved reuses its ids.
	if n, err := strconv.Atoi(r.Extra["uid"]); err == nil && !u.passwd.ids()[n] {
		uid = n
	}
	var err error
	if uid < 0 {
		if uid, err = allocID(u.passwd.ids(), u.defs.uidMin, u.defs.uidMax); err != nil {
			return fmt.Errorf("uid: %w", err)
		}
	}
	if f := u.group.get(name, 4); f != nil {
		gid, _ = strconv.Atoi(f[2])
	} else if !u.group.ids()[uid] {
		gid = uid
	} else if gid, err = allocID(u.group.ids(), u.defs.gidMin, u.defs.gidMax); err != nil {
		return fmt.Errorf("gid: %w", err)
	}
	shell := "/bin/sh"
	if _, err := u.h.Stat("/bin/bash"); err == nil {
		shell = "/bin/bash"
	}
	home := nodeconf.DefaultHome(name)
	u.change("user "+name, "create", fmt.Sprintf("uid %d gid %d home %s", uid, gid, home))
	r.Extra["created"], r.Extra["state"] = "true", "active"
	r.Extra["uid"], r.Extra["gid"] = strconv.Itoa(uid), strconv.Itoa(gid)
	u.put(name, r)
	u.group.set([]string{name, "x", strconv.Itoa(gid), ""})
	if u.gshadow.exists {
		u.gshadow.set([]string{name, "!", "", ""})
	}
	u.passwd.set([]string{name, "x", strconv.Itoa(uid), strconv.Itoa(gid), "bellbuild", home, shell})
	u.shadow.set([]string{name, pw, u.today(), "0", "99999", "7", "", "", ""})
	return nil
}

// retire handles a user that left the configuration.
func (u *uam) retire(ctx context.Context, name string, purge bool) {
	r, _ := u.rec(name)
	if _, err := u.h.ReleaseFile("uamlite", "sudo/"+name, sudoPath(name)); err != nil {
		u.fail("%s: %w", name, err)
	}
	u.releaseKeys(name)
	if r.Extra["created"] != "true" {
		// Adopted: put back the password and expiry it had.
		if sf := u.shadow.get(name, 9); sf != nil && (sf[1] != r.Extra["orig_pw"] || sf[7] != r.Extra["orig_expire"]) {
			u.change("user "+name, "revert", "password and expiry as before")
			if sf[1] != r.Extra["orig_pw"] {
				sf[2] = r.Extra["orig_lastchg"]
			}
			sf[1], sf[7] = r.Extra["orig_pw"], r.Extra["orig_expire"]
			u.shadow.set(sf)
		}
		r.Extra["state"] = "released"
		u.put(name, r)
		return
	}
	if purge {
		if u.passwd.get(name, 7) != nil {
			u.change("user "+name, "purge", "account, group and home")
		}
		u.passwd.remove(name)
		u.shadow.remove(name)
		if gid := r.Extra["gid"]; u.group.get(name, 4) != nil && u.group.get(name, 4)[2] == gid {
			u.group.remove(name)
			u.gshadow.remove(name)
		}
		u.group.dropMember(name, 3)
		u.gshadow.dropMember(name, 2)
		u.gshadow.dropMember(name, 3)
		if r.Extra["state"] != "purging" {
			r.Extra["state"] = "purging"
			u.put(name, r)
		}
		return
	}
	if u.passwd.get(name, 7) != nil {
		// (A run killed half-way may have left no shadow entry yet.)
		sf := u.shadowEntry(name)
		if sf[7] != "1" || u.shadow.get(name, 9) == nil {
			u.change("user "+name, "expire", "")
			sf[7] = "1"
			u.shadow.set(sf)
		}
	}
	// Without a passwd entry (a creation or a purge cut short) there is no
	// account to expire; the record stays so that a re-added user gets its
	// group and ids back.
	if r.Extra["state"] != "expired" {
		r.Extra["state"] = "expired"
		u.put(name, r)
	}
}

// builtin applies Divingbell's rule for the built-in account.
func (u *uam) builtin(users []nodeconf.User, want map[string]bool) {
	key := "builtin/" + builtinAccount
	rec, owned := u.h.Ledger.Get("uamlite", key)
	for _, k := range u.h.Ledger.Keys("uamlite") {
		if strings.HasPrefix(k, "user/") && u.h.Holds("uamlite", k) {
			return // a held user's vote is unknown: decide once it is applied
		}
	}
	passVote, sshVote := false, false
	for _, usr := range users {
		if usr.UserName == builtinAccount || !usr.UserSudo {
			continue
		}
		if usr.UserCryptPasswd != "" {
			passVote = true
		}
		if keysManaged(usr) && len(usr.UserSSHKeys) > 0 {
			sshVote = true
		}
	}
	sf := u.shadow.get(builtinAccount, 9)
	if sf == nil || u.passwd.get(builtinAccount, 7) == nil {
		if owned {
			u.h.Ledger.Delete("uamlite", key)
		}
		return
	}
	switch {
	case want[builtinAccount]:
		// Configured: ensureAccount decided; forget our expiry.
		if owned {
			u.h.Ledger.Delete("uamlite", key)
		}
	case passVote && sshVote:
		if sf[7] == "" {
			u.change("user "+builtinAccount, "expire", "built-in account: other users can log in with a password and with a key, and have sudo")
			u.h.Ledger.Put("uamlite", key, host.Record{HadOriginal: true, Original: sf[7]})
			sf[7] = "1"
			u.shadow.set(sf)
		}
	case owned:
		if sf[7] == "1" {
			u.change("user "+builtinAccount, "unexpire", "built-in account: no other user with sudo has both a password and a key")
			sf[7] = rec.Original
			u.shadow.set(sf)
		}
		u.h.Ledger.Delete("uamlite", key)
	}
}

// save writes the ledger, then every account file that changed (groups
// first, so that no user ever names a group that is not there).
func (u *uam) save() error {
	if u.h.Plan {
		return nil
	}
	if err := u.h.SaveLedger(); err != nil {
		return err
	}
	for _, d := range []*accountDB{u.group, u.gshadow, u.shadow, u.passwd} {
		if d == u.gshadow && !d.exists {
			continue
		}
		if !d.changed() {
			if m, err := u.h.StatMeta(d.path); err == nil && m != d.meta {
				if err := u.h.SetMeta(d.path, d.meta); err != nil {
					return err
				}
			}
			continue
		}
		if err := u.h.WriteFile(d.path, d.bytes(), d.meta.Mode, d.meta.UID, d.meta.GID); err != nil {
			return err
		}
	}
	return nil
}

func (u *uam) ids(name string) (int, int, string, bool) {
	pf := u.passwd.get(name, 7)
	if pf == nil {
		return 0, 0, "", false
	}
	uid, err1 := strconv.Atoi(pf[2])
	gid, err2 := strconv.Atoi(pf[3])
	return uid, gid, pf[5], err1 == nil && err2 == nil && path.IsAbs(pf[5])
}

// ensureHomes creates the homes of the users bellbuild created, from
// /etc/skel: the records of every home to make are saved, then the homes
// are made.
func (u *uam) ensureHomes(users []nodeconf.User) {
	type homeWork struct {
		name, home string
		uid, gid   int
	}
	var todo []homeWork
	for _, usr := range users {
		name := usr.UserName
		r, _ := u.rec(name)
		if r.Extra["created"] != "true" {
			continue
		}
		uid, gid, home, ok := u.ids(name)
		if !ok {
			continue
		}
		if _, err := u.h.Lstat(home); err == nil || !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		u.change(home, "create", fmt.Sprintf("home %04o %d:%d", u.defs.homeMode.Perm(), uid, gid))
		if u.h.Plan {
			continue
		}
		if r.Extra["home"] != "created" {
			r.Extra["home"] = "created"
			u.put(name, r)
		}
		todo = append(todo, homeWork{name, home, uid, gid})
	}
	if len(todo) == 0 {
		return
	}
	if err := u.h.SaveLedger(); err != nil {
		u.fail("homes: %w", err)
		return
	}
	for _, w := range todo {
		if err := u.makeHome(w.home, w.uid, w.gid); err != nil {
			u.fail("%s: home: %w", w.name, err)
		}
	}
}

func (u *uam) makeHome(home string, uid, gid int) error {
	root := u.h.Root()
	rel := strings.TrimPrefix(home, "/")
	if err := root.MkdirAll(path.Dir(rel), 0o755); err != nil {
		return err
	}
	if err := u.h.NoteTempDir(path.Dir(home)); err != nil {
		return err
	}
	// Built under a temporary name and renamed: a home is there whole or
	// not at all.
	tmp := path.Join(path.Dir(rel), host.TempName(path.Base(rel)))
	if err := root.RemoveAll(tmp); err != nil {
		return err
	}
	if err := root.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	err := fs.WalkDir(root.FS(), "etc/skel", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == "etc/skel" {
				return fs.SkipAll
			}
			return err
		}
		dst := path.Join(tmp, strings.TrimPrefix(strings.TrimPrefix(p, "etc/skel"), "/"))
		if p == "etc/skel" {
			return nil
		}
		fi, err := root.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := root.Readlink(p)
			if err != nil {
				return err
			}
			if err := root.Symlink(t, dst); err != nil {
				return err
			}
			return root.Lchown(dst, uid, gid)
		case fi.IsDir():
			if err := root.Mkdir(dst, fi.Mode().Perm()); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			data, err := root.ReadFile(p)
			if err != nil {
				return err
			}
			if err := root.WriteFile(dst, data, fi.Mode().Perm()); err != nil {
				return err
			}
		default:
			return nil
		}
		if err := root.Chown(dst, uid, gid); err != nil {
			return err
		}
		return root.Chmod(dst, fi.Mode().Perm())
	})
	if err != nil {
		return err
	}
	if err := root.Chown(tmp, uid, gid); err != nil {
		return err
	}
	if err := root.Chmod(tmp, u.defs.homeMode); err != nil {
		return err
	}
	return root.Rename(tmp, rel)
}

// ensureSudo gives each user with user_sudo its sudoers fragment (one
// batch) and takes it from the others.
func (u *uam) ensureSudo(ctx context.Context, users []nodeconf.User) {
	var items []host.FileItem
	for _, usr := range users {
		name := usr.UserName
		if !usr.UserSudo {
			if _, err := u.h.ReleaseFile("uamlite", "sudo/"+name, sudoPath(name)); err != nil {
				u.fail("%s: %w", name, err)
			}
			continue
		}
		data := sudoLine(name)
		if err := u.checkSudoers(ctx, name, data); err != nil {
			u.fail("%s: sudo: %w", name, err)
			continue
		}
		items = append(items, host.FileItem{Key: "sudo/" + name, Spec: host.FileSpec{Path: sudoPath(name), Data: []byte(data), Mode: 0o440}})
	}
	_, errs := u.h.EnsureFiles("uamlite", items)
	for _, err := range errs {
		if name, ok := strings.CutPrefix(itemKey(err), "sudo/"); ok {
			u.fail("%s: %w", name, err)
		} else {
			u.fail("sudo: %w", err)
		}
	}
}

// sudoersLineRE is the only form bellbuild writes.
var sudoersLineRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31} ALL=\(ALL\) NOPASSWD:ALL\n$`)

// checkSudoers validates a sudoers fragment before it is installed: with
// the root's own visudo when it has one (the file goes to a dot-name, which
// sudo's #includedir ignores, and is removed after), and always with a
// strict check of the one line bellbuild writes. It runs only when the
// file would change.
func (u *uam) checkSudoers(ctx context.Context, name, data string) error {
	if !sudoersLineRE.MatchString(data) || !strings.HasPrefix(data, name+" ") {
		return fmt.Errorf("refusing sudoers line %q", strings.TrimSpace(data))
	}
	if cur, err := u.h.ReadFile(sudoPath(name)); (err == nil && string(cur) == data) || u.h.Plan {
		return nil
	}
	return visudoCheck(ctx, u.h, "/etc/sudoers.d/.bellbuild-check-"+name, []byte(data), host.Meta{Mode: 0o440})
}

// visudoCheck checks data, the content a sudoers file is about to get,
// with the root's own visudo -c when it has one: the content goes to tmp,
// a ".bellbuild-check-NAME" beside the file (a name sudo's #includedir
// ignores, and CleanTemps removes after a kill), with the mode and owner
// the file will have, and is removed after. A root without visudo has
// nothing to check with.
func visudoCheck(ctx context.Context, h *host.Host, tmp string, data []byte, m host.Meta) error {
	visudo := ""
	for _, v := range []string{"/usr/sbin/visudo", "/usr/bin/visudo", "/sbin/visudo"} {
		if _, err := h.Stat(v); err == nil {
			visudo = v
			break
		}
	}
	if visudo == "" {
		return nil
	}
	if err := h.WriteFile(tmp, data, m.Mode, m.UID, m.GID); err != nil {
		return err
	}
	defer h.Remove(tmp)
	out, err := inRoot(ctx, h, nil, visudo, "-c", "-q", "-f", tmp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("visudo -c: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// finishPurge removes a purged user's home and forgets the user, once its
// entries are gone from the account files (a purge that a killed run left
// half-done is finished by the next purge, not by a run that expires); for
// an adopted user that was released, it only forgets.
func (u *uam) finishPurge(name string, purge bool) {
	r, ok := u.rec(name)
	if !ok || u.h.Plan {
		return
	}
	switch r.Extra["state"] {
	case "released":
	case "purging":
		if !purge || u.passwd.get(name, 7) != nil {
			return
		}
		if g := u.group.get(name, 4); g != nil && g[2] == r.Extra["gid"] {
			return
		}
		if r.Extra["home"] == "created" {
			home := "home/" + name
			if _, err := u.h.Lstat(home); err == nil {
				u.change("/"+home, "remove", "home of purged user")
				if err := u.h.Root().RemoveAll(home); err != nil {
					u.fail("%s: home: %w", name, err)
					return
				}
			}
		}
	default:
		return
	}
	u.h.Ledger.Delete("uamlite", "user/"+name)
}
