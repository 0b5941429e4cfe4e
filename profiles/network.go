package profiles

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// SiteFile is the site's own settings file, SITE/site.yaml. It is
// optional; its keys are checked as strictly as a profile's:
//
//	domain: example.org      # the DNS domain of the nodes' certificates
//	network:                 # the boot network `bellbuild serve` serves
//	  server: 192.0.2.1      # the server's own address
//	  subnet: 192.0.2.0/24   # the subnet of its boot interface
//	  pools: [192.0.2.100-192.0.2.199, 198.51.100.10-198.51.100.99/24]
//	pki: {...}               # how the site's PKI issues (PKISettings)
const SiteFile = "site.yaml"

// siteKeys are the keys of site.yaml.
var siteKeys = []string{"domain", "network", "pki"}

// Network is the network machines boot on, as the DHCP server sees it.
// Any part may be unknown (the zero value). A node's fixed address, its
// "ip" label, must be one this network can give it: see CheckNetwork.
type Network struct {
	// Server is the server's own address; ServerPos says where it was
	// set (site.yaml, or Pos{File: "--server-ip"} for a flag).
	Server    netip.Addr
	ServerPos Pos
	// Subnet is the subnet of the server's boot interface: a pool
	// without a prefix lies in it.
	Subnet    netip.Prefix
	SubnetPos Pos
	// Pools are the dynamic pools: addresses leased to any machine.
	Pools []Pool
}

// Pool is a range of addresses that DHCP leases to any machine.
type Pool struct {
	Start, End netip.Addr
	// Subnet holds the range and gives its netmask.
	Subnet netip.Prefix
	// Pos is where the pool was set: site.yaml, or Pos{File: "--pool"}.
	Pos Pos
	// path is its field in site.yaml ("" for a flag).
	path string
}

// String formats p as START-END.
func (p Pool) String() string { return p.Start.String() + "-" + p.End.String() }

// Contains reports whether a is in p's range.
func (p Pool) Contains(a netip.Addr) bool {
	return a.Is4() && !a.Less(p.Start) && !p.End.Less(a)
}

// ErrOutsideSubnet is ParsePool's error (wrapped) for a range that does not
// lie in its subnet, or that has no subnet.
var ErrOutsideSubnet = errors.New("not inside the subnet")

// ParsePool parses a pool, START-END[/PREFIX]: without a prefix the range
// must lie in subnet.
func ParsePool(s string, subnet netip.Prefix) (Pool, error) {
	rs, prefix, hasPrefix := strings.Cut(s, "/")
	a, b, ok := strings.Cut(rs, "-")
	if !ok {
		return Pool{}, fmt.Errorf("range %q: want START-END", rs)
	}
	start, err := netip.ParseAddr(strings.TrimSpace(a))
	if err != nil {
		return Pool{}, fmt.Errorf("range %q: %w", rs, err)
	}
	end, err := netip.ParseAddr(strings.TrimSpace(b))
	if err != nil {
		return Pool{}, fmt.Errorf("range %q: %w", rs, err)
	}
	if !start.Is4() || !end.Is4() || end.Less(start) {
		return Pool{}, fmt.Errorf("range %q: want two IPv4 addresses, the first not after the second", rs)
	}
	p := Pool{Start: start, End: end, Subnet: subnet}
	if hasPrefix {
		sn, err := netip.ParsePrefix(start.String() + "/" + prefix)
		if err != nil {
			return Pool{}, fmt.Errorf("%q: %w", s, err)
		}
		p.Subnet = sn.Masked()
	}
	if !p.Subnet.IsValid() {
		return p, fmt.Errorf("%q: %w (none is known): give its prefix (START-END/24)", s, ErrOutsideSubnet)
	}
	if !p.Subnet.Contains(start) || !p.Subnet.Contains(end) {
		return p, fmt.Errorf("%q: %w %v: give its prefix (START-END/24)", s, ErrOutsideSubnet, p.Subnet)
	}
	return p, nil
}

// Network returns the boot network site.yaml declares, and whether it
// declares one.
func (s *Site) Network() (Network, bool) {
	if s.network == nil {
		return Network{}, false
	}
	n := *s.network
	n.Pools = slices.Clone(n.Pools)
	return n, true
}

// CheckNetwork reports every node whose fixed address (its "ip" label)
// the network n cannot give it: the server's own address, the network or
// broadcast address of its subnet, an address outside every subnet of the
// network, or one inside a dynamic pool (which would lease it to another
// machine, and the node would never boot); and every pool that holds the
// server's address or its subnet's network or broadcast address, or
// overlaps another. Each problem is at the node's ip label (or the pool)
// and names the node and the pool. The error is an ErrorList.
//
// Load runs the same check with the network site.yaml declares; `serve`
// runs it with the network its flags make.
func (s *Site) CheckNetwork(n Network) error {
	var errs ErrorList
	s.checkNetwork(n, &errs)
	return errs.Err()
}

// parseSiteFile reads site.yaml.
func (s *Site) parseSiteFile(root *value, errs *ErrorList) {
	if root.kind == kNull || !expectFileMap(root, errs) {
		return
	}
	top := topKeys{known: siteKeys}
	for _, e := range root.ents {
		switch e.key {
		case "network":
			s.network = parseNetwork(e.val, e.key, errs)
		case "domain":
			s.parseDomain(e.val, e.key, errs)
		case "pki":
			s.parsePKI(e.val, e.key, errs)
		default:
			top.unknown(e, errs)
		}
	}
	top.done(errs)
	s.checkPKI(errs)
}

var networkKeys = []string{"server", "subnet", "pools"}

// parseNetwork reads site.yaml's network (nil when it is null).
func parseNetwork(v *value, path string, errs *ErrorList) *Network {
	if v.kind == kNull || !expectMap(v, path, errs) {
		return nil
	}
	n := &Network{}
	var pools *value
	var poolsPath string
	for _, e := range v.ents {
		fp := joinKey(path, e.key)
		switch e.key {
		case "server":
			text, ok := scalarString(e.val, fp, errs)
			if !ok {
				continue
			}
			a, err := netip.ParseAddr(text)
			if err != nil || !a.Is4() {
				errs.Add(e.val.pos, fp, "%q: want an IPv4 address like 192.0.2.1", text)
				continue
			}
			n.Server, n.ServerPos = a, e.val.pos
		case "subnet":
			text, ok := scalarString(e.val, fp, errs)
			if !ok {
				continue
			}
			p, err := netip.ParsePrefix(text)
			switch {
			case err != nil || !p.Addr().Is4():
				errs.Add(e.val.pos, fp, "%q: want an IPv4 subnet like 192.0.2.0/24", text)
				continue
			case p != p.Masked():
				errs.Add(e.val.pos, fp, "%q has host bits set: the subnet is %v", text, p.Masked())
				continue
			}
			n.Subnet, n.SubnetPos = p, e.val.pos
		case "pools":
			pools, poolsPath = e.val, fp
		default:
			errs.Add(e.kpos, fp, "unknown key %q%s", e.key, suggestList(e.key, networkKeys))
		}
	}
	if n.Server.IsValid() && n.Subnet.IsValid() && !n.Subnet.Contains(n.Server) {
		errs.Add(n.ServerPos, path+".server", "%v is outside the subnet %v (%s)", n.Server, n.Subnet, ref(n.ServerPos, n.SubnetPos))
	}
	if pools == nil || pools.kind == kNull {
		return n
	}
	if pools.kind != kList {
		errs.Add(pools.pos, poolsPath, "expected a list, got %s", pools.describe())
		return n
	}
	for i, it := range pools.items {
		ip := poolsPath + nodeconf.Index(i)
		text, ok := scalarString(it, ip, errs)
		if !ok {
			continue
		}
		p, err := ParsePool(text, n.Subnet)
		switch {
		case errors.Is(err, ErrOutsideSubnet) && !n.Subnet.IsValid():
			errs.Add(it.pos, ip, "%q: give its prefix (START-END/24), or the network's subnet", text)
			continue
		case err != nil:
			errs.Add(it.pos, ip, "%v", err)
			continue
		}
		p.Pos, p.path = it.pos, ip
		n.Pools = append(n.Pools, p)
	}
	return n
}

// parseIP reads the node's "ip" label, text, set at pos.
func (n *node) parseIP(text string, pos Pos, errs *ErrorList) {
	a, err := netip.ParseAddr(text)
	if err != nil || !a.Is4() {
		errs.Add(pos, n.path+".labels.ip", "%q: want an IPv4 address like 192.0.2.10", text)
		return
	}
	if why := notAHost(a); why != "" {
		errs.Add(pos, n.path+".labels.ip", "%v is %s, not a machine's address", a, why)
		return
	}
	n.IP, n.ipAt = a, pos
}

// notAHost says why a cannot be one machine's address anywhere ("" when
// it can be).
func notAHost(a netip.Addr) string {
	switch {
	case a.IsUnspecified():
		return "the unspecified address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the limited broadcast address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsMulticast():
		return "a multicast address"
	}
	return ""
}

// checkAddresses checks the nodes' fixed addresses: two nodes never have
// one, and when site.yaml declares the boot network, each is one it can
// give.
func (s *Site) checkAddresses(errs *ErrorList) {
	var withIP []*node
	for _, n := range s.nodes {
		if n.IP.IsValid() {
			withIP = append(withIP, n)
		}
	}
	slices.SortFunc(withIP, func(a, b *node) int { return comparePos(a.ipAt, b.ipAt) })
	first := map[netip.Addr]*node{}
	for _, n := range withIP {
		if f, dup := first[n.IP]; dup {
			errs.Add(n.ipAt, n.path+".labels.ip", "node %q: %v is also the address of node %q (line %d)", n.Name, n.IP, f.Name, f.ipAt.Line)
			continue
		}
		first[n.IP] = n
	}
	if s.network != nil {
		s.checkNetwork(*s.network, errs)
	}
}

func (s *Site) checkNetwork(nw Network, errs *ErrorList) {
	// The subnets served: the boot interface's and every pool's.
	var subnets []netip.Prefix
	if nw.Subnet.IsValid() {
		subnets = append(subnets, nw.Subnet)
	}
	for _, p := range nw.Pools {
		if !slices.Contains(subnets, p.Subnet) {
			subnets = append(subnets, p.Subnet)
		}
	}
	for i, p := range nw.Pools {
		if nw.Server.IsValid() && p.Contains(nw.Server) {
			errs.Add(p.Pos, p.path, "pool %v holds the server's own address %v (%s)", p, nw.Server, ref(p.Pos, nw.ServerPos))
		}
		if a, what := edgeOf(p.Subnet, p.Start, p.End); what != "" {
			errs.Add(p.Pos, p.path, "pool %v holds %v, the %s address of %v", p, a, what, p.Subnet)
		}
		for _, q := range nw.Pools[:i] {
			if !p.End.Less(q.Start) && !q.End.Less(p.Start) {
				errs.Add(p.Pos, p.path, "pool %v overlaps pool %v (%s)", p, q, ref(p.Pos, q.Pos))
			}
		}
	}
	for _, n := range s.nodes {
		if !n.IP.IsValid() {
			continue
		}
		at, path := n.ipAt, n.path+".labels.ip"
		if nw.Server.IsValid() && n.IP == nw.Server {
			errs.Add(at, path, "node %q: %v is the server's own address (%s)", n.Name, n.IP, ref(at, nw.ServerPos))
		}
		in := false
		for _, sn := range subnets {
			if !sn.Contains(n.IP) {
				continue
			}
			in = true
			if _, what := edgeOf(sn, n.IP, n.IP); what != "" {
				errs.Add(at, path, "node %q: %v is the %s address of %v", n.Name, n.IP, what, sn)
			}
		}
		if !in && len(subnets) > 0 {
			list := make([]string, len(subnets))
			for i, sn := range subnets {
				list[i] = sn.String()
			}
			errs.Add(at, path, "node %q: %v is outside every subnet of the boot network (%s): DHCP cannot give it", n.Name, n.IP, strings.Join(list, ", "))
		}
		for _, p := range nw.Pools {
			if p.Contains(n.IP) {
				errs.Add(at, path, "node %q: %v is inside the dynamic pool %v (%s), which may lease it to another machine", n.Name, n.IP, p, ref(at, p.Pos))
			}
		}
	}
}

// edgeOf returns the first of subnet's own network and broadcast
// addresses that lies in [lo, hi], and which it is ("network" or
// "broadcast"; "" when neither does: /31 and /32 have none).
func edgeOf(subnet netip.Prefix, lo, hi netip.Addr) (netip.Addr, string) {
	if subnet.Bits() > 30 {
		return netip.Addr{}, ""
	}
	network := subnet.Masked().Addr()
	b := network.As4()
	host := uint32(1)<<(32-subnet.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	bcast := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	in := func(a netip.Addr) bool { return !a.Less(lo) && !hi.Less(a) }
	switch {
	case in(network):
		return network, "network"
	case in(bcast):
		return bcast, "broadcast"
	}
	return netip.Addr{}, ""
}
