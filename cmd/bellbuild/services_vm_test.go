package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// The site of TestServicesOnVMs. Busybox has no systemd, so "a unit runs"
// means here: the profile carries a tiny supervisor, respawned by busybox
// init, which runs every /etc/bellbuild/units/NAME.run and stops (kills)
// the one whose file is gone, saying so on the console; the service web
// brings only its run file (through files). Placing web on a node starts
// it there; moving it away makes the applier remove the file it wrote,
// and the supervisor stops web. A systemd stage would do the same with a
// unit, at the cost of a debootstrap.
const (
	svcProfile = `description: Busybox machines running the services placed on them
stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0, quiet]
conf:
  files:
    /etc/inittab:
      content: |
        ::sysinit:/etc/init.d/rcS
        ::respawn:/usr/sbin/bellbuild-units
        ttyS0::respawn:-/bin/sh
        ::ctrlaltdel:/sbin/reboot
        ::shutdown:/bin/umount -a -r
    /usr/sbin/bellbuild-units:
      mode: "0755"
      content: |
        #!/bin/sh
        # Runs each /etc/bellbuild/units/NAME.run; stops the one whose file goes.
        mkdir -p /run/units
        while :; do
          for f in /etc/bellbuild/units/*.run; do
            [ -f "$f" ] || continue
            n=$(basename "$f" .run)
            pid=$(cat /run/units/$n.pid 2>/dev/null)
            if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
              sh "$f" &
              echo $! > /run/units/$n.pid
              echo "unit: started $n" > /dev/console
            fi
          done
          for p in /run/units/*.pid; do
            [ -f "$p" ] || continue
            n=$(basename "$p" .pid)
            if [ ! -f /etc/bellbuild/units/$n.run ]; then
              kill "$(cat "$p")" 2>/dev/null
              rm -f "$p"
              echo "unit: stopped $n" > /dev/console
            fi
          done
          sleep 1
        done
`
	svcNodes = `nodes:
- {name: n1, mac: "52:54:00:00:18:01", profile: svcvm, labels: {ip: 192.0.2.11}}
- {name: n2, mac: "52:54:00:00:18:02", profile: svcvm, labels: {ip: 192.0.2.12}}
- {name: n3, mac: "52:54:00:00:18:03", profile: svcvm, labels: {ip: 192.0.2.13}}
`
	svcServices = `web:
  scheduling_group: svcvm
  num_instances: %d
  conf:
    files:
      /etc/bellbuild/units/web.run:
        mode: "0755"
        content: |
          #!/bin/sh
          exec sleep 1000000
`
)

// placementOf asks `bellbuild services -o json` where web goes.
func placementOf(t *testing.T, bin, site string) []string {
	t.Helper()
	out, err := exec.Command(bin, "services", "-C", site, "-o", "json").Output()
	if err != nil {
		t.Fatalf("bellbuild services: %v", err)
	}
	var rows []serviceRow
	if err := json.Unmarshal(out, &rows); err != nil || len(rows) != 1 {
		t.Fatalf("bellbuild services -o json: %v\n%s", err, out)
	}
	return rows[0].Hosts
}

// serveProcess is `bellbuild serve` in a namespace, stopped by stop (or
// when the test ends), or killed (SIGKILL) by kill.
type serveProcess struct {
	log  *testtool.Buffer
	stop func()
	kill func()
}

func startServeProcess(t *testing.T, ns *netns, bin string, args ...string) *serveProcess {
	t.Helper()
	p := &serveProcess{log: &testtool.Buffer{}}
	cmd := ns.command(bin, append([]string{"serve", "--interface", "br0"}, args...)...)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	p.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve did not stop cleanly: %v\n%s", err, p.log.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("serve ignored SIGTERM for 30 s")
		}
	}
	p.kill = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Kill()
		<-done
	}
	t.Cleanup(p.stop)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(p.log.String(), "msg=serving") {
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, p.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", p.log.String())
		}
	}
	return p
}

// webState asks a VM's shell whether web runs (the supervisor's pid file
// names a live process; busybox's kill -0 "" succeeds, hence the -n), and
// returns "run" or "stop". The answer is built so that the echoed command
// line does not match it.
func webState(t *testing.T, vm *testtool.VM, tag string) string {
	t.Helper()
	vm.Send(fmt.Sprintf(`p=$(cat /run/units/web.pid 2>/dev/null); if [ -n "$p" ] && kill -0 "$p"; then r=run; else r=stop; fi; echo "%s web=$r."`+"\n", tag))
	return vm.Wait(tag + ` web=(run|stop)\.$`)[1]
}

// TestServicesOnVMs boots three VMs from `bellbuild serve` in a network
// namespace; web, two instances, runs on exactly the two nodes the
// placement names and not on the third (read back from each console).
// Then num_instances becomes 1, serve renders the nodes again, and a
// day-2 `bellbuild apply` of each node's re-served node.json makes one
// of the two stop it: the one the new placement leaves out.
func TestServicesOnVMs(t *testing.T) {
	testtool.SkipVM(t)
	if _, err := os.Stat("/vmlinuz"); err != nil {
		testtool.Skipf(t, "no kernel at /vmlinuz (apt-get install linux-image-amd64)")
	}
	ns := newNetns(t, 3)
	bin := testtool.Binary(t)
	site, out, state := t.TempDir(), t.TempDir(), t.TempDir()
	writeTestFile(t, filepath.Join(site, "profiles", "svcvm.yaml"), svcProfile)
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), svcNodes)
	writeTestFile(t, filepath.Join(site, "services.yaml"), fmt.Sprintf(svcServices, 2))
	if b, err := exec.Command(bin, "image", "-C", site, "-o", out, "svcvm").CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image: %v\n%s", err, b)
	}
	two := placementOf(t, bin, site)
	if len(two) != 2 {
		t.Fatalf("web placed on %v", two)
	}
	serveArgs := []string{"-C", site, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out, "--state", state}
	serve := startServeProcess(t, ns, bin, serveArgs...)

	// 1. Three VMs boot at once; each applies its node at boot.
	qemu := ns.qemu(t)
	nodes := []string{"n1", "n2", "n3"}
	vms := map[string]*testtool.VM{}
	for i, n := range nodes {
		vms[n] = testtool.NewVM(t, testvm.Config{Binary: qemu, BootNetwork: true,
			NICs: []testvm.NIC{{Netdev: "tap", Ifname: fmt.Sprintf("tap%d", i), MAC: fmt.Sprintf("52:54:00:00:18:0%d", i+1)}}})
	}
	start := time.Now()
	for _, n := range nodes {
		vms[n].Wait(`^bellbuild: node=` + n + ` profile=svcvm changes=\d+ errors=0$`)
	}
	for _, n := range two {
		vms[n].Wait(`unit: started web$`) // after a prompt, maybe
	}
	t.Logf("three VMs booted, web started on %v, in %s", two, time.Since(start).Round(time.Second))

	// 2. web runs on the two nodes the placement names, not the third.
	for _, n := range nodes {
		want := map[bool]string{true: "run", false: "stop"}[slices.Contains(two, n)]
		if got := webState(t, vms[n], "q1"); got != want {
			t.Errorf("%s: web %s, want %s (placed on %v)", n, got, want, two)
		}
	}

	// 3. Day 2: one instance. serve renders every node again; each VM
	// fetches its node.json from serve (its fixed address, so that serve
	// knows it) and applies it.
	writeTestFile(t, filepath.Join(site, "services.yaml"), fmt.Sprintf(svcServices, 1))
	one := placementOf(t, bin, site)
	if len(one) != 1 || !slices.Contains(two, one[0]) {
		t.Fatalf("with one instance web goes to %v, not one of %v", one, two)
	}
	serve.stop()
	serve = startServeProcess(t, ns, bin, serveArgs...)
	for i, n := range nodes {
		vms[n].Send(fmt.Sprintf("ip link set eth0 up; ip addr add 192.0.2.1%d/24 dev eth0; "+
			"wget -q -O /tmp/node.json http://192.0.2.1:8080/files/node.json && "+
			"/bellbuild/bellbuild apply --config /tmp/node.json --root /\n", i+1))
	}
	for _, n := range nodes {
		vms[n].Wait(`^bellbuild: node=` + n + ` profile=svcvm changes=\d+ errors=0$`)
	}
	// The supervisor looks every second.
	moved := slices.DeleteFunc(slices.Clone(two), func(n string) bool { return n == one[0] })
	for i := 0; webState(t, vms[moved[0]], fmt.Sprintf("w%d", i)) != "stop"; i++ {
		if i == 30 {
			t.Fatalf("%s still runs web 30 s after the day-2 apply", moved[0])
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(vms[moved[0]].Console(), "unit: stopped web") {
		t.Errorf("%s: the supervisor did not say it stopped web", moved[0])
	}
	for _, n := range nodes {
		want := map[bool]string{true: "run", false: "stop"}[n == one[0]]
		if got := webState(t, vms[n], "q2"); got != want {
			t.Errorf("after day 2: %s: web %s, want %s (placed on %v)", n, got, want, one)
		}
	}
	for _, n := range nodes {
		if !regexp.MustCompile(`phase=node-file .* file=files/node.json .*node=` + n + `\b`).MatchString(serve.log.String()) {
			t.Errorf("serve did not serve %s its node.json:\n%s", n, serve.log.String())
		}
	}
}
