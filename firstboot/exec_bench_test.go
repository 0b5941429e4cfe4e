package firstboot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// accountsRoot makes a fresh busybox root under dir and a node of 1,000
// items for it: 400 users (each with sudo and a key), 200 scripts
// (once_successfully) and 400 packages (all installed at the requested
// version in the root's dpkg database, so that apt has nothing to run).
func accountsRoot(b *testing.B, dir string) (string, *nodeconf.Node) {
	b.Helper()
	if os.Geteuid() != 0 {
		testtool.Skipf(b, "needs root (chown to the test users, chroot for the scripts)")
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		testtool.Skipf(b, "needs /bin/busybox: %v", err)
	}
	root, err := os.MkdirTemp(dir, "root")
	if err != nil {
		b.Fatal(err)
	}
	for _, d := range []string{"bin", "proc", "dev", "tmp", "etc", "var/lib/dpkg"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755)
	os.Symlink("busybox", filepath.Join(root, "bin/sh"))
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nshadow:x:42:\n"), 0o644)
	var status strings.Builder
	conf := nodeconf.Conf{Uamlite: &nodeconf.Uamlite{}, Exec: map[string]nodeconf.Exec{}, Apt: &nodeconf.Apt{}}
	for i := range 400 {
		conf.Uamlite.Users = append(conf.Uamlite.Users, nodeconf.User{
			UserName: fmt.Sprintf("user%03d", i), UserCryptPasswd: aliceHash, UserSudo: true, UserSSHKeys: []string{aliceKey},
		})
		name := fmt.Sprintf("pkg%03d", i)
		fmt.Fprintf(&status, "Package: %s\nStatus: install ok installed\nPriority: optional\nVersion: 1.%d-1\nArchitecture: amd64\n\n", name, i)
		conf.Apt.Packages = append(conf.Apt.Packages, nodeconf.Package{Name: name, Version: fmt.Sprintf("1.%d-1", i)})
	}
	for i := range 200 {
		conf.Exec[fmt.Sprintf("%03d-script", i)] = nodeconf.Exec{Data: "#!/bin/sh\nexit 0\n", RerunPolicy: "once_successfully"}
	}
	os.WriteFile(filepath.Join(root, dpkgStatusPath), []byte(status.String()), 0o644)
	return root, &nodeconf.Node{Node: "n1", Profile: "p", Conf: conf}
}

// BenchmarkAccountsScriptsPackagesNoChange1000 measures a no-change rerun
// of uamlite, exec and apt with 1,000 items (accountsRoot, all applied and
// all scripts run once before).
func BenchmarkAccountsScriptsPackagesNoChange1000(b *testing.B) {
	root, node := accountsRoot(b, b.TempDir())
	rep, err := Apply(context.Background(), Options{RootDir: root}, node)
	if err != nil || len(rep.Errors) > 0 {
		b.Fatalf("first apply: %v %v", err, rep.Errors)
	}
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		rep, err := Apply(context.Background(), Options{RootDir: root}, node)
		if err != nil || len(rep.Errors) > 0 || len(rep.Changes) > 0 {
			b.Fatalf("rerun: %v, errors %v, %d changes: %+v", err, rep.Errors, len(rep.Changes), rep.Changes[:min(3, len(rep.Changes))])
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkAccountsScriptsPackagesFirst1000 is the first apply of the same
// configuration to a fresh root (on the disk under b.TempDir, fsync
// included), each op on a new root made outside the timer:
//
//   - users: the 400 users alone, each created with a home, a sudoers
//     fragment and an authorized_keys (1,600 changes). Goal: < 3 s.
//   - scripts: the 200 scripts alone, written and run once each in a
//     busybox chroot (400 changes); most of it is starting the scripts.
//   - all: users, scripts and packages (2,400 changes).
//
// cpu-ms/op is the applier's own CPU time, child-cpu-ms/op that of the
// processes it started (unshare, sh, mount, chroot, busybox).
func BenchmarkAccountsScriptsPackagesFirst1000(b *testing.B) {
	for _, bc := range []struct {
		name    string
		keep    func(c *nodeconf.Conf)
		changes int
	}{
		{"users", func(c *nodeconf.Conf) { c.Exec, c.Apt = nil, nil }, 1600},
		{"scripts", func(c *nodeconf.Conf) { c.Uamlite, c.Apt = nil, nil }, 400},
		{"all", func(*nodeconf.Conf) {}, 2400},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dir := b.TempDir()
			var cpu, child time.Duration
			for range b.N {
				b.StopTimer()
				root, node := accountsRoot(b, dir)
				bc.keep(&node.Conf)
				cpu0, child0 := cpuTime(), childCPUTime()
				b.StartTimer()
				rep, err := Apply(context.Background(), Options{RootDir: root}, node)
				b.StopTimer()
				cpu += cpuTime() - cpu0
				child += childCPUTime() - child0
				if err != nil || len(rep.Errors) > 0 {
					b.Fatalf("first apply: %v %v", err, rep.Errors)
				}
				if len(rep.Changes) < bc.changes {
					b.Fatalf("first apply made %d changes, want at least %d", len(rep.Changes), bc.changes)
				}
				os.RemoveAll(root)
			}
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
			b.ReportMetric(float64(child.Microseconds())/1000/float64(b.N), "child-cpu-ms/op")
		})
	}
}
