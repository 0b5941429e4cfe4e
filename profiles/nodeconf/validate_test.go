package nodeconf

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestKey(t *testing.T) {
	for k, want := range map[string]string{
		"sysctl":        ".sysctl",
		"ens3":          ".ens3",
		"vm.swappiness": `["vm.swappiness"]`,
		"/etc/motd":     `["/etc/motd"]`,
		`a"b`:           `["a\"b"]`,
	} {
		if got := Key(k); got != want {
			t.Errorf("Key(%q) = %s, want %s", k, got, want)
		}
	}
}

func yes() *bool { b := true; return &b }

// valid is a configuration that uses every module correctly.
func valid() Conf {
	return Conf{
		Sysctl:  map[string]string{"net.ipv4.ip_forward": "1", "kernel.printk": "4 4 1 7"},
		Limits:  map[string]Limit{"nofile": {Domain: "root", Type: "soft", Item: "nofile", Value: "101"}, "core": {Domain: "0:", Type: "-", Item: "core", Value: "0"}},
		Perm:    &Perm{Paths: []PermPath{{Path: "/etc/ssh/ssh_host_*_key", Owner: "root", Group: "root", Permissions: "0600"}, {Path: "/boot/System.map-*", Owner: "root", Group: "root", Permissions: "600"}}, RerunPolicy: "always", RerunInterval: 3600},
		Mounts:  map[string]Mount{"mnt": {MntTgt: "/mnt", Device: "tmpfs", Type: "tmpfs", Options: "size=1G"}},
		Ethtool: map[string]map[string]string{"ens3": {"tx-tcp-segmentation": "off", "rx-gro": "on"}},
		Uamlite: &Uamlite{Users: []User{
			{UserName: "alice", UserCryptPasswd: "$6$salt$hash", UserSudo: true, UserSSHKeys: []string{"ssh-ed25519 AAAA a", "ssh-rsa AAAA b", "ecdsa-sha2-nistp256 AAAA c", "ssh-dss AAAA d"}},
			{UserName: "bob", UserCryptPasswd: "$2a$10$abc", UserSSHKeys: []string{UnmanagedKeys}},
			{UserName: "carol", UserCryptPasswd: "$1$x$y"},
			{UserName: "dave", UserCryptPasswd: "$5$x$y"},
		}},
		Apt: &Apt{
			Packages:      []Package{{Name: "vim", Version: "2:9.0", Debconf: []Debconf{{Question: "vim/q", QuestionType: "boolean", Answer: "true"}}}},
			Repositories:  []Repository{{URL: "http://deb.debian.org/debian", Distributions: []string{"bookworm"}, Components: []string{"main"}}},
			BlacklistPkgs: []string{"telnetd"},
		},
		Files: map[string]File{"/etc/motd": {Content: "hi\n", Mode: "0644"}},
		Units: map[string]Unit{"kubelet.service": {Content: "[Unit]\n"}, "ssh.socket": {Enabled: yes()}},
		Exec: map[string]Exec{
			"001-a.sh": {Data: "#!/bin/sh\n", RerunPolicy: "once_successfully", RetryInterval: 60, Timeout: 10},
			"002-b.sh": {Data: "#!/bin/sh\n", BlockingPolicy: "foreground_halt_pod_on_failure", RerunInterval: 120, RetryInterval: 60, Env: map[string]string{"FOO_1": "x"}},
		},
		Apparmor: &Apparmor{Profiles: map[string]string{"usr.sbin.x": "profile x {}\n"}},
	}
}

func TestValidateAcceptsEveryModule(t *testing.T) {
	c := valid()
	if errs := c.Validate(); len(errs) != 0 {
		t.Errorf("Validate(valid) = %v, want no errors", errs)
	}
	var empty Conf
	if errs := empty.Validate(); len(errs) != 0 {
		t.Errorf("Validate(empty) = %v, want no errors", errs)
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Conf)
		want   []string
	}{
		{"crypt not a hash", func(c *Conf) { c.Uamlite.Users[0].UserCryptPasswd = "hunter2" },
			[]string{"uamlite.users[0].user_crypt_passwd: not a crypt(3) hash of the form $1$, $2a$, $5$ or $6$ (SALT$HASH)"}},
		{"crypt $2b$ (not in Divingbell's list)", func(c *Conf) { c.Uamlite.Users[1].UserCryptPasswd = "$2b$10$x" },
			[]string{"uamlite.users[1].user_crypt_passwd: not a crypt(3) hash of the form $1$, $2a$, $5$ or $6$ (SALT$HASH)"}},
		{"ssh key type", func(c *Conf) { c.Uamlite.Users[0].UserSSHKeys[1] = "ssh-foo AAAA" },
			[]string{"uamlite.users[0].user_sshkeys[1]: not a dsa, ecdsa, ed25519 or rsa public key (ssh-dss, ecdsa-, ssh-ed25519, ssh-rsa)"}},
		{"duplicate user", func(c *Conf) { c.Uamlite.Users[2].UserName = "alice" },
			[]string{`uamlite.users[2].user_name: "alice" is also uamlite.users[0]`}},
		{"bad user name", func(c *Conf) { c.Uamlite.Users[2].UserName = "Carol Smith" },
			[]string{`uamlite.users[2].user_name: "Carol Smith" is not a valid user name`}},
		{"exec rerun policy", func(c *Conf) { e := c.Exec["001-a.sh"]; e.RerunPolicy = "sometimes"; c.Exec["001-a.sh"] = e },
			[]string{`exec["001-a.sh"].rerun_policy: "sometimes" is not one of always, never, once_successfully`}},
		{"exec blocking policy", func(c *Conf) { e := c.Exec["002-b.sh"]; e.BlockingPolicy = "later"; c.Exec["002-b.sh"] = e },
			[]string{`exec["002-b.sh"].blocking_policy: "later" is not one of foreground, background, foreground_halt_pod_on_failure`}},
		{"exec intervals under 60", func(c *Conf) {
			e := c.Exec["002-b.sh"]
			e.RerunInterval, e.RetryInterval = 59, 1
			c.Exec["002-b.sh"] = e
		},
			[]string{`exec["002-b.sh"].rerun_interval: 59 is less than 60 seconds`, `exec["002-b.sh"].retry_interval: 1 is less than 60 seconds`}},
		{"exec rerun interval needs always", func(c *Conf) { e := c.Exec["001-a.sh"]; e.RerunInterval = 60; c.Exec["001-a.sh"] = e },
			[]string{`exec["001-a.sh"].rerun_interval: needs rerun_policy always, not "once_successfully"`}},
		{"exec retry interval not with never", func(c *Conf) { e := c.Exec["001-a.sh"]; e.RerunPolicy = "never"; c.Exec["001-a.sh"] = e },
			[]string{`exec["001-a.sh"].retry_interval: needs rerun_policy always or once_successfully, not "never"`}},
		{"exec persist without interval", func(c *Conf) { e := c.Exec["001-a.sh"]; e.RerunIntervalPersist = yes(); c.Exec["001-a.sh"] = e },
			[]string{`exec["001-a.sh"].rerun_interval_persist: set without rerun_interval`}},
		{"exec script name", func(c *Conf) { c.Exec["../x"] = Exec{Data: "x"} },
			[]string{`exec["../x"]: "../x" cannot be a script file name`}},
		{"exec times near the integer maximum", func(c *Conf) {
			e := c.Exec["002-b.sh"]
			e.Timeout, e.RerunInterval, e.RetryInterval = math.MaxInt64, math.MaxInt64-1, MaxSeconds+1
			c.Exec["002-b.sh"] = e
		},
			[]string{
				`exec["002-b.sh"].timeout: 9223372036854775807 seconds is more than 100 years (3153600000)`,
				`exec["002-b.sh"].rerun_interval: 9223372036854775806 seconds is more than 100 years (3153600000)`,
				`exec["002-b.sh"].retry_interval: 3153600001 seconds is more than 100 years (3153600000)`,
			}},
		{"exec times of 100 years", func(c *Conf) {
			e := c.Exec["002-b.sh"]
			e.Timeout, e.RerunInterval, e.RetryInterval = MaxSeconds, MaxSeconds, MaxSeconds
			c.Exec["002-b.sh"] = e
		}, nil},
		{"perm rerun interval near the integer maximum", func(c *Conf) { c.Perm.RerunInterval = math.MaxInt64 },
			[]string{`perm.rerun_interval: 9223372036854775807 seconds is more than 100 years (3153600000)`}},
		{"exec script name too long", func(c *Conf) { c.Exec[strings.Repeat("s", 237)] = Exec{Data: "x"} },
			[]string{`exec.` + strings.Repeat("s", 237) + `: script name is 237 bytes long: at most 236`}},
		{"exec script name of 236 bytes", func(c *Conf) { c.Exec[strings.Repeat("s", 236)] = Exec{Data: "x"} }, nil},
		{"exec script name with a newline", func(c *Conf) { c.Exec["a\nb"] = Exec{Data: "x"} },
			[]string{`exec["a\nb"]: "a\nb" contains the control character '\n': not in a script name`}},
		{"file paths with control characters", func(c *Conf) {
			for _, p := range []string{"/etc/a\x00b", "/etc/a\nb", "/etc/a\rb", "/etc/a\tb", "/etc/a\x1bb", "/etc/a\x7fb"} {
				c.Files[p] = File{Content: "x"}
			}
		},
			[]string{
				`files["/etc/a\x00b"]: "/etc/a\x00b" contains the control character '\x00': not in a path`,
				`files["/etc/a\tb"]: "/etc/a\tb" contains the control character '\t': not in a path`,
				`files["/etc/a\nb"]: "/etc/a\nb" contains the control character '\n': not in a path`,
				`files["/etc/a\rb"]: "/etc/a\rb" contains the control character '\r': not in a path`,
				`files["/etc/a\x1bb"]: "/etc/a\x1bb" contains the control character '\x1b': not in a path`,
				`files["/etc/a\x7fb"]: "/etc/a\x7fb" contains the control character '\x7f': not in a path`,
			}},
		{"file names too long", func(c *Conf) {
			c.Files["/etc/"+strings.Repeat("n", 241)] = File{Content: "x"}
			c.Files["/etc/"+strings.Repeat("n", 240)] = File{Content: "x"}
			c.Files["/"+strings.Repeat("d", 256)+"/x"] = File{Content: "x"}
		},
			[]string{
				`files["/` + strings.Repeat("d", 256) + `/x"]: directory name "dddddddddddddddddddd"... is 256 bytes long: at most 255`,
				`files["/etc/` + strings.Repeat("n", 241) + `"]: file name is 241 bytes long: at most 240`,
			}},
		{"file path too long", func(c *Conf) { c.Files[strings.Repeat("/d", 2048)] = File{Content: "x"} },
			[]string{`files["` + strings.Repeat("/d", 2048) + `"]: path is 4096 bytes long: at most 4095`}},
		{"other names too long or with control characters", func(c *Conf) {
			c.Limits[strings.Repeat("l", 226)] = Limit{Domain: "*", Type: "-", Item: "core", Value: "0"}
			c.Apparmor.Profiles["a\x01"] = "profile x {}"
			c.Units[strings.Repeat("u", 233)+".service"] = Unit{Content: "x"}
		},
			[]string{
				`limits.` + strings.Repeat("l", 226) + `: limits item name is 226 bytes long: at most 225`,
				`units["` + strings.Repeat("u", 233) + `.service"]: unit name is 241 bytes long: at most 240`,
				`apparmor.profiles["a\x01"]: "a\x01" contains the control character '\x01': not in a profile name`,
			}},
		{"perm over uamlite's shadow", func(c *Conf) { c.Perm.Paths[0].Path = "/etc/shadow" },
			[]string{`perm.paths[0].path: "/etc/shadow" matches /etc/shadow, which uamlite (uamlite.users) manages; two modules cannot manage one file`}},
		{"perm over shadow without uamlite users", func(c *Conf) { c.Perm.Paths[0].Path = "/etc/shadow"; c.Uamlite.Users = nil }, nil},
		{"perm glob over a user's keys and a file", func(c *Conf) {
			c.Perm.Paths[0].Path = "/home/alice/.ssh/*"
			c.Perm.Paths[1].Path = "/etc/mo?d"
		},
			[]string{
				`perm.paths[0].path: "/home/alice/.ssh/*" matches /home/alice/.ssh/authorized_keys, which uamlite (uamlite.users[0].user_sshkeys) manages; two modules cannot manage one file`,
				`perm.paths[1].path: "/etc/mo?d" matches /etc/motd, which files (files["/etc/motd"]) manages; two modules cannot manage one file`,
			}},
		{"files over a user's keys", func(c *Conf) {
			c.Files["/home/alice/.ssh/authorized_keys"] = File{Content: "ssh-ed25519 AAAA x\n", Mode: "0600"}
			c.Files["/home/bob/.ssh/authorized_keys"] = File{Content: "ssh-ed25519 AAAA x\n", Mode: "0600"} // Unmanaged: files may
		},
			[]string{`files["/home/alice/.ssh/authorized_keys"]: /home/alice/.ssh/authorized_keys is also managed by uamlite (uamlite.users[0].user_sshkeys); two modules cannot manage one file`}},
		{"files over units, sudo, sysctl, mounts, ethtool", func(c *Conf) {
			for _, p := range []string{"/etc/systemd/system/kubelet.service", "/etc/sudoers.d/bellbuild-alice", "/etc/sysctl.d/60-bellbuild.conf",
				"/etc/systemd/system/mnt.mount", "/etc/systemd/system/multi-user.target.wants/bellbuild-ethtool-ens3.service"} {
				c.Files[p] = File{Content: "x"}
			}
		},
			[]string{
				`files["/etc/sudoers.d/bellbuild-alice"]: /etc/sudoers.d/bellbuild-alice is also managed by uamlite (uamlite.users[0].user_sudo); two modules cannot manage one file`,
				`files["/etc/sysctl.d/60-bellbuild.conf"]: /etc/sysctl.d/60-bellbuild.conf is also managed by sysctl (sysctl); two modules cannot manage one file`,
				`files["/etc/systemd/system/kubelet.service"]: /etc/systemd/system/kubelet.service is also managed by units (units["kubelet.service"]); two modules cannot manage one file`,
				`files["/etc/systemd/system/mnt.mount"]: /etc/systemd/system/mnt.mount is also managed by mounts (mounts.mnt); two modules cannot manage one file`,
				`files["/etc/systemd/system/multi-user.target.wants/bellbuild-ethtool-ens3.service"]: /etc/systemd/system/multi-user.target.wants/bellbuild-ethtool-ens3.service is also managed by ethtool (ethtool.ens3); two modules cannot manage one file`,
			}},
		{"units over a mount's unit", func(c *Conf) { c.Units["mnt.mount"] = Unit{Content: "[Mount]\n"} },
			[]string{`units["mnt.mount"]: /etc/systemd/system/mnt.mount is also managed by mounts (mounts.mnt); two modules cannot manage one file`}},
		{"files in other modules' name spaces", func(c *Conf) {
			c.Sysctl, c.Uamlite.Users = nil, nil
			for _, p := range []string{"/etc/passwd", "/etc/sysctl.d/60-bellbuild.conf", "/etc/sudoers.d/bellbuild-zed", "/var/lib/bellbuild/ledger.json", "/etc/passwd-"} {
				c.Files[p] = File{Content: "x"}
			}
		},
			[]string{
				`files["/etc/passwd"]: /etc/passwd is managed by uamlite; configure it there`,
				`files["/etc/sudoers.d/bellbuild-zed"]: /etc/sudoers.d/bellbuild-zed is managed by uamlite; configure it there`,
				`files["/etc/sysctl.d/60-bellbuild.conf"]: /etc/sysctl.d/60-bellbuild.conf is managed by sysctl; configure it there`,
				`files["/var/lib/bellbuild/ledger.json"]: /var/lib/bellbuild/ledger.json is in /var/lib/bellbuild, the applier's own state`,
			}},
		{"apparmor complain link", func(c *Conf) {
			c.Apparmor.ComplainMode = true
			c.Files["/etc/apparmor.d/force-complain/bellbuild.usr.sbin.x"] = File{Content: "x"}
		},
			[]string{`files["/etc/apparmor.d/force-complain/bellbuild.usr.sbin.x"]: /etc/apparmor.d/force-complain/bellbuild.usr.sbin.x is also managed by apparmor (apparmor.profiles["usr.sbin.x"]); two modules cannot manage one file`}},
		{"ethtool value", func(c *Conf) { c.Ethtool["ens3"]["rx-gro"] = "true" },
			[]string{`ethtool.ens3.rx-gro: "true" is neither on nor off`}},
		{"limits type and item", func(c *Conf) { c.Limits["nofile"] = Limit{Domain: "root", Type: "both", Item: "files", Value: "1"} },
			[]string{`limits.nofile.type: "both" is not one of soft, hard, -`, `limits.nofile.item: "files" is not one of ` + "core, data, fsize, memlock, nofile, rss, stack, cpu, nproc, as, maxlogins, maxsyslogins, nonewprivs, priority, locks, sigpending, msgqueue, nice, rtprio, chroot"}},
		{"perm octal and path", func(c *Conf) { c.Perm.Paths[0].Permissions = "0644 "; c.Perm.Paths[1].Path = "boot/x" },
			[]string{`perm.paths[0].permissions: "0644 " is not an octal mode like 0644`, `perm.paths[1].path: "boot/x" is not an absolute path`}},
		{"perm rerun", func(c *Conf) { c.Perm.RerunPolicy = "never" },
			[]string{`perm.rerun_interval: needs rerun_policy always, not "never"`}},
		{"mount required", func(c *Conf) { c.Mounts["mnt"] = Mount{MntTgt: "/mnt/../x"} },
			[]string{`mounts.mnt.mnt_tgt: "/mnt/../x" is not a clean path (want "/x")`, "mounts.mnt.device: required", "mounts.mnt.type: required"}},
		{"file path", func(c *Conf) { c.Files["etc/x"] = File{Content: "x", Mode: "8"} },
			[]string{`files["etc/x"]: "etc/x" is not an absolute path`, `files["etc/x"].mode: "8" is not an octal mode like 0644`}},
		{"unit name", func(c *Conf) { c.Units["kubelet"] = Unit{Content: "x"} },
			[]string{`units.kubelet: "kubelet" is not a unit name like kubelet.service`}},
		{"sysctl", func(c *Conf) { c.Sysctl["net ipv4"] = "1"; c.Sysctl["vm.x"] = "" },
			[]string{`sysctl["net ipv4"]: "net ipv4" is not a sysctl name like net.ipv4.ip_forward`, `sysctl["vm.x"]: empty value`}},
		{"apt", func(c *Conf) {
			c.Apt.BlacklistPkgs = append(c.Apt.BlacklistPkgs, "vim")
			c.Apt.Repositories[0].Components = nil
		},
			[]string{`apt.repositories[0].components: required`, `apt.blacklistpkgs[1]: "vim" is also requested in apt.packages[0]`}},
		{"apparmor", func(c *Conf) { c.Apparmor.Profiles["a/b"] = " " },
			[]string{`apparmor.profiles["a/b"]: "a/b" cannot be a file name under /etc/apparmor.d`, `apparmor.profiles["a/b"]: empty profile`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.change(&c)
			var got []string
			for _, err := range c.Validate() {
				fe, ok := err.(*FieldError)
				if !ok {
					t.Fatalf("%T is not a *FieldError", err)
				}
				got = append(got, fe.Error())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}

// TestClaimConflictsHome: the applier gives the users' homes from the
// target root's /etc/passwd (an adopted user's home need not be /home/NAME).
func TestClaimConflictsHome(t *testing.T) {
	c := valid()
	c.Perm = nil
	c.Files["/srv/alice/.ssh/authorized_keys"] = File{Content: "x"}
	if errs := c.ClaimConflicts(nil); len(errs) != 0 {
		t.Errorf("with the default homes: %v, want none", errs)
	}
	home := func(u string) string {
		if u == "alice" {
			return "/srv/alice"
		}
		return DefaultHome(u)
	}
	var got []string
	for _, err := range c.ClaimConflicts(home) {
		got = append(got, err.Error())
	}
	want := []string{`files["/srv/alice/.ssh/authorized_keys"]: /srv/alice/.ssh/authorized_keys is also managed by uamlite (uamlite.users[0].user_sshkeys); two modules cannot manage one file`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("with alice's home from the root (-want +got):\n%s", diff)
	}
}

func TestEscapePath(t *testing.T) {
	for in, want := range map[string]string{
		"/":                "-",
		"/var/lib/data":    "var-lib-data",
		"/mnt/data-1":      `mnt-data\x2d1`,
		"/srv/.hidden/x y": `srv-.hidden-x\x20y`,
		"/.dot":            `\x2edot`,
	} {
		if got := EscapePath(in); got != want {
			t.Errorf("EscapePath(%q) = %q, want %q", in, got, want)
		}
	}
}
