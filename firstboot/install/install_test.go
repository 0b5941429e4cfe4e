package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/firstboot/fetch"
	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

const mac = "52:54:00:00:00:07"

// image is a baked-looking disk.raw (a fake kernel, initramfs and root in
// a real layout) with its manifest.
type image struct {
	raw      []byte
	manifest wire.ImageManifest
}

func makeImage(t *testing.T) *image {
	t.Helper()
	if _, err := os.Stat(disk.SystemdBoot); err != nil {
		testtool.Skipf(t, "%s missing (Debian package systemd-boot-efi)", disk.SystemdBoot)
	}
	kernel, initrd, root := randomBytes(1, 1<<20+7), randomBytes(2, 2<<20+9), randomBytes(3, 3<<20)
	conf := fstree.New()
	conf.AddFile("bellbuild/bundle.json", []byte("{}"), 0o600, 0, 0)
	p := filepath.Join(t.TempDir(), "disk.raw")
	l, err := disk.WriteFile(p, disk.Spec{
		ESPFunc: func(h string) (*fstree.Tree, error) {
			return disk.ESP(disk.Boot{Kernel: fstree.Bytes(kernel), KernelSize: int64(len(kernel)), Initrd: fstree.Bytes(initrd), InitrdSize: int64(len(initrd)),
				Cmdline: layout.SlotCmdline("console=ttyS0", "a", h), Slot: "a", Tries: 3})
		},
		Root: bytes.NewReader(root), RootSize: int64(len(root)), Slots: true, Config: conf,
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	im := &image{raw: raw}
	m := &im.manifest
	m.Profile = "inst"
	m.Disk = &wire.ManifestDisk{Arch: "amd64", Size: l.Size}
	for _, p := range l.Partitions {
		m.Disk.Partitions = append(m.Disk.Partitions, wire.DiskPartition{Name: p.Name, Offset: p.Offset, Size: p.Size, GUID: p.GUID, Used: p.Used, SHA256: p.Extent})
		if p.Name == disk.SlotA {
			m.Disk.Root = wire.ManifestRoot{SHA256: p.SHA256, Size: p.Used, Offset: p.Offset}
			m.Disk.SlotSize = p.Size
		}
	}
	return im
}

// fakeServe is serve's side of an install: node.json, the image, reports.
type fakeServe struct {
	t        *testing.T
	node     []byte
	manifest []byte
	raw      []byte
	// drops cuts that many disk requests after cut bytes.
	drops, cut int
	mu         sync.Mutex
	reports    []wire.Report
	requests   []string
}

func newServe(t *testing.T, im *image, edit func(*nodeconf.Node)) (*fakeServe, *httptest.Server) {
	t.Helper()
	f := &fakeServe{t: t, raw: im.raw}
	srv := httptest.NewUnstartedServer(f)
	srv.Start()
	t.Cleanup(srv.Close)
	n := &nodeconf.Node{Node: "n1", Profile: "inst", Install: &nodeconf.Install{Disk: "first-empty"},
		Image: &nodeconf.Image{Profile: "inst", Arch: "amd64", Root: im.manifest.Disk.Root.SHA256, URL: srv.URL + "/image/" + mac}}
	if edit != nil {
		edit(n)
	}
	var err error
	if f.node, err = nodeconf.Marshal(n, nodeconf.JSON); err != nil {
		t.Fatal(err)
	}
	if f.manifest, err = json.Marshal(im.manifest); err != nil {
		t.Fatal(err)
	}
	return f, srv
}

func (f *fakeServe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path+" "+r.Header.Get("Range"))
	f.mu.Unlock()
	switch r.URL.Path {
	case wire.NodeFile:
		w.Write(f.node)
	case "/image/" + mac + "/" + wire.Manifest:
		w.Write(f.manifest)
	case "/image/" + mac + "/" + wire.Disk:
		f.mu.Lock()
		drop := f.drops > 0
		if drop {
			f.drops--
		}
		f.mu.Unlock()
		if !drop {
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.raw))
			return
		}
		rec := httptest.NewRecorder()
		http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(f.raw))
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes()[:f.cut])
		w.(http.Flusher).Flush()
		if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
			c.Close()
		}
	case wire.ReportPath:
		var rep wire.Report
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil || rep.Check() != nil {
			http.Error(w, "bad report", http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.reports = append(f.reports, rep)
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeServe) events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.reports {
		out = append(out, r.Event)
	}
	return out
}

// machine is a fake sysfs and /dev with disks: name → size and content.
type machine struct {
	sys, dev string
}

func newMachine(t *testing.T, disks map[string]int64) *machine {
	t.Helper()
	m := &machine{sys: filepath.Join(t.TempDir(), "block"), dev: filepath.Join(t.TempDir(), "dev")}
	os.MkdirAll(m.dev, 0o755)
	for name, size := range disks {
		d := filepath.Join(m.sys, name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "size"), []byte(fmt.Sprint(size/512)), 0o644)
		os.WriteFile(filepath.Join(d, "ro"), []byte("0\n"), 0o644)
		f, err := os.Create(filepath.Join(m.dev, name))
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		f.Close()
	}
	return m
}

func (m *machine) options(srv *httptest.Server, con io.Writer) Options {
	return Options{Serve: srv.URL, Node: "n1", Arch: "amd64", Console: con, SysBlock: m.sys, DevDir: m.dev,
		Fetch: fetch.Options{Every: 10 * time.Millisecond}}
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sum(b)
}

// TestInstall installs onto the first empty disk (vdb; vda holds a
// filesystem) of a fake machine, over a connection that drops twice: the
// disk gets disk.raw's ESP and root, a configuration volume with the
// node's node.json, the data partition filling the rest and a clean GPT;
// serve hears install-start and install-done.
func TestInstall(t *testing.T) {
	sgdisk := testtool.LookPath(t, "sgdisk", "gdisk")
	im := makeImage(t)
	f, srv := newServe(t, im, nil)
	f.drops, f.cut = 2, 1500000
	const size = 192 << 20
	m := newMachine(t, map[string]int64{"vda": size, "vdb": size})
	mkfs := exec.Command("mkfs.ext4", "-q", "-F", filepath.Join(m.dev, "vda"))
	if out, err := mkfs.CombinedOutput(); err != nil {
		testtool.Skipf(t, "mkfs.ext4: %v %s (Debian package e2fsprogs)", err, out)
	}
	var con strings.Builder
	res, err := Run(context.Background(), m.options(srv, &con))
	if err != nil {
		t.Fatalf("%v\n%s", err, con.String())
	}
	target := filepath.Join(m.dev, "vdb")
	if res.Disk.Dev != target || res.Image != im.manifest.Disk.Root.SHA256 || res.Stats.Resumed != 2 {
		t.Errorf("result %+v", res)
	}
	if out, err := exec.Command(sgdisk, "-v", target).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Fatalf("sgdisk -v: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(target)
	for _, name := range []string{wire.PartESP, wire.PartRootA} {
		p := im.manifest.Partition(name)
		if !bytes.Equal(got[p.Offset:p.Offset+p.Used], im.raw[p.Offset:p.Offset+p.Used]) {
			t.Errorf("%s differs from disk.raw's", name)
		}
	}
	out, _ := exec.Command(sgdisk, "-p", target).CombinedOutput()
	if !rx(`5 +\d+ +391167 +.*belldata`).MatchString(string(out)) { // the last MiB boundary before the backup GPT
		t.Errorf("the data partition does not fill the disk:\n%s", out)
	}
	conf := im.manifest.Partition(wire.PartConfig)
	cmd := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", target, conf.Offset), "::/bellbuild/node.json")
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	vol, err := cmd.CombinedOutput()
	if err != nil || string(vol) != string(f.node) {
		t.Errorf("config volume's node.json (%v):\n%s\nwant:\n%s", err, vol, f.node)
	}
	if d := cmp.Diff([]string{"install-start", "install-done"}, f.events()); d != "" {
		t.Errorf("reports (-want +got):\n%s", d)
	}
	for _, want := range []string{
		"bellbuild: install: node n1: image " + im.manifest.Disk.Root.SHA256[:12] + " (profile inst) onto " + target + " (192 MiB, empty)",
		"connection lost at 1 MB", "bellbuild: install: done: " + target,
	} {
		if !strings.Contains(con.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, con.String())
		}
	}
	if !rx(`bellbuild: install: \d+% \d+/\d+ MB [\d.]+ MB/s`).MatchString(con.String()) {
		t.Errorf("no progress line:\n%s", con.String())
	}
}

func rx(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// TestRefused: each bad input is refused with its message, and nothing is
// written to any disk (their hashes are unchanged); serve hears why.
func TestRefused(t *testing.T) {
	im := makeImage(t)
	for _, tc := range []struct {
		name  string
		disks map[string]int64
		edit  func(*nodeconf.Node)
		mani  func(*wire.ImageManifest)
		raw   func([]byte)
		msg   string
		is    error
	}{{
		name: "disk holds a filesystem, no wipe", disks: map[string]int64{"vda": 192 << 20},
		edit: func(n *nodeconf.Node) { n.Install.Disk = "/dev/vda" },
		msg:  `install.disk "/dev/vda": DEV/vda: refused: it holds an ext2/3/4 filesystem (set install.wipe: true to write over it); disks found: DEV/vda (192 MiB, holds an ext2/3/4 filesystem)`,
		is:   ErrRefused,
	}, {
		name: "no disk matches", disks: map[string]int64{"vda": 192 << 20, "vdb": 256 << 20},
		edit: func(n *nodeconf.Node) { n.Install.Disk = "/dev/disk/by-id/nvme-*" },
		msg:  `install.disk "/dev/disk/by-id/nvme-*": no single disk: it matches none of the disks found: DEV/vda (192 MiB, holds an ext2/3/4 filesystem); DEV/vdb (256 MiB, empty)`,
		is:   ErrNoDisk,
	}, {
		name: "two largest", disks: map[string]int64{"vda": 192 << 20, "vdb": 192 << 20},
		edit: func(n *nodeconf.Node) { n.Install.Disk = "largest" },
		msg:  `install.disk "largest": no single disk: it matches 2 disks (DEV/vda, DEV/vdb); disks found: DEV/vda (192 MiB, holds an ext2/3/4 filesystem); DEV/vdb (192 MiB, empty)`,
		is:   ErrNoDisk,
	}, {
		name: "disk too small", disks: map[string]int64{"vda": 192 << 20, "vdb": 64 << 20},
		msg: "DEV/vdb: disk too small: 67108864 bytes (64 MiB), the image needs at least",
		is:  disk.ErrTooSmall,
	}, {
		name: "manifest without a root hash", disks: map[string]int64{"vda": 192 << 20, "vdb": 192 << 20},
		edit: func(n *nodeconf.Node) { n.Image.Root = im.manifest.Disk.Root.SHA256 },
		mani: func(m *wire.ImageManifest) { m.Disk.Root.SHA256 = "" },
		msg:  "bad image: profile inst: the manifest has no root hash",
		is:   ErrManifest,
	}, {
		name: "another profile's image", disks: map[string]int64{"vda": 192 << 20, "vdb": 192 << 20},
		mani: func(m *wire.ImageManifest) { m.Profile = "other" },
		msg:  "bad image: the image is profile other's, node n1 boots profile inst",
		is:   ErrManifest,
	}, {
		name: "another architecture's image", disks: map[string]int64{"vda": 192 << 20, "vdb": 192 << 20},
		mani: func(m *wire.ImageManifest) { m.Disk.Arch = "arm64" },
		msg:  "bad image: the image is for arm64, this machine is amd64",
		is:   ErrManifest,
	}, {
		name: "disk.raw's hash does not match", disks: map[string]int64{"vda": 192 << 20, "vdb": 192 << 20},
		raw: func(b []byte) { b[im.manifest.Disk.Root.Offset+12345] ^= 1 },
		msg: "fetch: root-a: sha256 mismatch: got ",
		is:  fetch.ErrHash,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cp := *im
			cp.raw = bytes.Clone(im.raw)
			cp.manifest = im.manifest
			d := *im.manifest.Disk
			d.Partitions = append([]wire.DiskPartition(nil), d.Partitions...)
			cp.manifest.Disk = &d
			if tc.mani != nil {
				tc.mani(&cp.manifest)
			}
			if tc.raw != nil {
				tc.raw(cp.raw)
			}
			f, srv := newServe(t, &cp, tc.edit)
			m := newMachine(t, tc.disks)
			if out, err := exec.Command("mkfs.ext4", "-q", "-F", filepath.Join(m.dev, "vda")).CombinedOutput(); err != nil {
				testtool.Skipf(t, "mkfs.ext4: %v %s", err, out)
			}
			before := map[string]string{}
			for name := range tc.disks {
				before[name] = fileSum(t, filepath.Join(m.dev, name))
			}
			var con strings.Builder
			_, err := Run(context.Background(), m.options(srv, &con))
			msg := strings.ReplaceAll(tc.msg, "DEV", m.dev)
			if !errors.Is(err, tc.is) || !strings.HasPrefix(err.Error(), msg) {
				t.Fatalf("error:\n%v\nwant:\n%s", err, msg)
			}
			for name := range tc.disks {
				p := filepath.Join(m.dev, name)
				if tc.is == fetch.ErrHash {
					// Copied, but never given a partition table: not
					// bootable.
					b, _ := os.ReadFile(p)
					if name == "vdb" && (bytes.ContainsFunc(b[:34*512], func(r rune) bool { return r != 0 }) || bytes.ContainsFunc(b[len(b)-33*512:], func(r rune) bool { return r != 0 })) {
						t.Errorf("%s has a partition table after a failed copy", name)
					}
					continue
				}
				if fileSum(t, p) != before[name] {
					t.Errorf("%s was written", name)
				}
			}
			if tc.is != ErrManifest {
				if ev := f.events(); len(ev) == 0 || ev[len(ev)-1] != "install-failed" {
					t.Errorf("reports %v, want install-failed last", ev)
				}
			}
		})
	}
}

// TestDisks reads a fake sysfs: loops and CD drives are not disks, a
// partitioned disk holds partitions, a mounted one is the boot medium,
// virtio disks get udev's by-id and by-path names, and the order is
// natural.
func TestDisks(t *testing.T) {
	m := newMachine(t, map[string]int64{"vdb": 8 << 20, "vda": 16 << 20, "loop0": 1 << 20, "sr0": 1 << 20, "vdaa": 8 << 20, "sda": 4 << 20})
	os.MkdirAll(filepath.Join(m.sys, "vdaa", "vdaa1"), 0o755)
	os.WriteFile(filepath.Join(m.sys, "vdaa", "vdaa1", "partition"), []byte("1\n"), 0o644)
	os.MkdirAll(filepath.Join(m.sys, "sda", "sda1"), 0o755)
	os.WriteFile(filepath.Join(m.sys, "sda", "sda1", "partition"), []byte("1\n"), 0o644)
	os.WriteFile(filepath.Join(m.sys, "vda", "serial"), []byte("disk-0\n"), 0o644)
	pci := filepath.Join(t.TempDir(), "devices/pci0000:00/0000:00:04.0/virtio2")
	os.MkdirAll(pci, 0o755)
	os.Symlink(pci, filepath.Join(m.sys, "vda", "device"))
	ds := Disks(m.sys, m.dev, "/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n")
	var got []string
	for _, d := range ds {
		got = append(got, d.String()+" "+strings.Join(d.Names, ","))
	}
	want := []string{
		m.dev + "/sda (4 MiB, holds partitions (sda1), in use: the boot medium) ",
		m.dev + "/vda (16 MiB, empty) /dev/disk/by-id/virtio-disk-0,/dev/disk/by-path/pci-0000:00:04.0,/dev/disk/by-path/virtio-pci-0000:00:04.0",
		m.dev + "/vdb (8 MiB, empty) ",
		m.dev + "/vdaa (8 MiB, holds partitions (vdaa1)) ",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("disks (-want +got):\n%s", d)
	}
	for _, tc := range []struct {
		spec nodeconf.Install
		want string
	}{
		{nodeconf.Install{Disk: "/dev/disk/by-path/pci-0000:00:04.0*"}, "vda"},
		{nodeconf.Install{Disk: "/dev/disk/by-id/virtio-disk-*"}, "vda"},
		{nodeconf.Install{Disk: "largest"}, "vda"},
		{nodeconf.Install{Disk: "first-empty"}, "vda"},
		{nodeconf.Install{Disk: "/dev/vdaa", Wipe: true}, "vdaa"},
		{nodeconf.Install{Disk: "/dev/vdaa"}, "refused"},
		{nodeconf.Install{Disk: "/dev/sda", Wipe: true}, "refused"},
		{nodeconf.Install{Disk: "/dev/vd?"}, "several"},
	} {
		d, err := Choose(tc.spec, ds)
		got := d.Name
		switch {
		case errors.Is(err, ErrRefused):
			got = "refused"
		case errors.Is(err, ErrNoDisk):
			got = "several"
		}
		if got != tc.want {
			t.Errorf("%+v: %q (%v), want %s", tc.spec, got, err, tc.want)
		}
	}
}

// TestWipe: with wipe, a disk that holds a filesystem is written over;
// its old signature is gone.
func TestWipe(t *testing.T) {
	testtool.LookPath(t, "sgdisk", "gdisk")
	im := makeImage(t)
	_, srv := newServe(t, im, func(n *nodeconf.Node) { n.Install = &nodeconf.Install{Disk: "/dev/vda", Wipe: true} })
	m := newMachine(t, map[string]int64{"vda": 192 << 20})
	p := filepath.Join(m.dev, "vda")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", p).CombinedOutput(); err != nil {
		testtool.Skipf(t, "mkfs.ext4: %v %s", err, out)
	}
	var con strings.Builder
	if _, err := Run(context.Background(), m.options(srv, &con)); err != nil {
		t.Fatalf("%v\n%s", err, con.String())
	}
	if !strings.Contains(con.String(), "bellbuild: install: wiping "+p+" (it held an ext2/3/4 filesystem)") {
		t.Errorf("console:\n%s", con.String())
	}
	if got := probe(p, 192<<20); got != "a GPT" {
		t.Errorf("the disk holds %q, want a GPT", got)
	}
}
