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
	return ScriptFor(m, mac, base, Network, "")
}

// Mode is what a script boots.
type Mode int

const (
	// Network boots the machine's kernel and initramfs (Script).
	Network Mode = iota
	// Installer boots the same kernel and initramfs into the installer:
	// the command line adds bellbuild.install=1, serve's URL
	// (bellbuild.serve=) and the NIC's settings as iPXE has them
	// (bellbuild.net=), for the installer to reach serve.
	Installer
	// Local boots from the machine's own disk: under UEFI iPXE exits to
	// the firmware's next boot entry, under BIOS it boots drive 0x80.
	Local
)

// Kernel command line parameters of the installer (images/layout's, which
// serve does not import).
const (
	InstallParam = "bellbuild.install"
	ServeParam   = "bellbuild.serve"
	NetParam     = "bellbuild.net"
	// NetFromIPXE is NetParam's value in a script: iPXE fills in the
	// booting NIC's MAC, address, netmask and gateway.
	NetFromIPXE = "${mac},${ip},${netmask},${gateway}"
)

// ScriptFor renders m's boot script in mode; serve is serve's HTTP URL,
// which the installer reaches it at.
func ScriptFor(m *node.Machine, mac net.HardwareAddr, base string, mode Mode, serve string) ([]byte, error) {
	if strings.ContainsFunc(m.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) {
		return nil, fmt.Errorf("ipxe: node name %q: want letters, digits, '-', '_' or '.'", m.Name)
	}
	if mode == Local {
		var b bytes.Buffer
		fmt.Fprintf(&b, "#!ipxe\n")
		fmt.Fprintf(&b, "echo bellbuild: node %s (profile %s) is installed: booting from its disk\n", m.Name, m.Profile)
		fmt.Fprintf(&b, "iseq ${platform} efi && exit 1 ||\n")
		fmt.Fprintf(&b, "sanboot --no-describe --drive 0x80\n")
		return b.Bytes(), nil
	}
	if m.Kernel == "" || m.Initrd == "" {
		return nil, fmt.Errorf("ipxe: node %s: no kernel or initramfs to boot", m.Name)
	}
	if mode == Installer && (serve == "" || strings.ContainsAny(serve, " \r\n\t")) {
		return nil, fmt.Errorf("ipxe: node %s: installer without serve's HTTP URL", m.Name)
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
	what := "booting"
	if mode == Installer {
		cmdline += " " + InstallParam + "=1 " + ServeParam + "=" + serve + " " + NetParam + "=" + NetFromIPXE
		what = "installing"
	}
	cmdline = strings.Join(strings.Fields(cmdline), " ")
	var b bytes.Buffer
	fmt.Fprintf(&b, "#!ipxe\n")
	fmt.Fprintf(&b, "echo bellbuild: %s %s (profile %s) from %s\n", what, who, m.Profile, base)
	fmt.Fprintf(&b, "kernel %s/%s %s\n", base, KernelPath(mac), strings.TrimSpace("initrd=initrd "+cmdline))
	fmt.Fprintf(&b, "initrd --name initrd %s/%s\n", base, InitrdPath(mac))
	fmt.Fprintf(&b, "boot\n")
	return b.Bytes(), nil
}
