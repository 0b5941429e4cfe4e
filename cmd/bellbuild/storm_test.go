package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/state/etcd/etcdtest"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// bareNetns is a network namespace of the test's, deleted at its end.
func bareNetns(t *testing.T, prefix string) string {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	name := prefix + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v\n%s", name, err, out)
		}
	})
	ipIn(t, name, "link", "set", "lo", "up")
	return name
}

func ipIn(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
}

// stormServe is a serve process in a namespace; kill stops it at once.
type stormServe struct {
	log    *testtool.Buffer
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process is gone
	err    error         // its exit, once exited is closed
	once   sync.Once
}

// kill kills the process and waits for it (once; again does nothing).
func (s *stormServe) kill() {
	s.once.Do(func() {
		s.cmd.Process.Kill()
		<-s.exited
	})
}

func startStormServe(t *testing.T, ns, bin string, args ...string) *stormServe {
	t.Helper()
	s := &stormServe{log: &testtool.Buffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, bin, "serve"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(s.kill)
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(s.log.String(), "msg=serving") {
		select {
		case <-s.exited:
			t.Fatalf("serve exited: %v\n%s", s.err, s.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", s.log.String())
		}
	}
	return s
}

var ackRE = regexp.MustCompile(`phase=dhcp-ack mac=(\S+) .*ip=(\S+)`)

// TestServeSharedStorm: two serve processes, each on its own link of one
// namespace, share a three-member etcd cluster running in it; a perfdhcp
// storm relayed to each at once (100 machines each, from one pool) gets
// no address ACKed to two MACs, whatever either server ACKed; one server
// is killed during its storm, and the other's completes.
func TestServeSharedStorm(t *testing.T) {
	perf, bin := stormTools(t)
	srv, cli := bareNetns(t, "bbss-"), bareNetns(t, "bbsc-")
	// Link i: server s_i (198.51.10i.1) — relay c_i (198.51.10i.2, giaddr
	// 192.0.2.i).
	for i := 1; i <= 2; i++ {
		n := strconv.Itoa(i)
		s, c := "s"+n, "c"+n
		ipIn(t, srv, "link", "add", s, "type", "veth", "peer", "name", c, "netns", cli)
		ipIn(t, srv, "addr", "add", "198.51.10"+n+".1/24", "dev", s)
		ipIn(t, cli, "addr", "add", "198.51.10"+n+".2/24", "dev", c)
		ipIn(t, cli, "addr", "add", "192.0.2."+n+"/32", "dev", c)
		ipIn(t, srv, "link", "set", s, "up")
		ipIn(t, cli, "link", "set", c, "up")
		ipIn(t, srv, "route", "add", "192.0.2."+n+"/32", "via", "198.51.10"+n+".2")
	}
	c := etcdtest.Start(t, etcdtest.Options{Netns: srv})
	out := t.TempDir()
	var servers []*stormServe
	for i := 1; i <= 2; i++ {
		servers = append(servers, startStormServe(t, srv, bin, "--interface", "s"+strconv.Itoa(i),
			"--pool", "192.0.2.10-192.0.2.250/24", "--default-profile", "demo", "--state", c.URL(),
			"--work", t.TempDir(), "--artifacts", out, "--tftp-addr", "off", "--http-addr", "off", "--https-addr", "off"))
	}
	storm := func(i int) (string, error) {
		n := strconv.Itoa(i)
		cmd := exec.Command("ip", "netns", "exec", cli, perf, "-4", "-l", "192.0.2."+n, "-R", "100", "-r", "50", "-n", "150",
			"-b", "mac=00:0c:0"+n+":00:00:00", "-t", "1", "198.51.10"+n+".1")
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		err := cmd.Run()
		return b.String(), err
	}
	var wg sync.WaitGroup
	var out2 string
	wg.Go(func() { storm(1) })
	wg.Go(func() { out2, _ = storm(2) })
	// Server 1 dies during its storm.
	time.Sleep(1500 * time.Millisecond)
	servers[0].kill()
	wg.Wait()
	time.Sleep(300 * time.Millisecond) // the logs' last flush

	// No address ACKed to two MACs, by either server.
	owner := map[string]string{}
	acks := 0
	for _, s := range servers {
		for _, m := range ackRE.FindAllStringSubmatch(s.log.String(), -1) {
			acks++
			if o, ok := owner[m[2]]; ok && o != m[1] {
				t.Errorf("%s ACKed to %s and to %s", m[2], o, m[1])
			}
			owner[m[2]] = m[1]
		}
	}
	if acks < 100 {
		t.Errorf("%d ACKs in all: the storm did not happen", acks)
	}
	// Server 2's storm completed: every REQUEST answered.
	sent := regexp.MustCompile(`(?s)Statistics for: REQUEST-ACK.*?sent packets: (\d+).*?received packets: (\d+)`).FindStringSubmatch(out2)
	if sent == nil || sent[1] != sent[2] || sent[1] == "0" {
		t.Errorf("server 2's storm (sent, received REQUEST-ACK = %v):\n%s", sent, out2)
	}
	t.Logf("%d ACKs, %d addresses", acks, len(owner))
}

// TestNetworkBootPair: two serve instances answer one boot network (each
// on its own link into the VMs' bridge) over an etcd cluster in its
// namespace: both offer every machine an address. A VM boots from
// whichever it took; that instance is killed; a second VM boots from the
// other; both reach their summary line, with two distinct addresses of
// the shared pool.
func TestNetworkBootPair(t *testing.T) {
	testtool.SkipVM(t)
	ns := newNetns(t, 2)
	// Each instance has a link of its own into the bridge (a DHCP
	// server listens on one interface): s1 at 192.0.2.11, s2 at .12.
	for i, ip := range []string{"192.0.2.11", "192.0.2.12"} {
		n := strconv.Itoa(i + 1)
		ipIn(t, ns.name, "link", "add", "s"+n, "type", "veth", "peer", "name", "s"+n+"p")
		ipIn(t, ns.name, "link", "set", "s"+n+"p", "master", "br0", "up")
		ipIn(t, ns.name, "addr", "add", ip+"/24", "dev", "s"+n)
		ipIn(t, ns.name, "link", "set", "s"+n, "up")
	}
	bin := testtool.Binary(t)
	out := t.TempDir()
	bake(t, bin, out, "demo")
	c := etcdtest.Start(t, etcdtest.Options{Netns: ns.name})
	var servers []*stormServe
	for i, ip := range []string{"192.0.2.11", "192.0.2.12"} {
		servers = append(servers, startStormServe(t, ns.name, bin, "--interface", "s"+strconv.Itoa(i+1), "--server-ip", ip,
			"--pool", "192.0.2.100-192.0.2.199", "--default-profile", "demo", "--state", c.URL(), "--work", t.TempDir(),
			"--artifacts", out, "--http-addr", ip+":8080", "--tftp-addr", ip+":69", "--https-addr", "off"))
	}
	qemu := ns.qemu(t)
	summary := `bellbuild: node=\S+ profile=demo changes=\d+ errors=0`
	ackRE := func(mac string) *regexp.Regexp {
		return regexp.MustCompile(`phase=dhcp-ack mac=` + mac + ` .*ip=(\S+)`)
	}
	// answered is the instance that ACKed mac, and the address.
	answered := func(mac string) (int, string) {
		t.Helper()
		deadline := time.Now().Add(testtool.BootTimeout)
		for {
			for i, s := range servers {
				if m := ackRE(mac).FindStringSubmatch(s.log.String()); m != nil {
					return i, m[1]
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no instance ACKed %s", mac)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	vm1 := testtool.NewVM(t, testvm.Config{Binary: qemu, BootNetwork: true, NICs: []testvm.NIC{{Netdev: "tap", Ifname: "tap0", MAC: "52:54:00:00:10:01"}}})
	vm1.Wait(summary)
	first, ip1 := answered("52:54:00:00:10:01")
	servers[first].kill()
	vm2 := testtool.NewVM(t, testvm.Config{Binary: qemu, BootNetwork: true, NICs: []testvm.NIC{{Netdev: "tap", Ifname: "tap1", MAC: "52:54:00:00:10:02"}}})
	vm2.Wait(summary)
	second, ip2 := answered("52:54:00:00:10:02")
	if second == first {
		t.Fatalf("the killed instance %d answered the second VM", first)
	}
	if ip1 == ip2 {
		t.Errorf("both VMs got %s", ip1)
	}
	t.Logf("VM 1 booted from instance %d (%s), VM 2 from instance %d (%s)", first, ip1, second, ip2)
}

// TestServeSharedStormBridge: two serve instances on one broadcast
// domain (each on its own link into a bridge) over an etcd cluster in
// their namespace, and a perfdhcp storm of 200 simulated clients from a
// second namespace on that bridge: every DISCOVER reaches both, both
// offer, each client takes one. One instance is killed during the storm:
// the clients go on with the other; no address is ACKed to two MACs by
// either.
func TestServeSharedStormBridge(t *testing.T) {
	perf, bin := stormTools(t)
	srv, cli := bareNetns(t, "bbsb-"), bareNetns(t, "bbsd-")
	ipIn(t, srv, "link", "add", "br0", "type", "bridge")
	ipIn(t, srv, "link", "set", "br0", "up")
	for i, ip := range []string{"192.0.2.11", "192.0.2.12"} {
		n := strconv.Itoa(i + 1)
		ipIn(t, srv, "link", "add", "s"+n, "type", "veth", "peer", "name", "s"+n+"p")
		ipIn(t, srv, "link", "set", "s"+n+"p", "master", "br0", "up")
		ipIn(t, srv, "addr", "add", ip+"/24", "dev", "s"+n)
		ipIn(t, srv, "link", "set", "s"+n, "up")
	}
	ipIn(t, srv, "link", "add", "c0p", "type", "veth", "peer", "name", "c0", "netns", cli)
	ipIn(t, srv, "link", "set", "c0p", "master", "br0", "up")
	ipIn(t, cli, "addr", "add", "192.0.2.250/24", "dev", "c0")
	ipIn(t, cli, "link", "set", "c0", "up")
	c := etcdtest.Start(t, etcdtest.Options{Netns: srv})
	out := t.TempDir()
	start := func(i int) *stormServe {
		ip := "192.0.2.1" + strconv.Itoa(i+1)
		return startStormServe(t, srv, bin, "--interface", "s"+strconv.Itoa(i+1), "--server-ip", ip,
			"--pool", "192.0.2.20-192.0.2.240/24", "--default-profile", "demo", "--state", c.URL(),
			"--work", t.TempDir(), "--artifacts", out, "--tftp-addr", "off", "--http-addr", "off", "--https-addr", "off")
	}
	// The first instance answers alone at first; the second joins during
	// the storm (it must know what the first gave out); then the first
	// dies.
	servers := []*stormServe{start(0)}
	cmd := exec.Command("ip", "netns", "exec", cli, perf, "-4", "-l", "c0", "-R", "200", "-r", "100", "-n", "400", "-t", "1")
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	servers = append(servers, start(1))
	time.Sleep(1500 * time.Millisecond)
	killedAt := len(servers[0].log.String())
	servers[0].kill()
	cmd.Wait() // perfdhcp exits non-zero when it counted drops
	time.Sleep(300 * time.Millisecond)

	owner := map[string]string{}
	acks := make([]int, 2)
	for i, s := range servers {
		for _, m := range ackRE.FindAllStringSubmatch(s.log.String(), -1) {
			acks[i]++
			if o, ok := owner[m[2]]; ok && o != m[1] {
				t.Errorf("%s ACKed to %s and to %s", m[2], o, m[1])
			}
			owner[m[2]] = m[1]
		}
	}
	before := len(ackRE.FindAllString(servers[0].log.String()[:killedAt], -1))
	if acks[0] == 0 || acks[1] == 0 || before == 0 {
		t.Errorf("ACKs: %d by the killed instance (%d before the kill), %d by the other: want both to have answered", acks[0], before, acks[1])
	}
	ra := regexp.MustCompile(`(?s)Statistics for: REQUEST-ACK.*?sent packets: (\d+).*?received packets: (\d+)`).FindStringSubmatch(b.String())
	if ra == nil {
		t.Fatalf("perfdhcp:\n%s", b.String())
	}
	sent, _ := strconv.Atoi(ra[1])
	recv, _ := strconv.Atoi(ra[2])
	if sent < 300 || recv < sent*9/10 {
		t.Errorf("REQUEST-ACK: %d sent, %d answered: the storm did not go on with the other instance\n%s", sent, recv, b.String())
	}
	t.Logf("%d REQUESTs, %d ACKed; ACKs by instance: %v; %d addresses", sent, recv, acks, len(owner))

	// Quorum lost: the survivor still answers the machines it leased
	// to (from its cache), and gives a new machine nothing, saying why.
	c.Stop(0)
	c.Stop(1)
	time.Sleep(time.Second) // the last member sees it has no leader
	again := func(args ...string) (sent, recv int, out string) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", cli, perf, "-4", "-l", "c0", "-r", "50", "-t", "1"}, args...)...)
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		cmd.Run()
		m := regexp.MustCompile(`(?s)Statistics for: DISCOVER-OFFER.*?sent packets: (\d+).*?received packets: (\d+)`).FindStringSubmatch(b.String())
		if m == nil {
			t.Fatalf("perfdhcp:\n%s", b.String())
		}
		sent, _ = strconv.Atoi(m[1])
		recv, _ = strconv.Atoi(m[2])
		return sent, recv, b.String()
	}
	if sent, recv, out := again("-R", "200", "-n", "100"); recv < sent*9/10 {
		t.Errorf("no quorum, leased machines: %d of %d DISCOVERs offered\n%s", recv, sent, out)
	}
	if _, recv, out := again("-R", "50", "-n", "50", "-b", "mac=00:0c:09:00:00:00"); recv != 0 {
		t.Errorf("no quorum, new machines: %d offers\n%s", recv, out)
	}
	for i := 0; i < 150 && !strings.Contains(servers[1].log.String(), "shared lease store unavailable: no new addresses given"); i++ {
		time.Sleep(100 * time.Millisecond) // a refusal may wait for the request's timeout
	}
	if !strings.Contains(servers[1].log.String(), "shared lease store unavailable: no new addresses given") {
		l := servers[1].log.String()
		t.Errorf("the survivor's log does not say why new machines get nothing:\n%s", l[max(0, len(l)-3000):])
	}
}

// stormTools skips a storm test under -short, needs root, ip and
// perfdhcp, and returns perfdhcp's path and the bellbuild binary.
func stormTools(t *testing.T) (perf, bin string) {
	t.Helper()
	if testing.Short() {
		t.Skip("two serve processes, an etcd cluster and perfdhcp: skipped under -short")
	}
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "needs root for network namespaces")
	}
	testtool.LookPath(t, "ip", "iproute2")
	return testtool.LookPath(t, "perfdhcp", "kea-admin"), testtool.Binary(t)
}
