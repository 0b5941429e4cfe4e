package boot

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

func TestInitParam(t *testing.T) {
	tests := []struct{ name, cmdline, want string }{
		{"none", "console=ttyS0 quiet", ""},
		{"one", "console=ttyS0 init=/lib/systemd/systemd", "/lib/systemd/systemd"},
		{"last wins", "init=/sbin/init init=/bin/sh", "/bin/sh"},
		{"rdinit is not init", "rdinit=/init", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := InitParam(tt.cmdline); got != tt.want {
				t.Errorf("InitParam(%q) = %q, want %q", tt.cmdline, got, tt.want)
			}
		})
	}
}

func testBundle() *nodeconf.Bundle {
	return &nodeconf.Bundle{
		Profile: "web",
		Default: nodeconf.Node{Profile: "web", Profiles: []string{"web"}},
		Nodes: []nodeconf.Node{
			{Node: "web-1", Profile: "web", MACs: []string{"52:54:00:00:00:01"}},
			{Node: "web-2", Profile: "web", MACs: []string{"52:54:00:00:00:02"}},
		},
	}
}

func TestChoose(t *testing.T) {
	mac := func(s string) net.HardwareAddr {
		m, err := net.ParseMAC(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	tests := []struct {
		name     string
		cmdline  string
		macs     []net.HardwareAddr
		wantNode string
		wantBy   string
		wantErr  error
	}{
		{"cmdline", "console=ttyS0 bellbuild.node=web-2", []net.HardwareAddr{mac("52:54:00:00:00:01")}, "web-2", "cmdline", nil},
		{"mac", "console=ttyS0", []net.HardwareAddr{mac("52:54:00:12:34:56"), mac("52:54:00:00:00:02")}, "web-2", "mac 52:54:00:00:00:02", nil},
		{"default", "console=ttyS0", []net.HardwareAddr{mac("52:54:00:12:34:56")}, "", "default", nil},
		{"unknown name boots the default", "bellbuild.node=web-9", nil, "", "default", firstboot.ErrNoSuchNode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, by, err := Choose(testBundle(), tt.cmdline, tt.macs)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if n.Node != tt.wantNode || by != tt.wantBy || n.Profile != "web" {
				t.Errorf("got node %q profile %q by %q, want %q profile web by %q", n.Node, n.Profile, by, tt.wantNode, tt.wantBy)
			}
		})
	}
}

func TestMACs(t *testing.T) {
	dir := t.TempDir()
	for name, addr := range map[string]string{
		"lo":   "00:00:00:00:00:00",
		"eth0": "52:54:00:00:00:02",
		"eth1": "52:54:00:AB:CD:EF",
		"ib0":  "80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:1f:5c:11",
	} {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "address"), []byte(addr+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, m := range MACs(dir) {
		got = append(got, m.String())
	}
	want := []string{"52:54:00:00:00:02", "52:54:00:ab:cd:ef"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("MACs (-want +got):\n%s", diff)
	}
}

func TestReadModuleList(t *testing.T) {
	file := filepath.Join(t.TempDir(), "modules")
	if err := os.WriteFile(file, []byte("# what the init loads\nvirtio_pci\n\n  squashfs  \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadModuleList(file)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"virtio_pci", "squashfs"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	got, err = ReadModuleList(filepath.Join(t.TempDir(), "absent"))
	if err != nil || got != nil {
		t.Errorf("missing list: got %q, %v; want nothing, no error", got, err)
	}
}

// TestRunOnRoot runs the init's steps (without mounting or loading
// modules) against a root directory: the node named on the command line is
// applied there, the console shows the script's output, then exactly one
// summary line, and the stage's init is found.
// TestStageModules reads modules-load.d as systemd-modules-load does: the
// .conf files of every directory by name, an /etc file hiding a
// /usr/lib one of the same name, comments, blank lines and repeats
// skipped, a symlinked file (Debian's modules.conf -> ../modules) read
// through.
func TestStageModules(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		links map[string]string
		want  []string
	}{
		{name: "none", want: nil},
		{
			name: "by file name across directories",
			files: map[string]string{
				"usr/lib/modules-load.d/50-b.conf": "br_netfilter\n",
				"etc/modules-load.d/10-a.conf":     "# the bridge's sysctls\n\n  nf_conntrack  \n; old comment\nbr_netfilter\n",
				"run/modules-load.d/70-c.conf":     "sctp\n",
				"etc/modules-load.d/README":        "not_a_module\n",
			},
			want: []string{"nf_conntrack", "br_netfilter", "sctp"},
		},
		{
			name: "/etc hides /usr/lib",
			files: map[string]string{
				"usr/lib/modules-load.d/k8s.conf": "overlay\nbr_netfilter\n",
				"etc/modules-load.d/k8s.conf":     "overlay\n",
			},
			want: []string{"overlay"},
		},
		{
			name:  "Debian's /etc/modules through its link",
			files: map[string]string{"etc/modules": "# /etc/modules\nloop\n"},
			links: map[string]string{"etc/modules-load.d/modules.conf": "../modules"},
			want:  []string{"loop"},
		},
		{
			name:  "the same link without /etc/modules",
			links: map[string]string{"etc/modules-load.d/modules.conf": "../modules"},
			want:  nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, c := range tc.files {
				os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
				if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for p, target := range tc.links {
				os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
				if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := StageModules(root)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("StageModules (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunOnRoot(t *testing.T) {
	tests := []struct {
		name       string
		cmdline    string
		wantMotd   string
		wantLines  []string
		wantInit   string
		wantErrors int
	}{
		{
			name:      "node from cmdline",
			cmdline:   "console=ttyS0 bellbuild.node=web-2",
			wantMotd:  "web-2\n",
			wantLines: []string{"bellbuild: node=web-2 profile=web changes=1 errors=0"},
			wantInit:  "/sbin/init",
		},
		{
			name:      "default, init= honoured",
			cmdline:   "console=ttyS0 init=/bin/sh",
			wantMotd:  "default\n",
			wantLines: []string{"bellbuild: node=- profile=web changes=1 errors=0"},
			wantInit:  "/bin/sh",
		},
		{
			name:     "unknown node: default applied, error shown",
			cmdline:  "bellbuild.node=web-9",
			wantMotd: "default\n",
			wantLines: []string{
				"bellbuild: error: bellbuild.node=web-9: no such node in the bundle of profile web",
				"bellbuild: node=- profile=web changes=1 errors=1",
			},
			wantInit:   "/sbin/init",
			wantErrors: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			b := testBundle()
			motd := func(s string) nodeconf.Conf {
				return nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/motd": {Content: s + "\n"}}}
			}
			b.Default.Conf = motd("default")
			b.Nodes[0].Conf = motd("web-1")
			b.Nodes[1].Conf = motd("web-2")
			data, err := nodeconf.Marshal(b, nodeconf.JSON)
			if err != nil {
				t.Fatal(err)
			}
			for p, content := range map[string]string{
				layout.Bundle:  string(data),
				"proc/cmdline": tt.cmdline + "\n",
				"sbin/init":    "#!/bin/sh\n",
				"bin/sh":       "#!/bin/sh\n",
			} {
				if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			var con bytes.Buffer
			res := Run(context.Background(), Options{Root: root, Console: &con})
			got, err := os.ReadFile(filepath.Join(root, "etc/motd"))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.wantMotd {
				t.Errorf("/etc/motd = %q, want %q", got, tt.wantMotd)
			}
			if diff := cmp.Diff(tt.wantLines, strings.Split(strings.TrimSpace(con.String()), "\n")); diff != "" {
				t.Errorf("console (-want +got):\n%s", diff)
			}
			if res.Init != tt.wantInit {
				t.Errorf("init = %q, want %q", res.Init, tt.wantInit)
			}
			if len(res.Report.Errors) != tt.wantErrors {
				t.Errorf("report errors = %q, want %d", res.Report.Errors, tt.wantErrors)
			}
		})
	}
}

func TestRunWithoutBundle(t *testing.T) {
	root := t.TempDir()
	var con bytes.Buffer
	res := Run(context.Background(), Options{Root: root, Console: &con})
	want := []string{
		"bellbuild: error: open " + filepath.Join(root, layout.Bundle) + ": no such file or directory",
		"bellbuild: node=- profile=- changes=0 errors=1",
		"bellbuild: error: no init to hand over to (tried init=, /sbin/init, /etc/init, /bin/init, /lib/systemd/systemd, /bin/sh)",
	}
	if diff := cmp.Diff(want, strings.Split(strings.TrimSpace(con.String()), "\n")); diff != "" {
		t.Errorf("console (-want +got):\n%s", diff)
	}
	if res.Init != "" {
		t.Errorf("init = %q, want none", res.Init)
	}
}

// TestRunBundleCutShort: a boot whose image bundle is cut short (a persist
// disk that already holds what an earlier boot applied) applies nothing:
// the earlier boot's files stay, the error is on the console, and the
// stage's init still runs.
func TestRunBundleCutShort(t *testing.T) {
	root := t.TempDir()
	b := testBundle()
	b.Default.Conf = nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/motd": {Content: "default\n"}}}
	data, err := nodeconf.Marshal(b, nodeconf.JSON)
	if err != nil {
		t.Fatal(err)
	}
	for p, content := range map[string]string{
		layout.Bundle: string(data),
		"sbin/init":   "#!/bin/sh\n",
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var con bytes.Buffer
	Run(context.Background(), Options{Root: root, Console: &con})
	if got, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(got) != "default\n" {
		t.Fatalf("the whole bundle: /etc/motd = %q\n%s", got, con.String())
	}
	// The next boot's bundle lost its end.
	cut := data[:bytes.Index(data, []byte(`"checksum"`))]
	if err := os.WriteFile(filepath.Join(root, layout.Bundle), cut, 0o600); err != nil {
		t.Fatal(err)
	}
	con.Reset()
	res := Run(context.Background(), Options{Root: root, Console: &con})
	if got, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(got) != "default\n" {
		t.Errorf("after a boot with a cut bundle: /etc/motd = %q, want the earlier boot's\n%s", got, con.String())
	}
	lines := strings.Split(strings.TrimSpace(con.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "bellbuild: error: "+filepath.Join(root, layout.Bundle)+": ") || lines[1] != "bellbuild: node=- profile=- changes=0 errors=1" {
		t.Errorf("console:\n%s", con.String())
	}
	if res.Init != "/sbin/init" {
		t.Errorf("init = %q", res.Init)
	}
}
