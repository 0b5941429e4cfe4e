package build

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/confvol"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm"
)

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
	vm.Wait(`^bellbuild: root PARTLABEL=bellroot, writable layer tmpfs, configuration /run/bellbuild/config/bellbuild/node.json$`)
	vm.Wait(`^bellbuild: node=d1 profile=immutable changes=[1-9]\d* errors=0$`)
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
	vm.Wait(`^bellbuild: busybox init: shell on ttyS0$`)
}
