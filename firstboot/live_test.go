package firstboot

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// liveScript runs the applier with --live inside fresh network and mount
// namespaces (made by the test with unshare, gone when it exits), so the
// live code paths — /proc/sys writes read back, ethtool -K, mount(2) and
// remount — run for real without touching this machine: only per-netns
// net.* sysctls, the namespace's own loopback, and mounts in a private
// mount namespace. It prints the live state after each step.
const liveScript = `set -u
B="$1"; R="$2"; D="$3"
mount -t sysfs sysfs /sys
show() {
	echo "== $1"
	echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
	echo "rp_filter=$(cat /proc/sys/net/ipv4/conf/lo/rp_filter)"
	ethtool -k lo | grep -E '^(generic-receive-offload|tcp-segmentation-offload|rx-checksumming):'
	m=$(sed -n "s|^.* $R/mnt/t .* - \([^ ]*\) \([^ ]*\) \([^ ]*\)$|mount \1 \2 \3|p" /proc/self/mountinfo)
	# Keep the options the configuration sets (size); drop kernel-dependent ones.
	echo "${m:-mount none}" | sed 's/ rw,\(.*,\)\{0,1\}\(size=[0-9a-z]*\).*/ \2/'
	grep -q " $R/mnt/t .*nosuid" /proc/self/mountinfo && echo "nosuid"
	grep -h ip_forward "$R/etc/sysctl.d/60-bellbuild.conf" 2>/dev/null || echo "persisted none"
}
run() {
	echo "== apply $1"
	"$B" apply --live --root "$R" --config "$D/$1.json" 2>"$D/$1.err"
	echo "exit=$?"
}
show before
echo "== plan a"
out=$("$B" apply --live --plan --root "$R" --config "$D/a.json" 2>/dev/null); rc=$?
echo "$out" | grep -c '^  [-+~] '
echo "$out" | tail -n 1
echo "exit=$rc"
show planned
run a; show a
run a
run b; show b
run refused; show refused
run unknown
run fixed
run empty; show empty
exit 0
`

func TestLiveInNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it in namespaces: skipped in -short")
	}
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "needs root to create network and mount namespaces")
	}
	for _, tool := range []string{"unshare", "ethtool"} {
		if _, err := lookTool(tool); err != nil {
			testtool.Skipf(t, "%v", err)
		}
	}
	bin := testtool.Binary(t)
	root, dir := t.TempDir(), t.TempDir()
	buildRoot(t, root)
	mount := func(opts string) map[string]nodeconf.Mount {
		return map[string]nodeconf.Mount{"t": {MntTgt: "/mnt/t", Device: "bellbuild-test", Type: "tmpfs", Options: opts}}
	}
	// Only net.* keys: they are per network namespace.
	confs := map[string]nodeconf.Conf{
		"a": {
			Sysctl:  map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.lo.rp_filter": "2"},
			Ethtool: map[string]map[string]string{"lo": {"gro": "off", "tso": "off"}},
			Mounts:  mount("nosuid,size=1m"),
		},
		"b": {
			Sysctl:  map[string]string{"net.ipv4.ip_forward": "1"},
			Ethtool: map[string]map[string]string{"lo": {"tso": "off"}},
			Mounts:  mount("nosuid,size=2m"),
		},
		"refused": {
			Sysctl:  map[string]string{"net.ipv4.ip_forward": "yes please"},
			Ethtool: map[string]map[string]string{"lo": {"tso": "off"}},
			Mounts:  mount("nosuid,size=2m"),
		},
		"unknown": {Sysctl: map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.no_such_key": "1"}},
		"fixed":   {Ethtool: map[string]map[string]string{"lo": {"rx-checksumming": "off"}, "eth9": {"gro": "on"}}},
		"empty":   {},
	}
	for name, c := range confs {
		data, err := nodeconf.Marshal(&nodeconf.Node{Node: "n1", Profile: "p", Conf: c}, nodeconf.JSON)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := filepath.Join(dir, "live.sh")
	os.WriteFile(script, []byte(liveScript), 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "unshare", "--net", "--mount", "--propagation", "private", "sh", script, bin, root, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("unshare: %v\n%s", err, out)
	}
	steps := map[string][]string{}
	var cur string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if s, ok := strings.CutPrefix(line, "== "); ok {
			if _, dup := steps[s]; dup {
				s += " again"
			}
			cur = s
			steps[cur] = []string{}
			continue
		}
		steps[cur] = append(steps[cur], line)
	}
	errOf := func(name string) string {
		data, _ := os.ReadFile(filepath.Join(dir, name+".err"))
		return string(data)
	}
	before := steps["before"]
	t.Logf("namespace before: %q", before)
	if len(before) != 7 || before[5] != "mount none" || before[6] != "persisted none" {
		t.Fatalf("unexpected starting state:\n%s", out)
	}
	want := map[string][]string{
		"before":        before,
		"plan a":        {"10", "bellbuild: node=n1 profile=p changes=10 errors=0", "exit=2"},
		"planned":       before,
		"apply a":       {"bellbuild: node=n1 profile=p changes=10 errors=0", "exit=0"},
		"a":             {"ip_forward=1", "rp_filter=2", "rx-checksumming: on [fixed]", "tcp-segmentation-offload: off", "generic-receive-offload: off", "mount tmpfs bellbuild-test size=1024k", "nosuid", "net.ipv4.ip_forward = 1"},
		"apply a again": {"bellbuild: node=n1 profile=p changes=0 errors=0", "exit=0"},
		"apply b":       {"bellbuild: node=n1 profile=p changes=6 errors=0", "exit=0"},
		"b":             {"ip_forward=1", before[1], "rx-checksumming: on [fixed]", "tcp-segmentation-offload: off", before[4], "mount tmpfs bellbuild-test size=2048k", "nosuid", "net.ipv4.ip_forward = 1"},
		"apply refused": {"bellbuild: node=n1 profile=p changes=0 errors=1", "exit=1"},
		"refused":       {"ip_forward=1", before[1], "rx-checksumming: on [fixed]", "tcp-segmentation-offload: off", before[4], "mount tmpfs bellbuild-test size=2048k", "nosuid", "net.ipv4.ip_forward = 1"},
		"apply unknown": {"bellbuild: node=n1 profile=p changes=0 errors=1", "exit=1"},
		"apply fixed":   {"bellbuild: node=n1 profile=p changes=0 errors=2", "exit=1"},
		"apply empty":   {"bellbuild: node=n1 profile=p changes=8 errors=0", "exit=0"},
		"empty":         before,
	}
	if diff := cmp.Diff(want, steps); diff != "" {
		t.Errorf("live states (-want +got):\n%s\nerrors of b: %s\nrefused: %s\nempty: %s", diff, errOf("b"), errOf("refused"), errOf("empty"))
	}
	for name, msg := range map[string]string{
		"refused": `sysctl: net.ipv4.ip_forward: the kernel refused "yes please": write /proc/sys/net/ipv4/ip_forward: invalid argument`,
		"unknown": "sysctl: net.ipv4.no_such_key: unknown key: the running kernel has no /proc/sys/net/ipv4/no_such_key",
		"fixed":   "ethtool: lo: rx-checksumming is fixed on by the driver and cannot be set off",
	} {
		if !strings.Contains(errOf(name), msg) {
			t.Errorf("errors of %s do not say %q:\n%s", name, msg, errOf(name))
		}
	}
	if !strings.Contains(errOf("fixed"), "ethtool: eth9: device eth9: no such network device") {
		t.Errorf("errors of fixed do not name the missing device:\n%s", errOf("fixed"))
	}
	// Everything persistent went with the items.
	for _, p := range []string{sysctlFile, "/etc/systemd/system/mnt-t.mount", "/etc/systemd/system/bellbuild-ethtool-lo.service"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s left after every item was removed", p)
		}
	}
}
