package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NetSpec is how iPXE configured the NIC the machine booted from, as serve
// passes it on the command line (wire.ParamNet): MAC,IP,NETMASK,GATEWAY.
type NetSpec struct {
	MAC     net.HardwareAddr
	IP      net.IP
	Mask    net.IPMask
	Gateway net.IP // nil: none
}

// ParseNetSpec reads bellbuild.net's value.
func ParseNetSpec(v string) (NetSpec, error) {
	var s NetSpec
	f := strings.Split(v, ",")
	if len(f) != 4 {
		return s, fmt.Errorf("%q: want MAC,IP,NETMASK,GATEWAY", v)
	}
	var err error
	if s.MAC, err = net.ParseMAC(f[0]); err != nil || len(s.MAC) != 6 {
		return s, fmt.Errorf("%q: bad MAC %q", v, f[0])
	}
	if s.IP = net.ParseIP(f[1]).To4(); s.IP == nil {
		return s, fmt.Errorf("%q: bad IPv4 address %q", v, f[1])
	}
	m := net.ParseIP(f[2]).To4()
	if m == nil {
		return s, fmt.Errorf("%q: bad netmask %q", v, f[2])
	}
	if s.Mask = net.IPMask(m); !validMask(s.Mask) {
		return s, fmt.Errorf("%q: bad netmask %q", v, f[2])
	}
	if f[3] != "" {
		if s.Gateway = net.ParseIP(f[3]).To4(); s.Gateway == nil {
			return s, fmt.Errorf("%q: bad gateway %q", v, f[3])
		}
	}
	return s, nil
}

func validMask(m net.IPMask) bool {
	ones, bits := m.Size()
	return bits == 32 && ones > 0
}

// NetUp brings the NIC with s.MAC up with s's address, as iPXE had it
// (the address the DHCP server leased to that MAC), and a default route
// through the gateway when there is one. It waits up to wait for the NIC
// to appear (its driver was just loaded), and returns its name.
func NetUp(s NetSpec, wait time.Duration) (string, error) {
	var ifc *net.Interface
	deadline := time.Now().Add(wait)
	for {
		ifs, _ := net.Interfaces()
		for i := range ifs {
			if ifs[i].HardwareAddr.String() == s.MAC.String() {
				ifc = &ifs[i]
			}
		}
		if ifc != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ifc == nil {
		return "", fmt.Errorf("no network interface has MAC %s", s.MAC)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return ifc.Name, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(ifc.Name)
	if err != nil {
		return ifc.Name, err
	}
	steps := []struct {
		what string
		req  uint
		set  func() error
	}{
		{"address", unix.SIOCSIFADDR, func() error { return ifr.SetInet4Addr(s.IP) }},
		{"netmask", unix.SIOCSIFNETMASK, func() error { return ifr.SetInet4Addr(s.Mask) }},
	}
	for _, st := range steps {
		if err := st.set(); err != nil {
			return ifc.Name, err
		}
		if err := unix.IoctlIfreq(fd, st.req, ifr); err != nil {
			return ifc.Name, fmt.Errorf("%s: setting the %s: %w", ifc.Name, st.what, err)
		}
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return ifc.Name, fmt.Errorf("%s: %w", ifc.Name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return ifc.Name, fmt.Errorf("%s: bringing it up: %w", ifc.Name, err)
	}
	if s.Gateway != nil && !s.Gateway.Equal(s.IP) {
		if err := addDefaultRoute(s.Gateway, ifc.Index); err != nil && !errors.Is(err, unix.EEXIST) {
			return ifc.Name, fmt.Errorf("%s: default route via %s: %w", ifc.Name, s.Gateway, err)
		}
	}
	return ifc.Name, nil
}

// addDefaultRoute adds 0.0.0.0/0 via gw on interface index (rtnetlink).
func addDefaultRoute(gw net.IP, index int) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	attr := func(typ uint16, data []byte) []byte {
		b := make([]byte, unix.SizeofRtAttr+len(data))
		binary.NativeEndian.PutUint16(b[0:], uint16(len(b)))
		binary.NativeEndian.PutUint16(b[2:], typ)
		copy(b[unix.SizeofRtAttr:], data)
		return b
	}
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	rt := unix.RtMsg{Family: unix.AF_INET, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT,
		Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST}
	body := append((*[unix.SizeofRtMsg]byte)(unsafe.Pointer(&rt))[:], attr(unix.RTA_GATEWAY, gw.To4())...)
	body = append(body, attr(unix.RTA_OIF, oif)...)
	hdr := unix.NlMsghdr{Len: uint32(unix.SizeofNlMsghdr + len(body)), Type: unix.RTM_NEWROUTE,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_EXCL | unix.NLM_F_ACK, Seq: 1}
	msg := append((*[unix.SizeofNlMsghdr]byte)(unsafe.Pointer(&hdr))[:], body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	// The answer: one message, an NLMSG_ERROR whose code is 0 for success.
	if n < unix.SizeofNlMsghdr+4 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return errors.New("rtnetlink: unexpected answer")
	}
	if code := int32(binary.NativeEndian.Uint32(buf[unix.SizeofNlMsghdr:])); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}
