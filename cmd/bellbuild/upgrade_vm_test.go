package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// upgradeProfile is version V of a busybox image that installs itself and
// upgrades at boot: each version has its own file (so its own root image)
// and says its version on the kernel command line; extra is more of the
// command line (v3's makes the kernel panic: no init in the initramfs,
// no root= to fall back to), and reboot its upgrade.reboot policy.
func upgradeProfile(v, extra, reboot string) string {
	return `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0, lab.version=` + v + extra + `]
outputs: [raw]
install: {disk: largest, wipe: true}
upgrade: auto
reboot: ` + reboot + `
conf:
  files:
    /etc/lab-version: {content: "` + v + `\n"}
`
}

// TestUpgradeVM installs a node over PXE, then upgrades it A/B, with one
// serve throughout: each version is a new bake of the profile into the
// OUT it serves, taken without a restart (and logged):
//
//  1. v1 installed, the disk boots slot a;
//  2. v2, with a reboot window that opens a few minutes after the test
//     starts: the boot of slot a sees its configuration name v2, writes it
//     into slot b (only the root, kernel and initramfs fetched: no disk),
//     and waits for the window (the applier busybox's init respawns runs
//     again at its minute) — or, on a machine slow enough to write it
//     within the window, reboots at once; slot b comes up with v2's
//     command line, is marked good, and serve's node list shows it;
//  3. v3, whose kernel panics: written into slot a, rebooted into at
//     once (the window is open by then), tried three times by
//     systemd-boot, then slot b boots again by itself, says the upgrade
//     failed, and does not write v3 again.
func TestUpgradeVM(t *testing.T) {
	testtool.SkipVM(t)
	testtool.Stat(t, testvm.OVMF, "ovmf")
	ns := newNetns(t, 1)
	bin := testtool.Binary(t)
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "site.yaml"), "domain: example.org\n")
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), "nodes:\n- {name: u1, mac: \"52:54:00:00:00:31\", profile: upg}\n")
	state := t.TempDir()
	qemu := ns.qemu(t)
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 4<<30); err != nil {
		t.Fatal(err)
	}
	// version bakes v into out and returns its root hash, and sets the
	// bytes an upgrade to it fetches (root, kernel, initramfs).
	var upgradeBytes int64
	out := t.TempDir()
	version := func(t *testing.T, v, extra, reboot string) string {
		writeTestFile(t, filepath.Join(site, "profiles/upg.yaml"), upgradeProfile(v, extra, reboot))
		if b, err := exec.Command(bin, "image", "upg", "-C", site, "-o", out).CombinedOutput(); err != nil {
			t.Fatalf("bellbuild image v%s: %v\n%s", v, err, b)
		}
		var m struct {
			Disk struct {
				Root struct {
					SHA256 string
					Size   int64
				}
			}
			Artifacts []struct {
				Name string
				Size int64
			}
		}
		data, _ := os.ReadFile(filepath.Join(out, "upg", "manifest.json"))
		if err := json.Unmarshal(data, &m); err != nil || m.Disk.Root.SHA256 == "" {
			t.Fatalf("v%s's manifest: %v", v, err)
		}
		upgradeBytes = m.Disk.Root.Size
		for _, a := range m.Artifacts {
			if a.Name == "vmlinuz" || a.Name == "disk-initrd.cpio.zst" {
				upgradeBytes += a.Size
			}
		}
		return m.Disk.Root.SHA256
	}
	// The reboot window, the site's from the start (serve renders the
	// nodes' configuration once; a new bake changes only the image): 30
	// minutes of every hour (UTC), the first about four minutes from now,
	// after v1's install and v2's write, so that v2 waits for it and v3,
	// later, reboots at once.
	open := time.Now().UTC().Add(4 * time.Minute).Truncate(time.Minute)
	var minutes []string
	for i := 0; i < 30; i++ {
		minutes = append(minutes, strconv.Itoa(open.Add(time.Duration(i)*time.Minute).Minute()))
	}
	window := "window " + strings.Join(minutes, ",") + " * * * *"
	h1 := version(t, "1", "", window)
	log := startServe(t, ns, bin, "-C", site, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out, "--state", state)
	// since is serve's log from now on.
	since := func() func() string {
		n := len(log.String())
		return func() string { return log.String()[n:] }
	}
	// taken checks that serve logged the new bake's root.
	taken := func(t *testing.T, from, to string) {
		t.Helper()
		if want := `msg="bake: new bake served" profile=upg root="` + from + " → " + to + `"`; !strings.Contains(log.String(), want) {
			t.Errorf("serve's log lacks %s", want)
		}
	}
	// The disk first: a blank one fails at once and the NIC installs.
	power := func(t *testing.T) *testtool.VM {
		return testtool.NewVM(t, testvm.Config{Binary: qemu, Firmware: testvm.OVMF, Reboot: true,
			NICs:   []testvm.NIC{{Netdev: "tap", Ifname: "tap0", MAC: "52:54:00:00:00:31", BootIndex: 2}},
			Drives: []testvm.Drive{{Path: disk, BootIndex: 1}}})
	}
	wait := func(t *testing.T, vm *testtool.VM, re string) []string {
		t.Helper()
		return waitInstall(t, vm.WaitFor, re)
	}
	var h2 string
	if !t.Run("v1 installed", func(t *testing.T) {
		vm := power(t)
		wait(t, vm, `bellbuild: install: done: /dev/vda holds image `+h1[:12])
		wait(t, vm, `^bellbuild: node=u1 profile=upg slot=a image=`+h1[:12]+` changes=\d+ errors=0$`)
	}) {
		return
	}
	if !t.Run("v2 into slot b", func(t *testing.T) {
		h2 = version(t, "2", "", window)
		log := since()
		vm := power(t)
		wait(t, vm, `^bellbuild: upgrade: image `+h2[:12]+` \(profile upg\) into slot b \(/dev/vda3\), running `+h1[:12]+` in slot a$`)
		m := wait(t, vm, `^bellbuild: upgrade: slot b holds image `+h2[:12]+` \((\d+) bytes fetched\): 3 tries at the next boot \(reboot: `+regexp.QuoteMeta(window)+`\)$`)
		w := wait(t, vm, `^bellbuild: upgrade: (slot b waits for the window: rebooting at (\S+)|rebooting into slot b: (\S+) is in the window) \(reboot: `+regexp.QuoteMeta(window)+`\)$`)
		if at := w[2]; at != "" {
			// Not in the window yet: the summary and serve say when; the
			// applier left running reboots then, not before.
			if at != open.Format(time.RFC3339) {
				t.Errorf("the reboot is at %s, want the window's first minute %s", at, open.Format(time.RFC3339))
			}
			wait(t, vm, `^bellbuild: node=u1 profile=upg slot=a image=`+h1[:12]+` changes=\d+ errors=0 reboot=pending reboot_at=`+regexp.QuoteMeta(at)+`$`)
			wait(t, vm, `^bellbuild: upgrade: rebooting into slot b: `+regexp.QuoteMeta(at)+` is in the window \(reboot: `)
			opened, _ := time.Parse(time.RFC3339, at)
			if now := time.Now(); now.Before(opened.Add(-2 * time.Second)) {
				t.Errorf("rebooted at %s, before the window opened at %s", now.UTC().Format(time.RFC3339), at)
			}
			c := vm.Console()
			if i, j := strings.Index(c, w[0]), strings.LastIndex(c, "is in the window"); i < 0 || j < i || strings.Contains(c[i:j], "Command line:") {
				t.Errorf("the machine rebooted before its window (console from %q)", w[0])
			}
			time.Sleep(300 * time.Millisecond)
			if !regexpMatch(`phase=upgrade-written mac=52:54:00:00:00:31 node=u1 .*reboot_at=`+regexp.QuoteMeta(at), log()) {
				t.Errorf("serve logged no upgrade-written with reboot_at=%s:\n%s", at, log())
			}
		} else {
			t.Logf("the upgrade was written at %s, in the window: rebooted at once (the wait for the window was not exercised)", w[3])
		}
		wait(t, vm, `Command line: .*lab\.version=2 .*bellbuild\.slot=b`)
		wait(t, vm, `^bellbuild: slot b marked good \(image `+h2[:12]+`\)$`)
		wait(t, vm, `^bellbuild: node=u1 profile=upg slot=b image=`+h2[:12]+` changes=\d+ errors=0$`)
		// Only the root, the kernel and the initramfs came: far less than
		// the disk, and no request for it.
		if n := m[1]; n != strconv.FormatInt(upgradeBytes, 10) {
			t.Errorf("the upgrade fetched %s bytes, want %d (root, kernel, initramfs)", n, upgradeBytes)
		}
		time.Sleep(300 * time.Millisecond)
		taken(t, h1, h2)
		if l := log(); strings.Contains(l, "file=image/52:54:00:00:00:31/disk") || !strings.Contains(l, "file=image/52:54:00:00:00:31/root") {
			t.Errorf("the upgrade fetched the disk, or not the root:\n%s", l)
		}
		o, err := exec.Command(bin, "node", "list", "-C", site, "--state", state).CombinedOutput()
		if err != nil || !regexpMatch(`(?m)^u1 .* /dev/vda +\S+ +b:`+h2[:12], string(o)) {
			t.Errorf("node list: %v\n%s", err, o)
		}
	}) {
		return
	}
	t.Run("broken v3 falls back", func(t *testing.T) {
		h3 := version(t, "3", ", rdinit=/nonexistent", window)
		log := since()
		vm := power(t)
		wait(t, vm, `^bellbuild: upgrade: slot a holds image `+h3[:12])
		wait(t, vm, `^bellbuild: upgrade: rebooting into slot a: \S+ is in the window \(reboot: `+regexp.QuoteMeta(window)+`\)$`)
		// Three tries, each a kernel panic, then slot b by itself.
		for i := 0; i < 3; i++ {
			wait(t, vm, `Kernel panic - not syncing`)
			wait(t, vm, `Rebooting in 10 seconds`)
		}
		wait(t, vm, `^bellbuild: upgrade to `+h3+` failed, running `+h2+`$`)
		wait(t, vm, `^bellbuild: upgrade: upgrade refused: image `+h3[:12]+` failed to come up before: not tried again until the configuration names another`)
		wait(t, vm, `^bellbuild: node=u1 profile=upg slot=b image=`+h2[:12]+` changes=\d+ errors=0$`)
		if c := strings.Count(vm.Console(), "Rebooting in 10 seconds"); c != 3 {
			t.Errorf("%d kernel panics, want 3 (the entry's tries)", c)
		}
		time.Sleep(300 * time.Millisecond)
		taken(t, h2, h3)
		if !regexpMatch(`phase=upgrade-failed mac=52:54:00:00:00:31 node=u1 .*image=`+h3[:12], log()) {
			t.Errorf("serve logged no failed upgrade")
		}
		o, _ := exec.Command(bin, "node", "list", "-C", site, "--state", state).CombinedOutput()
		if !regexpMatch(`(?m)^u1 .* b:`+h2[:12]+` +upgrade to `+h3[:12]+` failed$`, string(o)) {
			t.Errorf("node list:\n%s", o)
		}
	})
}
