package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/images/squashfs"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func needMediaTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"sgdisk", "unsquashfs", "mtype"} {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(t, "%s not installed (Debian packages gdisk, squashfs-tools, mtools): %v", tool, err)
		}
	}
	if _, err := os.Stat(disk.SystemdBoot); err != nil {
		testtool.Skipf(t, "%v (Debian package systemd-boot-efi)", err)
	}
}

// bakeMedia bakes the fleet test profile with outputs [initramfs, raw, iso].
func bakeMedia(t *testing.T, opts Options) *Manifest {
	t.Helper()
	s := testSite(t)
	sp := spec(t, s, "fleet")
	sp.Outputs = []string{"initramfs", "raw", "iso"}
	opts.Site = s
	m, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatalf("Image: %v", err)
	}
	return m
}

// partitions reads the GPT of a disk image: name -> (offset, size).
func partitions(t *testing.T, img string) map[string][2]int64 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	table, err := gpt.Read(f, 512, 512)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]int64{}
	for _, p := range table.Partitions {
		out[p.Name] = [2]int64{int64(p.Start) * 512, int64(p.End-p.Start+1) * 512}
	}
	return out
}

func mtoolsType(t *testing.T, img string, off int64, p string) string {
	t.Helper()
	cmd := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", img, off), "::/"+p)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mtype %s: %v\n%s", p, err, out)
	}
	return string(out)
}

func TestMedia(t *testing.T) {
	needHost(t)
	needMediaTools(t)
	opts := testOptions(t)
	m := bakeMedia(t, opts)
	dir := m.Stats.Dir

	// Every artifact is listed with its real size and hash.
	names := map[string]bool{}
	for _, a := range m.Artifacts {
		names[a.Name] = true
		size, sum := fileSum(t, filepath.Join(dir, a.Name))
		if size != a.Size || sum != a.SHA256 {
			t.Errorf("%s: manifest says %d %s, file is %d %s", a.Name, a.Size, a.SHA256, size, sum)
		}
	}
	for _, want := range []string{KernelFile, InitramfsFile, DiskFile, DiskInitrdFile, ISOFile} {
		if !names[want] {
			t.Errorf("no %s among the artifacts %v", want, m.Artifacts)
		}
	}
	checkModes(t, dir)

	img := filepath.Join(dir, DiskFile)
	if out, err := exec.Command("sgdisk", "-v", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Errorf("sgdisk -v: %v\n%s", err, out)
	}
	parts := partitions(t, img)
	checkDiskInfo(t, m, img, parts)
	out, err := exec.Command("unsquashfs", "-lln", "-o", fmt.Sprint(parts[disk.SlotA][0]), img).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}
	for _, want := range []string{
		"-rwxr-xr-x 0/0", "squashfs-root/bellbuild/bellbuild",
		"squashfs-root/init -> bellbuild/bellbuild",
		"crw------- 0/0                   5,  1", "squashfs-root/dev/console",
		"-rw------- 0/0", "squashfs-root/etc/bellbuild/bundle.json",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the root squashfs lacks %q:\n%s", want, out)
		}
	}
	conf := mtoolsType(t, img, parts[disk.ConfigName][0], ConfigBundlePath)
	if !strings.Contains(conf, `"profile": "fleet"`) {
		t.Errorf("config volume %s:\n%s", ConfigBundlePath, conf)
	}
	entry := mtoolsType(t, img, parts[disk.ESPName][0], "loader/entries/bellbuild-1-a+3.conf")
	if want := "options " + layout.SlotCmdline(m.Cmdline, layout.SlotA, m.Disk.Root.SHA256) + "\n"; !strings.Contains(entry, want) {
		t.Errorf("loader entry:\n%s\nwant line %q", entry, want)
	}
	// The ESP's initramfs only finds the root: the applier, the modules
	// and the bundle, not the stage (which is the squashfs).
	esp := filepath.Join(t.TempDir(), "initrd.img")
	if err := os.WriteFile(esp, []byte(mtoolsType(t, img, parts[disk.ESPName][0], layout.SlotInitrd(layout.SlotA))), 0o600); err != nil {
		t.Fatal(err)
	}
	small := unpack(t, esp)
	for _, p := range []string{"init", applierPath, bundlePath, "etc/bellbuild/modules", "lib/modules/" + m.KernelVersion + "/modules.dep"} {
		if small.Get(p) == nil {
			t.Errorf("the ESP's initramfs lacks /%s", p)
		}
	}
	if e := small.Get("bin/busybox"); e != nil {
		t.Error("the ESP's initramfs carries the stage (/bin/busybox)")
	}

	// A second bake from a cold cache writes the same media.
	m2 := bakeMedia(t, testOptions(t))
	for i := range m.Artifacts {
		if m.Artifacts[i] != m2.Artifacts[i] {
			t.Errorf("two bakes differ: %+v vs %+v", m.Artifacts[i], m2.Artifacts[i])
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMediaBoot boots the baked disk and ISO under OVMF, and the ISO under
// SeaBIOS, to the applier's summary line.
func TestMediaBoot(t *testing.T) {
	testtool.SkipVM(t)
	needHost(t)
	needMediaTools(t)
	if _, err := os.Stat(testvm.OVMF); err != nil {
		testtool.Skipf(t, "%v (Debian package ovmf)", err)
	}
	m := bakeMedia(t, testOptions(t))
	cdrom := testvm.Drive{Path: filepath.Join(m.Stats.Dir, ISOFile), Interface: "ide", Media: "cdrom", ReadOnly: true}
	for _, tc := range []struct {
		name     string
		firmware string
		drive    testvm.Drive
	}{
		{"disk", testvm.OVMF, testvm.Drive{Path: filepath.Join(m.Stats.Dir, DiskFile)}},
		{"iso", testvm.OVMF, cdrom},
		// The same file as a USB stick would be: a disk whose whole
		// device is the ISO 9660 volume the init finds by label.
		{"iso as disk", testvm.OVMF, testvm.Drive{Path: filepath.Join(m.Stats.Dir, ISOFile), ReadOnly: true}},
		// SeaBIOS: El Torito's default entry, ISOLINUX.
		{"iso under BIOS", "", cdrom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // the VMs at once: the boots are mostly waiting
			vm := testtool.NewVM(t, testvm.Config{Firmware: tc.firmware, Drives: []testvm.Drive{tc.drive}})
			if tc.firmware == "" {
				vm.Wait(`^ISOLINUX `)
			}
			// The exec script's report comes before the summary line.
			vm.Wait(`check: swappiness=21$`)
			// A disk names its slot and image; an ISO has none.
			got := vm.Wait(`bellbuild: node=(\S*) profile=(\S+) (?:slot=a image=[0-9a-f]{12} )?changes=\d+ errors=(\d+)`)
			if got[2] != "fleet" || got[3] != "0" {
				t.Errorf("summary line %q: want profile fleet and no errors", got[0])
			}
		})
	}
}

// TestDropACLs: POSIX ACLs leave the tree that goes into the squashfs, the
// entry's other attributes stay, and the stage's tree sharing the maps is
// left as it was.
func TestDropACLs(t *testing.T) {
	stage := fstree.New()
	stage.Add(fstree.Entry{Path: "var/log/journal", Type: fstree.Dir, Mode: 0o2755, Xattrs: map[string][]byte{
		"system.posix_acl_access":  {2, 0, 0, 0},
		"system.posix_acl_default": {2, 0, 0, 0},
		"user.keep":                []byte("1"),
	}})
	stage.AddFile("usr/bin/ping", nil, 0o755, 0, 0)
	stage.Get("usr/bin/ping").Xattrs = map[string][]byte{"security.capability": {1}}
	root := fstree.New()
	root.Merge(stage)

	n, first := dropACLs(root)
	if n != 1 || first != "var/log/journal" {
		t.Errorf("dropACLs = %d, %q; want 1, var/log/journal", n, first)
	}
	if got := root.Get("var/log/journal").Xattrs; len(got) != 1 || string(got["user.keep"]) != "1" {
		t.Errorf("journal's attributes after: %q", got)
	}
	if got := root.Get("usr/bin/ping").Xattrs; len(got) != 1 {
		t.Errorf("ping's capability: %q", got)
	}
	if got := stage.Get("var/log/journal").Xattrs; len(got) != 3 {
		t.Errorf("the stage's tree lost attributes: %q", got)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "root.squashfs"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := squashfs.Write(f, root, squashfs.Options{}); err != nil {
		t.Errorf("squashfs of the tree without ACLs: %v", err)
	}
}

// TestStageKernelMedia bakes a disk from a dir stage that carries its own
// kernel and modules, merged-/usr style (/lib -> usr/lib): the ESP's
// initramfs gets the boot modules out of the stage, not the whole stage,
// and the disk boots under OVMF to the applier's line with them.
//
// The stage is busybox only (no systemd-sysctl), its modules-load.d names
// br_netfilter (which the stage carries and the init does not load by
// itself), and the configuration sets two sysctl keys the kernel lacks at
// first: br_netfilter's, which the init's applier gets by loading the
// modules of modules-load.d, and one that exists nowhere, which is an
// error that names it (nothing would set it later).
func TestStageKernelMedia(t *testing.T) {
	needHost(t)
	needMediaTools(t)
	host, err := filepath.EvalSymlinks(testKernel)
	if err != nil {
		t.Fatal(err)
	}
	k, err := hostKernel(host)
	if err != nil || k.modules == "" {
		testtool.Skipf(t, "the host kernel's modules: %v", err)
	}
	mods, err := moduleTree(k.modules, k.version, append(slices.Clone(BootModules), "br_netfilter"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, d := range []string{"boot", "usr/lib", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"lib": "usr/lib", "bin": "usr/bin"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, host, filepath.Join(root, "boot", "vmlinuz-"+k.version), 0o644)
	copyFile(t, "/bin/busybox", filepath.Join(root, "usr/bin/busybox"), 0o755)
	for _, applet := range []string{"sh", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(root, "usr/bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/modules-load.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/modules-load.d/bridge.conf"), []byte("# the bridge's netfilter sysctls\nbr_netfilter\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, e := range mods.Walk() {
		if e.Type != fstree.Regular || !strings.HasPrefix(e.Path, "lib/modules/") {
			continue
		}
		dst := filepath.Join(root, "usr", e.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		r, err := e.Data.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const (
		bridgeKey = "net.bridge.bridge-nf-call-iptables" // 1 when br_netfilter loads
		noSuchKey = "net.bellbuild_test.no_such_key"
	)
	conf := nodeconf.Conf{
		Sysctl: map[string]string{bridgeKey: "0", noSuchKey: "1"},
		Exec:   map[string]nodeconf.Exec{"010-report.sh": {Data: "#!/bin/sh\necho \"check: bridge-nf-call-iptables=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables)\"\n"}},
	}
	sp := &profiles.ImageSpec{Profile: "own", Chain: []string{"own"}, Stage: profiles.Stage{Dir: root},
		Kernel: profiles.Kernel{From: "stage"}, Cmdline: []string{"console=ttyS0"}, Outputs: []string{"raw"},
		Bundle: &nodeconf.Bundle{Profile: "own", Default: nodeconf.Node{Profile: "own", Conf: conf}}}
	opts := testOptions(t)
	m, err := Image(context.Background(), sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(m.Stats.Dir, DiskFile)
	esp := filepath.Join(t.TempDir(), "initrd.img")
	if err := os.WriteFile(esp, []byte(mtoolsType(t, img, partitions(t, img)[disk.ESPName][0], layout.SlotInitrd(layout.SlotA))), 0o600); err != nil {
		t.Fatal(err)
	}
	small := unpack(t, esp)
	var kos []string
	for _, e := range small.Walk() {
		if strings.HasSuffix(e.Path, ".ko") || strings.HasSuffix(e.Path, ".ko.xz") {
			kos = append(kos, path.Base(e.Path))
		}
	}
	if small.Get("lib/modules/"+k.version+"/modules.dep") == nil || !slices.ContainsFunc(kos, func(s string) bool { return strings.HasPrefix(s, "squashfs.ko") }) {
		t.Errorf("the ESP's initramfs lacks the stage's modules: %v", kos)
	}
	if small.Get("usr/bin/busybox") != nil || small.Get("boot") != nil {
		t.Error("the ESP's initramfs carries the stage")
	}

	testtool.SkipVM(t)
	vm := testtool.NewVM(t, testvm.Config{Firmware: testvm.OVMF, Drives: []testvm.Drive{{Path: img}}})
	vm.Wait(`^\[010-report.sh\] check: bridge-nf-call-iptables=0$`)
	vm.Wait(`^bellbuild: error: sysctl: ` + regexp.QuoteMeta(noSuchKey) + `: unknown key: the running kernel has no /proc/sys/net/bellbuild_test/no_such_key, even with the modules of modules-load.d loaded, and nothing in this system \(no systemd-sysctl\) sets it later$`)
	vm.Wait(`^bellbuild: node=\S* profile=own slot=a image=[0-9a-f]{12} changes=\d+ errors=1$`)
	if c := vm.Console(); strings.Count(c, "bellbuild: error:") != 1 || strings.Contains(c, "bellbuild: warn") || strings.Contains(c, "bellbuild: deferred") {
		t.Errorf("want one error (the unknown key), no warning (br_netfilter loaded), nothing deferred; console:\n%s", c)
	}
}

// checkDiskInfo checks the manifest's description of disk.raw against the
// file: each partition where the GPT has it, its extent's hash, zeros
// past every extent, and the root image's hash and place.
func checkDiskInfo(t *testing.T, m *Manifest, img string, parts map[string][2]int64) {
	t.Helper()
	d := m.Disk
	if d == nil {
		t.Fatal("the manifest has no disk")
	}
	data := mustRead(t, img)
	if d.Arch != "amd64" || d.Size != int64(len(data)) || len(d.Partitions) != len(parts) {
		t.Errorf("disk: arch %q size %d (file %d), %d partitions (GPT %d)", d.Arch, d.Size, len(data), len(d.Partitions), len(parts))
	}
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	for _, p := range d.Partitions {
		if g := parts[p.Name]; g != [2]int64{p.Offset, p.Size} {
			t.Errorf("%s: manifest says %d+%d, GPT %v", p.Name, p.Offset, p.Size, g)
		}
		if got := sum(data[p.Offset : p.Offset+p.Used]); got != p.SHA256 {
			t.Errorf("%s: extent hash %s, manifest %s", p.Name, got, p.SHA256)
		}
		if bytes.ContainsFunc(data[p.Offset+p.Used:p.Offset+p.Size], func(r rune) bool { return r != 0 }) {
			t.Errorf("%s: non-zero bytes past its extent", p.Name)
		}
	}
	r := d.Root
	if r.Offset != parts[disk.SlotA][0] || sum(data[r.Offset:r.Offset+r.Size]) != r.SHA256 || d.SlotSize != parts[disk.SlotB][1] {
		t.Errorf("root %+v, slot size %d", r, d.SlotSize)
	}
	if string(data[r.Offset:r.Offset+4]) != "hsqs" {
		t.Error("the root is not a squashfs")
	}
}
