package ipxe

import (
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/pxe/node"
)

func TestScript(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	tests := []struct {
		name string
		m    node.Machine
		want string
		err  string
	}{{
		name: "inventory node",
		m:    node.Machine{Name: "demo-1", Profile: "demo", Kernel: "demo/vmlinuz", Initrd: "demo/initramfs.cpio.zst", Cmdline: " console=ttyS0  quiet "},
		want: "#!ipxe\necho bellbuild: booting node demo-1 (profile demo) from http://192.0.2.1:8080\n" +
			"kernel http://192.0.2.1:8080/boot/52:54:00:00:00:01/kernel initrd=initrd console=ttyS0 quiet bellbuild.node=demo-1\n" +
			"initrd --name initrd http://192.0.2.1:8080/boot/52:54:00:00:00:01/initrd\nboot\n",
	}, {
		name: "default profile, no node name",
		m:    node.Machine{Profile: "demo", Kernel: "k", Initrd: "i"},
		want: "#!ipxe\necho bellbuild: booting a machine not in the inventory (profile demo) from http://192.0.2.1:8080\n" +
			"kernel http://192.0.2.1:8080/boot/52:54:00:00:00:01/kernel initrd=initrd\n" +
			"initrd --name initrd http://192.0.2.1:8080/boot/52:54:00:00:00:01/initrd\nboot\n",
	}, {
		name: "name that would inject a command",
		m:    node.Machine{Name: "x\nshell", Kernel: "k", Initrd: "i"},
		err:  `ipxe: node name "x\nshell": want letters, digits, '-', '_' or '.'`,
	}, {
		name: "command line with a line break",
		m:    node.Machine{Name: "x", Kernel: "k", Initrd: "i", Cmdline: "a\nshell"},
		err:  "ipxe: node x: command line has a line break",
	}, {
		name: "nothing to boot",
		m:    node.Machine{Name: "x"},
		err:  "ipxe: node x: no kernel or initramfs to boot",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Script(&tt.m, mac, "http://192.0.2.1:8080/")
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v, want %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, string(got)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// TestScriptModes: a node that installs boots the installer (its own
// kernel and initramfs, told where serve is and how iPXE set the NIC up)
// until it is installed, then from its disk, UEFI or BIOS.
func TestScriptModes(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	m := node.Machine{Name: "inst-1", Profile: "inst", Kernel: "inst/vmlinuz", Initrd: "inst/initramfs.cpio.zst", Cmdline: "console=ttyS0", Install: true}
	for _, tt := range []struct {
		name  string
		mode  Mode
		serve string
		want  string
		err   string
	}{{
		name: "installer", mode: Installer, serve: "http://192.0.2.1:8080",
		want: "#!ipxe\necho bellbuild: installing node inst-1 (profile inst) from http://192.0.2.1:8080\n" +
			"kernel http://192.0.2.1:8080/boot/52:54:00:00:00:01/kernel initrd=initrd console=ttyS0 bellbuild.node=inst-1 " +
			"bellbuild.install=1 bellbuild.serve=http://192.0.2.1:8080 bellbuild.net=${mac},${ip},${netmask},${gateway}\n" +
			"initrd --name initrd http://192.0.2.1:8080/boot/52:54:00:00:00:01/initrd\nboot\n",
	}, {
		name: "installer without serve's URL", mode: Installer,
		err: "ipxe: node inst-1: installer without serve's HTTP URL",
	}, {
		name: "installed", mode: Local,
		want: "#!ipxe\necho bellbuild: node inst-1 (profile inst) is installed: booting from its disk\n" +
			"iseq ${platform} efi && exit 1 ||\nsanboot --no-describe --drive 0x80\n",
	}} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ScriptFor(&m, mac, "http://192.0.2.1:8080", tt.mode, tt.serve)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v, want %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, string(got)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}
