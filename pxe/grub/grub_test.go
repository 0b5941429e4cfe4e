package grub

import (
	"net"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/pxe/node"
)

func TestConfig(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:00:00:a1")
	tests := []struct {
		name string
		m    node.Machine
		want string
		err  string
	}{{
		name: "node",
		m:    node.Machine{Name: "arm-1", Profile: "demo-arm64", Kernel: "demo-arm64/vmlinuz", Initrd: "demo-arm64/initramfs.cpio.zst", Cmdline: " console=ttyAMA0  quiet "},
		want: "# bellbuild: node arm-1, profile demo-arm64\nset timeout=0\n" +
			"echo 'bellbuild: booting node arm-1 (profile demo-arm64) from tftp://192.0.2.1'\n" +
			"linux (tftp,192.0.2.1)/boot/52:54:00:00:00:a1/kernel console=ttyAMA0 quiet bellbuild.node=arm-1\n" +
			"initrd (tftp,192.0.2.1)/boot/52:54:00:00:00:a1/initrd\nboot\n",
	}, {
		name: "default profile, an argument to quote",
		m:    node.Machine{Profile: "p", Kernel: "p/vmlinuz", Initrd: "p/initramfs.cpio.zst", Cmdline: "console=ttyAMA0 x=$y;z"},
		want: "# bellbuild: a machine not in the inventory, profile p\nset timeout=0\n" +
			"echo 'bellbuild: booting a machine not in the inventory (profile p) from tftp://192.0.2.1'\n" +
			"linux (tftp,192.0.2.1)/boot/52:54:00:00:00:a1/kernel console=ttyAMA0 'x=$y;z'\n" +
			"initrd (tftp,192.0.2.1)/boot/52:54:00:00:00:a1/initrd\nboot\n",
	}, {
		name: "a quote in an argument",
		m:    node.Machine{Name: "n", Kernel: "k", Initrd: "i", Cmdline: "a='b'"},
		err:  `grub: node n: kernel argument "a='b'": cannot be passed through GRUB`,
	}, {
		name: "a name that would break out",
		m:    node.Machine{Name: "n'; reboot", Kernel: "k", Initrd: "i"},
		err:  "grub: node name \"n'; reboot\": want letters, digits, '-', '_' or '.'",
	}, {
		name: "nothing to boot",
		m:    node.Machine{Name: "n"},
		err:  "grub: node n: no kernel or initramfs to boot",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Config(&tc.m, mac, "192.0.2.1")
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	if _, err := Config(&node.Machine{Name: "n", Kernel: "k", Initrd: "i"}, mac, "tftp://x"); err == nil || !strings.Contains(err.Error(), "not an IPv4 address") {
		t.Errorf("a server that is not an address: %v", err)
	}
}
