package firstboot

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Machine is what identifies the running machine when a node is chosen
// from a bundle: an explicit name, the kernel command line, the MACs of its
// interfaces and its hostname, in that order of precedence.
type Machine struct {
	// Node is an explicit node name (--node); it must exist.
	Node string
	// Cmdline is the kernel command line; "bellbuild.node=NAME" names the node.
	Cmdline string
	// MACs are the machine's hardware addresses.
	MACs []net.HardwareAddr
	// Hostname is the machine's host name.
	Hostname string
}

// ThisMachine describes the running machine: /proc/cmdline, the MACs of
// its interfaces and its hostname. Missing pieces are left empty.
func ThisMachine() Machine {
	var m Machine
	if data, err := os.ReadFile("/proc/cmdline"); err == nil {
		m.Cmdline = strings.TrimSpace(string(data))
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if len(i.HardwareAddr) > 0 && i.Flags&net.FlagLoopback == 0 {
				m.MACs = append(m.MACs, i.HardwareAddr)
			}
		}
	}
	m.Hostname, _ = os.Hostname()
	return m
}

// CmdlineNode returns the value of bellbuild.node= on a kernel command line.
func CmdlineNode(cmdline string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "bellbuild.node="); ok {
			return v
		}
	}
	return ""
}

// ErrNoSuchNode means an explicitly named node is not in the bundle.
var ErrNoSuchNode = errors.New("no such node")

// SelectNode picks this machine's configuration from a bundle: by
// m.Node, else by bellbuild.node= on the command line, else by a MAC,
// else by hostname; with no match, the bundle's default. It says how the
// node was chosen ("--node", "cmdline", "mac aa:bb:..", "hostname",
// "default").
func SelectNode(b *nodeconf.Bundle, m Machine) (*nodeconf.Node, string, error) {
	byName := func(name string) *nodeconf.Node {
		for i := range b.Nodes {
			if b.Nodes[i].Node == name {
				return &b.Nodes[i]
			}
		}
		return nil
	}
	if m.Node != "" {
		if n := byName(m.Node); n != nil {
			return n, "--node", nil
		}
		return nil, "", fmt.Errorf("node %q: %w in the bundle of profile %s", m.Node, ErrNoSuchNode, b.Profile)
	}
	if name := CmdlineNode(m.Cmdline); name != "" {
		if n := byName(name); n != nil {
			return n, "cmdline", nil
		}
		return nil, "", fmt.Errorf("bellbuild.node=%s: %w in the bundle of profile %s", name, ErrNoSuchNode, b.Profile)
	}
	for _, mac := range m.MACs {
		for i := range b.Nodes {
			for _, s := range b.Nodes[i].MACs {
				if hw, err := net.ParseMAC(s); err == nil && hw.String() == mac.String() {
					return &b.Nodes[i], "mac " + mac.String(), nil
				}
			}
		}
	}
	if m.Hostname != "" {
		if n := byName(m.Hostname); n != nil {
			return n, "hostname", nil
		}
	}
	d := b.Default
	if d.Profile == "" {
		d.Profile = b.Profile
	}
	return &d, "default", nil
}
