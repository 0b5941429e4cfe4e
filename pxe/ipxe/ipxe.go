// Package ipxe renders the iPXE boot script of one machine.
package ipxe

import (
	"bytes"
	"fmt"
	"net"
	"strings"

	"github.com/bellbuild/bellbuild/pxe/node"
)

// NodeParam is the kernel command line parameter that names the node (the
// image's init reads it).
const NodeParam = "bellbuild.node"

// KernelPath and InitrdPath are where the servers (HTTP and TFTP alike)
// serve mac's kernel and initramfs, relative to their root.
func KernelPath(mac net.HardwareAddr) string { return "boot/" + mac.String() + "/kernel" }

// InitrdPath: see KernelPath.
func InitrdPath(mac net.HardwareAddr) string { return "boot/" + mac.String() + "/initrd" }

// Script renders m's boot script for mac, fetching the kernel and the
// initramfs from base ("http://192.0.2.1:8080" or "tftp://192.0.2.1"). The
// command line names the node (bellbuild.node=NAME) unless m has no name (a
// machine booting a default profile: its init picks the node by MAC, else
// the profile's defaults). The initramfs is named, and named on the command
// line, so that UEFI's kernel stub finds it too. Names and command lines
// that could break out of their line are refused.
func Script(m *node.Machine, mac net.HardwareAddr, base string) ([]byte, error) {
	if strings.ContainsFunc(m.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) {
		return nil, fmt.Errorf("ipxe: node name %q: want letters, digits, '-', '_' or '.'", m.Name)
	}
	if m.Kernel == "" || m.Initrd == "" {
		return nil, fmt.Errorf("ipxe: node %s: no kernel or initramfs to boot", m.Name)
	}
	if strings.ContainsAny(m.Cmdline, "\r\n") {
		return nil, fmt.Errorf("ipxe: node %s: command line has a line break", m.Name)
	}
	base = strings.TrimSuffix(base, "/")
	cmdline, who := m.Cmdline, "a machine not in the inventory"
	if m.Name != "" {
		cmdline += " " + NodeParam + "=" + m.Name
		who = "node " + m.Name
	}
	cmdline = strings.Join(strings.Fields(cmdline), " ")
	var b bytes.Buffer
	fmt.Fprintf(&b, "#!ipxe\n")
	fmt.Fprintf(&b, "echo bellbuild: booting %s (profile %s) from %s\n", who, m.Profile, base)
	fmt.Fprintf(&b, "kernel %s/%s %s\n", base, KernelPath(mac), strings.TrimSpace("initrd=initrd "+cmdline))
	fmt.Fprintf(&b, "initrd --name initrd %s/%s\n", base, InitrdPath(mac))
	fmt.Fprintf(&b, "boot\n")
	return b.Bytes(), nil
}
