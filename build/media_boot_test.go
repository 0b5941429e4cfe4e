package build

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/confvol"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm"
)

// mediaBootTimeout bounds each wait of the disk boot tests: a UEFI boot
// under TCG takes ~15 s alone, but the machine running the tests may be
// loaded many times over.
const mediaBootTimeout = 300 * time.Second

// waitLong waits for a console line matching re, up to mediaBootTimeout.
func waitLong(t *testing.T, vm *testvm.T, re string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mediaBootTimeout)
	defer cancel()
	m, err := vm.WaitFor(ctx, regexp.MustCompile(re))
	if err != nil {
		t.Fatalf("VM: %v", err)
	}
	return m
}

// bakeImmutable bakes the test site's immutable profile (outputs [raw]).
func bakeImmutable(t *testing.T) (*Manifest, *nodeconf.Node) {
	t.Helper()
	s := testSite(t)
	sp := spec(t, s, "immutable")
	o := testOptions(t)
	o.Site = s
	m, err := Image(context.Background(), sp, o)
	if err != nil {
		t.Fatal(err)
	}
	n := sp.Bundle.Default
	n.Profile = "immutable"
	return m, &n
}

// writeNode puts node as node.json on the disk's config partition, as
// `bellbuild config write disk.raw --node` does.
func writeNode(t *testing.T, img string, n *nodeconf.Node) {
	t.Helper()
	data, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := confvol.Rewrite(img, confvol.Tree(append(data, '\n'), DefaultSourceDateEpoch)); err != nil {
		t.Fatal(err)
	}
}

// TestDiskBoot boots disk.raw under OVMF: the init finds the root by its
// partition name, runs the system on an overlay of the read-only squashfs,
// and applies the configuration the config partition holds (a node.json
// written after the bake, whose values the image's bundle does not have).
func TestDiskBoot(t *testing.T) {
	testvm.Skip(t)
	needHost(t)
	needMediaTools(t)
	m, node := bakeImmutable(t)
	img := filepath.Join(m.Stats.Dir, DiskFile)
	node.Node = "d1"
	node.Conf.Sysctl["vm.swappiness"] = "37"
	node.Conf.Files["/etc/bellbuild-note"] = nodeconf.File{Content: "from the config volume\n"}
	writeNode(t, img, node)

	vm := testvm.New(t, testvm.Config{Firmware: testvm.OVMF, Drives: []testvm.Drive{{Path: img}}})
	waitLong(t, vm, `^bellbuild: root PARTLABEL=bellroot, writable layer tmpfs, configuration /run/bellbuild/config/bellbuild/node.json$`)
	waitLong(t, vm, `^bellbuild: node=d1 profile=immutable changes=[1-9]\d* errors=0$`)
	// The script's lines came before the summary, in /proc/mounts' order.
	console := vm.Console()
	for _, want := range []string{
		"[010-report.sh] check: swappiness=37\n",
		"[010-report.sh] check: note=from the config volume\n",
		"[010-report.sh] check: mount / overlay rw\n",
		"[010-report.sh] check: mount /run/bellbuild/lower squashfs ro\n",
		"[010-report.sh] check: mount /run/bellbuild/config vfat ro\n",
		"[010-report.sh] check: lower read-only\n",
	} {
		if !strings.Contains(console, want) {
			t.Errorf("the console lacks %q", want)
		}
	}
	if strings.Contains(console, "bellbuild: error") {
		t.Error("the init reported errors")
	}
	// The stage's own init took over, in the new root.
	waitLong(t, vm, `^bellbuild: busybox init: shell on ttyS0$`)

	// Day 2 without a reboot: the config volume changes under the running
	// system (by hand here: remount it writable, edit node.json), and the
	// applier the init left watching it (apply --watch from inittab)
	// reruns with the new value.
	waitLong(t, vm, `^bellbuild:/# `)
	vm.Send(`mount -o remount,rw /run/bellbuild/config && sed -i 's/"vm.swappiness": "37"/"vm.swappiness": "41"/' /run/bellbuild/config/bellbuild/node.json && echo ed""ited` + "\n")
	waitLong(t, vm, `^edited$`)
	waitLong(t, vm, `check: swappiness=41`)
	vm.Send("echo now=$(cat /proc/sys/vm/swappiness)\n")
	waitLong(t, vm, `^now=41$`)
}

// TestDiskDay2 boots a disk with a data partition twice. Between the boots
// the machine is powered off and its config volume rewritten (one sysctl
// changed, one removed, a user removed, a file added), as `bellbuild
// config write disk.raw` does; the second boot converges from the state
// the first one left on the data partition: the new values hold, the
// removed user is expired, the removed sysctl is back to the kernel's.
func TestDiskDay2(t *testing.T) {
	testvm.Skip(t)
	needHost(t)
	needMediaTools(t)
	s := testSite(t)
	sp := spec(t, s, "persistent")
	o := testOptions(t)
	o.Site = s
	m, err := Image(context.Background(), sp, o)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(m.Stats.Dir, DiskFile)
	node := sp.Bundle.Default
	node.Node = "p1"
	writeNode(t, img, &node)

	boot := func(t *testing.T, want ...string) {
		vm := testvm.New(t, testvm.Config{Firmware: testvm.OVMF, Drives: []testvm.Drive{{Path: img}}})
		if got := waitLong(t, vm, `^bellbuild: root .*, configuration .*\.json$`)[0]; got != "bellbuild: root PARTLABEL=bellroot, writable layer /dev/vda4, configuration /run/bellbuild/config/bellbuild/node.json" {
			t.Fatalf("init: %q, want the data partition as the writable layer", got)
		}
		waitLong(t, vm, `^bellbuild: node=p1 profile=persistent changes=[1-9]\d* errors=0$`)
		console := vm.Console()
		for _, w := range want {
			if !strings.Contains(console, "[020-state.sh] check: "+w+"\n") && !strings.Contains(console, "[010-report.sh] check: "+w+"\n") {
				t.Errorf("the console lacks check: %s", w)
			}
		}
		// Power off as a person would, through the stage's shell.
		waitLong(t, vm, `^bellbuild:/# `)
		vm.Send("sync; poweroff -f\n")
		ctx, cancel := context.WithTimeout(context.Background(), mediaBootTimeout)
		defer cancel()
		if err := vm.VM.Wait(ctx); err != nil {
			t.Fatalf("after poweroff -f: %v", err)
		}
	}
	t.Run("day 1", func(t *testing.T) {
		boot(t, "swappiness=23", "dirty_ratio=33", "persisted dirty_ratio=1", "temp=temp expire=", "day2=none")
	})
	if t.Failed() {
		return
	}
	node.Conf.Sysctl = map[string]string{"vm.swappiness": "24"}
	node.Conf.Uamlite.Users = nil
	node.Conf.Files["/etc/day2-note"] = nodeconf.File{Content: "day 2\n"}
	writeNode(t, img, &node)
	t.Run("day 2", func(t *testing.T) {
		boot(t, "swappiness=24", "dirty_ratio=20", "persisted dirty_ratio=0", "temp=temp expire=1", "day2=day 2")
	})
}
