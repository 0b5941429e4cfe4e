// Package grub renders the GRUB configuration that network-boots one
// arm64 UEFI machine.
//
// Debian ships no iPXE for arm64, but it ships GRUB's network EFI image,
// grubnetaa64.efi (package grub-efi-arm64-bin), monolithic: efinet, tftp,
// linux and normal are built in. The firmware's PXE fetches it over TFTP
// (DHCP option 93 = 11); it takes its address and server from the
// firmware's DHCP exchange and reads $prefix/grub.cfg, its prefix being
// "/grub" on the TFTP server it came from. The server answers that name
// with the configuration of the machine the asking address is leased to
// (TFTP carries no MAC), which boots the kernel and the initramfs over
// TFTP with the node's command line, bellbuild.node=NAME included — what
// an iPXE script does for x86 (package ipxe).
package grub

import (
	"bytes"
	"fmt"
	"net"
	"strings"

	"github.com/bellbuild/bellbuild/pxe/ipxe"
	"github.com/bellbuild/bellbuild/pxe/node"
)

// Loader is the name firmware fetches GRUB by (DHCP's boot file).
const Loader = "grubnetaa64.efi"

// ConfigPath is the configuration GRUB reads, relative to the TFTP
// server's root (its prefix /grub, then grub.cfg); ProbePath is the
// per-platform one it looks for first (and which is never there).
const (
	ConfigPath = "grub/grub.cfg"
	ProbePath  = "grub/arm64-efi/grub.cfg"
)

// Config renders m's GRUB configuration for mac: the kernel and the
// initramfs fetched from the TFTP server at server (an IPv4 address), the
// command line naming the node (unless m has none). Names, and command
// line arguments GRUB's script language would not pass through as they
// are, are refused.
func Config(m *node.Machine, mac net.HardwareAddr, server string) ([]byte, error) {
	if strings.ContainsFunc(m.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) {
		return nil, fmt.Errorf("grub: node name %q: want letters, digits, '-', '_' or '.'", m.Name)
	}
	if ip := net.ParseIP(server); ip == nil || ip.To4() == nil {
		return nil, fmt.Errorf("grub: server %q is not an IPv4 address", server)
	}
	if m.Kernel == "" || m.Initrd == "" {
		return nil, fmt.Errorf("grub: node %s: no kernel or initramfs to boot", m.Name)
	}
	args := strings.Fields(m.Cmdline)
	who := "a machine not in the inventory"
	if m.Name != "" {
		args = append(args, ipxe.NodeParam+"="+m.Name)
		who = "node " + m.Name
	}
	for i, a := range args {
		q, err := quote(a)
		if err != nil {
			return nil, fmt.Errorf("grub: node %s: kernel argument %q: %w", m.Name, a, err)
		}
		args[i] = q
	}
	dev := "(tftp," + server + ")/"
	var b bytes.Buffer
	fmt.Fprintf(&b, "# bellbuild: %s, profile %s\n", who, m.Profile)
	fmt.Fprintf(&b, "set timeout=0\n")
	fmt.Fprintf(&b, "echo 'bellbuild: booting %s (profile %s) from tftp://%s'\n", who, m.Profile, server)
	fmt.Fprintf(&b, "linux %s%s %s\n", dev, ipxe.KernelPath(mac), strings.Join(args, " "))
	fmt.Fprintf(&b, "initrd %s%s\n", dev, ipxe.InitrdPath(mac))
	fmt.Fprintf(&b, "boot\n")
	return b.Bytes(), nil
}

// quote returns a kernel argument as one word of GRUB's script language:
// as it is when it holds only characters that are never special, else in
// single quotes (which GRUB takes literally). A single quote or a control
// character cannot be passed.
func quote(a string) (string, error) {
	plain := true
	for _, r := range a {
		switch {
		case r < ' ' || r == 0x7f || r == '\'':
			return "", fmt.Errorf("cannot be passed through GRUB")
		case r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.,:/=+@%", r):
		default:
			plain = false
		}
	}
	if plain {
		return a, nil
	}
	return "'" + a + "'", nil
}
