package build

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/confvol"
	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// mediaBootTimeout bounds each wait of the disk boot tests: a UEFI boot
// under TCG takes ~15 s alone, but the machine running the tests may be
// loaded many times over.
const mediaBootTimeout = 300 * time.Second

// waitLong waits for a console line matching re, up to mediaBootTimeout.
func waitLong(t *testing.T, vm *testtool.VM, re string) []string {
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
	data, err := nodeconf.Marshal(n, nodeconf.JSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := confvol.Rewrite(img, confvol.Tree(data, DefaultSourceDateEpoch)); err != nil {
		t.Fatal(err)
	}
}

// sedChecksum is the sed expression that replaces before's checksum with
// after's in a node.json edited by hand: the applier refuses an edit that
// does not carry the checksum of what it says.
func sedChecksum(t *testing.T, before, after *nodeconf.Node) string {
	t.Helper()
	old, err := nodeconf.Checksum(before)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := nodeconf.Checksum(after)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`-e 's/"checksum": "%s"/"checksum": "%s"/'`, old, sum)
}

// TestDiskBoot boots disk.raw under OVMF: the init finds the root by its
// partition name, runs the system on an overlay of the read-only squashfs,
// and applies the configuration the config partition holds (a node.json
// written after the bake, whose values the image's bundle does not have).
func TestDiskBoot(t *testing.T) {
	testtool.SkipVM(t)
	needHost(t)
	needMediaTools(t)
	m, node := bakeImmutable(t)
	img := filepath.Join(m.Stats.Dir, DiskFile)
	node.Node = "d1"
	node.Conf.Sysctl["vm.swappiness"] = "37"
	node.Conf.Files["/etc/bellbuild-note"] = nodeconf.File{Content: "from the config volume\n"}
	writeNode(t, img, node)

	vm := testtool.NewVM(t, testvm.Config{Firmware: testvm.OVMF, Drives: []testvm.Drive{{Path: img}}})
	waitLong(t, vm, `^bellbuild: root PARTLABEL=root-a, writable layer tmpfs, configuration /run/bellbuild/config/bellbuild/node.json$`)
	waitLong(t, vm, `^bellbuild: slot a marked good \(image [0-9a-f]{12}\)$`)
	waitLong(t, vm, `^bellbuild: node=d1 profile=immutable slot=a image=`+m.Disk.Root.SHA256[:12]+` changes=[1-9]\d* errors=0$`)
	// The entry's boot counter is gone: systemd-boot counted this boot
	// (+3 became +2-1), the init marked the slot good after its apply.
	if got := mtoolsDir(t, img, partitions(t, img)[disk.ESPName][0], "loader/entries"); got != "bellbuild-1-a.conf" {
		t.Errorf("ESP entries after the boot: %q, want bellbuild-1-a.conf", got)
	}
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
	day2 := *node
	day2.Conf.Sysctl = maps.Clone(node.Conf.Sysctl)
	day2.Conf.Sysctl["vm.swappiness"] = "41"
	vm.Send(`mount -o remount,rw /run/bellbuild/config && sed -i ` + sedChecksum(t, node, &day2) + ` -e 's/"vm.swappiness": "37"/"vm.swappiness": "41"/' /run/bellbuild/config/bellbuild/node.json && echo ed""ited` + "\n")
	waitLong(t, vm, `^edited$`)
	waitLong(t, vm, `check: swappiness=41`)
	vm.Send("echo now=$(cat /proc/sys/vm/swappiness)\n")
	waitLong(t, vm, `^now=41$`)
}

// mtoolsDir lists a directory of the FAT volume at off in img, names
// separated by spaces.
func mtoolsDir(t *testing.T, img string, off int64, dir string) string {
	t.Helper()
	cmd := exec.Command("mdir", "-b", "-i", fmt.Sprintf("%s@@%d", img, off), "::/"+dir)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mdir %s: %v\n%s", dir, err, out)
	}
	var names []string
	for _, l := range strings.Fields(string(out)) {
		names = append(names, strings.TrimPrefix(l, "::/"+dir+"/"))
	}
	return strings.Join(names, " ")
}

// TestDiskDay2 boots a disk with a data partition twice. Between the boots
// the machine is powered off and its config volume rewritten (one sysctl
// changed, one removed, a user removed, a file added), as `bellbuild
// config write disk.raw` does; the second boot converges from the state
// the first one left on the data partition: the new values hold, the
// removed user is expired, the removed sysctl is back to the kernel's.
func TestDiskDay2(t *testing.T) {
	testtool.SkipVM(t)
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
		vm := testtool.NewVM(t, testvm.Config{Firmware: testvm.OVMF, Drives: []testvm.Drive{{Path: img}}})
		if got := waitLong(t, vm, `^bellbuild: root .*, configuration .*\.json$`)[0]; got != "bellbuild: root PARTLABEL=root-a, writable layer /dev/vda5, configuration /run/bellbuild/config/bellbuild/node.json" {
			t.Fatalf("init: %q, want the data partition as the writable layer", got)
		}
		waitLong(t, vm, `^bellbuild: node=p1 profile=persistent slot=a image=[0-9a-f]{12} changes=[1-9]\d* errors=0$`)
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

// debootstrapCache keeps the systemd test's debootstrap root between runs
// (making it downloads ~100 MB and takes about a minute).
const debootstrapCache = "/var/cache/bellbuild-test/bake-debootstrap"

// TestDiskSystemd bakes a debootstrap stage (systemd, udev, openssh-server)
// into disk.raw and boots it under OVMF: the init applies the config
// volume's node and hands over to systemd, which reaches the multi-user
// target on the overlay of the read-only squashfs. Then day 2 without a
// reboot: the config volume is edited in place, and the path unit the
// init enabled (bellbuild-apply.path) reruns the applier, which sets the
// new value and reverts the removed user.
func TestDiskSystemd(t *testing.T) {
	testtool.SkipVM(t)
	needHost(t)
	needMediaTools(t)
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "a debootstrap stage needs root")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		testtool.Skipf(t, "%v (Debian package debootstrap)", err)
	}
	s, err := profiles.Load("testdata/systemd")
	if err != nil {
		t.Fatal(err)
	}
	sp := spec(t, s, "systemd")
	o := testOptions(t)
	o.Site = s
	if err := os.MkdirAll(debootstrapCache, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(debootstrapCache, filepath.Join(o.CacheDir, "debootstrap")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	m, err := Image(ctx, sp, o)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(m.Stats.Dir, DiskFile)
	stageListedIn(t, filepath.Join(debootstrapCache, debootstrapKey(sp.Stage.Debootstrap, "amd64"), "root"), img)
	node := sp.Bundle.Default
	node.Node, node.Profile = "s1", "systemd"
	node.Conf.Sysctl["vm.swappiness"] = "37"
	// A key no module brings (a typo): the init defers it to
	// systemd-sysctl, the run after the boot finds it still missing.
	const noSuchKey = "net.bellbuild_test.no_such_key"
	node.Conf.Sysctl[noSuchKey] = "1"
	// Three units systemd runs or not: day 2 takes one away, disables
	// one and enables the third, and the running system follows.
	yes, no := true, false
	const sleeper = "[Unit]\nDescription=bellbuild test unit\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
	node.Conf.Units = map[string]nodeconf.Unit{
		"bb-gone.service": {Content: sleeper, Enabled: &yes},
		"bb-off.service":  {Content: sleeper, Enabled: &yes},
		"bb-on.service":   {Content: sleeper, Enabled: &no},
	}
	writeNode(t, img, &node)

	vm := testtool.NewVM(t, testvm.Config{Firmware: testvm.OVMF, Drives: []testvm.Drive{{Path: img}}})
	waitLong(t, vm, `^bellbuild: root PARTLABEL=root-a, writable layer tmpfs, configuration /run/bellbuild/config/bellbuild/node.json$`)
	waitLong(t, vm, `^bellbuild: deferred: sysctl: `+regexp.QuoteMeta(noSuchKey)+`: not in the running kernel \(no /proc/sys/net/bellbuild_test/no_such_key\), even with the modules of modules-load.d loaded: deferred to systemd-sysctl`)
	waitLong(t, vm, `^bellbuild: node=s1 profile=systemd slot=a image=[0-9a-f]{12} changes=[1-9]\d* errors=0 deferred=1$`)
	waitLong(t, vm, `Reached target .*multi-user\.target`)
	waitLong(t, vm, `root@[-\w]+:~# $`)
	// check runs cmd in the console's shell and compares its output; the
	// marker is split in the typed line so that only the output matches.
	check := func(cmd, want string) {
		t.Helper()
		vm.Send("echo \"g\"\"ot: $(" + cmd + ")\"\n")
		ctx, cancel := context.WithTimeout(context.Background(), mediaBootTimeout)
		defer cancel()
		m, err := vm.WaitForLine(ctx, regexp.MustCompile(`got: (.*)$`))
		if err != nil {
			t.Fatalf("VM: %v", err)
		}
		if m[1] != want {
			t.Errorf("%s: %q, want %q", cmd, m[1], want)
		}
	}
	check("systemctl is-active multi-user.target bellbuild-apply.path | paste -sd' '", "active active")
	check("cat /proc/1/comm", "systemd")
	// The service also ran once after network-online.target: strict
	// again, it finds the deferred key still missing (and, the checks
	// failing, changes nothing).
	check(`for i in $(seq 60); do n=$(journalctl -b -u bellbuild-apply.service -o cat | grep -c '^bellbuild: node=s1 profile=systemd slot=a image=[0-9a-f]* changes=0 errors=1$'); [ "$n" = 1 ] && break; sleep 1; done; echo $n`, "1")
	check(`journalctl -b -u bellbuild-apply.service -o cat | grep -c '^bellbuild apply: sysctl: `+noSuchKey+`: unknown key: the running kernel has no /proc/sys/net/bellbuild_test/no_such_key$'`, "1")
	check("systemctl show -p Result --value bellbuild-apply.service", "exit-code")
	check("findmnt -no FSTYPE,OPTIONS / | cut -d, -f1", "overlay rw")
	check("findmnt -no FSTYPE,OPTIONS /run/bellbuild/lower | cut -d, -f1", "squashfs ro")
	check("cat /proc/sys/vm/swappiness", "37")
	check("id -un ops", "ops")
	const units = "bb-gone.service bb-off.service bb-on.service"
	check("systemctl is-active "+units+" | paste -sd' '", "active active inactive")

	// Day 2 without a reboot: the mounted config volume changes (by hand
	// here), one sysctl value changed, the unknown key dropped and the
	// user renamed.
	day2 := node
	day2.Conf.Sysctl = maps.Clone(node.Conf.Sysctl)
	day2.Conf.Sysctl["vm.swappiness"] = "41"
	delete(day2.Conf.Sysctl, noSuchKey)
	day2.Conf.Units = map[string]nodeconf.Unit{
		"bb-off.service": {Content: sleeper, Enabled: &no},
		"bb-on.service":  {Content: sleeper, Enabled: &yes},
	}
	day2.Conf.Uamlite = &nodeconf.Uamlite{PurgeExpiredUsers: node.Conf.Uamlite.PurgeExpiredUsers, Users: slices.Clone(node.Conf.Uamlite.Users)}
	for i, u := range day2.Conf.Uamlite.Users {
		if u.UserName == "ops" {
			day2.Conf.Uamlite.Users[i].UserName = "ops2"
		}
	}
	vm.Send(`mount -o remount,rw /run/bellbuild/config && sed -i ` + sedChecksum(t, &node, &day2) + ` -e 's/"vm.swappiness": "37"/"vm.swappiness": "41"/' -e '/"` + noSuchKey + `"/d' -e 's/"user_name": "ops"/"user_name": "ops2"/' ` +
		`-e '/"bb-gone.service": {/,/}/d' -e '/"bb-off.service": {/,/}/s/"enabled": true/"enabled": false/' -e '/"bb-on.service": {/,/}/s/"enabled": false/"enabled": true/' ` +
		`/run/bellbuild/config/bellbuild/node.json && sync && echo ed""ited` + "\n")
	waitLong(t, vm, `edited$`)
	waitLong(t, vm, `bellbuild: node=s1 profile=systemd slot=a image=[0-9a-f]{12} changes=[1-9]\d* errors=0`)
	check("cat /proc/sys/vm/swappiness", "41")
	check("id -un ops2", "ops2")
	// The unit that left is stopped and gone, the disabled one stopped,
	// the enabled one started (without waiting for it: give it a moment).
	check("for i in $(seq 20); do systemctl is-active --quiet bb-on.service && break; sleep 0.5; done; systemctl is-active "+units+" | paste -sd' '", "inactive inactive active")
	check("ls /etc/systemd/system/bb-gone.service /etc/systemd/system/multi-user.target.wants/bb-off.service 2>&1 | grep -c 'No such file'", "2")
	check("chage -l ops | grep '^Account expires' | cut -d: -f2", " "+time.Unix(86400, 0).UTC().Format("Jan 02, 2006"))
	// It was the path unit's service that ran it: its second run this
	// boot.
	check("systemctl show -p Result --value bellbuild-apply.service", "success")
	check("journalctl -b -u bellbuild-apply.service -o cat | grep -c '^bellbuild: node=s1 '", "2")
}

// lsLine is one entry of unsquashfs -lln: mode, uid/gid, size (or a
// device's major, minor), date, time, path.
var lsLine = regexp.MustCompile(`^(\S+) (\d+)/(\d+) +(\d+|\d+, *\d+) (\S+ \S+) squashfs-root(.*)$`)

// listing is unsquashfs -lln of the squashfs at offset in file, one
// normalized line per entry (a directory's size, which is its listing's
// encoding, left out).
func listing(t *testing.T, file string, offset int64) map[string]bool {
	t.Helper()
	cmd := exec.Command("unsquashfs", "-lln", "-o", fmt.Sprint(offset), file)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("unsquashfs -lln %s: %v", file, err)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		m := lsLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("unsquashfs -lln: unexpected line %q", l)
		}
		size := strings.ReplaceAll(m[4], " ", "")
		if m[1][0] == 'd' {
			size = "-"
		}
		lines[fmt.Sprintf("%s %s/%s %s %s /%s", m[1], m[2], m[3], size, m[5], strings.TrimPrefix(m[6], "/"))] = true
	}
	return lines
}

// stageListedIn checks that the disk's root squashfs holds every entry of
// the stage directory root with its type, mode, owner, size (or device
// number) and time, as unsquashfs lists them, against mksquashfs's image
// of the same directory (the bake adds entries; it changes none).
func stageListedIn(t *testing.T, root, img string) {
	t.Helper()
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		testtool.Skipf(t, "%v (Debian package squashfs-tools)", err)
	}
	ref := filepath.Join(t.TempDir(), "ref.squashfs")
	epoch := fmt.Sprint(DefaultSourceDateEpoch)
	if out, err := exec.Command("mksquashfs", root, ref, "-noappend", "-quiet", "-no-progress", "-processors", "2",
		"-comp", "zstd", "-all-time", epoch, "-mkfs-time", epoch).CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, out)
	}
	want := listing(t, ref, 0)
	got := listing(t, img, partitions(t, img)[disk.SlotA][0])
	var missing []string
	for l := range want {
		if !got[l] && !strings.HasSuffix(l, " /") { // the root directory's own mode is the image's
			missing = append(missing, l)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%d of the stage's %d entries are not in the disk's root as they are in the stage, e.g.:\n%s",
			len(missing), len(want), strings.Join(missing[:min(len(missing), 20)], "\n"))
	}
	t.Logf("the disk's root lists all %d entries of the stage (and %d more)", len(want), len(got)-len(want))
}
