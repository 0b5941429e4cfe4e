package firstboot

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Machine is what identifies the running machine when a node is chosen
// from an inventory (see Select): an explicit name, the kernel command
// line, the MACs of its interfaces and its hostname, in that order of
// precedence.
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

// CmdlineParam returns the value of key= on a kernel command line (the
// last one wins, as in the kernel; "" when there is none).
func CmdlineParam(cmdline, key string) string {
	v := ""
	for _, f := range strings.Fields(cmdline) {
		if x, ok := strings.CutPrefix(f, key+"="); ok {
			v = x
		}
	}
	return v
}

// Running says what the machine booted, from /proc/cmdline under root:
// the disk's root slot and its image (bellbuild.slot= and
// bellbuild.image=), both "" for a machine that did not boot a slot.
func Running(root string) (slot, image string) {
	data, err := os.ReadFile(filepath.Join(root, "proc/cmdline"))
	if err != nil {
		return "", ""
	}
	return CmdlineParam(string(data), layout.SlotParam), CmdlineParam(string(data), layout.ImageParam)
}

// ErrNoSuchNode means an explicitly named node is not in the inventory.
var ErrNoSuchNode = errors.New("no such node")

// Inventory is where a machine's configuration is found: a bundle
// (BundleInventory) or a site, which cmd adapts (the applier never reads
// the site model).
type Inventory interface {
	// Node returns the configuration of the node called name, or an error
	// wrapping ErrNoSuchNode when there is none.
	Node(name string) (*nodeconf.Node, error)
	// NodeByMAC returns the name of the node with hardware address mac,
	// or "".
	NodeByMAC(mac net.HardwareAddr) string
	// Default returns the configuration of a machine that is no node of
	// the inventory, known by its host name (which may be "").
	Default(hostname string) (*nodeconf.Node, error)
}

// Select picks this machine's configuration from an inventory: by m.Node,
// else by bellbuild.node= on the command line (either must name a node),
// else by a MAC, else by hostname; with no match, the inventory's default.
// It says how the node was chosen ("--node", "cmdline", "mac aa:bb:..",
// "hostname", "default"). This is the one place that order is written:
// the init, `bellbuild apply` from a bundle and from a site all use it.
func Select(inv Inventory, m Machine) (*nodeconf.Node, string, error) {
	if m.Node != "" {
		n, err := inv.Node(m.Node)
		if err != nil {
			return nil, "", fmt.Errorf("node %q: %w", m.Node, err)
		}
		return n, "--node", nil
	}
	if name := CmdlineNode(m.Cmdline); name != "" {
		n, err := inv.Node(name)
		if err != nil {
			return nil, "", fmt.Errorf("bellbuild.node=%s: %w", name, err)
		}
		return n, "cmdline", nil
	}
	for _, mac := range m.MACs {
		if name := inv.NodeByMAC(mac); name != "" {
			n, err := inv.Node(name)
			if err != nil {
				return nil, "", fmt.Errorf("mac %s: node %q: %w", mac, name, err)
			}
			return n, "mac " + mac.String(), nil
		}
	}
	if m.Hostname != "" {
		n, err := inv.Node(m.Hostname)
		switch {
		case err == nil:
			return n, "hostname", nil
		case !errors.Is(err, ErrNoSuchNode):
			return nil, "", fmt.Errorf("hostname %s: %w", m.Hostname, err)
		}
	}
	n, err := inv.Default(m.Hostname)
	if err != nil {
		return nil, "", err
	}
	return n, "default", nil
}

// BundleInventory is the Inventory of a bundle: its nodes, and its
// default (with the bundle's profile) for any other machine.
func BundleInventory(b *nodeconf.Bundle) Inventory { return bundleInventory{b} }

type bundleInventory struct{ b *nodeconf.Bundle }

func (i bundleInventory) Node(name string) (*nodeconf.Node, error) {
	for k := range i.b.Nodes {
		if i.b.Nodes[k].Node == name {
			return &i.b.Nodes[k], nil
		}
	}
	return nil, fmt.Errorf("%w in the bundle of profile %s", ErrNoSuchNode, i.b.Profile)
}

func (i bundleInventory) NodeByMAC(mac net.HardwareAddr) string {
	for _, n := range i.b.Nodes {
		for _, s := range n.MACs {
			if hw, err := net.ParseMAC(s); err == nil && hw.String() == mac.String() {
				return n.Node
			}
		}
	}
	return ""
}

func (i bundleInventory) Default(string) (*nodeconf.Node, error) {
	d := i.b.Default
	if d.Profile == "" {
		d.Profile = i.b.Profile
	}
	return &d, nil
}
