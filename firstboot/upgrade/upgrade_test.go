package upgrade

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/slots"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
)

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// image is a new version as serve hands it out: a manifest (disk.raw's
// partitions as an installer's would be, with a root of rootSize bytes),
// the root, the kernel and the initramfs.
type image struct {
	manifest             wire.ImageManifest
	root, kernel, initrd []byte
	mu                   sync.Mutex
	requests             []string
	reports              []wire.Report
	corruptRoot          bool
}

func newImage(rootSize int) *image {
	r := rand.New(rand.NewSource(int64(rootSize)))
	im := &image{root: make([]byte, rootSize), kernel: make([]byte, 70000), initrd: make([]byte, 90000)}
	r.Read(im.root)
	r.Read(im.kernel)
	r.Read(im.initrd)
	const mib = 1 << 20
	h := sum(im.root)
	im.manifest = wire.ImageManifest{Profile: "upg", Cmdline: "console=ttyS0",
		Artifacts: []wire.Artifact{{Name: KernelArtifact, Size: int64(len(im.kernel)), SHA256: sum(im.kernel)}, {Name: InitrdArtifact, Size: int64(len(im.initrd)), SHA256: sum(im.initrd)}},
		Disk: &wire.ManifestDisk{Arch: "amd64", Root: wire.ManifestRoot{SHA256: h, Size: int64(rootSize), Offset: 2 * mib}, SlotSize: 8 * mib, Size: 40 * mib,
			Partitions: []wire.DiskPartition{
				{Name: wire.PartESP, Offset: mib, Size: mib, Used: 512, SHA256: h},
				{Name: wire.PartRootA, Offset: 2 * mib, Size: 8 * mib, Used: int64(rootSize), SHA256: h},
				{Name: wire.PartRootB, Offset: 10 * mib, Size: 8 * mib, SHA256: h},
				{Name: wire.PartConfig, Offset: 18 * mib, Size: mib, Used: 512, SHA256: h},
			}}}
	return im
}

func (im *image) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	im.mu.Lock()
	im.requests = append(im.requests, r.Method+" "+r.URL.Path)
	im.mu.Unlock()
	switch {
	case r.URL.Path == wire.ReportPath:
		var rep wire.Report
		json.NewDecoder(r.Body).Decode(&rep)
		im.mu.Lock()
		im.reports = append(im.reports, rep)
		im.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	case strings.HasSuffix(r.URL.Path, "/"+wire.Manifest):
		json.NewEncoder(w).Encode(im.manifest)
	case strings.HasSuffix(r.URL.Path, "/"+wire.Root):
		b := im.root
		if im.corruptRoot {
			b = append([]byte{^b[0]}, b[1:]...)
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	case strings.HasSuffix(r.URL.Path, "/"+wire.Kernel):
		w.Write(im.kernel)
	case strings.HasSuffix(r.URL.Path, "/"+wire.Initrd):
		w.Write(im.initrd)
	default:
		http.NotFound(w, r)
	}
}

// machine is a machine running slot a: its ESP (a directory with slot
// a's entry), sysfs with root-b's partition of slotSize bytes, and that
// partition as a file.
type machine struct {
	esp       slots.ESP
	sys, dev  string
	partition string
}

func newMachine(t *testing.T, slotSize int64) *machine {
	t.Helper()
	m := &machine{esp: slots.ESP{Dir: t.TempDir()}, sys: t.TempDir(), dev: t.TempDir()}
	if err := m.esp.Commit("a", 1, 0, "bellbuild upg (slot a)", layout.SlotCmdline("console=ttyS0", "a", strings.Repeat("1", 64))); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"root-a", "root-b"} {
		dir := filepath.Join(m.sys, fmt.Sprintf("vda%d", i+2))
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "uevent"), []byte(fmt.Sprintf("MAJOR=254\nMINOR=%d\nDEVNAME=vda%d\nDEVTYPE=partition\nPARTN=%d\nPARTNAME=%s\n", i+2, i+2, i+2, name)), 0o644)
		os.WriteFile(filepath.Join(dir, "size"), []byte(fmt.Sprintf("%d\n", slotSize/512)), 0o644)
	}
	m.partition = filepath.Join(m.dev, "vda3")
	if err := os.WriteFile(m.partition, bytes.Repeat([]byte{0xee}, int(slotSize)), 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

// files is what the machine holds: the ESP's files and the partition's
// hash.
func (m *machine) files(t *testing.T) string {
	t.Helper()
	var out []string
	filepath.WalkDir(m.esp.Dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			data, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(m.esp.Dir, p)
			out = append(out, rel+" "+sum(data)[:12])
		}
		return nil
	})
	data, _ := os.ReadFile(m.partition)
	return strings.Join(out, "\n") + "\nvda3 " + sum(data)[:12]
}

// TestRun: an upgrade writes the root image into the other slot's
// partition, the kernel and the initramfs into its ESP directory, then
// its entry with three tries, and tells serve; a bad image is refused
// with nothing written.
func TestRun(t *testing.T) {
	for _, tt := range []struct {
		name    string
		slot    int64 // the other slot's size
		edit    func(im *image, n *nodeconf.Node, m *machine)
		err     string
		refused bool
	}{
		{name: "upgrades", slot: 8 << 20},
		{name: "another profile", slot: 8 << 20, refused: true,
			edit: func(im *image, n *nodeconf.Node, m *machine) { im.manifest.Profile = "other" },
			err:  "upgrade refused: bad image: the image is profile other's, node u1 boots profile upg"},
		{name: "another architecture", slot: 8 << 20, refused: true,
			edit: func(im *image, n *nodeconf.Node, m *machine) { im.manifest.Disk.Arch = "arm64" },
			err:  "upgrade refused: bad image: the image is for arm64, this machine is amd64"},
		{name: "no root hash", slot: 8 << 20, refused: true,
			edit: func(im *image, n *nodeconf.Node, m *machine) { im.manifest.Disk.Root.SHA256 = "" },
			err:  "upgrade refused: bad image: profile upg: the manifest has no root hash"},
		{name: "slot too small", slot: 1 << 20, refused: true,
			err: "upgrade refused: image %s's root is 3145728 bytes, slot b (%s) holds 1048576: install the machine again with a larger install.slot_size"},
		{name: "failed before", slot: 8 << 20, refused: true,
			edit: func(im *image, n *nodeconf.Node, m *machine) { m.esp.AddFailed(n.Image.Root) },
			err:  "upgrade refused: image %s failed to come up before: not tried again until the configuration names another"},
		{name: "root hash mismatch", slot: 8 << 20,
			edit: func(im *image, n *nodeconf.Node, m *machine) { im.corruptRoot = true },
			err:  "fetch: root: sha256 mismatch"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			im := newImage(3 << 20)
			srv := httptest.NewServer(im)
			defer srv.Close()
			mach := newMachine(t, tt.slot)
			n := &nodeconf.Node{Node: "u1", Profile: "upg", Upgrade: &nodeconf.Upgrade{Mode: "auto"},
				Image: &nodeconf.Image{Profile: "upg", Arch: "amd64", Root: im.manifest.Disk.Root.SHA256, URL: srv.URL + "/image/52:54:00:00:00:31"}}
			if tt.edit != nil {
				tt.edit(im, n, mach)
			}
			before := mach.files(t)
			var con bytes.Buffer
			res, err := Run(context.Background(), Options{Node: n, Slot: "a", Running: strings.Repeat("1", 64), Arch: "amd64",
				ESP: mach.esp, SysBlock: mach.sys, DevDir: mach.dev, Serve: srv.URL, Console: &con,
				RebootAt: func() time.Time { return time.Date(2026, 12, 8, 2, 0, 0, 0, time.UTC) }})
			if tt.err != "" {
				want := tt.err
				if strings.Contains(want, "%s") {
					args := []any{n.Image.Root[:12]}
					if strings.Count(want, "%s") == 2 {
						args = append(args, mach.partition)
					}
					want = fmt.Sprintf(want, args...)
				}
				if err == nil || !strings.HasPrefix(err.Error(), want) {
					t.Fatalf("err = %v\nwant %s", err, want)
				}
				if errors.Is(err, ErrRefused) != tt.refused {
					t.Errorf("errors.Is(err, ErrRefused) = %v", !tt.refused)
				}
				after := mach.files(t)
				if tt.refused && after != before {
					t.Errorf("a refused upgrade changed the machine:\nbefore\n%s\nafter\n%s", before, after)
				}
				if ents, _ := mach.esp.Entries(); slots.Find(ents, "b") != nil {
					t.Error("slot b has an entry")
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, con.String())
			}
			if !res.Written || res.Slot != "b" || res.Bytes != int64(len(im.root)+len(im.kernel)+len(im.initrd)) {
				t.Errorf("result %+v", res)
			}
			part, _ := os.ReadFile(mach.partition)
			if !bytes.Equal(part[:len(im.root)], im.root) {
				t.Error("slot b does not hold the root image")
			}
			for p, want := range map[string][]byte{layout.SlotKernel("b"): im.kernel, layout.SlotInitrd("b"): im.initrd} {
				if got, _ := os.ReadFile(filepath.Join(mach.esp.Dir, p)); !bytes.Equal(got, want) {
					t.Errorf("%s differs", p)
				}
			}
			entry, err := os.ReadFile(filepath.Join(mach.esp.Dir, "loader/entries/bellbuild-2-b+3.conf"))
			if err != nil {
				t.Fatal(err)
			}
			wantEntry := layout.EntryText("bellbuild upg (slot b)", "b", layout.SlotCmdline("console=ttyS0", "b", n.Image.Root))
			if string(entry) != wantEntry {
				t.Errorf("entry:\n%s\nwant\n%s", entry, wantEntry)
			}
			if len(im.reports) != 1 || im.reports[0] != (wire.Report{Event: wire.EventUpgradeWritten, Image: n.Image.Root, Reboot: "now", RebootAt: "2026-12-08T02:00:00Z"}) {
				t.Errorf("reports %+v", im.reports)
			}
			for _, r := range im.requests {
				if strings.HasSuffix(r, "/"+wire.Disk) {
					t.Errorf("the upgrade asked for the disk: %s", r)
				}
			}
			// Run again: written already, waiting for the reboot.
			res, err = Run(context.Background(), Options{Node: n, Slot: "a", Running: strings.Repeat("1", 64), Arch: "amd64",
				ESP: mach.esp, SysBlock: mach.sys, DevDir: mach.dev, Console: &con})
			if err != nil || !res.Waiting || res.Written {
				t.Errorf("second run: %+v, %v", res, err)
			}
		})
	}
}
