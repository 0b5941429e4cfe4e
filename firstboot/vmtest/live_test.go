// Package vmtest proves the applier's live effects — sysctl values, a
// tmpfs mount, an ethtool feature, an AppArmor profile — in the running
// kernel of a QEMU VM booted from a baked image, and their revert when a
// day-2 `bellbuild apply` drops them, without a reboot. It has test files
// only: it bakes with package build and boots with testvm, so nothing of
// the kind ever touches the machine that runs the tests.
package vmtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/build"
	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// kernel is the build host's Debian kernel (linux-image-amd64).
const kernel = "/vmlinuz"

// lineTimeout bounds each wait for a console line: generous, because the
// machine is shared and TCG is slow.
const lineTimeout = 300 * time.Second

// tools are the host binaries the stage carries, with the shared libraries
// ldd lists for them: the applier runs them inside the VM.
var tools = []string{"ethtool", "apparmor_parser"}

// report prints, one "fx TAG KEY=VALUE" line each, what is in force in the
// running VM, then "fx-end TAG".
const report = `#!/bin/sh
t=$1
p() { echo "fx $t $1=$2"; }
p swappiness "$(cat /proc/sys/vm/swappiness)"
p domainname "$(cat /proc/sys/kernel/domainname)"
p ip_forward "$(cat /proc/sys/net/ipv4/ip_forward)"
p mount "$(while read -r dev dir fs opts rest; do [ "$dir" = /mnt/data ] && echo "$dev $fs $opts"; done < /proc/mounts)"
p gro "$(ethtool -k eth0 | sed -n 's/^generic-receive-offload: //p')"
p apparmor "$(cat /sys/module/apparmor/parameters/enabled 2>&1)"
p profile "$(grep '^bellbuild-vmtest ' /sys/kernel/security/apparmor/profiles 2>&1)"
p files "$(find /etc/apparmor.d | sort | tr '\n' ' ')"
echo "fx-end $t"
`

// site is the test site: node-a puts every live effect in force; node-b is
// the same profile without them and with one sysctl changed.
const (
	profileYAML = `description: Live effects in a VM
stage: {dir: %q}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0, quiet]
`
	nodesYAML = `nodes:
- name: node-a
  mac: 52:54:00:fe:00:0a
  profile: vmtest
  conf:
    sysctl:
      vm.swappiness: 17
      kernel.domainname: a.vmtest.test
      net.ipv4.ip_forward: 1
    mounts:
      data:
        mnt_tgt: /mnt/data
        device: tmpfs
        type: tmpfs
        options: size=16m
    ethtool:
      eth0:
        generic-receive-offload: "off"
    apparmor:
      complain_mode: true
      profiles:
        vmtest: |
          profile bellbuild-vmtest /usr/bin/vmtest-confined {
            /etc/hostname r,
          }
- name: node-b
  mac: 52:54:00:fe:00:0b
  profile: vmtest
  conf:
    sysctl:
      kernel.domainname: b.vmtest.test
`
)

// TestLiveEffects boots node-a, reads the effects in the running kernel,
// then applies node-b from the image's bundle at the console and reads
// them reverted to what the kernel had before bellbuild touched it; a
// second apply changes nothing.
func TestLiveEffects(t *testing.T) {
	testtool.SkipVM(t)
	if _, err := os.Stat(kernel); err != nil {
		testtool.Skipf(t, "no kernel at %s (apt-get install linux-image-amd64)", kernel)
	}
	stage := makeStage(t)
	siteDir := t.TempDir()
	writeFile(t, filepath.Join(siteDir, "profiles/vmtest.yaml"), fmt.Sprintf(profileYAML, stage), 0o644)
	writeFile(t, filepath.Join(siteDir, "nodes.yaml"), nodesYAML, 0o644)
	site, err := profiles.Load(siteDir)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := site.Image("vmtest")
	if err != nil {
		t.Fatal(err)
	}
	m, err := build.Image(context.Background(), spec, build.Options{
		OutDir:   filepath.Join(t.TempDir(), "out"),
		CacheDir: filepath.Join(t.TempDir(), "cache"),
		Applier:  testtool.Binary(t),
		Site:     site,
	})
	if err != nil {
		t.Fatal(err)
	}

	// One boot: node-a, a virtio NIC (eth0). panic=-1 with -no-reboot ends
	// a failed boot at once. No apparmor= or security=: the Debian kernel
	// enables AppArmor by default, as the images boot in production; the
	// applier mounts securityfs itself (busybox init does not).
	start := time.Now()
	vm := testtool.NewVM(t, testvm.Config{
		Kernel:  filepath.Join(m.Stats.Dir, build.KernelFile),
		Initrd:  filepath.Join(m.Stats.Dir, build.InitramfsFile),
		Cmdline: m.Cmdline + " panic=-1 bellbuild.node=node-a",
		NICs:    []testvm.NIC{{MAC: "52:54:00:fe:00:0a"}},
	})
	waitLine(t, vm, `^bellbuild: node=node-a profile=vmtest changes=[1-9]\d* errors=0$`)
	vm.Wait(`^bellbuild:/# `)
	t.Logf("booted node-a to a shell in %s", time.Since(start).Round(time.Second))

	// The kernel's own defaults: what was live before bellbuild first
	// touched each item (a fresh kernel, nothing else in the stage sets
	// them), and what the revert must put back.
	pristine := map[string]string{
		"swappiness": "60",
		"domainname": "(none)",
		"ip_forward": "0",
		"mount":      "",
		"gro":        "on",
		"apparmor":   "Y",
		"profile":    "",
	}

	// The originals bellbuild recorded, write-ahead, before it changed the
	// running kernel at boot must be those defaults: the revert below
	// then proves it puts back what was live, not merely a known value.
	ledger := readLedger(t, vm)
	originals := map[string]string{}
	for mod, keys := range map[string][]string{
		"sysctl":  {"vm.swappiness", "kernel.domainname", "net.ipv4.ip_forward"},
		"ethtool": {"feat:eth0/generic-receive-offload"},
	} {
		for _, k := range keys {
			if rec, ok := ledger.Modules[mod][k]; ok && rec.HadOriginal {
				originals[k] = rec.Original
			}
		}
	}
	wantOriginals := map[string]string{
		"vm.swappiness":                     pristine["swappiness"],
		"kernel.domainname":                 pristine["domainname"],
		"net.ipv4.ip_forward":               pristine["ip_forward"],
		"feat:eth0/generic-receive-offload": pristine["gro"],
	}
	if diff := cmp.Diff(wantOriginals, originals); diff != "" {
		t.Errorf("originals in the VM's ledger after boot (-want +got):\n%s", diff)
	}

	applied := effects(t, vm, "a")
	want := map[string]string{
		"swappiness": "17",
		"domainname": "a.vmtest.test",
		"ip_forward": "1",
		"mount":      "tmpfs tmpfs rw,relatime,size=16384k,inode64",
		"gro":        "off",
		"apparmor":   "Y",
		"profile":    "bellbuild-vmtest (complain)",
		"files":      "/etc/apparmor.d /etc/apparmor.d/bellbuild.vmtest /etc/apparmor.d/force-complain /etc/apparmor.d/force-complain/bellbuild.vmtest",
	}
	if diff := cmp.Diff(want, applied); diff != "" {
		t.Errorf("node-a in force after boot (-want +got):\n%s", diff)
	}

	// Day 2 in the same VM: node-b from the image's bundle.
	const apply = "/bellbuild/bellbuild apply --config /etc/bellbuild/bundle.json --node node-b --root /\n"
	vm.Send(apply)
	waitLine(t, vm, `^bellbuild: node=node-b profile=vmtest changes=[1-9]\d* errors=0$`)
	reverted := effects(t, vm, "b")
	want = map[string]string{}
	for k, v := range pristine {
		want[k] = v
	}
	want["domainname"] = "b.vmtest.test"
	// Its files are gone, and so are the directories bellbuild created
	// for them (the stage had no /etc/apparmor.d): nothing is left.
	want["files"] = ""
	if diff := cmp.Diff(want, reverted); diff != "" {
		t.Errorf("after applying node-b (-want +got):\n%s", diff)
	}

	// Converged: a second run changes nothing.
	vm.Send(apply)
	waitLine(t, vm, `^bellbuild: node=node-b profile=vmtest changes=0 errors=0$`)
	t.Logf("boot, two applies and three reports in %s", time.Since(start).Round(time.Second))
}

// effects runs the report at the console and returns its KEY=VALUE lines.
func effects(t *testing.T, vm *testtool.VM, tag string) map[string]string {
	t.Helper()
	vm.Send("vmtest-report " + tag + "\n")
	waitLine(t, vm, `^fx-end `+tag+`$`)
	got := map[string]string{}
	prefix := "fx " + tag + " "
	sc := bufio.NewScanner(strings.NewReader(vm.Console()))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if kv, ok := strings.CutPrefix(line, prefix); ok {
			k, v, _ := strings.Cut(kv, "=")
			got[k] = strings.TrimSpace(v)
		}
	}
	return got
}

// readLedger prints the VM's ledger on the console and decodes it.
func readLedger(t *testing.T, vm *testtool.VM) *host.Ledger {
	t.Helper()
	vm.Send("echo ledger-begin; cat /" + host.LedgerPath + "; echo; echo ledger-end\n")
	waitLine(t, vm, `^ledger-end$`)
	con := strings.ReplaceAll(vm.Console(), "\r", "")
	begin := strings.LastIndex(con, "\nledger-begin\n")
	end := strings.LastIndex(con, "\nledger-end\n")
	if begin < 0 || end < begin {
		t.Fatalf("no ledger between markers on the console")
	}
	var l host.Ledger
	if err := json.Unmarshal([]byte(con[begin+len("\nledger-begin\n"):end]), &l); err != nil {
		t.Fatalf("ledger printed in the VM: %v", err)
	}
	return &l
}

// waitLine waits for a complete console line matching re.
func waitLine(t *testing.T, vm *testtool.VM, re string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lineTimeout)
	defer cancel()
	m, err := vm.WaitForLine(ctx, regexp.MustCompile(re))
	if err != nil {
		t.Fatalf("VM: %v", err)
	}
	return m
}

// makeStage writes a dir stage: the host's static busybox with every
// applet, a busybox init giving a shell on ttyS0, the report script, and
// the tools with their shared libraries and ld.so.
func makeStage(t *testing.T) string {
	t.Helper()
	busybox := ""
	for _, p := range build.BusyboxPaths {
		if _, err := os.Stat(p); err == nil {
			busybox = p
			break
		}
	}
	if busybox == "" {
		testtool.Skipf(t, "no busybox (apt-get install busybox-static)")
	}
	dir := filepath.Join(t.TempDir(), "stage")
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "root", "proc", "sys", "dev", "run", "mnt", "tmp", "var/lib", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, busybox, filepath.Join(dir, "bin/busybox"))
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		t.Fatalf("%s --list-full: %v", busybox, err)
	}
	for _, a := range append(strings.Fields(string(out)), "sbin/init") {
		if a == "bin/busybox" {
			continue
		}
		link := filepath.Join(dir, a)
		os.Remove(link)
		if err := os.Symlink("/bin/busybox", link); err != nil {
			t.Fatal(err)
		}
	}
	files := []struct {
		path string
		mode os.FileMode
		data string
	}{
		{"etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"},
		{"etc/group", 0o644, "root:x:0:\n"},
		{"etc/shadow", 0o600, "root:*:0:0:99999:7:::\n"},
		{"etc/hostname", 0o644, "bellbuild\n"},
		{"etc/profile", 0o644, "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\h:\\w\\$ '\n"},
		{"etc/inittab", 0o644, "::sysinit:/etc/init.d/rcS\nttyS0::respawn:-/bin/sh\n"},
		{"etc/init.d/rcS", 0o755, "#!/bin/sh\nhostname -F /etc/hostname\n"},
		{"usr/bin/vmtest-report", 0o755, report},
	}
	for _, f := range files {
		writeFile(t, filepath.Join(dir, f.path), f.data, f.mode)
	}
	libs := map[string]bool{}
	for _, name := range tools {
		bin, err := exec.LookPath(name)
		if err != nil {
			for _, d := range []string{"/usr/sbin", "/sbin"} {
				if _, serr := os.Stat(filepath.Join(d, name)); serr == nil {
					bin, err = filepath.Join(d, name), nil
					break
				}
			}
		}
		if err != nil {
			testtool.Skipf(t, "no %s on this machine (apt-get install ethtool apparmor)", name)
		}
		dst := filepath.Join(dir, "usr/sbin", name)
		os.Remove(dst)
		copyFile(t, bin, dst)
		for _, l := range sharedLibs(t, bin) {
			libs[l] = true
		}
	}
	var names []string
	for l := range libs {
		names = append(names, l)
	}
	sort.Strings(names)
	for _, l := range names {
		copyFile(t, l, filepath.Join(dir, l))
	}
	return dir
}

// lddPath is a library path in a line of ldd's output: "libc.so.6 =>
// /lib/.../libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)".
var lddPath = regexp.MustCompile(`(?m)^\s*(?:\S+ => )?(/\S+) \(0x`)

// sharedLibs lists the libraries (and the dynamic loader) that ldd says bin
// needs, as the absolute paths the loader opens.
func sharedLibs(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	var libs []string
	for _, m := range lddPath.FindAllStringSubmatch(string(out), -1) {
		libs = append(libs, m[1])
	}
	if len(libs) == 0 {
		t.Fatalf("ldd %s listed no libraries:\n%s", bin, out)
	}
	return libs
}

// copyFile copies src (following symlinks) to dst with src's mode.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, string(data), st.Mode().Perm())
}

func writeFile(t *testing.T, file, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}
