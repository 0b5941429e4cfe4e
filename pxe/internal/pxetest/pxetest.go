// Package pxetest builds, for the PXE packages' tests, a real site on disk:
// artifacts, per-node files, a loader, and symlinks that try to escape.
package pxetest

import (
	"crypto/rand"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/bellbuild/bellbuild/pxe/node"
)

// The fixture's machines and addresses.
var (
	MACA = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x0a} // node alpha
	MACB = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x0b} // node beta
	MACC = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x0c} // node gamma: artifacts that escape
	IPA  = netip.MustParseAddr("192.0.2.100")
	IPB  = netip.MustParseAddr("192.0.2.101")
	IPX  = netip.MustParseAddr("192.0.2.102") // leased to nobody
)

// Owners is a fixed address → MAC map.
type Owners map[netip.Addr]net.HardwareAddr

// MACFor returns o[ip].
func (o Owners) MACFor(ip netip.Addr) (net.HardwareAddr, bool) { m, ok := o[ip]; return m, ok }

// Site is the fixture's directories and inventory.
type Site struct {
	Dir       string
	Artifacts string // OUT: worker/vmlinuz, worker/initramfs.cpio.zst, big
	Files     string // FILES/alpha/node.json, FILES/beta/{node.json,secret}
	Loaders   map[string]string
	Backend   node.Static
	// Big is the content of the artifact "big" (KernelSize random bytes),
	// the kernel of node beta.
	Big []byte
}

// KernelSize is the size of the fixture's big kernel.
const KernelSize = 3<<20 + 777

// New writes the fixture under t.TempDir().
func New(t testing.TB) *Site {
	dir := t.TempDir()
	s := &Site{Dir: dir, Artifacts: filepath.Join(dir, "out"), Files: filepath.Join(dir, "files")}
	s.Big = make([]byte, KernelSize)
	rand.Read(s.Big)
	write(t, filepath.Join(s.Artifacts, "worker/vmlinuz"), "KERNEL worker")
	write(t, filepath.Join(s.Artifacts, "worker/initramfs.cpio.zst"), "INITRD worker")
	write(t, filepath.Join(s.Artifacts, "big"), string(s.Big))
	write(t, filepath.Join(s.Files, "alpha/node.json"), `{"node":"alpha"}`)
	write(t, filepath.Join(s.Files, "beta/node.json"), `{"node":"beta"}`)
	write(t, filepath.Join(s.Files, "beta/secret"), "beta's secret")
	write(t, filepath.Join(dir, "outside"), "outside the roots")
	write(t, filepath.Join(dir, "undionly.kpxe"), "LOADER")
	must(t, os.Symlink("/etc/passwd", filepath.Join(s.Artifacts, "abs-link")))
	must(t, os.Symlink("../../outside", filepath.Join(s.Files, "alpha/rel-link")))
	must(t, os.Symlink("../beta/secret", filepath.Join(s.Files, "alpha/beta-link")))
	must(t, os.Mkdir(filepath.Join(s.Artifacts, "adir"), 0o755))
	s.Loaders = map[string]string{"undionly.kpxe": filepath.Join(dir, "undionly.kpxe")}
	s.Backend = node.Static{
		MACA.String(): {Name: "alpha", Profile: "worker", Kernel: "worker/vmlinuz", Initrd: "worker/initramfs.cpio.zst",
			Cmdline: "console=ttyS0", Files: map[string]string{
				"node.json": "node.json", "escape": "rel-link", "stolen": "beta-link", "up": "../beta/secret"}},
		MACB.String(): {Name: "beta", Profile: "storage", Kernel: "big", Initrd: "worker/initramfs.cpio.zst",
			Files: map[string]string{"node.json": "node.json", "secret": "secret"}},
		MACC.String(): {Name: "gamma", Profile: "evil", Kernel: "abs-link", Initrd: "adir"},
	}
	return s
}

func write(t testing.TB, path, data string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	must(t, os.WriteFile(path, []byte(data), 0o644))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
