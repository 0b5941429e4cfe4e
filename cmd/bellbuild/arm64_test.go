package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/build/debpkg"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// arm64Debs is where the arm64 tests keep the Debian packages they fetch,
// across tests and runs (the kernel package is 60 MB); the build tests
// use it too.
const arm64Debs = "/var/cache/bellbuild-test/debs"

// needARM64 skips unless apt knows arm64 packages and qemu-user is there.
func needARM64(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("apt-cache", "show", "--no-all-versions", "busybox-static:arm64").Output(); err != nil || len(out) == 0 {
		testtool.Skipf(t, "apt knows no arm64 packages: dpkg --add-architecture arm64 && apt-get update (make deps does it): %v", err)
	}
	testtool.LookPath(t, "qemu-aarch64-static", "qemu-user-static")
}

// arm64Cache is a fresh bake cache whose Debian packages are arm64Debs.
func arm64Cache(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(arm64Debs, 0o755); err != nil {
		testtool.Skipf(t, "no shared package cache: %v", err)
	}
	if err := os.Symlink(arm64Debs, filepath.Join(dir, "debs")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// bakeARM64 runs `bellbuild image PROFILE` for an arm64 profile with the
// cross-built applier and the shared package cache.
func bakeARM64(t testing.TB, bin, out, profile string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"image", profile, "-o", out, "--cache", arm64Cache(t), "--applier-arm64", testtool.BinaryArch(t, "arm64")}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image %s: %v\n%s", profile, err, b)
	}
}

// TestRunARM64Demo: the embedded demo profile for arm64 (demo-arm64)
// bakes on this x86-64 host and boots in qemu-system-aarch64 with
// `bellbuild run --arch arm64` to the applier's summary line, its report
// script's values before it; --arch amd64 on it is refused.
func TestRunARM64Demo(t *testing.T) {
	testtool.SkipVMArch(t, testvm.ARM64)
	needARM64(t)
	bin := testtool.Binary(t)
	out := t.TempDir()
	bakeARM64(t, bin, out, "demo-arm64")

	start := time.Now()
	cmd := exec.Command(bin, "run", "demo-arm64", "-o", out, "--arch", "arm64", "--timeout", "300s", "--expect", "bellbuild: node=")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bellbuild run --arch arm64: %v\nconsole:\n%s\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("arm64 TCG boot to the summary line: %s", time.Since(start).Round(100*time.Millisecond))
	for _, re := range []string{
		`(?m)^\[010-report.sh\] demo: domainname=demo\.bellbuild\r?$`,
		`(?m)^\[010-report.sh\] demo: swappiness=30\r?$`,
		`(?m)^bellbuild: node=\S+ profile=demo-arm64 changes=[1-9]\d* errors=0\r?$`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout.String()) {
			t.Errorf("console lacks %s:\n%s", re, stdout.String())
		}
	}
	if !strings.Contains(stderr.String(), "(arm64, kernel ") {
		t.Errorf("run did not say it boots arm64:\n%s", stderr.String())
	}

	b, err := exec.Command(bin, "run", "demo-arm64", "-o", out, "--arch", "amd64", "--timeout", "10s", "--expect", "x").CombinedOutput()
	if err == nil || !strings.Contains(string(b), "was baked for arm64 (its manifest says arch arm64)") {
		t.Errorf("--arch amd64 on an arm64 image: %v\n%s", err, b)
	}
}

// qemuFor is netns.qemu for the emulator of architecture arch.
func (ns *netns) qemuFor(t testing.TB, arch string) string {
	p := filepath.Join(t.TempDir(), "qemu-in-netns-"+arch)
	script := "#!/bin/sh\nexec ip netns exec " + ns.name + " " + testvm.Emulator(arch) + " \"$@\"\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// mixedSite is a site with an x86-64 and an arm64 profile and one node
// of each; the report prints the machine's architecture and the node's
// own swappiness.
var mixedSite = map[string]string{
	"profiles/x86.yaml": `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0, quiet]
conf:
  sysctl: {vm.swappiness: 30}
  exec:
    010-report.sh:
      data: |
        #!/bin/sh
        echo "net: arch=$(uname -m) swappiness=$(cat /proc/sys/vm/swappiness)"
`,
	"profiles/arm.yaml": `inherits: [x86]
arch: arm64
kernel: {package: linux-image-arm64}
cmdline: [console=ttyAMA0, quiet]
`,
	"nodes.yaml": `nodes:
- name: n-x86
  mac: 52:54:00:00:01:01
  profile: x86
  conf: {sysctl: {vm.swappiness: 41}}
- name: n-arm
  mac: 52:54:00:00:01:02
  profile: arm
  conf: {sysctl: {vm.swappiness: 42}}
`,
}

// TestNetworkBootMixedArch: in a network namespace, one serve boots an
// x86-64 VM (SeaBIOS, QEMU's iPXE ROM) and an arm64 VM (AAVMF's own PXE,
// which DHCP's option 93 answers with GRUB's grubnetaa64.efi, which reads
// grub/grub.cfg over TFTP) at the same time, each by its MAC into its own
// architecture's image and as its own node (bellbuild.node= through iPXE
// and through GRUB), both reaching their summary lines.
func TestNetworkBootMixedArch(t *testing.T) {
	testtool.SkipVM(t)
	testtool.SkipVMArch(t, testvm.ARM64)
	needARM64(t)
	if _, err := os.Stat("/vmlinuz"); err != nil {
		testtool.Skipf(t, "no host kernel at /vmlinuz (apt-get install linux-image-amd64)")
	}
	site := t.TempDir()
	for name, data := range mixedSite {
		os.MkdirAll(filepath.Join(site, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(site, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ns := newNetns(t, 2)
	bin := testtool.Binary(t)
	out := t.TempDir()
	cache := arm64Cache(t)
	if b, err := exec.Command(bin, "image", "x86", "-C", site, "-o", out, "--cache", cache).CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image x86: %v\n%s", err, b)
	}
	bakeARM64(t, bin, out, "arm", "-C", site)
	// serve runs in the namespace, which has no way out to Debian's
	// mirror: GRUB is fetched into the cache beforehand (serve finds it
	// there, checked against apt's lists).
	if _, err := (&debpkg.Cache{Dir: arm64Debs}).Fetch(context.Background(), GRUBPackage, "arm64"); err != nil {
		t.Fatal(err)
	}
	log := startServe(t, ns, bin, "-C", site, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out, "--state", t.TempDir(), "--cache", cache)

	cases := []struct {
		name, arch, mac, tap, firmware, node, want string
	}{
		{"x86-64, SeaBIOS and iPXE", testvm.AMD64, "52:54:00:00:01:01", "tap0", "", "n-x86", "net: arch=x86_64 swappiness=41"},
		{"arm64, AAVMF and GRUB", testvm.ARM64, "52:54:00:00:01:02", "tap1", testvm.AAVMF, "n-arm", "net: arch=aarch64 swappiness=42"},
	}
	t.Run("boots", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				start := time.Now()
				vm := testtool.NewVM(t, testvm.Config{Arch: c.arch, Binary: ns.qemuFor(t, c.arch), Firmware: c.firmware,
					NICs: []testvm.NIC{{Netdev: "tap", Ifname: c.tap, MAC: c.mac}}, BootNetwork: true})
				vm.Wait(regexp.QuoteMeta("[010-report.sh] " + c.want))
				vm.Wait(`^bellbuild: node=` + c.node + ` profile=\S+ changes=[1-9]\d* errors=0$`)
				t.Logf("%s network boot to the summary line: %s", c.arch, time.Since(start).Round(100*time.Millisecond))
			})
		}
	})
	lines := log.String()
	for _, want := range []string{
		`phase=tftp-loader mac=52:54:00:00:01:02 proto=tftp`,
		`phase=grub-config mac=52:54:00:00:01:02`,
		`phase=kernel mac=52:54:00:00:01:02`,
		`phase=ipxe-script mac=52:54:00:00:01:01`,
	} {
		if !strings.Contains(lines, want) {
			t.Errorf("serve log has no %q", want)
		}
	}
	if !strings.Contains(lines, "file="+"grubnetaa64.efi") {
		t.Errorf("DHCP never named grubnetaa64.efi")
	}
}
