package boot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func TestParseSource(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Source
		bad  bool
	}{
		{in: "PARTLABEL=bellroot", want: Source{By: "PARTLABEL", Name: "bellroot"}},
		{in: "LABEL=BELLCONF", want: Source{By: "LABEL", Name: "BELLCONF"}},
		{in: "LABEL=BELLBUILD:/bellbuild/root.squashfs", want: Source{By: "LABEL", Name: "BELLBUILD", File: "/bellbuild/root.squashfs"}},
		{in: "UUID=1234", bad: true},
		{in: "PARTLABEL=", bad: true},
		{in: "LABEL=X:relative", bad: true},
		{in: "/dev/vda2", bad: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSource(tc.in)
			if tc.bad {
				if err == nil {
					t.Fatalf("ParseSource(%q) = %+v, want an error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

func TestParam(t *testing.T) {
	cl := "console=ttyS0 bellbuild.root=PARTLABEL=a bellbuild.rootwait=5 bellbuild.root=PARTLABEL=b quiet"
	if v, ok := Param(cl, layout.RootParam); !ok || v != "PARTLABEL=b" {
		t.Errorf("root = %q %v, want the last one, PARTLABEL=b", v, ok)
	}
	if v, ok := Param(cl, layout.ConfigParam); ok {
		t.Errorf("config = %q, want none", v)
	}
	if v, ok := Param("bellbuild.config=", layout.ConfigParam); !ok || v != "" {
		t.Errorf("empty config = %q %v", v, ok)
	}
}

// hostMkfs runs a host formatter to make a filesystem image for Probe.
func hostMkfs(t *testing.T, tool string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		testtool.Skipf(t, "%s not installed: %v", tool, err)
	}
	if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", tool, err, out)
	}
}

func sparse(t *testing.T, file string, size int64) string {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestProbe reads the type and label of filesystems made by the usual
// tools, as the init does to find LABEL= sources.
func TestProbe(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, fstype, label string
		make                func(t *testing.T, file string)
	}{
		{"fat32", "vfat", "BELLCONF", func(t *testing.T, f string) {
			hostMkfs(t, "mkfs.vfat", "-F", "32", "-n", "BELLCONF", sparse(t, f, 40<<20))
		}},
		{"fat16", "vfat", "SMALL", func(t *testing.T, f string) {
			hostMkfs(t, "mkfs.vfat", "-F", "16", "-n", "SMALL", sparse(t, f, 16<<20))
		}},
		{"fat unlabelled", "vfat", "", func(t *testing.T, f string) {
			hostMkfs(t, "mkfs.vfat", "-F", "32", sparse(t, f, 40<<20))
		}},
		{"ext2", "ext2", "belldata", func(t *testing.T, f string) {
			hostMkfs(t, "mke2fs", "-q", "-t", "ext2", "-L", "belldata", sparse(t, f, 8<<20))
		}},
		{"squashfs", "squashfs", "", func(t *testing.T, f string) {
			src := t.TempDir()
			os.WriteFile(filepath.Join(src, "a"), []byte("a"), 0o644)
			hostMkfs(t, "mksquashfs", src, f, "-quiet", "-no-progress")
		}},
		{"zeros", "", "", func(t *testing.T, f string) { sparse(t, f, 1<<20) }},
		{"missing", "", "", func(*testing.T, string) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".img")
			tc.make(t, f)
			fstype, label := Probe(f)
			if fstype != tc.fstype || label != tc.label {
				t.Errorf("Probe = %q %q, want %q %q", fstype, label, tc.fstype, tc.label)
			}
		})
	}
}

// TestFind scans a /sys/class/block made of files, as the kernel lays it
// out, matching by GPT name and by label, and times out with the devices
// it saw.
func TestFind(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	add := func(name, uevent string) {
		os.MkdirAll(filepath.Join(sys, name), 0o755)
		os.WriteFile(filepath.Join(sys, name, "uevent"), []byte(uevent), 0o644)
	}
	add("vda", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n")
	add("vda2", "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=bellroot\n")
	add("vda3", "MAJOR=254\nMINOR=3\nDEVNAME=vda3\nDEVTYPE=partition\nPARTN=3\nPARTNAME=bellconf\n")
	hostMkfs(t, "mkfs.vfat", "-F", "32", "-n", "BELLCONF", sparse(t, filepath.Join(dev, "vda3"), 40<<20))

	d, err := Find(Source{By: "PARTLABEL", Name: "bellroot"}, sys, dev, 0, nil)
	if err != nil || d.Dev != filepath.Join(dev, "vda2") {
		t.Errorf("PARTLABEL=bellroot: %+v %v", d, err)
	}
	d, err = Find(Source{By: "LABEL", Name: "BELLCONF"}, sys, dev, 0, nil)
	if err != nil || d.Dev != filepath.Join(dev, "vda3") || d.FSType != "vfat" {
		t.Errorf("LABEL=BELLCONF: %+v %v", d, err)
	}
	waited := false
	start := time.Now()
	_, err = Find(Source{By: "PARTLABEL", Name: "belldata"}, sys, dev, 300*time.Millisecond, func() { waited = true })
	if !errors.Is(err, ErrNoDevice) || !waited || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("missing device: %v (waited %v after %s)", err, waited, time.Since(start))
	}
	if want := "vda3(bellconf vfat BELLCONF)"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not list %q", err, want)
	}
}

// TestAddWatch: a busybox inittab gets one respawn line (once, however
// often the boot runs), a systemd root an enabled path unit and its
// oneshot service, any other root nothing.
func TestAddWatch(t *testing.T) {
	const cmd = "/bellbuild/bellbuild apply --config /run/bellbuild/config/bellbuild/node.json --root / --watch"
	t.Run("busybox", func(t *testing.T) {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		os.WriteFile(filepath.Join(root, "etc/inittab"), []byte("::sysinit:/etc/init.d/rcS\nttyS0::respawn:-/bin/sh\n"), 0o644)
		for range 2 {
			if ok, err := AddWatch(root, "/run/bellbuild/config/bellbuild/node.json"); !ok || err != nil {
				t.Fatalf("AddWatch: %v %v", ok, err)
			}
		}
		got, _ := os.ReadFile(filepath.Join(root, "etc/inittab"))
		want := "::sysinit:/etc/init.d/rcS\nttyS0::respawn:-/bin/sh\n# bellbuild: rerun the applier when the config volume changes\n::respawn:" + cmd + "\n"
		if d := cmp.Diff(want, string(got)); d != "" {
			t.Errorf("inittab (-want +got):\n%s", d)
		}
	})
	t.Run("systemd", func(t *testing.T) {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "lib/systemd"), 0o755)
		os.WriteFile(filepath.Join(root, "lib/systemd/systemd"), nil, 0o755)
		for range 2 {
			if ok, err := AddWatch(root, "/run/bellbuild/config/bellbuild/node.json"); !ok || err != nil {
				t.Fatalf("AddWatch: %v %v", ok, err)
			}
		}
		service, _ := os.ReadFile(filepath.Join(root, ApplyService))
		for _, want := range []string{"\nType=oneshot\n", "\nExecStart=/bellbuild/bellbuild apply --config /run/bellbuild/config/bellbuild/node.json --root /\n", "\nStandardOutput=journal+console\n"} {
			if !strings.Contains(string(service), want) {
				t.Errorf("service lacks %q:\n%s", want, service)
			}
		}
		path, _ := os.ReadFile(filepath.Join(root, ApplyPath))
		for _, want := range []string{"\nPathChanged=/run/bellbuild/config/bellbuild\n", "\nUnit=bellbuild-apply.service\n", "\nWantedBy=multi-user.target\n"} {
			if !strings.Contains(string(path), want) {
				t.Errorf("path unit lacks %q:\n%s", want, path)
			}
		}
		for _, u := range []string{ApplyPath, ApplyService} {
			link, err := os.Readlink(filepath.Join(root, "etc/systemd/system/multi-user.target.wants", filepath.Base(u)))
			if err != nil || link != "/"+u {
				t.Errorf("wants link of %s: %q %v", u, link, err)
			}
		}
		if !strings.Contains(string(service), "\nAfter=network-online.target\n") {
			t.Errorf("the service does not wait for the network:\n%s", service)
		}
	})
	t.Run("systemd, a site directory", func(t *testing.T) {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "lib/systemd"), 0o755)
		os.WriteFile(filepath.Join(root, "lib/systemd/systemd"), nil, 0o755)
		os.MkdirAll(filepath.Join(root, "srv/site"), 0o755)
		if ok, err := AddWatch(root, "/srv/site"); !ok || err != nil {
			t.Fatalf("AddWatch: %v %v", ok, err)
		}
		path, _ := os.ReadFile(filepath.Join(root, ApplyPath))
		if !strings.Contains(string(path), "\nPathChanged=/srv/site\n") {
			t.Errorf("path unit does not watch the directory itself:\n%s", path)
		}
	})
	t.Run("neither", func(t *testing.T) {
		root := t.TempDir()
		if ok, err := AddWatch(root, "/x.json"); ok || err != nil {
			t.Errorf("AddWatch on an empty root: %v %v", ok, err)
		}
		if ents, _ := os.ReadDir(root); len(ents) != 0 {
			t.Errorf("AddWatch wrote %v", ents)
		}
	})
}

// TestAddRecheck: when the init deferred something, a systemd root gets
// the run after the boot (bellbuild-apply.service, enabled) for the node
// the init applied, unless AddWatch arranged it already; a root without
// systemd gets nothing.
func TestAddRecheck(t *testing.T) {
	const bundle = "/etc/bellbuild/bundle.json"
	systemd := func(t *testing.T) string {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "lib/systemd"), 0o755)
		os.WriteFile(filepath.Join(root, "lib/systemd/systemd"), nil, 0o755)
		return root
	}
	for _, tc := range []struct {
		name   string
		root   func(t *testing.T) string
		node   string
		ok     bool
		exec   string // ExecStart=, "" for no service
		noPath bool
	}{
		{"systemd, a node", systemd, "web-1", true, "/bellbuild/bellbuild apply --config " + bundle + " --root / --node web-1", true},
		{"systemd, the default", systemd, "", true, "/bellbuild/bellbuild apply --config " + bundle + " --root /", true},
		{"systemd, AddWatch first", func(t *testing.T) string {
			root := systemd(t)
			if ok, err := AddWatch(root, "/run/bellbuild/config/bellbuild/node.json"); !ok || err != nil {
				t.Fatalf("AddWatch: %v %v", ok, err)
			}
			return root
		}, "web-1", true, "/bellbuild/bellbuild apply --config /run/bellbuild/config/bellbuild/node.json --root /", false},
		{"busybox", func(t *testing.T) string { return t.TempDir() }, "web-1", false, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.root(t)
			for range 2 {
				if ok, err := AddRecheck(root, bundle, tc.node); ok != tc.ok || err != nil {
					t.Fatalf("AddRecheck: %v %v, want %v", ok, err, tc.ok)
				}
			}
			service, err := os.ReadFile(filepath.Join(root, ApplyService))
			if tc.exec == "" {
				if err == nil {
					t.Errorf("a service was written:\n%s", service)
				}
				return
			}
			if !strings.Contains(string(service), "\nExecStart="+tc.exec+"\n") || !strings.Contains(string(service), "\nAfter=network-online.target\n") {
				t.Errorf("service, want ExecStart=%s after the network:\n%s", tc.exec, service)
			}
			if link, err := os.Readlink(filepath.Join(root, "etc/systemd/system/multi-user.target.wants", filepath.Base(ApplyService))); err != nil || link != "/"+ApplyService {
				t.Errorf("the service is not enabled: %q %v", link, err)
			}
			if _, err := os.Lstat(filepath.Join(root, ApplyPath)); (err != nil) != tc.noPath {
				t.Errorf("path unit: %v, want it only from AddWatch", err)
			}
		})
	}
}

// TestRunConfig: with Options.Config (what a disk boot finds on its config
// volume) the applier reads that file — a single node, or a bundle the
// node is chosen from — instead of the image's bundle; an unreadable one
// is reported and the image's bundle applies.
func TestRunConfig(t *testing.T) {
	motd := func(s string) nodeconf.Conf {
		return nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/motd": {Content: s + "\n"}}}
	}
	image := testBundle()
	image.Default.Conf = motd("image default")
	volBundle := testBundle()
	volBundle.Default.Conf = motd("volume default")
	volBundle.Nodes[1].Conf = motd("volume web-2")
	for _, tc := range []struct {
		name, cmdline string
		config        any // written to run/bellbuild/config/bellbuild/node.json
		wantMotd      string
		wantErrors    int
	}{
		{name: "node", config: nodeconf.Node{Node: "d1", Profile: "web", Conf: motd("node d1")}, wantMotd: "node d1\n"},
		{name: "bundle, by cmdline", cmdline: "bellbuild.node=web-2", config: volBundle, wantMotd: "volume web-2\n"},
		{name: "bundle, default", config: volBundle, wantMotd: "volume default\n"},
		{name: "broken", config: "{not json", wantMotd: "image default\n", wantErrors: 1},
		// A node cut short at a line (valid YAML) is refused, not applied.
		{name: "cut short", config: cutShort(t, nodeconf.Node{Node: "d1", Profile: "web", Conf: motd("node d1")}), wantMotd: "image default\n", wantErrors: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			write := func(p string, v any) {
				var data string
				switch v := v.(type) {
				case string:
					data = v
				case nodeconf.Node:
					b, err := nodeconf.Marshal(&v, nodeconf.JSON)
					if err != nil {
						t.Fatal(err)
					}
					data = string(b)
				case *nodeconf.Bundle:
					b, err := nodeconf.Marshal(v, nodeconf.JSON)
					if err != nil {
						t.Fatal(err)
					}
					data = string(b)
				default:
					t.Fatalf("cannot write %T", v)
				}
				os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
				if err := os.WriteFile(filepath.Join(root, p), []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			write(layout.Bundle, image)
			write("proc/cmdline", tc.cmdline+"\n")
			write(filepath.Join(layout.ConfigMount, layout.ConfigNode), tc.config)
			var con bytes.Buffer
			res := Run(context.Background(), Options{Root: root, Console: &con, Config: "/" + filepath.Join(layout.ConfigMount, layout.ConfigNode)})
			got, _ := os.ReadFile(filepath.Join(root, "etc/motd"))
			if string(got) != tc.wantMotd {
				t.Errorf("/etc/motd = %q, want %q\nconsole:\n%s", got, tc.wantMotd, con.String())
			}
			if len(res.Report.Errors) != tc.wantErrors {
				t.Errorf("errors %q, want %d", res.Report.Errors, tc.wantErrors)
			}
		})
	}
}

// cutShort is n rendered as YAML, cut at the line before its checksum.
func cutShort(t *testing.T, n nodeconf.Node) string {
	t.Helper()
	data, err := nodeconf.Marshal(&n, nodeconf.YAML)
	if err != nil {
		t.Fatal(err)
	}
	body, _, ok := strings.Cut(string(data), nodeconf.ChecksumKey+":")
	if !ok {
		t.Fatalf("no checksum in\n%s", data)
	}
	return body
}
