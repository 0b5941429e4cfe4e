package dhcp

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// Listen opens the server's UDP socket on addr (usually 0.0.0.0:67),
// bound to the interface ifname when it is not empty (SO_BINDTODEVICE: a
// server on 0.0.0.0 then hears only that interface's broadcasts and its
// broadcast replies leave through it). Unlike server4's socket it sets
// neither SO_REUSEPORT nor SO_REUSEADDR (either lets a second UDP socket
// bind the same port on Linux), so a second server on the same port fails
// to start instead of silently stealing packets.
func Listen(ifname string, addr netip.AddrPort) (net.PacketConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("dhcp: socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "dhcp")
	defer f.Close() // FilePacketConn dups it
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
		return nil, fmt.Errorf("dhcp: SO_BROADCAST: %w", err)
	}
	if ifname != "" {
		if err := unix.BindToDevice(fd, ifname); err != nil {
			return nil, fmt.Errorf("dhcp: binding to interface %s: %w", ifname, err)
		}
	}
	// Room for a burst of thousands of requests while workers catch up.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	sa := &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("dhcp: bind %s: %w", addr, err)
	}
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("dhcp: %w", err)
	}
	return c, nil
}
