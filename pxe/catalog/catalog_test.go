package catalog

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/pxe/internal/pxetest"
	"github.com/bellbuild/bellbuild/pxe/metrics"
)

// fixture is a catalog over pxetest's site; ipA and ipB are leased to
// alpha and beta.
func fixture(t testing.TB) (*Catalog, *pxetest.Site) {
	s := pxetest.New(t)
	c, err := New(Config{Loaders: s.Loaders, Artifacts: s.Artifacts, Files: s.Files}, s.Backend,
		pxetest.Owners{ipA: pxetest.MACA, ipB: pxetest.MACB})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, s
}

var (
	ipA = pxetest.IPA
	ipB = pxetest.IPB
	ipX = pxetest.IPX
)

func TestOpen(t *testing.T) {
	c, site := fixture(t)
	big := site.Big
	tests := []struct {
		name  string
		file  string
		from  netip.Addr
		want  string // content, or
		err   error  // the error it must wrap
		phase metrics.Phase
	}{
		{name: "loader", file: "undionly.kpxe", from: ipX, want: "LOADER", phase: metrics.PhaseLoader},
		{name: "kernel", file: "boot/52:54:00:00:00:0a/kernel", from: ipX, want: "KERNEL worker", phase: metrics.PhaseKernel},
		{name: "beta's kernel", file: "boot/52:54:00:00:00:0b/kernel", from: ipX, want: "<big>", phase: metrics.PhaseKernel},
		{name: "initrd", file: "boot/52:54:00:00:00:0a/initrd", from: ipA, want: "INITRD worker", phase: metrics.PhaseInitrd},
		{name: "own node file", file: "files/node.json", from: ipA, want: `{"node":"alpha"}`, phase: metrics.PhaseFile},
		{name: "same name, other node: its own", file: "files/node.json", from: ipB, want: `{"node":"beta"}`, phase: metrics.PhaseFile},
		{name: "other node's file by name", file: "files/secret", from: ipA, err: fs.ErrNotExist},
		{name: "node file from an address not leased", file: "files/node.json", from: ipX, err: ErrForbidden},
		{name: "node file from no address", file: "files/node.json", err: ErrForbidden},
		{name: "dot-dot", file: "../outside", from: ipA, err: ErrBadName},
		{name: "dot-dot inside", file: "boot/../undionly.kpxe", from: ipA, err: ErrBadName},
		{name: "absolute", file: "/etc/passwd", from: ipA, err: ErrBadName},
		{name: "unclean", file: "files//node.json", from: ipA, err: ErrBadName},
		{name: "dot", file: "./undionly.kpxe", from: ipA, err: ErrBadName},
		{name: "backslash", file: `files\node.json`, from: ipA, err: ErrBadName},
		{name: "NUL", file: "undionly.kpxe\x00.txt", from: ipA, err: ErrBadName},
		{name: "empty", file: "", from: ipA, err: ErrBadName},
		{name: "symlink escaping the files root", file: "files/escape", from: ipA, err: os.ErrPermission},
		{name: "symlink to another node's file", file: "files/stolen", from: ipA, err: os.ErrPermission},
		{name: "configured path with dot-dot", file: "files/up", from: ipA, err: os.ErrPermission},
		{name: "absolute symlink in artifacts", file: "boot/52:54:00:00:00:0c/kernel", from: ipX, err: os.ErrPermission},
		{name: "directory", file: "boot/52:54:00:00:00:0c/initrd", from: ipX, err: fs.ErrNotExist},
		{name: "unknown MAC", file: "boot/52:54:00:00:00:ff/kernel", from: ipX, err: fs.ErrNotExist},
		{name: "unknown artifact", file: "boot/52:54:00:00:00:0a/config", from: ipX, err: fs.ErrNotExist},
		{name: "not a MAC", file: "boot/alpha/kernel", from: ipX, err: fs.ErrNotExist},
		{name: "unknown loader", file: "pxelinux.0", from: ipX, err: fs.ErrNotExist},
		{name: "unknown directory", file: "etc/passwd", from: ipX, err: fs.ErrNotExist},
		{name: "node file in a subdirectory", file: "files/alpha/node.json", from: ipA, err: fs.ErrNotExist},
		{name: "script", file: "ipxe/52:54:00:00:00:0a", from: ipX, phase: metrics.PhaseScript,
			want: "#!ipxe\necho bellbuild: booting node alpha (profile worker) from tftp://192.0.2.1\n" +
				"kernel tftp://192.0.2.1/boot/52:54:00:00:00:0a/kernel initrd=initrd console=ttyS0 bellbuild.node=alpha\n" +
				"initrd --name initrd tftp://192.0.2.1/boot/52:54:00:00:00:0a/initrd\nboot\n"},
		{name: "script of an unknown MAC", file: "ipxe/52:54:00:00:00:ff", from: ipX, err: fs.ErrNotExist},
		{name: "GRUB configuration of the asking machine", file: "grub/grub.cfg", from: ipA, phase: metrics.PhaseGrub,
			want: "# bellbuild: node alpha, profile worker\nset timeout=0\n" +
				"echo 'bellbuild: booting node alpha (profile worker) from tftp://192.0.2.1'\n" +
				"linux (tftp,192.0.2.1)/boot/52:54:00:00:00:0a/kernel console=ttyS0 bellbuild.node=alpha\n" +
				"initrd (tftp,192.0.2.1)/boot/52:54:00:00:00:0a/initrd\nboot\n"},
		{name: "GRUB configuration from an address not leased", file: "grub/grub.cfg", from: ipX, err: ErrForbidden},
		{name: "GRUB's per-platform configuration", file: "grub/arm64-efi/grub.cfg", from: ipA, err: fs.ErrNotExist},
		{name: "another name under grub", file: "grub/grubenv", from: ipA, err: fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := c.Open(context.Background(), tt.file, tt.from, "tftp://192.0.2.1")
			if tt.err != nil {
				if err == nil {
					b, _ := io.ReadAll(f)
					f.Close()
					t.Fatalf("served %q, want an error wrapping %v", b, tt.err)
				}
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want one wrapping %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if want == "<big>" {
				want = string(big)
			}
			if string(b) != want {
				t.Errorf("content %.40q, want %.40q", b, want)
			}
			if f.Size != int64(len(want)) || f.Phase != tt.phase {
				t.Errorf("size %d phase %s, want %d %s", f.Size, f.Phase, len(want), tt.phase)
			}
		})
	}
}

// FuzzOpen: whatever a client asks for, Open never panics and never serves
// anything but the fixture's own files.
func FuzzOpen(f *testing.F) {
	for _, s := range []string{"undionly.kpxe", "boot/52:54:00:00:00:0a/kernel", "files/node.json",
		"files/escape", "../outside", "/etc/passwd", "ipxe/52:54:00:00:00:0a", "files/../../x", "boot/52:54:00:00:00:0c/kernel"} {
		f.Add(s, byte(0))
	}
	c, site := fixture(f)
	big := site.Big
	allowed := []string{string(big[:64]), "LOADER", "KERNEL worker", "INITRD worker", `{"node":"alpha"}`, `{"node":"beta"}`, "beta's secret", "#!ipxe\n"}
	f.Fuzz(func(t *testing.T, name string, who byte) {
		from := []netip.Addr{ipA, ipB, ipX, {}}[who%4]
		file, err := c.Open(context.Background(), name, from, "tftp://192.0.2.1")
		if err != nil {
			return
		}
		defer file.Close()
		b, _ := io.ReadAll(file)
		for _, a := range allowed {
			if strings.HasPrefix(string(b), a) {
				if string(b) == "beta's secret" && from != ipB {
					t.Fatalf("%q from %v served beta's secret", name, from)
				}
				return
			}
		}
		t.Fatalf("%q from %v served unexpected %q", name, from, b)
	})
}
