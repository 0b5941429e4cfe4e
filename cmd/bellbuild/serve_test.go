package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func TestParsePool(t *testing.T) {
	iface := netip.MustParsePrefix("192.0.2.0/24")
	tests := []struct{ in, want, err string }{
		{in: "192.0.2.100-192.0.2.199", want: "192.0.2.100-192.0.2.199 in 192.0.2.0/24"},
		{in: "198.51.100.10-198.51.100.20/24", want: "198.51.100.10-198.51.100.20 in 198.51.100.0/24"},
		{in: "198.51.100.10-198.51.100.20", err: `--pool "198.51.100.10-198.51.100.20": not inside the interface's subnet 192.0.2.0/24: give its prefix (START-END/24)`},
		{in: "198.51.100.10-198.51.101.20/24", err: `--pool "198.51.100.10-198.51.101.20/24": not inside the interface's subnet 198.51.100.0/24: give its prefix (START-END/24)`},
		{in: "192.0.2.9", err: `--pool: range "192.0.2.9": want START-END`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := parsePool(tt.in, iface)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v, want %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.String() + " in " + p.Subnet.String(); got != tt.want {
				t.Errorf("= %s, want %s", got, tt.want)
			}
		})
	}
}

// TestSiteBackend adapts the embedded demo site and a baked-looking OUT.
func TestSiteBackend(t *testing.T) {
	out, files := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(out, "demo"), 0o755)
	os.WriteFile(filepath.Join(out, "demo", "manifest.json"), []byte(`{"cmdline":"console=ttyS0 quiet","future":1}`), 0o644)
	b, err := newSiteBackend(context.Background(), profiles.Default(), "", out, files, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := b.Lookup(context.Background(), mustMAC(t, "52:54:00:00:00:02"))
	if err != nil {
		t.Fatal(err)
	}
	// The command line names the image: the manifest's SHA-256.
	img, err := imageID(filepath.Join(out, "demo", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "demo-2" || m.Kernel != "demo/vmlinuz" || m.Initrd != "demo/initramfs.cpio.zst" || m.Cmdline != "console=ttyS0 quiet bellbuild.image="+img {
		t.Errorf("machine %+v", m)
	}
	data, err := os.ReadFile(filepath.Join(files, "demo-2", m.Files[NodeFile]))
	if err != nil {
		t.Fatal(err)
	}
	if n, _, err := nodeconf.Decode(data); err != nil || n == nil || n.Node != "demo-2" {
		t.Errorf("node file: %v, node %+v", err, n)
	}
	if _, err := b.Lookup(context.Background(), mustMAC(t, "52:54:00:00:00:99")); err == nil {
		t.Error("an unknown MAC boots without --default-profile")
	}
	b, err = newSiteBackend(context.Background(), profiles.Default(), "", out, files, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := b.Lookup(context.Background(), mustMAC(t, "52:54:00:00:00:99")); err != nil || m.Profile != "demo" || m.Name != "" {
		t.Errorf("default profile: %+v, %v", m, err)
	}
	if _, err := newSiteBackend(context.Background(), profiles.Default(), "", out, files, "nosuch"); err == nil ||
		err.Error() != "--default-profile nosuch: no such profile in the site" {
		t.Errorf("unknown default profile: %v", err)
	}
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

// netns is a network namespace made for one test: a bridge br0 at
// 192.0.2.1/24 with tap devices on it.
type netns struct{ name string }

func newNetns(t testing.TB, taps int) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testtool.Skipf(t, "ip not found (apt-get install iproute2)")
	}
	var b [3]byte
	rand.Read(b[:])
	ns := &netns{name: "bbpxe-" + hex.EncodeToString(b[:])}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v\n%s", ns.name, err, out)
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); bytes.Contains(out, []byte(ns.name)) {
			t.Errorf("namespace %s still there", ns.name)
		}
	})
	ip("-n", ns.name, "link", "set", "lo", "up")
	ip("-n", ns.name, "link", "add", "br0", "type", "bridge")
	ip("-n", ns.name, "addr", "add", "192.0.2.1/24", "dev", "br0")
	ip("-n", ns.name, "link", "set", "br0", "up")
	for i := range taps {
		tap := "tap" + string(rune('0'+i))
		ip("-n", ns.name, "tuntap", "add", "dev", tap, "mode", "tap")
		ip("-n", ns.name, "link", "set", tap, "master", "br0", "up")
	}
	return ns
}

// command runs name inside the namespace.
func (ns *netns) command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.name, name}, args...)...)
}

// qemu writes a wrapper that runs QEMU inside the namespace (where the
// taps are) and returns its path, for testvm.Config.Binary.
func (ns *netns) qemu(t testing.TB) string {
	p := filepath.Join(t.TempDir(), "qemu-in-netns")
	script := "#!/bin/sh\nexec ip netns exec " + ns.name + " " + testvm.QEMU + " \"$@\"\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// startServe runs `bellbuild serve` in ns until the test ends, when it must
// stop cleanly on SIGTERM.
func startServe(t testing.TB, ns *netns, bin string, args ...string) *testtool.Buffer {
	t.Helper()
	var log testtool.Buffer
	cmd := ns.command(bin, append([]string{"serve", "--interface", "br0"}, args...)...)
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve did not stop cleanly: %v", err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("serve ignored SIGTERM for 30 s")
		}
		if t.Failed() {
			t.Logf("serve log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(log.String(), "msg=serving") {
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", log.String())
		}
	}
	return &log
}

// bake runs `bellbuild image PROFILE -o out`.
func bake(t testing.TB, bin, out, profile string) {
	t.Helper()
	cmd := exec.Command(bin, "image", profile, "-o", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image %s: %v\n%s", profile, err, b)
	}
}

// bootCase is one VM of a network boot test: its NIC and firmware, and
// the console lines it must print (or, with none, that it must not boot).
type bootCase struct {
	name     string
	mac      string
	tap      string
	firmware string // "" SeaBIOS with QEMU's iPXE ROM; testvm.OVMF with its own PXE
	want     []string
}

// TestNetworkBoot network-boots VMs from `bellbuild serve` in a namespace:
// two inventory MACs with different labels each boot as their own node
// and print their own applied values, over SeaBIOS's iPXE ROM and over
// OVMF's own PXE (which fetches ipxe.efi over TFTP); a MAC that is not in
// the inventory gets no answer at all.
func TestNetworkBoot(t *testing.T) {
	testtool.SkipVM(t)
	ns := newNetns(t, 4)
	bin := testtool.Binary(t)
	out := t.TempDir()
	bake(t, bin, out, "demo")
	state := t.TempDir()
	log := startServe(t, ns, bin, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out, "--state", state)
	qemu := ns.qemu(t)

	cases := []bootCase{{
		name: "BIOS, iPXE ROM, node demo-1 (role web)",
		mac:  "52:54:00:00:00:01", tap: "tap0",
		want: []string{`demo: domainname=demo\.bellbuild`, `demo: swappiness=30`, `bellbuild: node=demo-1 profile=demo changes=\d+ errors=0`},
	}, {
		name: "UEFI, OVMF's PXE then ipxe.efi over TFTP, node demo-2 (role db)",
		mac:  "52:54:00:00:00:02", tap: "tap1", firmware: testvm.OVMF,
		want: []string{`demo: domainname=db\.demo\.bellbuild`, `demo: swappiness=60`, `bellbuild: node=demo-2 profile=demo changes=\d+ errors=0`},
	}, {
		name: "BIOS, unknown MAC: no boot",
		mac:  "52:54:00:00:00:99", tap: "tap2",
	}}
	// The unknown MAC's VM runs until the others have booted.
	var booted sync.WaitGroup
	booted.Add(2)
	t.Run("boots", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				if len(c.want) > 0 {
					defer booted.Done()
				}
				nic := testvm.NIC{Netdev: "tap", Ifname: c.tap, MAC: c.mac}
				if c.firmware == testvm.OVMF {
					if _, err := os.Stat(testvm.OVMF); err != nil {
						testtool.Skipf(t, "%s missing (apt-get install ovmf)", testvm.OVMF)
					}
					// No iPXE ROM: the firmware's own PXE must fetch ipxe.efi.
					nic.Model = "virtio-net-pci,romfile="
				}
				vm := testtool.NewVM(t, testvm.Config{Binary: qemu, Firmware: c.firmware, NICs: []testvm.NIC{nic}, BootNetwork: true})
				if len(c.want) == 0 {
					// SeaBIOS's iPXE ROM prints nothing on the serial
					// console: the server's counters show it asked, again
					// and again, and was not answered.
					deadline := time.Now().Add(testtool.BootTimeout)
					for unknownDrops(t, ns) < 3 {
						if time.Now().After(deadline) {
							t.Fatalf("the unknown MAC's DHCP requests never reached the server")
						}
						time.Sleep(2 * time.Second)
					}
					booted.Wait()
					if strings.Contains(vm.Console(), "bellbuild") {
						t.Errorf("unknown MAC booted:\n%s", vm.Console())
					}
					return
				}
				for _, re := range c.want {
					vm.Wait(re)
				}
			})
		}
	})

	// The server's side: one line per phase per MAC, nothing for the
	// unknown MAC but the count of its dropped packets.
	lines := log.String()
	for _, c := range cases[:2] {
		for _, phase := range []string{"dhcp-offer", "dhcp-ack", "ipxe-script", "kernel", "initrd"} {
			if !regexp.MustCompile(`phase=` + phase + ` mac=` + c.mac + `\b`).MatchString(lines) {
				t.Errorf("serve log has no %s line for %s", phase, c.mac)
			}
		}
	}
	if !strings.Contains(lines, "phase=tftp-loader mac=52:54:00:00:00:02 proto=tftp from=192.0.2.") ||
		!strings.Contains(lines, "file=ipxe.efi") {
		t.Errorf("OVMF did not fetch ipxe.efi over TFTP")
	}
	if strings.Contains(lines, "52:54:00:00:00:99") {
		t.Errorf("serve answered the unknown MAC")
	}
	metrics := fetch(t, ns, "http://192.0.2.1:8080/metrics")
	for _, want := range []string{
		`bellbuild_pxe_dropped_total{proto="dhcp",reason="unknown-mac"}`,
		`bellbuild_pxe_boots_total{phase="kernel"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Leases on disk: both inventory MACs, not the unknown one.
	data, err := os.ReadFile(filepath.Join(state, "leases"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if got, want := strings.Contains(string(data), " "+c.mac+" "), len(c.want) > 0; got != want {
			t.Errorf("lease file has %s: %v, want %v:\n%s", c.mac, got, want, data)
		}
	}
}

// TestNetworkBootTFTP boots a BIOS VM with --boot-via tftp: iPXE fetches
// its script, the kernel and the initramfs over TFTP, which the server
// sends ahead of the client's ACKs (its default window), and the VM comes
// up as its node.
func TestNetworkBootTFTP(t *testing.T) {
	testtool.SkipVM(t)
	ns := newNetns(t, 1)
	bin := testtool.Binary(t)
	out := t.TempDir()
	bake(t, bin, out, "demo")
	log := startServe(t, ns, bin, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out,
		"--state", t.TempDir(), "--boot-via", "tftp")
	vm := testtool.NewVM(t, testvm.Config{Binary: ns.qemu(t), BootNetwork: true,
		NICs: []testvm.NIC{{Netdev: "tap", Ifname: "tap0", MAC: "52:54:00:00:00:01"}}})
	vm.Wait(`bellbuild: node=demo-1 profile=demo changes=\d+ errors=0`)
	lines := log.String()
	for _, phase := range []string{"ipxe-script", "kernel", "initrd"} {
		re := regexp.MustCompile(`phase=` + phase + ` mac=52:54:00:00:00:01 proto=tftp\b`)
		if !re.MatchString(lines) {
			t.Errorf("serve log has no %s line over tftp:\n%s", phase, lines)
		}
	}
	if strings.Contains(lines, "tftp: transfer failed") {
		t.Errorf("a TFTP transfer failed:\n%s", lines)
	}
}

var unknownRE = regexp.MustCompile(`bellbuild_pxe_dropped_total\{proto="dhcp",reason="unknown-mac"\} (\d+)`)

// unknownDrops is how many DHCP packets the server dropped for coming from
// a MAC it does not know.
func unknownDrops(t *testing.T, ns *netns) int {
	m := unknownRE.FindStringSubmatch(fetch(t, ns, "http://192.0.2.1:8080/metrics"))
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// fetch GETs url from inside the namespace with busybox wget.
func fetch(t *testing.T, ns *netns, url string) string {
	t.Helper()
	out, err := ns.command("busybox", "wget", "-q", "-O", "-", url).Output()
	if err != nil {
		t.Fatalf("wget %s: %v", url, err)
	}
	return string(out)
}

// BenchmarkPXEBoot times a BIOS VM from power-on to the applier's summary
// line, network-booted with the kernel and initramfs over HTTP, and over
// TFTP only (--boot-via tftp).
func BenchmarkPXEBoot(b *testing.B) {
	testtool.SkipVM(b)
	bin := testtool.Binary(b)
	out := b.TempDir()
	bake(b, bin, out, "demo")
	for _, via := range []string{"http", "tftp"} {
		b.Run(via, func(b *testing.B) {
			ns := newNetns(b, 1)
			startServe(b, ns, bin, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out,
				"--state", b.TempDir(), "--boot-via", via)
			qemu := ns.qemu(b)
			b.ResetTimer()
			for range b.N {
				vm := testtool.NewVM(b, testvm.Config{Binary: qemu, BootNetwork: true,
					NICs: []testvm.NIC{{Netdev: "tap", Ifname: "tap0", MAC: "52:54:00:00:00:01"}}})
				vm.Wait(`bellbuild: node=demo-1 profile=demo changes=\d+ errors=0`)
				vm.Close()
			}
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/boot")
		})
	}
}

// TestServeBadWindow: a --tftp-window pin cannot send is refused before
// anything is opened.
func TestServeBadWindow(t *testing.T) {
	for _, w := range []string{"0", "61"} {
		var stdout, stderr bytes.Buffer
		code := run([]string{"serve", "--server-ip", "192.0.2.1", "--state", t.TempDir(), "--tftp-window", w}, &stdout, &stderr)
		want := "--tftp-window " + w + ": want 1 to 60 blocks"
		if code == 0 || !strings.Contains(stderr.String(), want) {
			t.Errorf("--tftp-window %s: exit %d, stderr %q; want an error saying %q", w, code, stderr.String(), want)
		}
	}
}

// TestServeRefusesConflictingAddresses: serve checks every node's ip label
// against the boot network that site.yaml and its flags make, and exits
// with every problem, naming the node and the pool or flag, before it
// opens anything: no lease file and no rendered node in STATE, nothing
// bound.
func TestServeRefusesConflictingAddresses(t *testing.T) {
	site := t.TempDir()
	for name, data := range map[string]string{
		"profiles/p.yaml": "conf: {}\n",
		"site.yaml":       "network:\n  server: 192.0.2.1\n  subnet: 192.0.2.0/24\n  pools: [192.0.2.200-192.0.2.250]\n",
		"nodes.yaml": `nodes:
- {name: a, mac: "52:54:00:00:00:01", profile: p, labels: {ip: 192.0.2.150}}
- {name: b, mac: "52:54:00:00:00:02", profile: p, labels: {ip: 192.0.2.10}}
- {name: c, mac: "52:54:00:00:00:03", profile: p}
`,
	} {
		writeTestFile(t, filepath.Join(site, name), data)
	}
	nodes := filepath.Join(site, "nodes.yaml")
	tests := []struct {
		name  string
		flags []string
		want  string
	}{{
		name:  "a --pool over a node's address",
		flags: []string{"--pool", "192.0.2.100-192.0.2.199"},
		want:  nodes + `:2:64: nodes[0].labels.ip: node "a": 192.0.2.150 is inside the dynamic pool 192.0.2.100-192.0.2.199 (--pool), which may lease it to another machine` + "\n",
	}, {
		name:  "--server-ip on a node's address, a pool over the server",
		flags: []string{"--server-ip", "192.0.2.10", "--pool", "192.0.2.5-192.0.2.20", "--pool", "192.0.2.200-192.0.2.250"},
		want: "--pool: pool 192.0.2.5-192.0.2.20 holds the server's own address 192.0.2.10 (--server-ip)\n" +
			nodes + `:3:64: nodes[1].labels.ip: node "b": 192.0.2.10 is inside the dynamic pool 192.0.2.5-192.0.2.20 (--pool), which may lease it to another machine` + "\n" +
			nodes + `:3:64: nodes[1].labels.ip: node "b": 192.0.2.10 is the server's own address (--server-ip)` + "\n",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			args := append([]string{"serve", "-C", site, "--state", state, "--artifacts", t.TempDir(),
				"--http-addr", "127.0.0.1:0", "--tftp-addr", "127.0.0.1:0"}, tt.flags...)
			code, out, errOut := runCmd(t, args...)
			if code != 1 || out != "" {
				t.Errorf("exit %d, stdout %q; want 1 and nothing", code, out)
			}
			if diff := cmp.Diff(tt.want, errOut); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
			if ents, _ := os.ReadDir(state); len(ents) > 0 {
				t.Errorf("serve wrote %s into STATE before refusing", ents[0].Name())
			}
		})
	}
}

// TestServeNetwork: serve's boot network is site.yaml's, each part a
// flag gives replaced by it.
func TestServeNetwork(t *testing.T) {
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "profiles/p.yaml"), "conf: {}\n")
	writeTestFile(t, filepath.Join(site, "site.yaml"), "network:\n  server: 192.0.2.1\n  subnet: 192.0.2.0/24\n  pools: [192.0.2.200-192.0.2.250]\n")
	s, err := profiles.Load(site)
	if err != nil {
		t.Fatal(err)
	}
	describe := func(n profiles.Network) string {
		var b strings.Builder
		fmt.Fprintf(&b, "server %v (%s) subnet %v pools", n.Server, strings.TrimPrefix(n.ServerPos.String(), site+"/"), n.Subnet)
		for _, p := range n.Pools {
			fmt.Fprintf(&b, " %v/%d (%s)", p, p.Subnet.Bits(), strings.TrimPrefix(p.Pos.String(), site+"/"))
		}
		return b.String()
	}
	tests := []struct {
		name string
		o    serveFlags
		want string
	}{
		{name: "site.yaml alone", want: "server 192.0.2.1 (site.yaml:2:11) subnet 192.0.2.0/24 pools 192.0.2.200-192.0.2.250/24 (site.yaml:4:11)"},
		{name: "flags replace", o: serveFlags{serverIP: "192.0.2.2", pools: []string{"192.0.2.10-192.0.2.20", "198.51.100.10-198.51.100.20/25"}},
			want: "server 192.0.2.2 (--server-ip) subnet 192.0.2.0/24 pools 192.0.2.10-192.0.2.20/24 (--pool) 198.51.100.10-198.51.100.20/25 (--pool)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := tt.o.network(s)
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(n); got != tt.want {
				t.Errorf("network:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
	if _, err := (serveFlags{}).network(profiles.Default()); err == nil ||
		err.Error() != "need --interface (or --server-ip, or network.server in site.yaml)" {
		t.Errorf("no server address anywhere: %v", err)
	}
}
