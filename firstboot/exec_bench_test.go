package firstboot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// BenchmarkAccountsScriptsPackagesNoChange1000 measures a no-change rerun
// of uamlite, exec and apt with 1,000 items: 400 users (each with sudo and
// a key), 200 scripts (once_successfully, all run once before) and 400
// packages (all installed at the requested version in the root's dpkg
// database, so that apt has nothing to run).
func BenchmarkAccountsScriptsPackagesNoChange1000(b *testing.B) {
	if os.Geteuid() != 0 {
		testtool.Skipf(b, "needs root (chown to the test users, chroot for the scripts)")
	}
	root := b.TempDir()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		testtool.Skipf(b, "needs /bin/busybox: %v", err)
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
	node := &nodeconf.Node{Node: "n1", Profile: "p", Conf: conf}
	start := time.Now()
	rep, err := Apply(context.Background(), Options{RootDir: root}, node)
	if err != nil || len(rep.Errors) > 0 {
		b.Fatalf("first apply: %v %v", err, rep.Errors)
	}
	b.Logf("first apply: %d changes in %v", len(rep.Changes), time.Since(start).Round(time.Millisecond))
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	for range b.N {
		rep, err := Apply(context.Background(), Options{RootDir: root}, node)
		if err != nil || len(rep.Errors) > 0 || len(rep.Changes) > 0 {
			b.Fatalf("rerun: %v, errors %v, %d changes: %+v", err, rep.Errors, len(rep.Changes), rep.Changes[:min(3, len(rep.Changes))])
		}
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(b.N)
	b.ReportMetric(float64(cpu.Microseconds())/1000, "cpu-ms/op")
}
