package firstboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// A test binary started with this variable set holds the lckpwdf lock of
// the given root until killed (fcntl locks are per process, so the test
// needs another process to contend with).
const holdPwdLockEnv = "BELLBUILD_TEST_HOLD_PWD_LOCK"

func init() {
	root := os.Getenv(holdPwdLockEnv)
	if root == "" {
		return
	}
	h, err := host.Open(host.Options{RootDir: root})
	if err == nil {
		_, err = lockAccounts(h)
	}
	if err != nil {
		fmt.Println("lock:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	time.Sleep(time.Hour)
	os.Exit(0)
}

// uamEntry renders a path of the root for comparison: "file MODE UID:GID"
// plus the content, "dir MODE UID:GID", "link TARGET" or missing.
func uamEntry(t *testing.T, root, p string) string {
	t.Helper()
	full := filepath.Join(root, p)
	fi, err := os.Lstat(full)
	if errors.Is(err, fs.ErrNotExist) {
		return missing
	}
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	meta := fmt.Sprintf("%04o %d:%d", permBits(fi.Mode()), st.Uid, st.Gid)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(full)
		return "link " + target
	case fi.IsDir():
		return "dir " + meta
	}
	data, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	return "file " + meta + "\n" + string(data)
}

// uamStamps returns the inode and change time of every path under root
// (but the applier's own state), to prove that a rerun rewrote nothing.
func uamStamps(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(p, "/var/lib/bellbuild") {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		out[strings.TrimPrefix(p, root)] = fmt.Sprintf("%d %d %d", st.Ino, st.Mtim.Nano(), st.Ctim.Nano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// uamBuild writes files ("MODE UID:GID\ncontent", or "dir MODE UID:GID")
// under root.
func uamBuild(t *testing.T, root string, files map[string]string) {
	t.Helper()
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		full := filepath.Join(root, p)
		head, content, _ := strings.Cut(files[p], "\n")
		isDir := strings.HasPrefix(head, "dir ")
		head = strings.TrimPrefix(head, "dir ")
		var mode uint32
		var uid, gid int
		if _, err := fmt.Sscanf(head, "%o %d:%d", &mode, &uid, &gid); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if isDir {
			if err := os.Mkdir(full, 0o755); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(full, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, host.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
}

// permBits is the Unix form (0o4755) of a mode's permission bits.
func permBits(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	for bit, mb := range map[uint32]fs.FileMode{0o4000: fs.ModeSetuid, 0o2000: fs.ModeSetgid, 0o1000: fs.ModeSticky} {
		if m&mb != 0 {
			u |= bit
		}
	}
	return u
}

var uamNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// uamDay is the shadow "last change" day of uamNow.
var uamDay = strconv.FormatInt(uamNow.Unix()/86400, 10)

// debianAccounts is a root like Debian's: shadow group, gshadow, bash,
// skel, login.defs, a built-in "ubuntu" account with a password and sudo,
// and an existing user "app" (uid 1234).
var debianAccounts = map[string]string{
	"/etc/passwd": "0644 0:0\nroot:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
		"ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\napp:x:1234:1234:App:/srv/app:/bin/sh\n",
	"/etc/shadow": "0640 0:42\nroot:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n" +
		"ubuntu:$6$builtin$hash:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n",
	"/etc/group":         "0644 0:0\nroot:x:0:\ndaemon:x:1:\nsudo:x:27:ubuntu\nshadow:x:42:\nubuntu:x:1000:\napp:x:1234:\n",
	"/etc/gshadow":       "0640 0:42\nroot:*::\ndaemon:*::\nsudo:*::ubuntu\nshadow:*::\nubuntu:!::\napp:!::\n",
	"/etc/login.defs":    "0644 0:0\n# login.defs\nUID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\nGID_MIN\t\t\t 1000\nGID_MAX\t\t\t60000\n",
	"/etc/skel/.profile": "0644 0:0\n# skel profile\n",
	"/etc/skel/.config":  "dir 0755 0:0",
	"/bin/bash":          "0755 0:0\n",
	"/etc/sudoers.d":     "dir 0755 0:0",
	"/home/ubuntu":       "dir 0750 1000:1000",
	"/srv/app":           "dir 0755 1234:1234",
}

const (
	aliceHash = "$6$rounds=5000$saltsalt$0123456789abcdefABCDEF./"
	aliceKey  = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBellbuildTestKeyAliceAAAAAAAAAAAAAAAAAAAA alice@example"
	appKey    = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCappKey app@example"
)

type uamStep struct {
	name string
	// before changes the root first (path → entry as in uamBuild).
	before map[string]string
	conf   *nodeconf.Uamlite
	plan   bool
	// want maps paths to their expected entry (uamEntry form) or missing.
	want        map[string]string
	wantChanges []string // "action item", in order
	wantErrs    []string
	// unchanged: not a file of the root may be rewritten by this step.
	unchanged bool
}

func applyUamlite(t *testing.T, root string, st uamStep) ([]host.Change, []string, string) {
	t.Helper()
	var logBuf testtool.Buffer
	h, err := host.Open(host.Options{RootDir: root, Plan: st.plan, Now: func() time.Time { return uamNow },
		Log: slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	conf := &nodeconf.Conf{Uamlite: st.conf}
	errs := (uamliteModule{}).Check(context.Background(), h, conf)
	if len(errs) == 0 {
		errs = (uamliteModule{}).Apply(context.Background(), h, conf)
	}
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, err := range errs {
		msgs = append(msgs, err.Error())
	}
	return h.Changes(), msgs, logBuf.String()
}

func runUamSteps(t *testing.T, root string, steps []uamStep) {
	t.Helper()
	for i, st := range steps {
		if st.before != nil {
			uamBuild(t, root, st.before)
		}
		stamps := uamStamps(t, root)
		changes, errs, log := applyUamlite(t, root, st)
		var got []string
		for _, c := range changes {
			got = append(got, c.Action+" "+c.Item)
			// Password hashes are secrets: never in a change.
			if strings.Contains(c.From+c.To, "$6$") {
				t.Errorf("step %d (%s): a change shows a password hash: %+v", i, st.name, c)
			}
		}
		if strings.Contains(log, "$6$") {
			t.Errorf("step %d (%s): the log shows a password hash:\n%s", i, st.name, log)
		}
		if diff := cmp.Diff(st.wantChanges, got); diff != "" {
			t.Errorf("step %d (%s): changes (-want +got):\n%s", i, st.name, diff)
		}
		if diff := cmp.Diff(st.wantErrs, errs); diff != "" {
			t.Errorf("step %d (%s): errors (-want +got):\n%s", i, st.name, diff)
		}
		for _, p := range sortedKeys(st.want) {
			if got := uamEntry(t, root, p); got != st.want[p] {
				t.Errorf("step %d (%s): %s:\n got: %q\nwant: %q", i, st.name, p, got, st.want[p])
			}
		}
		if st.unchanged || st.plan {
			if diff := cmp.Diff(stamps, uamStamps(t, root)); diff != "" {
				t.Errorf("step %d (%s): files were rewritten (-before +after):\n%s", i, st.name, diff)
			}
		}
		// Whatever happened, the secrets are not world-readable.
		for _, p := range []string{"/etc/shadow", "/etc/gshadow", host.LedgerPath} {
			if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().Perm()&0o007 != 0 {
				t.Errorf("step %d (%s): %s is %v", i, st.name, p, fi.Mode())
			}
		}
	}
}

func TestUamlite(t *testing.T) {
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "uamlite tests chown files to test users: need root")
	}
	alice := nodeconf.User{UserName: "alice", UserCryptPasswd: aliceHash, UserSudo: true, UserSSHKeys: []string{aliceKey}}
	bob := nodeconf.User{UserName: "bob"}
	keys := "file 0600 1235:1235\n" + keysHeader + aliceKey + "\n"
	d := uamDay

	t.Run("create, converge, expire, re-add, purge", func(t *testing.T) {
		root := t.TempDir()
		uamBuild(t, root, debianAccounts)
		both := &nodeconf.Uamlite{Users: []nodeconf.User{alice, bob}}
		created := map[string]string{
			"/etc/passwd": "file 0644 0:0\nroot:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
				"ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\napp:x:1234:1234:App:/srv/app:/bin/sh\n" +
				"alice:x:1235:1235:bellbuild:/home/alice:/bin/bash\nbob:x:1236:1236:bellbuild:/home/bob:/bin/bash\n",
			"/etc/shadow": "file 0640 0:42\nroot:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n" +
				"ubuntu:$6$builtin$hash:19000:0:99999:7::1:\napp:!:19000:0:99999:7:::\n" +
				"alice:" + aliceHash + ":" + d + ":0:99999:7:::\nbob:*:" + d + ":0:99999:7:::\n",
			"/etc/group":                       "file 0644 0:0\nroot:x:0:\ndaemon:x:1:\nsudo:x:27:ubuntu\nshadow:x:42:\nubuntu:x:1000:\napp:x:1234:\nalice:x:1235:\nbob:x:1236:\n",
			"/etc/gshadow":                     "file 0640 0:42\nroot:*::\ndaemon:*::\nsudo:*::ubuntu\nshadow:*::\nubuntu:!::\napp:!::\nalice:!::\nbob:!::\n",
			"/home/alice":                      "dir 0700 1235:1235",
			"/home/alice/.profile":             "file 0644 1235:1235\n# skel profile\n",
			"/home/alice/.config":              "dir 0755 1235:1235",
			"/home/alice/.ssh":                 "dir 0700 1235:1235",
			"/home/alice/.ssh/authorized_keys": keys,
			"/home/bob":                        "dir 0700 1236:1236",
			"/home/bob/.ssh":                   missing,
			"/etc/sudoers.d/bellbuild-alice":   "file 0440 0:0\nalice ALL=(ALL) NOPASSWD:ALL\n",
			"/etc/sudoers.d/bellbuild-bob":     missing,
			"/etc/.pwd.lock":                   "file 0600 0:0\n",
		}
		createChanges := []string{
			"create user alice", "create user bob", "expire user ubuntu",
			"create /home/alice", "create /home/bob",
			"create /etc/sudoers.d/bellbuild-alice", "create /home/alice/.ssh", "create /home/alice/.ssh/authorized_keys",
		}
		expired := map[string]string{
			"/etc/shadow": "file 0640 0:42\nroot:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n" +
				"ubuntu:$6$builtin$hash:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n" +
				"alice:" + aliceHash + ":" + d + ":0:99999:7::1:\nbob:*:" + d + ":0:99999:7:::\n",
			"/home/alice/.profile":             "file 0644 1235:1235\n# skel profile\n",
			"/home/alice/.ssh/authorized_keys": missing,
			"/etc/sudoers.d/bellbuild-alice":   missing,
		}
		runUamSteps(t, root, []uamStep{{
			name: "plan", plan: true, conf: both,
			wantChanges: createChanges,
			want:        map[string]string{"/home/alice": missing, "/etc/.pwd.lock": missing},
		}, {
			name: "apply", conf: both,
			wantChanges: createChanges,
			want:        created,
		}, {
			name: "same again", conf: both, unchanged: true,
			want: created,
		}, {
			name: "alice leaves: expired, sudo and keys gone, home kept; ubuntu back",
			conf: &nodeconf.Uamlite{Users: []nodeconf.User{bob}},
			wantChanges: []string{
				"revert /etc/sudoers.d/bellbuild-alice", "revert /home/alice/.ssh/authorized_keys",
				"expire user alice", "unexpire user ubuntu",
			},
			want: expired,
		}, {
			name: "alice leaves, same again", conf: &nodeconf.Uamlite{Users: []nodeconf.User{bob}}, unchanged: true,
			want: expired,
		}, {
			name: "alice back: same uid, unexpired",
			conf: both,
			wantChanges: []string{
				"update user alice", "expire user ubuntu",
				"create /etc/sudoers.d/bellbuild-alice", "create /home/alice/.ssh/authorized_keys",
			},
			want: created,
		}, {
			name: "purged",
			conf: &nodeconf.Uamlite{PurgeExpiredUsers: true, Users: []nodeconf.User{bob}},
			wantChanges: []string{
				"revert /etc/sudoers.d/bellbuild-alice", "revert /home/alice/.ssh/authorized_keys",
				"purge user alice", "unexpire user ubuntu", "remove /home/alice",
			},
			want: map[string]string{
				"/etc/passwd": "file 0644 0:0\nroot:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
					"ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\napp:x:1234:1234:App:/srv/app:/bin/sh\n" +
					"bob:x:1236:1236:bellbuild:/home/bob:/bin/bash\n",
				"/etc/shadow": "file 0640 0:42\nroot:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n" +
					"ubuntu:$6$builtin$hash:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n" +
					"bob:*:" + d + ":0:99999:7:::\n",
				"/etc/group":   "file 0644 0:0\nroot:x:0:\ndaemon:x:1:\nsudo:x:27:ubuntu\nshadow:x:42:\nubuntu:x:1000:\napp:x:1234:\nbob:x:1236:\n",
				"/etc/gshadow": "file 0640 0:42\nroot:*::\ndaemon:*::\nsudo:*::ubuntu\nshadow:*::\nubuntu:!::\napp:!::\nbob:!::\n",
				"/home/alice":  missing,
			},
		}, {
			name: "purged, same again", conf: &nodeconf.Uamlite{PurgeExpiredUsers: true, Users: []nodeconf.User{bob}}, unchanged: true,
		}, {
			name:        "nothing configured: bob expired",
			conf:        nil,
			wantChanges: []string{"expire user bob"},
			want: map[string]string{
				"/etc/shadow": "file 0640 0:42\nroot:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n" +
					"ubuntu:$6$builtin$hash:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n" +
					"bob:*:" + d + ":0:99999:7::1:\n",
				"/home/bob": "dir 0700 1236:1236",
			},
		}})
	})

	t.Run("Divingbell's two votes for the built-in account", func(t *testing.T) {
		root := t.TempDir()
		uamBuild(t, root, debianAccounts)
		pwOnly := nodeconf.User{UserName: "carol", UserCryptPasswd: aliceHash, UserSudo: true}
		keyOnly := nodeconf.User{UserName: "dave", UserSudo: true, UserSSHKeys: []string{aliceKey}}
		noSudo := nodeconf.User{UserName: "erin", UserCryptPasswd: aliceHash, UserSSHKeys: []string{aliceKey}}
		expireOf := func(t *testing.T) string {
			f := strings.Split(strings.Split(uamEntry(t, root, "/etc/shadow"), "ubuntu:")[1], "\n")[0]
			return strings.Split(f, ":")[6]
		}
		for _, c := range []struct {
			users []nodeconf.User
			want  string
		}{
			{[]nodeconf.User{pwOnly}, ""},
			{[]nodeconf.User{keyOnly}, ""},
			{[]nodeconf.User{noSudo}, ""},
			{[]nodeconf.User{pwOnly, keyOnly}, "1"}, // two users, one vote each
			{[]nodeconf.User{pwOnly, keyOnly, {UserName: "ubuntu", UserSSHKeys: []string{nodeconf.UnmanagedKeys}}}, ""},
			{[]nodeconf.User{keyOnly, {UserName: "frank", UserCryptPasswd: aliceHash, UserSudo: true, UserSSHKeys: []string{nodeconf.UnmanagedKeys}}}, "1"},
			{nil, ""},
		} {
			_, errs, _ := applyUamlite(t, root, uamStep{conf: &nodeconf.Uamlite{Users: c.users}})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			var names []string
			for _, u := range c.users {
				names = append(names, u.UserName)
			}
			if got := expireOf(t); got != c.want {
				t.Errorf("users %v: ubuntu's expire = %q, want %q", names, got, c.want)
			}
		}
		// Expired by someone else: bellbuild does not un-expire it.
		shadow := uamEntry(t, root, "/etc/shadow")
		shadow = strings.Replace(strings.TrimPrefix(shadow, "file 0640 0:42\n"), "ubuntu:$6$builtin$hash:19000:0:99999:7:::", "ubuntu:$6$builtin$hash:19000:0:99999:7::5:", 1)
		uamBuild(t, root, map[string]string{"/etc/shadow": "0640 0:42\n" + shadow})
		applyUamlite(t, root, uamStep{conf: &nodeconf.Uamlite{Users: []nodeconf.User{pwOnly, keyOnly}}})
		applyUamlite(t, root, uamStep{conf: &nodeconf.Uamlite{Users: []nodeconf.User{pwOnly}}})
		if got := expireOf(t); got != "5" {
			t.Errorf("an expiry bellbuild did not set was changed to %q", got)
		}
	})

	t.Run("an adopted user gets its password and keys back", func(t *testing.T) {
		root := t.TempDir()
		uamBuild(t, root, debianAccounts)
		uamBuild(t, root, map[string]string{
			"/srv/app/.ssh":                 "dir 0700 1234:1234",
			"/srv/app/.ssh/authorized_keys": "0600 1234:1234\nssh-rsa AAAAold old@example\n",
		})
		app := nodeconf.User{UserName: "app", UserCryptPasswd: aliceHash, UserSudo: true, UserSSHKeys: []string{appKey}}
		before := uamEntry(t, root, "/etc/shadow")
		runUamSteps(t, root, []uamStep{{
			name: "adopt", conf: &nodeconf.Uamlite{Users: []nodeconf.User{app}},
			wantChanges: []string{"update user app", "expire user ubuntu", "create /etc/sudoers.d/bellbuild-app", "update /srv/app/.ssh/authorized_keys"},
			want: map[string]string{
				"/srv/app/.ssh/authorized_keys": "file 0600 1234:1234\n" + keysHeader + appKey + "\n",
				"/etc/passwd":                   "file 0644 0:0\nroot:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\napp:x:1234:1234:App:/srv/app:/bin/sh\n",
			},
		}, {
			name: "same again", conf: &nodeconf.Uamlite{Users: []nodeconf.User{app}}, unchanged: true,
		}, {
			name:        "keys unmanaged: left as they are",
			conf:        &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "app", UserCryptPasswd: aliceHash, UserSudo: true, UserSSHKeys: []string{"Unmanaged"}}}},
			wantChanges: []string{"unexpire user ubuntu", "update user app"},
			want: map[string]string{
				"/srv/app/.ssh/authorized_keys": "file 0600 1234:1234\n" + keysHeader + appKey + "\n",
			},
		}, {
			name: "keys managed again",
			conf: &nodeconf.Uamlite{Users: []nodeconf.User{app}},
			// the file bellbuild had written is now a foreign file: taken over
			// again (backed up), not a conflict
			wantChanges: []string{"expire user ubuntu", "update /srv/app/.ssh/authorized_keys"},
		}, {
			name: "released", conf: nil,
			wantChanges: []string{"revert /etc/sudoers.d/bellbuild-app", "revert /srv/app/.ssh/authorized_keys", "revert user app", "unexpire user ubuntu"},
			want: map[string]string{
				"/etc/shadow":                   before,
				"/etc/sudoers.d/bellbuild-app":  missing,
				"/srv/app/.ssh/authorized_keys": "file 0600 1234:1234\n" + keysHeader + appKey + "\n",
			},
		}})
	})

	t.Run("no keys: bellbuild's file goes, a found one is emptied", func(t *testing.T) {
		root := t.TempDir()
		uamBuild(t, root, debianAccounts)
		uamBuild(t, root, map[string]string{
			"/srv/app/.ssh":                 "dir 0700 1234:1234",
			"/srv/app/.ssh/authorized_keys": "0600 1234:1234\nssh-rsa AAAAold old@example\n",
		})
		withKeys := &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "alice", UserSSHKeys: []string{aliceKey}}, {UserName: "app"}}}
		noKeys := &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "alice"}, {UserName: "app"}}}
		runUamSteps(t, root, []uamStep{{
			name: "alice with a key, app with none", conf: withKeys,
			wantChanges: []string{"create user alice", "update user app", "create /home/alice", "create /home/alice/.ssh", "create /home/alice/.ssh/authorized_keys", "update /srv/app/.ssh/authorized_keys"},
			want: map[string]string{
				"/srv/app/.ssh/authorized_keys": "file 0600 1234:1234\n" + keysHeader,
			},
		}, {
			// Divingbell's gate (uamlite test 2): keys dropped, file gone.
			name: "alice's keys dropped", conf: noKeys,
			wantChanges: []string{"revert /home/alice/.ssh/authorized_keys"},
			want: map[string]string{
				"/home/alice/.ssh/authorized_keys": missing,
				"/srv/app/.ssh/authorized_keys":    "file 0600 1234:1234\n" + keysHeader,
			},
		}, {
			name: "same again", conf: noKeys, unchanged: true,
		}, {
			name: "released: app's own file is back", conf: nil,
			wantChanges: []string{"expire user alice", "revert /srv/app/.ssh/authorized_keys", "revert user app"},
			want: map[string]string{
				"/srv/app/.ssh/authorized_keys": "file 0600 1234:1234\nssh-rsa AAAAold old@example\n",
			},
		}})
	})

	t.Run("a hostile home cannot redirect bellbuild's writes", func(t *testing.T) {
		root := t.TempDir()
		uamBuild(t, root, debianAccounts)
		uamBuild(t, root, map[string]string{"/root/.ssh": "dir 0700 0:0"})
		conf := func(key string) *nodeconf.Uamlite {
			return &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "alice", UserSSHKeys: []string{key}}}}
		}
		if _, errs, _ := applyUamlite(t, root, uamStep{conf: conf(aliceKey)}); len(errs) > 0 {
			t.Fatal(errs)
		}
		shadow := uamEntry(t, root, "/etc/shadow")
		ssh := filepath.Join(root, "home/alice/.ssh")
		// alice plants the temporary name, pointing at /etc/shadow.
		for _, target := range []string{"/etc/shadow", "../../../etc/shadow"} {
			os.Remove(filepath.Join(ssh, ".authorized_keys.bellbuild-tmp"))
			if err := os.Symlink(target, filepath.Join(ssh, ".authorized_keys.bellbuild-tmp")); err != nil {
				t.Fatal(err)
			}
			key := appKey + " " + target
			if _, errs, _ := applyUamlite(t, root, uamStep{conf: conf(key)}); len(errs) > 0 {
				t.Fatal(errs)
			}
			if got := uamEntry(t, root, "/etc/shadow"); got != shadow {
				t.Fatalf("/etc/shadow changed through a planted symlink:\n%s", got)
			}
			if got, want := uamEntry(t, root, "/home/alice/.ssh/authorized_keys"), "file 0600 1235:1235\n"+keysHeader+key+"\n"; got != want {
				t.Errorf("authorized_keys = %q, want %q", got, want)
			}
		}
		// alice swaps ~/.ssh for a symlink to root's.
		if err := os.RemoveAll(ssh); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/root/.ssh", ssh); err != nil {
			t.Fatal(err)
		}
		_, errs, _ := applyUamlite(t, root, uamStep{conf: conf(aliceKey)})
		if want := []string{"alice: /home/alice/.ssh is a symlink: not following it"}; !cmp.Equal(errs, want) {
			t.Errorf("errors = %q, want %q", errs, want)
		}
		if got := uamEntry(t, root, "/root/.ssh/authorized_keys"); got != missing {
			t.Errorf("bellbuild wrote root's authorized_keys: %q", got)
		}
		if got := uamEntry(t, root, "/root/.ssh"); got != "dir 0700 0:0" {
			t.Errorf("root's .ssh changed: %q", got)
		}
	})

	t.Run("busybox root: no shadow, no bash, no skel", func(t *testing.T) {
		root := t.TempDir()
		uamBuild(t, root, map[string]string{
			"/etc/passwd": "0644 0:0\nroot::0:0:root:/root:/bin/sh\n",
			"/etc/group":  "0644 0:0\nroot:x:0:\n",
		})
		runUamSteps(t, root, []uamStep{{
			name: "create", conf: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "ops", UserSSHKeys: []string{aliceKey}}}},
			wantChanges: []string{"create user ops", "create /home/ops", "create /home/ops/.ssh", "create /home/ops/.ssh/authorized_keys"},
			want: map[string]string{
				"/etc/passwd":                    "file 0644 0:0\nroot::0:0:root:/root:/bin/sh\nops:x:1000:1000:bellbuild:/home/ops:/bin/sh\n",
				"/etc/shadow":                    "file 0600 0:0\nops:*:" + d + ":0:99999:7:::\n",
				"/etc/group":                     "file 0644 0:0\nroot:x:0:\nops:x:1000:\n",
				"/etc/gshadow":                   missing,
				"/home/ops":                      "dir 0700 1000:1000",
				"/home/ops/.ssh/authorized_keys": "file 0600 1000:1000\n" + keysHeader + aliceKey + "\n",
			},
		}, {
			name: "same again", conf: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "ops", UserSSHKeys: []string{aliceKey}}}}, unchanged: true,
		}})
	})

	t.Run("a world-readable shadow is fixed; a foreign group blocks creation", func(t *testing.T) {
		root := t.TempDir()
		uamBuild(t, root, debianAccounts)
		uamBuild(t, root, map[string]string{"/etc/shadow": "0644 0:0\nroot:*:19000:0:99999:7:::\n"})
		runUamSteps(t, root, []uamStep{{
			name: "group app exists", conf: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "ubuntu"}}},
			wantChanges: []string{"update /etc/shadow", "update user ubuntu"}, // no shadow entry
			want: map[string]string{
				"/etc/shadow": "file 0640 0:42\nroot:*:19000:0:99999:7:::\nubuntu:*:" + d + ":0:99999:7:::\n",
			},
		}})
		uamBuild(t, root, map[string]string{"/etc/group": "0644 0:0\nroot:x:0:\nshadow:x:42:\nubuntu:x:1000:\nwww:x:33:\n"})
		_, errs, _ := applyUamlite(t, root, uamStep{conf: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "www"}}}})
		if want := []string{"users[0] www: a group www exists but no user: refusing to create the user over a foreign group"}; !cmp.Equal(errs, want) {
			t.Errorf("errors = %q, want %q", errs, want)
		}
	})

	t.Run("the lckpwdf lock is honoured", func(t *testing.T) {
		root := t.TempDir()
		uamBuild(t, root, debianAccounts)
		old := pwdLockWait
		pwdLockWait = 300 * time.Millisecond
		t.Cleanup(func() { pwdLockWait = old })
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), holdPwdLockEnv+"="+root)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		buf := make([]byte, 7)
		if _, err := out.Read(buf); err != nil || string(buf) != "locked\n" {
			t.Fatalf("lock holder: %q %v", buf, err)
		}
		stamps := uamStamps(t, root)
		_, errs, _ := applyUamlite(t, root, uamStep{conf: &nodeconf.Uamlite{Users: []nodeconf.User{bob}}})
		if want := []string{errPwdLocked.Error()}; !cmp.Equal(errs, want) {
			t.Errorf("errors = %q, want %q", errs, want)
		}
		if diff := cmp.Diff(stamps, uamStamps(t, root)); diff != "" {
			t.Errorf("files changed while another program held the lock:\n%s", diff)
		}
	})
}

func TestAllocID(t *testing.T) {
	ids := func(n ...int) map[int]bool {
		m := map[int]bool{}
		for _, i := range n {
			m[i] = true
		}
		return m
	}
	for _, c := range []struct {
		name string
		used map[int]bool
		want int
	}{
		{"empty range", ids(0, 1, 65534), 1000},
		{"one above the highest, like useradd", ids(0, 1000, 1005), 1006},
		{"past the top: lowest free", ids(1000, 1001, 1003, 60000), 1002},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got, err := allocID(c.used, 1000, 60000); err != nil || got != c.want {
				t.Errorf("allocID = %d, %v; want %d", got, err, c.want)
			}
		})
	}
	if _, err := allocID(ids(1000, 1001), 1000, 1001); err == nil {
		t.Errorf("allocID found an id in a full range")
	}
}

func TestUamliteCheck(t *testing.T) {
	checkBadConf(t, "uamlite", uamliteModule{})
}

// TestUamliteDebian checks the account files bellbuild writes with the
// real tools of a Debian root: pwck and grpck accept them, getent, id,
// chage and sudo read them, useradd still works after them, and the
// sudoers fragment passed the root's visudo.
func TestUamliteDebian(t *testing.T) {
	root := debianRoot(t)
	inDebian(t, root, "apt-get", "install", "-y", "-q", "--no-download", "sudo")
	alice := nodeconf.User{UserName: "alice", UserCryptPasswd: aliceHash, UserSudo: true, UserSSHKeys: []string{aliceKey}}
	conf := &nodeconf.Uamlite{Users: []nodeconf.User{alice, {UserName: "bob"}}}
	if _, errs, _ := applyUamlite(t, root, uamStep{conf: conf}); len(errs) > 0 {
		t.Fatal(errs)
	}
	inDebian(t, root, "pwck", "-r", "-q")
	inDebian(t, root, "grpck", "-r")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"getent", "passwd", "alice"}, "alice:x:1000:1000:bellbuild:/home/alice:/bin/bash\n"},
		{[]string{"id", "bob"}, "uid=1001(bob) gid=1001(bob) groups=1001(bob)\n"},
		{[]string{"visudo", "-c", "-q"}, ""},
	} {
		if got := inDebian(t, root, c.args[0], c.args[1:]...); got != c.want {
			t.Errorf("%v: %q, want %q", c.args, got, c.want)
		}
	}
	if got := inDebian(t, root, "sudo", "-l", "-U", "alice"); !strings.Contains(got, "(ALL) NOPASSWD: ALL") {
		t.Errorf("sudo -l -U alice:\n%s", got)
	}
	if got := inDebian(t, root, "chage", "-l", "alice"); !strings.Contains(got, "Account expires\t\t\t\t\t\t: never") {
		t.Errorf("chage -l alice:\n%s", got)
	}
	// useradd follows: it takes the same lock and the next uid.
	inDebian(t, root, "useradd", "-m", "carol")
	if got := inDebian(t, root, "id", "-u", "carol"); got != "1002\n" {
		t.Errorf("useradd after bellbuild gave carol uid %q, want 1002", got)
	}
	// alice leaves: expired, as chage sees it; sudo no longer lets her in.
	if _, errs, _ := applyUamlite(t, root, uamStep{conf: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "bob"}}}}); len(errs) > 0 {
		t.Fatal(errs)
	}
	if got := inDebian(t, root, "chage", "-l", "alice"); !strings.Contains(got, "Account expires\t\t\t\t\t\t: Jan 02, 1970") {
		t.Errorf("chage -l alice after removal:\n%s", got)
	}
	if got := inDebian(t, root, "sudo", "-l", "-U", "alice"); strings.Contains(got, "NOPASSWD") {
		t.Errorf("sudo -l -U alice after removal:\n%s", got)
	}
	inDebian(t, root, "pwck", "-r", "-q")
	inDebian(t, root, "grpck", "-r")
}

// TestUamliteVisudo: the root's visudo sees the fragment before it is
// installed, and a fragment it rejects is never installed.
func TestUamliteVisudo(t *testing.T) {
	for _, c := range []struct {
		name   string
		visudo string
		errs   []string
		file   string
	}{
		{"accepted", "#!/bin/sh\n[ \"$1 $2 $3\" = '-c -q -f' ] && [ \"$(cat \"$4\")\" = 'alice ALL=(ALL) NOPASSWD:ALL' ]\n",
			nil, "file 0440 0:0\nalice ALL=(ALL) NOPASSWD:ALL\n"},
		{"rejected", "#!/bin/sh\necho \"$4: syntax error\" >&2\nexit 1\n",
			[]string{"alice: sudo: visudo -c: exit status 1: /etc/sudoers.d/.bellbuild-check-alice: syntax error"}, missing},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := busyboxRoot(t)
			uamBuild(t, root, map[string]string{
				"/etc/passwd":      "0644 0:0\nroot:x:0:0:root:/root:/bin/sh\n",
				"/etc/group":       "0644 0:0\nroot:x:0:\n",
				"/usr/sbin/visudo": "0755 0:0\n" + c.visudo,
			})
			_, errs, _ := applyUamlite(t, root, uamStep{conf: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "alice", UserSudo: true}}}})
			if diff := cmp.Diff(c.errs, errs); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			if got := uamEntry(t, root, "/etc/sudoers.d/bellbuild-alice"); got != c.file {
				t.Errorf("sudoers fragment: %q, want %q", got, c.file)
			}
			if got := uamEntry(t, root, "/etc/sudoers.d/.bellbuild-check-alice"); got != missing {
				t.Errorf("the checked copy was left behind: %q", got)
			}
		})
	}
}

// A test binary started with this variable set applies uamliteKillConfs[N]
// (N in the variable, after the root and a comma), to be killed -9.
const uamApplyEnv = "BELLBUILD_TEST_UAMLITE_APPLY"

var uamliteKillConfs = []*nodeconf.Uamlite{
	{Users: []nodeconf.User{
		{UserName: "alice", UserCryptPasswd: aliceHash, UserSudo: true, UserSSHKeys: []string{aliceKey}},
		{UserName: "bob", UserSSHKeys: []string{appKey}},
		{UserName: "app", UserCryptPasswd: aliceHash, UserSudo: true},
	}},
	{PurgeExpiredUsers: true, Users: []nodeconf.User{{UserName: "bob"}}},
	{Users: []nodeconf.User{{UserName: "carol", UserSudo: true, UserSSHKeys: []string{aliceKey}}}},
}

func init() {
	v := os.Getenv(uamApplyEnv)
	if v == "" {
		return
	}
	root, n, _ := strings.Cut(v, ",")
	i, _ := strconv.Atoi(n)
	h, err := host.Open(host.Options{RootDir: root})
	if err != nil {
		os.Exit(1)
	}
	conf := &nodeconf.Conf{Uamlite: uamliteKillConfs[i]}
	errs := (uamliteModule{}).Apply(context.Background(), h, conf)
	h.SaveLedger()
	if len(errs) > 0 {
		fmt.Println(errs)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestUamliteKilled kills -9 applies of changing configurations at random
// moments, 100 times: every account file is always whole (each line with
// its number of fields, shadow never world-readable), and a last run
// converges, after which a rerun changes nothing.
func TestUamliteKilled(t *testing.T) {
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "uamlite tests chown files to test users: need root")
	}
	root := t.TempDir()
	uamBuild(t, root, debianAccounts)
	fields := map[string]int{"/etc/passwd": 7, "/etc/shadow": 9, "/etc/group": 4, "/etc/gshadow": 4}
	killed := 0
	for i := range 100 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d", uamApplyEnv, root, i%len(uamliteKillConfs)))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i%25) * 4 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		if cmd.Wait(); !cmd.ProcessState.Exited() {
			killed++
		}
		for p, n := range fields {
			data, err := os.ReadFile(filepath.Join(root, p))
			if err != nil {
				t.Fatalf("run %d: %v", i, err)
			}
			for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
				if len(strings.Split(line, ":")) != n {
					t.Fatalf("run %d: %s has a broken line %q", i, p, line)
				}
			}
		}
		if fi, err := os.Stat(filepath.Join(root, "etc/shadow")); err != nil || fi.Mode().Perm()&0o007 != 0 {
			t.Fatalf("run %d: /etc/shadow: %v %v", i, fi.Mode(), err)
		}
	}
	t.Logf("%d of 100 runs killed before they ended", killed)
	if killed < 20 || killed > 95 {
		t.Logf("the kill timing is off on this machine: %d of 100 killed", killed)
	}
	final := uamliteKillConfs[0]
	if _, errs, _ := applyUamlite(t, root, uamStep{conf: final}); len(errs) > 0 {
		t.Fatalf("the run after the kills: %v", errs)
	}
	changes, errs, _ := applyUamlite(t, root, uamStep{conf: final})
	if len(changes) > 0 || len(errs) > 0 {
		t.Errorf("not converged: changes %v, errors %v", changeList(changes), errs)
	}
	passwd := uamEntry(t, root, "/etc/passwd")
	for _, u := range []string{"alice:x:", "bob:x:", "app:x:1234:"} {
		if strings.Count(passwd, "\n"+u) != 1 {
			t.Errorf("/etc/passwd has %d %q entries:\n%s", strings.Count(passwd, "\n"+u), u, passwd)
		}
	}
	for _, p := range []string{"/home/alice/.ssh/authorized_keys", "/etc/sudoers.d/bellbuild-alice", "/etc/sudoers.d/bellbuild-app"} {
		if uamEntry(t, root, p) == missing {
			t.Errorf("%s missing after convergence", p)
		}
	}
}
