// Package node is the vocabulary every part of the PXE server shares: the
// Machine a MAC address boots as, and the Backend that answers for it.
// The serve command adapts the site inventory to Backend; package pxe and
// its servers never read the site model themselves.
package node

import (
	"context"
	"errors"
	"net"
	"os"
)

// ErrUnknown is returned by a Backend for a MAC address that must not
// boot: not in the inventory, and no default profile configured.
var ErrUnknown = errors.New("unknown machine")

// Machine is what one MAC address boots.
type Machine struct {
	// Name is the node's inventory name; it goes on the kernel command line
	// as bellbuild.node=NAME.
	Name string
	// Profile is the profile whose artifacts the machine boots.
	Profile string
	// IP is the machine's reserved address; nil means "from a pool".
	IP net.IP
	// Kernel and Initrd are artifact paths relative to the server's
	// artifacts directory (e.g. "worker/vmlinuz"). They are opened through
	// an os.Root, so they cannot leave that directory.
	Kernel, Initrd string
	// Cmdline is the profile's kernel command line, without
	// bellbuild.node= (the server adds it).
	Cmdline string
	// Arch is the architecture of the image the machine boots ("amd64",
	// "arm64"; "" is amd64): DHCP gives a client whose firmware says
	// another one (option 93) nothing to boot.
	Arch string
	// Files are the node's own files (its configuration and anything secret
	// in it): a name a client asks for (no slashes) → a path relative to
	// the node's own directory, FILES/NAME/ in the server's files
	// directory. They are served only to the address leased to this
	// machine's MAC, and never from outside that directory.
	Files map[string]string
	// Enrol is how the node's key is approved when it enrols (package
	// pxe/enrol); the zero value is manual approval.
	Enrol Enrol
	// Install says the node installs itself onto its disk: until serve
	// has recorded its install it boots the installer (the same kernel
	// and initramfs, with bellbuild.install=1), then from its disk.
	Install bool
	// Image is the image the node installs and upgrades to (nil: none).
	Image *Image
	// Bake, when set, holds the files of the bake the machine boots,
	// open: Kernel, Initrd and Image's files are opened through it, so
	// that whatever is baked since, they are those of the bake Cmdline
	// and Image name. Without it they are opened by name.
	Bake Bake
}

// Bake opens the files of one bake of a profile (package pxe/bakes).
type Bake interface {
	// Open opens name, a path relative to the artifacts directory
	// ("worker/vmlinuz"), anew: a file of its own, of this bake. A name
	// the bake does not hold wraps fs.ErrNotExist.
	Open(name string) (*os.File, error)
}

// Image is a bake's files, as artifact paths (like Kernel): what serve
// hands out under /image/MAC/ (package pxe/install/wire).
type Image struct {
	// Manifest is manifest.json, Disk disk.raw (the root image is the
	// manifest's range of it), Kernel vmlinuz, Initrd the ESP's
	// initramfs (disk-initrd.cpio.zst).
	Manifest, Disk, Kernel, Initrd string
}

// Enrolment policies (Enrol.Policy).
const (
	// EnrolManual: an operator approves each key (bellbuild node approve).
	EnrolManual = "manual"
	// EnrolFirstKey: the first key seen for the node is approved and
	// pinned (trust on first use, for labs).
	EnrolFirstKey = "first-key"
	// EnrolPinned: only the key with fingerprint Enrol.Pinned is approved.
	EnrolPinned = "pinned"
)

// Enrol is a node's enrolment policy.
type Enrol struct {
	// Policy is EnrolManual ("" too), EnrolFirstKey or EnrolPinned.
	Policy string
	// Pinned is the fingerprint EnrolPinned approves.
	Pinned string
}

// Backend tells the servers what a MAC address boots.
type Backend interface {
	// Lookup returns the machine for mac, or an error wrapping ErrUnknown.
	Lookup(ctx context.Context, mac net.HardwareAddr) (*Machine, error)
}

// BackendFunc adapts a function to Backend.
type BackendFunc func(ctx context.Context, mac net.HardwareAddr) (*Machine, error)

// Lookup calls f.
func (f BackendFunc) Lookup(ctx context.Context, mac net.HardwareAddr) (*Machine, error) {
	return f(ctx, mac)
}

// Static is a Backend over a fixed map keyed by lower-case,
// colon-separated MAC address (net.HardwareAddr.String()).
type Static map[string]*Machine

// Lookup returns s[mac] or ErrUnknown.
func (s Static) Lookup(_ context.Context, mac net.HardwareAddr) (*Machine, error) {
	if m, ok := s[mac.String()]; ok {
		return m, nil
	}
	return nil, ErrUnknown
}
