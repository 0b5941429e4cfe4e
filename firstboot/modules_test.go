package firstboot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func TestSysctl(t *testing.T) {
	runRootCases(t, []rootCase{{
		name: "persisted offline in one file, foreign files untouched",
		before: rootTree{
			"/etc/sysctl.d/99-admin.conf": fileEntry("0644", "0:0", "vm.swappiness = 1\n"),
		},
		conf: nodeconf.Conf{Sysctl: map[string]string{"net.ipv4.ip_forward": "1", "vm.swappiness": "10", "net.ipv4.ip_local_port_range": "32768 60999"}},
		want: rootTree{
			"/etc/sysctl.d/60-bellbuild.conf": fileEntry("0644", "0:0", "# Written by bellbuild apply: kernel parameters of this node.\n# Edits are reported as conflicts; change the site instead.\n"+
				"net.ipv4.ip_forward = 1\nnet.ipv4.ip_local_port_range = 32768 60999\nvm.swappiness = 10\n"),
		},
	}, {
		name: "one key removed, the others stay",
		conf: nodeconf.Conf{Sysctl: map[string]string{"net.ipv4.ip_forward": "1", "vm.swappiness": "10"}},
		want: rootTree{
			"/etc/sysctl.d/60-bellbuild.conf": fileEntry("0644", "0:0", "# Written by bellbuild apply: kernel parameters of this node.\n# Edits are reported as conflicts; change the site instead.\n"+
				"net.ipv4.ip_forward = 1\nvm.swappiness = 10\n"),
		},
		reverted: &nodeconf.Conf{Sysctl: map[string]string{"vm.swappiness": "10"}},
		revertedWant: rootTree{
			"/etc/sysctl.d/60-bellbuild.conf": fileEntry("0644", "0:0", "# Written by bellbuild apply: kernel parameters of this node.\n# Edits are reported as conflicts; change the site instead.\n"+
				"vm.swappiness = 10\n"),
		},
	}})
}

func TestLimits(t *testing.T) {
	runRootCases(t, []rootCase{{
		name: "one file per item; foreign files never deleted",
		before: rootTree{
			"/etc/security/limits.d/90-admin.conf":        fileEntry("0644", "0:0", "* soft nofile 1024\n"),
			"/etc/security/limits.d/bellbuild-stale.conf": fileEntry("0644", "0:0", "# not written by bellbuild\n"),
		},
		conf: nodeconf.Conf{Limits: map[string]nodeconf.Limit{
			"nofile": {Domain: "*", Type: "soft", Item: "nofile", Value: "65536"},
			"core":   {Domain: "@ops", Type: "-", Item: "core", Value: "unlimited"},
		}},
		want: rootTree{
			"/etc/security/limits.d/bellbuild-nofile.conf": fileEntry("0644", "0:0", "# Written by bellbuild apply (limits item nofile).\n* soft nofile 65536\n"),
			"/etc/security/limits.d/bellbuild-core.conf":   fileEntry("0644", "0:0", "# Written by bellbuild apply (limits item core).\n@ops - core unlimited\n"),
		},
	}, {
		name: "a same-named file that was there before is put back",
		before: rootTree{
			"/etc/security/limits.d/bellbuild-nofile.conf": fileEntry("0640", "0:1", "* hard nofile 10\n"),
		},
		conf: nodeconf.Conf{Limits: map[string]nodeconf.Limit{
			"nofile": {Domain: "app", Type: "hard", Item: "nofile", Value: "4096"},
		}},
		want: rootTree{
			"/etc/security/limits.d/bellbuild-nofile.conf": fileEntry("0644", "0:0", "# Written by bellbuild apply (limits item nofile).\napp hard nofile 4096\n"),
		},
	}})
}

func TestPerm(t *testing.T) {
	runRootCases(t, []rootCase{{
		name: "globs, owner and group from the root's databases, originals restored",
		before: rootTree{
			"/srv/data":       dirEntry("0755", "0:0"),
			"/srv/data/a.db":  fileEntry("0644", "0:0", "a"),
			"/srv/data/b.db":  fileEntry("0644", "0:0", "b"),
			"/srv/data/c.txt": fileEntry("0644", "0:0", "c"),
			"/usr/bin/tool":   fileEntry("0755", "0:0", "#!/bin/sh\n"),
		},
		conf: nodeconf.Conf{Perm: &nodeconf.Perm{Paths: []nodeconf.PermPath{
			{Path: "/srv/data/*.db", Owner: "app", Group: "ops", Permissions: "0640"},
			{Path: "/srv/data", Owner: "app", Group: "app", Permissions: "2750"},
			{Path: "/usr/bin/tool", Owner: "root", Group: "daemon", Permissions: "4755"},
			{Path: "/opt/absent/*", Owner: "root", Group: "root", Permissions: "0600", IgnoreMissing: true},
		}}},
		want: rootTree{
			"/srv/data":      dirEntry("2750", "1234:1235"),
			"/srv/data/a.db": fileEntry("0640", "1234:2000", "a"),
			"/srv/data/b.db": fileEntry("0640", "1234:2000", "b"),
			"/usr/bin/tool":  fileEntry("4755", "0:1", "#!/bin/sh\n"),
		},
	}})
}

func TestMounts(t *testing.T) {
	runRootCases(t, []rootCase{{
		name: "unit named from the mount point, enabled by a link",
		conf: nodeconf.Conf{Mounts: map[string]nodeconf.Mount{
			"data": {MntTgt: "/var/lib/data-1", Device: "/dev/disk/by-label/data", Type: "ext4", Options: "noatime,nodev", After: "systemd-fsck@dev-disk-by\\x2dlabel-data.service", Before: "kubelet.service"},
			"tmp":  {MntTgt: "/scratch", Device: "tmpfs", Type: "tmpfs", Options: "size=1G"},
		}},
		want: rootTree{
			"/etc/systemd/system": dirEntry("0755", "0:0"),
			`/etc/systemd/system/var-lib-data\x2d1.mount`: fileEntry("0644", "0:0", "# Written by bellbuild apply (mounts item data).\n[Unit]\nDescription=bellbuild mount /var/lib/data-1\n"+
				"Before=kubelet.service\nAfter=systemd-fsck@dev-disk-by\\x2dlabel-data.service\n\n[Mount]\nWhat=/dev/disk/by-label/data\nWhere=/var/lib/data-1\nType=ext4\nOptions=noatime,nodev\n\n[Install]\nWantedBy=local-fs.target\n"),
			"/etc/systemd/system/scratch.mount": fileEntry("0644", "0:0", "# Written by bellbuild apply (mounts item tmp).\n[Unit]\nDescription=bellbuild mount /scratch\n"+
				"\n[Mount]\nWhat=tmpfs\nWhere=/scratch\nType=tmpfs\nOptions=size=1G\n\n[Install]\nWantedBy=local-fs.target\n"),
			"/etc/systemd/system/local-fs.target.wants":                         dirEntry("0755", "0:0"),
			`/etc/systemd/system/local-fs.target.wants/var-lib-data\x2d1.mount`: linkEntry(`/etc/systemd/system/var-lib-data\x2d1.mount`),
			"/etc/systemd/system/local-fs.target.wants/scratch.mount":           linkEntry("/etc/systemd/system/scratch.mount"),
		},
	}})
}

func TestEthtoolOffline(t *testing.T) {
	runRootCases(t, []rootCase{{
		name: "a boot unit per device",
		conf: nodeconf.Conf{Ethtool: map[string]map[string]string{"eth0": {"tso": "off", "generic-receive-offload": "on"}}},
		want: rootTree{
			"/etc/systemd/system": dirEntry("0755", "0:0"),
			"/etc/systemd/system/bellbuild-ethtool-eth0.service": fileEntry("0644", "0:0", `# Written by bellbuild apply: NIC features of eth0, re-applied at boot.
[Unit]
Description=bellbuild ethtool settings for eth0
BindsTo=sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ethtool -K eth0 generic-receive-offload on tso off

[Install]
WantedBy=multi-user.target
`),
			"/etc/systemd/system/multi-user.target.wants":                                dirEntry("0755", "0:0"),
			"/etc/systemd/system/multi-user.target.wants/bellbuild-ethtool-eth0.service": linkEntry("/etc/systemd/system/bellbuild-ethtool-eth0.service"),
		},
	}})
}

func TestFiles(t *testing.T) {
	runRootCases(t, []rootCase{{
		name: "new and replaced files with mode and owner",
		before: rootTree{
			"/etc/motd": fileEntry("0644", "0:0", "Debian\n"),
		},
		conf: nodeconf.Conf{Files: map[string]nodeconf.File{
			"/etc/motd":              {Content: "bellbuild node\n"},
			"/srv/app/config.yaml":   {Content: "port: 80\n", Mode: "0640", Owner: "app", Group: "ops"},
			"/srv/app/primary":       {Content: "group from passwd\n", Mode: "0600", Owner: "app"},
			"/etc/ssl/private/k.pem": {Content: "SECRET\n", Mode: "0600"},
		}},
		want: rootTree{
			"/etc/motd":              fileEntry("0644", "0:0", "bellbuild node\n"),
			"/srv":                   dirEntry("0755", "0:0"),
			"/srv/app":               dirEntry("0755", "0:0"),
			"/srv/app/config.yaml":   fileEntry("0640", "1234:2000", "port: 80\n"),
			"/srv/app/primary":       fileEntry("0600", "1234:1235", "group from passwd\n"),
			"/etc/ssl":               dirEntry("0755", "0:0"),
			"/etc/ssl/private":       dirEntry("0755", "0:0"),
			"/etc/ssl/private/k.pem": fileEntry("0600", "0:0", "SECRET\n"),
		},
	}})
}

func TestUnits(t *testing.T) {
	yes, no := true, false
	runRootCases(t, []rootCase{{
		name: "written and enabled; a packaged unit disabled and re-enabled on removal",
		before: rootTree{
			"/lib/systemd/system/ssh.service":                                 fileEntry("0644", "0:0", "[Service]\nExecStart=/usr/sbin/sshd\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n"),
			"/etc/systemd/system/multi-user.target.wants/ssh.service":         linkEntry("/lib/systemd/system/ssh.service"),
			"/etc/systemd/system/sshd.service":                                linkEntry("/lib/systemd/system/ssh.service"),
			"/lib/systemd/system/var-lib-x\\x2d1.mount":                       fileEntry("0644", "0:0", "[Mount]\nWhat=/dev/vdb\nWhere=/var/lib/x-1\n[Install]\nWantedBy=local-fs.target\n"),
			"/etc/systemd/system/local-fs.target.wants/var-lib-x\\x2d1.mount": linkEntry("/lib/systemd/system/var-lib-x\\x2d1.mount"),
		},
		conf: nodeconf.Conf{Units: map[string]nodeconf.Unit{
			"agent.service":        {Content: "[Service]\nExecStart=/usr/bin/agent\n[Install]\nWantedBy=multi-user.target\nRequiredBy=kubelet.service\n", Enabled: &yes},
			"ssh.service":          {Enabled: &no},
			`var-lib-x\x2d1.mount`: {Enabled: &no},
			"note.timer":           {Content: "[Timer]\nOnCalendar=daily\n"},
		}},
		want: rootTree{
			"/etc/systemd/system/agent.service":                              fileEntry("0644", "0:0", "[Service]\nExecStart=/usr/bin/agent\n[Install]\nWantedBy=multi-user.target\nRequiredBy=kubelet.service\n"),
			"/etc/systemd/system/note.timer":                                 fileEntry("0644", "0:0", "[Timer]\nOnCalendar=daily\n"),
			"/etc/systemd/system/multi-user.target.wants/agent.service":      linkEntry("/etc/systemd/system/agent.service"),
			"/etc/systemd/system/kubelet.service.requires":                   dirEntry("0755", "0:0"),
			"/etc/systemd/system/kubelet.service.requires/agent.service":     linkEntry("/etc/systemd/system/agent.service"),
			"/etc/systemd/system/multi-user.target.wants/ssh.service":        absent,
			`/etc/systemd/system/local-fs.target.wants/var-lib-x\x2d1.mount`: absent,
		},
	}})
}

func TestApparmor(t *testing.T) {
	if _, err := lookTool("apparmor_parser"); err != nil {
		testtool.Skipf(t, "apparmor_parser is not installed (package apparmor): %v", err)
	}
	runRootCases(t, []rootCase{{
		name: "includes resolved in the root's /etc/apparmor.d",
		before: rootTree{
			"/etc/apparmor.d/tunables/global": fileEntry("0644", "0:0", "@{HOME}=/home/*/ /root/\n"),
		},
		conf: nodeconf.Conf{Apparmor: &nodeconf.Apparmor{Profiles: map[string]string{
			"home": "#include <tunables/global>\nprofile bellbuild-home /usr/bin/home {\n  @{HOME}/** r,\n}\n",
		}}},
		want: rootTree{
			"/etc/apparmor.d/bellbuild.home": fileEntry("0644", "0:0", "#include <tunables/global>\nprofile bellbuild-home /usr/bin/home {\n  @{HOME}/** r,\n}\n"),
		},
	}, {
		name: "checked profiles installed, complain mode linked",
		before: rootTree{
			"/etc/apparmor.d/usr.bin.man": fileEntry("0644", "0:0", "# packaged\n"),
		},
		conf: nodeconf.Conf{Apparmor: &nodeconf.Apparmor{ComplainMode: true, Profiles: map[string]string{
			"agent": "profile bellbuild-agent /usr/bin/agent {\n  /etc/agent/** r,\n}\n",
		}}},
		want: rootTree{
			"/etc/apparmor.d/bellbuild.agent":                fileEntry("0644", "0:0", "profile bellbuild-agent /usr/bin/agent {\n  /etc/agent/** r,\n}\n"),
			"/etc/apparmor.d/force-complain":                 dirEntry("0755", "0:0"),
			"/etc/apparmor.d/force-complain/bellbuild.agent": linkEntry("/etc/apparmor.d/bellbuild.agent"),
		},
	}})
}

// TestPermRefusesLinks: a link where a perm glob looks (a user-writable
// directory) is refused, and nothing of perm is applied: chown would
// otherwise hand the link's target, here /etc/shadow, to the owner named.
func TestPermRefusesLinks(t *testing.T) {
	root := t.TempDir()
	for p, data := range map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\neve:x:1000:1000::/home/eve:/bin/sh\n", "etc/group": "root:x:0:\neve:x:1000:\n", "etc/shadow": "root:*:1::::::\n", "home/eve/notes": "n\n"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(data), 0o640)
	}
	os.Symlink("../../etc/shadow", filepath.Join(root, "home/eve/link"))
	node := &nodeconf.Node{Node: "n", Conf: nodeconf.Conf{Perm: &nodeconf.Perm{Paths: []nodeconf.PermPath{
		{Path: "/home/eve/*", Owner: "eve", Group: "eve", Permissions: "0666"},
	}}}}
	rep, err := Apply(context.Background(), Options{RootDir: root}, node)
	if err == nil && len(rep.Errors) == 0 {
		t.Fatalf("a perm glob matching a link was applied: %+v", rep)
	}
	if msg := fmt.Sprint(err, rep.Errors); !strings.Contains(msg, "/home/eve/link is a symbolic link") {
		t.Errorf("error does not name the link: %s", msg)
	}
	for _, p := range []string{"etc/shadow", "home/eve/notes"} {
		fi, _ := os.Stat(filepath.Join(root, p))
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o640 || st.Uid != 0 {
			t.Errorf("%s changed: %v uid %d", p, fi.Mode().Perm(), st.Uid)
		}
	}
}

// TestPermRefusesHardLinks: a file with another hard link is the same
// inode under that other name, which may be outside the root (here the
// root is a directory of the test's file system, and the link's other name
// is beside it, as the host's /etc/shadow would be) or another file of the
// root. perm refuses to change it, and nothing of perm is applied; one
// already as wanted is left alone; a revert that would change a file
// linked since is refused.
func TestPermRefusesHardLinks(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	outside := filepath.Join(dir, "host-shadow")
	buildRoot(t, root, rootTree{
		"/srv/data/notes":   fileEntry("0640", "0:0", "n\n"),
		"/srv/data/same":    fileEntry("0600", "1234:1235", "s\n"),
		"/srv/other/mine":   fileEntry("0640", "0:0", "m\n"),
		"/srv/other/shared": fileEntry("0640", "0:0", "sh\n"),
	})
	os.WriteFile(outside, []byte("root:$6$secret:1::::::\n"), 0o600)
	if err := os.Link(outside, filepath.Join(root, "srv/data/link")); err != nil {
		t.Fatal(err)
	}
	os.Link(filepath.Join(root, "srv/data/same"), filepath.Join(dir, "same-elsewhere"))
	mode := func(p string) string {
		fi, err := os.Stat(p)
		if err != nil {
			return err.Error()
		}
		st := fi.Sys().(*syscall.Stat_t)
		return fmt.Sprintf("%04o %d:%d", fi.Mode().Perm(), st.Uid, st.Gid)
	}

	node := &nodeconf.Node{Node: "n", Conf: nodeconf.Conf{Perm: &nodeconf.Perm{Paths: []nodeconf.PermPath{
		{Path: "/srv/data/*", Owner: "app", Group: "app", Permissions: "0600"},
	}}}}
	rep, err := Apply(context.Background(), Options{RootDir: root}, node)
	want := "perm: paths[0] /srv/data/*: /srv/data/link has 2 hard links: perm changes no file that has other names (they may be outside the root); give it a copy of its own"
	if err == nil || !cmp.Equal(rep.Errors, []string{want}) {
		t.Fatalf("Apply = %v, %q; want the error %q", err, rep.Errors, want)
	}
	for p, want := range map[string]string{outside: "0600 0:0", filepath.Join(root, "srv/data/notes"): "0640 0:0"} {
		if got := mode(p); got != want {
			t.Errorf("%s = %s, want %s: perm was applied", p, got, want)
		}
	}

	// A linked file already as wanted is no reason to refuse.
	os.Remove(filepath.Join(root, "srv/data/link"))
	applyConf(t, root, node.Conf, false)
	if got := mode(filepath.Join(root, "srv/data/notes")); got != "0600 1234:1235" {
		t.Errorf("notes = %s, want 0600 1234:1235", got)
	}

	// Linked after bellbuild changed it: the revert is refused.
	other := nodeconf.Conf{Perm: &nodeconf.Perm{Paths: []nodeconf.PermPath{{Path: "/srv/other/*", Owner: "app", Group: "app", Permissions: "0644"}}}}
	applyConf(t, root, other, false)
	os.Link(filepath.Join(root, "srv/other/shared"), filepath.Join(dir, "shared-elsewhere"))
	rep, _ = Apply(context.Background(), Options{RootDir: root}, &nodeconf.Node{Node: "n"})
	want = "perm: /srv/other/shared: has more than one hard link (2): not reverted to 0640 0:0"
	if !cmp.Equal(rep.Errors, []string{want}) {
		t.Errorf("revert errors %q, want %q", rep.Errors, want)
	}
	for p, want := range map[string]string{"srv/other/shared": "0644 1234:1235", "srv/other/mine": "0640 0:0", "srv/data/notes": "0640 0:0"} {
		if got := mode(filepath.Join(root, p)); got != want {
			t.Errorf("after the revert %s = %s, want %s", p, got, want)
		}
	}
}

// TestModulesThatFight: two modules that would manage one file are refused
// before anything changes. Applied, each pair fought on every run: perm
// set /etc/shadow world-readable and uamlite put it back, so a run never
// converged; files wrote alice's authorized_keys, uamlite rewrote it, and
// files then found its file changed (a conflict) for ever. An adopted
// user's home comes from the root's /etc/passwd (app's is /srv/app).
func TestModulesThatFight(t *testing.T) {
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKz alice"
	alice := &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "alice", UserSSHKeys: []string{key}}}}
	for _, tc := range []struct {
		name string
		conf nodeconf.Conf
		want string
	}{
		{"perm over shadow", nodeconf.Conf{Uamlite: alice, Perm: &nodeconf.Perm{Paths: []nodeconf.PermPath{{Path: "/etc/shadow", Owner: "root", Group: "root", Permissions: "0644"}}}},
			`perm.paths[0].path: "/etc/shadow" matches /etc/shadow, which uamlite (uamlite.users) manages; two modules cannot manage one file`},
		{"files over authorized_keys", nodeconf.Conf{Uamlite: alice, Files: map[string]nodeconf.File{"/home/alice/.ssh/authorized_keys": {Content: "ssh-ed25519 AAAA mallory\n", Mode: "0600"}}},
			`files["/home/alice/.ssh/authorized_keys"]: /home/alice/.ssh/authorized_keys is also managed by uamlite (uamlite.users[0].user_sshkeys); two modules cannot manage one file`},
		{"files over an adopted user's keys", nodeconf.Conf{
			Uamlite: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "app", UserSSHKeys: []string{key}}}},
			Files:   map[string]nodeconf.File{"/srv/app/.ssh/authorized_keys": {Content: "ssh-ed25519 AAAA mallory\n", Mode: "0600"}}},
			`uamlite: files["/srv/app/.ssh/authorized_keys"]: /srv/app/.ssh/authorized_keys is also managed by uamlite (uamlite.users[0].user_sshkeys); two modules cannot manage one file`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			buildRoot(t, root, rootTree{
				"/etc/group":  fileEntry("0644", "0:0", "root:x:0:\nshadow:x:42:\napp:x:1235:\n"),
				"/etc/shadow": fileEntry("0640", "0:42", "root:*:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n"),
				"/srv/app":    dirEntry("0755", "1234:1235"),
			})
			before, stamps := snapshot(t, root)
			rep, err := Apply(context.Background(), Options{RootDir: root}, &nodeconf.Node{Node: "n1", Conf: tc.conf})
			if err == nil || !cmp.Equal(rep.Errors, []string{tc.want}) {
				t.Fatalf("Apply = %v, %q; want the error %q", err, rep.Errors, tc.want)
			}
			after, stamps2 := snapshot(t, root)
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("the refused configuration changed the root (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(stamps, stamps2); diff != "" {
				t.Errorf("the refused configuration touched the root (-before +after):\n%s", diff)
			}
			if _, err := os.Stat(filepath.Join(root, "var/lib/bellbuild")); err == nil {
				t.Error("the refused configuration made the state directory")
			}
		})
	}
}

// TestEthtoolDeviceNotYetNamed: the init applies before udev names the
// NICs, so a device the configuration names may not exist yet. At boot
// (Options.Boot) its unit is still written, for systemd to run when the
// device appears, and that is not an error; on a running system (day 2)
// a missing device is an error and nothing is written. No device of this
// machine is touched: the name exists nowhere.
func TestEthtoolDeviceNotYetNamed(t *testing.T) {
	const dev = "bbnotyet0"
	if _, err := os.Stat("/sys/class/net/" + dev); err == nil {
		testtool.Skipf(t, "this machine has a device named %s", dev)
	}
	conf := nodeconf.Conf{Ethtool: map[string]map[string]string{dev: {"tso": "off"}}}
	unit := "etc/systemd/system/bellbuild-ethtool-" + dev + ".service"
	for _, tc := range []struct {
		name string
		boot bool
	}{{"at boot", true}, {"day 2", false}} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			rep, err := Apply(context.Background(), Options{RootDir: root, Live: true, Boot: tc.boot}, &nodeconf.Node{Node: "n1", Profile: "p", Conf: conf})
			_, statErr := os.Stat(filepath.Join(root, unit))
			if tc.boot {
				if err != nil || len(rep.Errors) != 0 || statErr != nil {
					t.Errorf("Apply: %v %v, unit: %v; want no error and the unit written", err, rep, statErr)
				}
				return
			}
			// The checks refuse it before anything is written.
			if err == nil || !strings.Contains(err.Error(), "device "+dev+": no such network device") || statErr == nil {
				t.Errorf("Apply: %v, unit: %v; want the missing device reported and no unit", err, statErr)
			}
		})
	}
}

// TestSysctlKeyNotYetLoaded: at boot, a key the kernel lacks makes the
// sysctl module have the init load the modules of modules-load.d (once)
// and look again; a key that appears then is set; one still missing is
// deferred to systemd-sysctl (persisted, counted apart) when the root has
// it, and an error (not persisted) when nothing will set it later. On day
// 2 an unknown key is refused by the checks. The kernel's keys are files
// under a temporary procSys, where loading a module is making its file.
func TestSysctlKeyNotYetLoaded(t *testing.T) {
	const (
		missing = "net.bellbuild_test.not_loaded"
		late    = "net.bridge.bridge-nf-call-iptables" // br_netfilter's
	)
	old := procSys
	t.Cleanup(func() { procSys = old })
	put := func(t *testing.T, p, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		boot bool
		// systemd puts systemd-sysctl in the root.
		systemd bool
		// module is a key the modules of modules-load.d bring.
		module string
		conf   map[string]string
		// The run's errors and deferred items (substrings, in order),
		// and the keys persisted in /etc/sysctl.d.
		errors, deferred []string
		persisted        []string
		summary          string
	}{{
		name: "boot, systemd-sysctl in the root: deferred", boot: true, systemd: true,
		conf:      map[string]string{missing: "1"},
		deferred:  []string{"sysctl: " + missing + ": not in the running kernel (no PROC/net/bellbuild_test/not_loaded), even with the modules of modules-load.d loaded: deferred to systemd-sysctl"},
		persisted: []string{missing + " = 1"},
		summary:   "changes=1 errors=0 deferred=1", // the sysctl.d file
	}, {
		name: "boot, no systemd-sysctl: an error", boot: true,
		conf:    map[string]string{missing: "1"},
		errors:  []string{"sysctl: " + missing + ": unknown key: the running kernel has no PROC/net/bellbuild_test/not_loaded, even with the modules of modules-load.d loaded, and nothing in this system (no systemd-sysctl) sets it later"},
		summary: "changes=0 errors=1",
	}, {
		name: "boot, a module of modules-load.d brings one key: it is set", boot: true, module: late,
		conf:      map[string]string{late: "0", missing: "1"},
		errors:    []string{"sysctl: " + missing + ": unknown key"},
		persisted: []string{late + " = 0"},
		summary:   "changes=2 errors=1", // the key and the sysctl.d file
	}, {
		name: "day 2: refused by the checks", module: late,
		conf:    map[string]string{late: "0", missing: "1"},
		errors:  []string{"sysctl: " + missing + ": unknown key", "sysctl: " + late + ": unknown key"},
		summary: "changes=0 errors=2",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			procSys = t.TempDir()
			root := t.TempDir()
			if tc.systemd {
				put(t, filepath.Join(root, "usr/lib/systemd/systemd-sysctl"), "")
			}
			loads := 0
			opts := Options{RootDir: root, Live: true, Boot: tc.boot, LoadModules: func() []error {
				loads++
				if tc.module != "" {
					put(t, sysctlPath(tc.module), "1\n")
				}
				return nil
			}}
			rep, _ := Apply(context.Background(), opts, &nodeconf.Node{Node: "n1", Profile: "p", Conf: nodeconf.Conf{Sysctl: tc.conf}})
			check := func(what string, got, want []string) {
				t.Helper()
				if len(got) != len(want) {
					t.Errorf("%s: %q, want %d", what, got, len(want))
					return
				}
				for i := range want {
					if w := strings.ReplaceAll(want[i], "PROC", procSys); !strings.Contains(got[i], w) {
						t.Errorf("%s[%d]: %q, want it to contain %q", what, i, got[i], w)
					}
				}
			}
			check("errors", rep.Errors, tc.errors)
			check("deferred", rep.Deferred, tc.deferred)
			if !strings.HasSuffix(rep.Summary(), tc.summary) {
				t.Errorf("summary %q, want it to end with %q", rep.Summary(), tc.summary)
			}
			file, _ := os.ReadFile(filepath.Join(root, "etc/sysctl.d/60-bellbuild.conf"))
			var got []string
			for _, l := range strings.Split(string(file), "\n") {
				if l != "" && !strings.HasPrefix(l, "#") {
					got = append(got, l)
				}
			}
			if strings.Join(got, "|") != strings.Join(tc.persisted, "|") {
				t.Errorf("persisted %q, want %q", got, tc.persisted)
			}
			if want := map[bool]int{true: 1, false: 0}[tc.boot]; loads != want {
				t.Errorf("the modules of modules-load.d were loaded %d times, want %d", loads, want)
			}
			if tc.module != "" && tc.boot {
				if v, _ := os.ReadFile(sysctlPath(tc.module)); string(v) != "0\n" {
					t.Errorf("%s = %q after the run, want 0", tc.module, v)
				}
			}
		})
	}
}

// TestMountDeviceNotYetPresent: at boot, before udev makes
// /dev/disk/by-label/*, a mount of a device that is not there yet is left
// to its unit (written and enabled, so systemd mounts it when the device
// appears): no error, no live mount attempted or recorded. Nothing of this
// machine is mounted: the device exists nowhere.
func TestMountDeviceNotYetPresent(t *testing.T) {
	const dev = "/dev/disk/by-label/bellbuild-test-not-there"
	if _, err := os.Stat(dev); err == nil {
		testtool.Skipf(t, "this machine has %s", dev)
	}
	root := t.TempDir()
	conf := nodeconf.Conf{Mounts: map[string]nodeconf.Mount{"data": {MntTgt: "/srv/data", Device: dev, Type: "ext4"}}}
	rep, err := Apply(context.Background(), Options{RootDir: root, Live: true, Boot: true}, &nodeconf.Node{Node: "n1", Profile: "p", Conf: conf})
	if err != nil || len(rep.Errors) != 0 {
		t.Fatalf("Apply: %v %+v", err, rep)
	}
	for _, p := range []string{"etc/systemd/system/srv-data.mount", "etc/systemd/system/local-fs.target.wants/srv-data.mount"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	led, err := os.ReadFile(filepath.Join(root, host.LedgerPath))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(led), "live:") {
		t.Errorf("a live mount was recorded:\n%s", led)
	}
	if _, err := os.Stat(filepath.Join(root, "srv/data")); err == nil {
		t.Error("the mount point was made: a mount was attempted")
	}
}

// TestFilesVisudo: a sudoers file written through files is checked with
// the root's visudo before it is written, as uamlite's fragments are: one
// it rejects is never written (the rest of the module is), one it accepts
// is checked again only when it would change, and a file sudo does not
// read (a name with a dot) is not checked.
func TestFilesVisudo(t *testing.T) {
	root := busyboxRoot(t)
	os.Symlink("busybox", filepath.Join(root, "bin/grep"))
	for p, c := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
		// Logs each file it is given; "BROKEN" is a syntax error.
		"usr/sbin/visudo": "#!/bin/sh\n[ \"$1 $2 $3\" = '-c -q -f' ] || exit 2\necho \"$4\" >> /visudo.log\n" +
			"if grep -q BROKEN \"$4\"; then echo \"$4: syntax error\" >&2; exit 1; fi\n",
	} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(c), 0o755)
	}
	conf := nodeconf.Conf{Files: map[string]nodeconf.File{
		"/etc/sudoers.d/ops":       {Content: "ops ALL=(ALL) ALL\n", Mode: "0440"},
		"/etc/sudoers.d/broken":    {Content: "BROKEN\n", Mode: "0440"},
		"/etc/sudoers.d/notes.txt": {Content: "BROKEN, and sudo never reads it\n"},
		"/etc/motd":                {Content: "BROKEN is fine here\n"},
	}}
	for run, want := range []string{
		"/etc/sudoers.d/.bellbuild-check-broken\n/etc/sudoers.d/.bellbuild-check-ops\n",
		"/etc/sudoers.d/.bellbuild-check-broken\n",
	} {
		os.Remove(filepath.Join(root, "visudo.log"))
		rep, err := Apply(context.Background(), Options{RootDir: root}, &nodeconf.Node{Node: "n1", Conf: conf})
		if err != nil {
			t.Fatal(err)
		}
		wantErrs := []string{"files: /etc/sudoers.d/broken: visudo -c: exit status 1: /etc/sudoers.d/.bellbuild-check-broken: syntax error; not written"}
		if diff := cmp.Diff(wantErrs, rep.Errors); diff != "" {
			t.Errorf("run %d: errors (-want +got):\n%s", run, diff)
		}
		if got, _ := os.ReadFile(filepath.Join(root, "visudo.log")); string(got) != want {
			t.Errorf("run %d: visudo checked %q, want %q", run, got, want)
		}
		for p, want := range map[string]string{
			"etc/sudoers.d/ops": "ops ALL=(ALL) ALL\n", "etc/sudoers.d/broken": missing,
			"etc/sudoers.d/notes.txt": "BROKEN, and sudo never reads it\n", "etc/motd": "BROKEN is fine here\n",
			"etc/sudoers.d/.bellbuild-check-broken": missing, "etc/sudoers.d/.bellbuild-check-ops": missing,
		} {
			if got := readRoot(t, root, p); got != want {
				t.Errorf("run %d: %s = %q, want %q", run, p, got, want)
			}
		}
	}
}
