package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// testBake is a bake of installSite's profile inst, written by hand: its
// disk.raw holds the root image (10 bytes at 4096) in diskSize bytes.
type testBake struct {
	root     string // the root image's bytes
	manifest []byte
	files    map[string][]byte
}

const diskSize = 32 << 20

func newTestBake(root, cmdline string) testBake {
	disk := bytes.Repeat([]byte{root[len(root)-1]}, diskSize)
	copy(disk[4096:], root)
	rs := sha256.Sum256([]byte(root))
	h := hex.EncodeToString(rs[:])
	m := wire.ImageManifest{Profile: "inst", Cmdline: cmdline,
		Artifacts: []wire.Artifact{{Name: "vmlinuz", Size: 6}, {Name: "disk.raw", Size: diskSize}},
		Disk: &wire.ManifestDisk{Arch: "amd64", Size: diskSize, SlotSize: 1 << 20,
			Root: wire.ManifestRoot{SHA256: h, Offset: 4096, Size: int64(len(root))},
			Partitions: []wire.DiskPartition{
				{Name: "esp", Offset: 0, Size: 4096, Used: 4096, SHA256: h},
				{Name: "root-a", Offset: 4096, Size: 1 << 20, Used: int64(len(root)), SHA256: h},
				{Name: "root-b", Offset: 4096 + 1<<20, Size: 4096, SHA256: h},
				{Name: "bellconf", Offset: 8192 + 1<<20, Size: 4096, SHA256: h},
			}}}
	data, _ := json.MarshalIndent(m, "", "  ")
	return testBake{root: root, manifest: data, files: map[string][]byte{"manifest.json": data, "disk.raw": disk, "vmlinuz": []byte("KERNEL")}}
}

// rootHash is the bake's root hash, as node.json names it.
func (b testBake) rootHash() string {
	s := sha256.Sum256([]byte(b.root))
	return hex.EncodeToString(s[:])
}

// TestServeTakesNewBake: serve (its HTTP server, on a real socket) hands
// out a profile's new bake without a restart — manifest, root image,
// the boot script's image and the node's node.json with the new root
// hash — and logs the change; a download begun before the new bake
// reads the old disk to its end; a manifest then written over in place,
// half, leaves the bake served as it was, with one error in the log.
func TestServeTakesNewBake(t *testing.T) {
	site := installSite(t)
	s, err := profiles.Load(site)
	if err != nil {
		t.Fatal(err)
	}
	out, state := t.TempDir(), t.TempDir()
	files := filepath.Join(state, "nodes")
	v1, v2 := newTestBake("ROOT-ONE-1", "console=ttyS0 v=1"), newTestBake("ROOT-TWO-2", "console=ttyS0 v=2")
	testtool.SwapBake(t, out, "inst", v1.files)

	addr := freePort(t)
	base := "http://" + addr
	var log testtool.Buffer
	logger := slog.New(slog.NewTextHandler(&log, nil))
	backend, err := newSiteBackend(t.Context(), s, "", out, files, "", backendOptions{serveURL: base, log: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	lo := netip.MustParseAddr("127.0.0.1")
	srv, err := pxe.New(pxe.Config{DHCP: pxe.DHCPOff, ServerIP: lo, TFTPAddr: "off", HTTPAddr: addr,
		Artifacts: out, Files: files, Loaders: map[string]string{}, Log: logger}, backend)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("serve's log:\n%s", log.String())
		}
	})
	mac, _ := net.ParseMAC("52:54:00:00:00:21")
	// This address is i1's: its node.json is served to it.
	if _, err := srv.Leases().Ack(ctx, mac, lo, time.Hour); err != nil {
		t.Fatal(err)
	}
	get := func(path string) string {
		t.Helper()
		return string(httpGet(t, base+path))
	}
	image := base + wire.ImagePrefix + mac.String()
	// served says which bake serve hands out now, checking that
	// everything it hands out is of that one bake.
	served := func() string {
		t.Helper()
		m := get("/image/" + mac.String() + "/" + wire.Manifest)
		var b testBake
		switch m {
		case string(v1.manifest):
			b = v1
		case string(v2.manifest):
			b = v2
		default:
			t.Fatalf("manifest served:\n%s", m)
		}
		if root := get("/image/" + mac.String() + "/" + wire.Root); root != b.root {
			t.Errorf("root image %q with manifest of %q", root, b.root)
		}
		if script, id := get("/ipxe?mac="+mac.String()), manifestID(b.manifest); !strings.Contains(script, "bellbuild.image="+id) {
			t.Errorf("the script does not name image %s:\n%s", id, script)
		}
		n, _, err := nodeconf.Decode([]byte(get(wire.NodeFile)))
		if err != nil || n.Image == nil || n.Image.Root != b.rootHash() || n.Image.URL != image {
			t.Errorf("node.json: %v, image %+v, want root %s", err, n.Image, b.rootHash())
		}
		return b.root
	}
	if got := served(); got != v1.root {
		t.Fatalf("serving %s, want %s", got, v1.root)
	}

	// A download begun now, read slowly.
	resp, err := http.Get(image + "/" + wire.Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}

	// The new bake, served within a few seconds, without a restart.
	testtool.SwapBake(t, out, "inst", v2.files)
	deadline := time.Now().Add(10 * time.Second)
	for served() != v2.root {
		if time.Now().After(deadline) {
			t.Fatal("the new bake is not served 10 s after it was made")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if want := `msg="bake: new bake served" profile=inst root="` + v1.rootHash() + " → " + v2.rootHash() + `"`; !strings.Contains(log.String(), want) {
		t.Errorf("serve's log lacks %s", want)
	}
	// The download begun before reads the first bake's disk to its end.
	if _, err := io.Copy(h, resp.Body); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(v1.files["disk.raw"]); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Error("the download begun before the new bake is not the old disk")
	}

	// A manifest written over in place, half: refused, the bake served
	// kept (its manifest included), said once.
	if err := os.WriteFile(filepath.Join(out, "inst", "manifest.json"), v1.manifest[:len(v1.manifest)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	const refused = `level=ERROR msg="bake: not taken: the bake served is kept" profile=inst err="inst/manifest.json: not whole: unexpected end of JSON input"`
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), refused) {
		if time.Now().After(deadline) {
			t.Fatal("no error logged for a half-written manifest")
		}
		if got := served(); got != v2.root {
			t.Fatalf("serving %s after a half-written manifest", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for range 15 {
		if got := served(); got != v2.root {
			t.Fatalf("serving %s after a half-written manifest", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := strings.Count(log.String(), refused); n != 1 {
		t.Errorf("the refused manifest logged %d times, want once", n)
	}
}
