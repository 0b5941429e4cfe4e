// Package catalog decides what a network-booting client may read, for the
// TFTP and HTTP servers alike, and opens it. Its name space is small and
// fixed:
//
//	NAME              a loader (undionly.kpxe, ipxe.efi, snponly.efi; grubnetaa64.efi)
//	ipxe/MAC          MAC's boot script
//	grub/grub.cfg     the GRUB configuration of the asking machine (arm64)
//	boot/MAC/kernel   the kernel MAC boots
//	boot/MAC/initrd   the initramfs MAC boots
//	files/NAME        the asking machine's own file NAME
//	image/MAC/FILE    the image MAC installs and upgrades to: manifest.json,
//	                  disk, root (a range of disk), kernel, initrd
//
// Every name is checked before anything is opened (no "..", no absolute
// path, nothing unclean), artifacts and node files are opened through an
// os.Root (a symlink cannot lead out of their directory; a node's files
// not even out of FILES/NODE/), only regular files are served, and a node's
// files are served only to the address currently leased to that node's MAC.
// A machine's artifacts come from its Bake when it has one (package
// pxe/bakes: the files of the bake its script names, held open), so one
// request never mixes two bakes.
package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/pxe/grub"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/pxe/ipxe"
	"github.com/bellbuild/bellbuild/pxe/metrics"
	"github.com/bellbuild/bellbuild/pxe/node"
)

// Errors of Open, beside fs.ErrNotExist.
var (
	// ErrBadName is a name that is not clean and relative (wraps fs.ErrInvalid).
	ErrBadName = fmt.Errorf("bad file name: %w", fs.ErrInvalid)
	// ErrForbidden is a node file asked for from an address that is not
	// leased to that node (wraps fs.ErrPermission).
	ErrForbidden = fmt.Errorf("not leased to this node: %w", fs.ErrPermission)
)

// Owners maps a client's address to the MAC address it is leased to.
type Owners interface {
	MACFor(ip netip.Addr) (net.HardwareAddr, bool)
}

// Config says where the files are.
type Config struct {
	// Loaders maps a loader's name to its path (trusted: the operator's).
	Loaders map[string]string
	// Artifacts is the directory Machine.Kernel and Machine.Initrd are
	// relative to; Files the one Machine.Files are relative to.
	Artifacts, Files string
	// Cmdline is appended to every machine's kernel command line (the
	// enrolment endpoint's parameters).
	Cmdline string
	// Installs says which nodes are installed on their disks (nil: none
	// is); ServeURL is serve's HTTP URL, which an installer reaches it
	// at.
	Installs Installs
	ServeURL string
}

// Installs says whether a node is installed on its disk.
type Installs interface {
	Installed(ctx context.Context, node string) (bool, error)
}

// Catalog opens what clients ask for. It is safe for concurrent use.
type Catalog struct {
	loaders   map[string]string
	artifacts *os.Root
	files     *os.Root
	backend   node.Backend
	owners    Owners
	cmdline   string
	installs  Installs
	serveURL  string
}

// New opens the directories of cfg. owners may be nil (then no node file is
// ever served).
func New(cfg Config, b node.Backend, owners Owners) (*Catalog, error) {
	c := &Catalog{loaders: cfg.Loaders, backend: b, owners: owners, cmdline: cfg.Cmdline, installs: cfg.Installs, serveURL: cfg.ServeURL}
	var err error
	if cfg.Artifacts != "" {
		if c.artifacts, err = os.OpenRoot(cfg.Artifacts); err != nil {
			return nil, fmt.Errorf("catalog: artifacts: %w", err)
		}
	}
	if cfg.Files != "" {
		if c.files, err = os.OpenRoot(cfg.Files); err != nil {
			c.Close()
			return nil, fmt.Errorf("catalog: node files: %w", err)
		}
	}
	return c, nil
}

// Close releases the directories.
func (c *Catalog) Close() error {
	if c.artifacts != nil {
		c.artifacts.Close()
	}
	if c.files != nil {
		c.files.Close()
	}
	return nil
}

// File is an open file for one client.
type File struct {
	io.ReadSeeker
	io.Closer
	Size    int64
	ModTime time.Time
	// Phase is the boot phase serving this file marks.
	Phase metrics.Phase
	// MAC and Node say whose it is (empty for loaders).
	MAC  net.HardwareAddr
	Node string
	// Mode is what a script boots: network, installer or local-disk.
	Mode string
}

// Open opens name for a client at from. Scripts fetch the kernel and
// initramfs from scriptBase (e.g. "tftp://192.0.2.1").
func (c *Catalog) Open(ctx context.Context, name string, from netip.Addr, scriptBase string) (*File, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	dir, rest, _ := strings.Cut(name, "/")
	if rest == "" {
		p, ok := c.loaders[name]
		if !ok {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		return regular(f, metrics.PhaseLoader, nil, "")
	}
	switch dir {
	case "ipxe":
		mac, err := net.ParseMAC(rest)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
		return c.Script(ctx, mac, scriptBase)
	case "grub":
		if name != grub.ConfigPath {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
		return c.grubConfig(ctx, from, scriptBase)
	case "boot":
		m, what, _ := strings.Cut(rest, "/")
		mac, err := net.ParseMAC(m)
		if err != nil || what != "kernel" && what != "initrd" {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
		mach, err := c.lookup(ctx, mac)
		if err != nil {
			return nil, err
		}
		p, phase := mach.Kernel, metrics.PhaseKernel
		if what == "initrd" {
			p, phase = mach.Initrd, metrics.PhaseInitrd
		}
		if p == "" {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
		f, err := c.artifact(mach, p)
		if err != nil {
			return nil, refused(err)
		}
		return regular(f, phase, mac, mach.Name)
	case "image":
		return c.image(ctx, name, rest)
	case "files":
		if strings.Contains(rest, "/") {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
		if c.owners == nil || c.files == nil {
			return nil, fmt.Errorf("%s: %w", name, ErrForbidden)
		}
		mac, ok := c.owners.MACFor(from)
		if !ok {
			return nil, fmt.Errorf("%s from %s: %w", name, from, ErrForbidden)
		}
		mach, err := c.lookup(ctx, mac)
		if err != nil {
			return nil, err
		}
		p, ok := mach.Files[rest]
		if !ok {
			return nil, fmt.Errorf("%s for node %s: %w", name, mach.Name, fs.ErrNotExist)
		}
		// Each node's files are confined to its own directory: a link
		// there cannot reach another node's.
		own, err := c.files.OpenRoot(mach.Name)
		if err != nil {
			return nil, refused(err)
		}
		defer own.Close()
		f, err := own.Open(p)
		if err != nil {
			return nil, refused(err)
		}
		return regular(f, metrics.PhaseFile, mac, mach.Name)
	}
	return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
}

// Script renders mac's boot script, fetching from base.
func (c *Catalog) Script(ctx context.Context, mac net.HardwareAddr, base string) (*File, error) {
	mach, err := c.lookup(ctx, mac)
	if err != nil {
		return nil, err
	}
	if c.cmdline != "" {
		m := *mach
		m.Cmdline += " " + c.cmdline
		mach = &m
	}
	mode := ipxe.Network
	if mach.Install && mach.Name != "" {
		mode = ipxe.Installer
		if c.installs != nil {
			done, err := c.installs.Installed(ctx, mach.Name)
			if err != nil {
				return nil, err
			}
			if done {
				mode = ipxe.Local
			}
		}
	}
	b, err := ipxe.ScriptFor(mach, mac, base, mode, c.serveURL)
	if err != nil {
		return nil, err
	}
	return &File{ReadSeeker: bytes.NewReader(b), Closer: io.NopCloser(nil), Size: int64(len(b)),
		Phase: metrics.PhaseScript, MAC: mac, Node: mach.Name, Mode: modeNames[mode]}, nil
}

var modeNames = map[ipxe.Mode]string{ipxe.Network: "network", ipxe.Installer: "installer", ipxe.Local: "local-disk"}

// image opens FILE of image/MAC/FILE: a file of the image MAC installs and
// upgrades to; root is the manifest's range of disk.raw.
func (c *Catalog) image(ctx context.Context, name, rest string) (*File, error) {
	m, what, _ := strings.Cut(rest, "/")
	mac, err := net.ParseMAC(m)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	mach, err := c.lookup(ctx, mac)
	if err != nil {
		return nil, err
	}
	im := mach.Image
	if im == nil || c.artifacts == nil && mach.Bake == nil {
		return nil, fmt.Errorf("%s: node %s has no image: %w", name, mach.Name, fs.ErrNotExist)
	}
	p := map[string]string{wire.Manifest: im.Manifest, wire.Disk: im.Disk, wire.Root: im.Disk, wire.Kernel: im.Kernel, wire.Initrd: im.Initrd}[what]
	if p == "" {
		return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	f, err := c.artifact(mach, p)
	if err != nil {
		return nil, refused(err)
	}
	file, err := regular(f, metrics.PhaseImage, mac, mach.Name)
	if err != nil || what != wire.Root {
		return file, err
	}
	// The root image: the range of disk.raw the manifest names (the
	// manifest of the same bake, with mach.Bake).
	data, err := c.readArtifact(mach, im.Manifest)
	if err != nil {
		file.Close()
		return nil, refused(err)
	}
	var man wire.ImageManifest
	if err := json.Unmarshal(data, &man); err != nil || man.Check() != nil || man.Disk.Root.Offset+man.Disk.Root.Size > file.Size {
		file.Close()
		return nil, fmt.Errorf("%s: the manifest names no root image in the disk: %w", name, fs.ErrNotExist)
	}
	file.ReadSeeker, file.Size = io.NewSectionReader(f, man.Disk.Root.Offset, man.Disk.Root.Size), man.Disk.Root.Size
	return file, nil
}

// artifact opens p, a path relative to the artifacts directory, of the
// bake mach boots: through mach.Bake when it holds one, else by name.
func (c *Catalog) artifact(mach *node.Machine, p string) (*os.File, error) {
	if mach.Bake != nil {
		return mach.Bake.Open(p)
	}
	if c.artifacts == nil {
		return nil, fmt.Errorf("%s: no artifacts directory: %w", p, fs.ErrNotExist)
	}
	return c.artifacts.Open(p)
}

// readArtifact reads a small artifact (a manifest) whole.
func (c *Catalog) readArtifact(mach *node.Machine, p string) ([]byte, error) {
	f, err := c.artifact(mach, p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

// grubConfig renders the GRUB configuration of the machine the address
// from is leased to (GRUB asks for one fixed name; TFTP carries no MAC),
// fetching the kernel and the initramfs from the TFTP server of base
// ("tftp://192.0.2.1").
func (c *Catalog) grubConfig(ctx context.Context, from netip.Addr, base string) (*File, error) {
	if c.owners == nil {
		return nil, fmt.Errorf("%s: %w", grub.ConfigPath, ErrForbidden)
	}
	mac, ok := c.owners.MACFor(from)
	if !ok {
		return nil, fmt.Errorf("%s from %s: %w", grub.ConfigPath, from, ErrForbidden)
	}
	mach, err := c.lookup(ctx, mac)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(base)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("%s: no server address in %q", grub.ConfigPath, base)
	}
	b, err := grub.Config(mach, mac, u.Hostname())
	if err != nil {
		return nil, err
	}
	return &File{ReadSeeker: bytes.NewReader(b), Closer: io.NopCloser(nil), Size: int64(len(b)),
		Phase: metrics.PhaseGrub, MAC: mac, Node: mach.Name}, nil
}

// Lookup returns the machine mac boots (an error wrapping fs.ErrNotExist
// for an unknown one).
func (c *Catalog) lookup(ctx context.Context, mac net.HardwareAddr) (*node.Machine, error) {
	m, err := c.backend.Lookup(ctx, mac)
	if errors.Is(err, node.ErrUnknown) {
		return nil, fmt.Errorf("%s: %w (%w)", mac, fs.ErrNotExist, err)
	}
	return m, err
}

// refused makes an error of opening through an os.Root (a path or link
// leaving its directory, or permissions) wrap fs.ErrPermission as well,
// unless the file simply does not exist.
func refused(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return err
	}
	return fmt.Errorf("%w (%w)", fs.ErrPermission, err)
}

func regular(f *os.File, phase metrics.Phase, mac net.HardwareAddr, name string) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file: %w", f.Name(), fs.ErrNotExist)
	}
	return &File{ReadSeeker: f, Closer: f, Size: st.Size(), ModTime: st.ModTime(), Phase: phase, MAC: mac, Node: name}, nil
}

// CheckName accepts only clean, relative, slash-separated names without
// "..", NUL or backslashes.
func CheckName(name string) error {
	if name == "" || len(name) > 255 || strings.ContainsAny(name, "\x00\\") ||
		!fs.ValidPath(name) || path.Clean(name) != name || name == "." {
		return fmt.Errorf("%q: %w", name, ErrBadName)
	}
	return nil
}

// Owners returns the address → MAC map the catalog checks node files
// against.
func (c *Catalog) Owners() (Owners, bool) { return c.owners, c.owners != nil }
