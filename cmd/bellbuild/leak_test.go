package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	tftp "github.com/pin/tftp/v3"

	"github.com/bellbuild/bellbuild/build"
	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/secrets"
	"github.com/bellbuild/bellbuild/pxe"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// TestNoPrivateKeyServed bakes a site with credentials and secrets (a
// `!secret` file content, a `!secret` user_crypt_passwd, an inline
// password hash, an inline 0600 file) into every output (initramfs,
// rootfs.tar, ISO, a two-node disk.raw), starts serve's PXE server on
// loopback and fetches, over HTTP and over TFTP, everything it hands each
// node (boot script, kernel, initramfs, node.json). Not one private key
// of the site — the root's, the sub-CAs', every leaf key the private
// directory keeps — and not one secret value is in any of those bytes,
// nor in any file under OUT and STATE (the manifest among them), nor in
// what image printed, in PEM, DER or raw form, in the files as they are
// or in any zstd stream inside them (the initramfs, squashfs blocks, the
// initramfs on the ISO and on the disk's ESP). The site's CA
// certificates are found in the same bytes: the search sees the
// configuration; and every secret value is found on a node's own config
// volume (config image): the search sees values.
func TestNoPrivateKeyServed(t *testing.T) {
	if testing.Short() {
		t.Skip("bakes every output: skipped with -short")
	}
	for _, p := range []string{"/vmlinuz", disk.SystemdBoot, build.ISOLINUXBin, build.LDLINUXC32} {
		testtool.Stat(t, p, "linux-image-amd64, systemd-boot-efi, isolinux, syslinux-common")
	}
	bin := testtool.Binary(t)
	site := credSite(t, map[string]string{
		"profiles/p.yaml": `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0]
outputs: [initramfs, tar, iso, raw]
conf:
  credentials:
  - name: etcd
    client_cert_mode: both
    server_cert_mode: both
  - name: api
    extra_san: [api]
  files:
    /etc/db.pw: {content: !secret db-password, mode: "0600"}
    /etc/private.conf: {content: ` + inlinePrivate + `, mode: "0600"}
  uamlite:
    users:
    - {user_name: admin, user_crypt_passwd: !secret admin-password, user_sudo: true}
    - {user_name: bob, user_crypt_passwd: "` + inlineHash + `"}
`,
	})
	keyFile := filepath.Join(t.TempDir(), "site.key")
	os.Mkdir(filepath.Join(site, "secrets"), 0o755)
	writeRecipients(t, site, strings.TrimSpace(mustSecret(t, "", "keygen", "-o", keyFile)))
	mustSecret(t, dbPassword, "set", "-C", site, "db-password")
	mustSecret(t, adminHash, "set", "-C", site, "admin-password")
	rootOut := pkiInit(t, site)
	// Both nodes also have a disk whose config volume holds their keys
	// (config write issues them from the private directory): the keys
	// the search looks for.
	for _, n := range []string{"n1", "n2"} {
		if b, err := exec.Command(bin, "config", "write", "-C", site, "--node", n, t.TempDir()).CombinedOutput(); err != nil {
			t.Fatalf("config write %s: %v\n%s", n, err, b)
		}
	}
	out, state := filepath.Join(t.TempDir(), "out"), t.TempDir()
	image := exec.Command(bin, "image", "p", "-C", site, "-o", out, "--applier", bin)
	image.Env = append(os.Environ(), "BELLBUILD_CACHE="+filepath.Join(t.TempDir(), "cache"), secrets.IdentityEnv+"="+keyFile)
	imageOut, err := image.CombinedOutput()
	if err != nil {
		t.Fatalf("bellbuild image: %v\n%s", err, imageOut)
	}
	keys := privateKeys(t, rootOut, filepath.Join(site, "private"))
	if len(keys) != 4+2*5 { // root, 3 sub-CAs; per node host, etcd ×2, api ×2
		t.Fatalf("%d private keys in the site, want 14: did config write issue the nodes' certificates?", len(keys))
	}

	// What serve sends.
	s, err := profiles.Load(site)
	if err != nil {
		t.Fatal(err)
	}
	files := filepath.Join(state, "nodes")
	backend, err := newSiteBackend(t.Context(), s, "", out, files, "")
	if err != nil {
		t.Fatal(err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	srv, err := pxe.New(pxe.Config{DHCP: pxe.DHCPOff, ServerIP: lo, TFTPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Artifacts: out, Files: files, Loaders: map[string]string{}}, backend)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	sent := map[string][]byte{"image's output": imageOut}
	base := "http://" + srv.HTTPAddr().String()
	for _, n := range s.Nodes() {
		mac, _ := net.ParseMAC(n.MACs[0])
		// This address is the node's now: its own files are served to it.
		if _, err := srv.Leases().Ack(ctx, mac, lo, time.Hour); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"ipxe?mac=" + mac.String(), "boot/" + mac.String() + "/kernel", "boot/" + mac.String() + "/initrd", "files/node.json"} {
			sent["http "+n.Name+" "+name] = httpGet(t, base+"/"+name)
		}
		for _, name := range []string{"ipxe/" + mac.String(), "boot/" + mac.String() + "/kernel", "boot/" + mac.String() + "/initrd", "files/node.json"} {
			sent["tftp "+n.Name+" "+name] = tftpGet(t, srv.TFTPAddr().String(), name)
		}
		if err := srv.Leases().Release(ctx, mac, lo); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{out, state} {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			sent[p] = b
			return nil
		})
	}

	// The site's CA bundle is there (in the file or a zstd stream in it)
	// where a configuration is — the nodes enrol for their certificates
	// — and no key is anywhere.
	caLine := pemLine(t, filepath.Join(site, "pki", "hosts.pem"))
	mustHold := map[string]bool{
		filepath.Join(out, "p", build.InitramfsFile): true, filepath.Join(out, "p", build.DiskFile): true, filepath.Join(out, "p", build.ISOFile): true, filepath.Join(out, "p", build.TarFile): true,
		"http n1 files/node.json": true, "tftp n2 files/node.json": true, "http n2 boot/52:54:00:00:01:02/initrd": true, "tftp n1 boot/52:54:00:00:01:01/initrd": true,
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	seen := 0
	for name, data := range sent {
		views := append([][]byte{data}, zstdRuns(data, dec)...)
		for _, k := range keys {
			for _, v := range views {
				if what := k.in(v); what != "" {
					t.Errorf("%s holds the private key %s (%s)", name, k.file, what)
				}
			}
		}
		for _, secret := range siteSecretValues() {
			for _, v := range views {
				if bytes.Contains(v, []byte(secret)) {
					t.Errorf("%s holds the secret value %q", name, secret)
				}
			}
		}
		if mustHold[name] {
			found := false
			for _, v := range views {
				found = found || bytes.Contains(v, caLine)
			}
			if !found {
				t.Errorf("%s lacks the hosts CA's certificate: the search does not see its configuration", name)
			}
			seen++
		}
	}
	if seen != len(mustHold) {
		t.Errorf("looked at %d of the %d artifacts that carry a configuration", seen, len(mustHold))
	}

	// A node's own config volume holds every value (with the identity):
	// the search above would have found them.
	vol := filepath.Join(t.TempDir(), "n1.img")
	cfg := exec.Command(bin, "config", "image", "-C", site, "--node", "n1", "-o", vol, "--identity", keyFile)
	if b, err := cfg.CombinedOutput(); err != nil {
		t.Fatalf("bellbuild config image: %v\n%s", err, b)
	}
	data, err := os.ReadFile(vol)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range siteSecretValues() {
		if !bytes.Contains(data, []byte(secret)) {
			t.Errorf("n1's config volume lacks the secret value %q", secret)
		}
	}
}

// siteKey is one private key of the site and the byte strings that would
// give it away: its raw secret, and each line of its PEM that holds key
// bytes (a PEM line is also a piece of the DER's base64, with or without
// line breaks, in a JSON string or not).
type siteKey struct {
	file    string
	needles [][]byte
}

func (k siteKey) in(data []byte) string {
	for i, n := range k.needles {
		if bytes.Contains(data, n) {
			if i == 0 {
				return "its raw secret"
			}
			return "a line of its PEM"
		}
	}
	return ""
}

// privateKeys reads every *.key under dirs.
func privateKeys(t *testing.T, dirs ...string) []siteKey {
	t.Helper()
	var out []siteKey
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !strings.HasSuffix(p, ".key") {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := pem.Decode(data)
			if b == nil {
				t.Fatalf("%s: not PEM", p)
			}
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			var raw []byte
			switch k := k.(type) {
			case *ecdsa.PrivateKey:
				raw = k.D.FillBytes(make([]byte, (k.Curve.Params().BitSize+7)/8))
			case ed25519.PrivateKey:
				raw = k.Seed()
			case *rsa.PrivateKey:
				raw = k.D.Bytes()
			}
			sk := siteKey{file: p, needles: [][]byte{raw}}
			// The PEM lines that spell at least 12 bytes of the secret
			// (line k holds the DER's bytes 48k to 48k+47; the others
			// hold the PKCS#8 header all keys share, or the public key,
			// which the certificates carry too).
			at := bytes.Index(b.Bytes, raw)
			if at < 0 {
				t.Fatalf("%s: the secret is not in the DER", p)
			}
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			for k, l := range lines[1 : len(lines)-1] {
				lo, hi := max(48*k, at), min(48*k+48, at+len(raw))
				if hi-lo >= 12 && len(l) == 64 {
					sk.needles = append(sk.needles, []byte(l))
				}
			}
			if len(sk.needles) < 2 {
				t.Fatalf("%s: no PEM line holds the secret", p)
			}
			out = append(out, sk)
			return nil
		})
	}
	return out
}

// pemLine is a full line of base64 from the middle of the PEM file p: a
// piece of the certificate that a configuration (JSON, with \n between
// lines) holds as it is.
func pemLine(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 4 {
		t.Fatalf("%s: not a PEM certificate", p)
	}
	return []byte(lines[2])
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return b
}

func tftpGet(t *testing.T, addr, name string) []byte {
	t.Helper()
	c, err := tftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetBlockSize(1428)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		t.Fatalf("tftp %s: %v", name, err)
	}
	var b bytes.Buffer
	if _, err := wt.WriteTo(&b); err != nil {
		t.Fatalf("tftp %s: %v", name, err)
	}
	return b.Bytes()
}

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// zstdRuns decodes every run of back-to-back zstd frames in data (a
// compressed file, or one inside an image: squashfs blocks, an
// initramfs on a FAT or ISO 9660 file system), each run as one buffer,
// so that what a file's consecutive blocks hold is searched whole.
func zstdRuns(data []byte, dec *zstd.Decoder) [][]byte {
	var out [][]byte
	for i := 0; ; {
		j := bytes.Index(data[i:], zstdMagic)
		if j < 0 {
			return out
		}
		start := i + j
		p := start
		var run []byte
		for {
			n, ok := zstdFrameLen(data[p:])
			if !ok {
				break
			}
			d, err := dec.DecodeAll(data[p:p+n], nil)
			if err != nil {
				break
			}
			run = append(run, d...)
			p += n
		}
		if p == start {
			i = start + 1
			continue
		}
		out = append(out, run)
		i = p
	}
}

// zstdFrameLen is the length of the zstd frame at the start of b (RFC
// 8878: header, blocks up to the last one, checksum).
func zstdFrameLen(b []byte) (int, bool) {
	if len(b) < 6 || !bytes.Equal(b[:4], zstdMagic) {
		return 0, false
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return 0, false // reserved bit
	}
	single := fhd&0x20 != 0
	p := 5
	if !single {
		p++ // window descriptor
	}
	p += [4]int{0, 1, 2, 4}[fhd&3]
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcs = 1
	}
	p += fcs
	for {
		if p+3 > len(b) {
			return 0, false
		}
		h := int(b[p]) | int(b[p+1])<<8 | int(b[p+2])<<16
		p += 3
		switch (h >> 1) & 3 {
		case 0, 2:
			p += h >> 3
		case 1:
			p++
		default:
			return 0, false
		}
		if p > len(b) {
			return 0, false
		}
		if h&1 != 0 {
			break
		}
	}
	if fhd&0x04 != 0 {
		p += 4
	}
	if p > len(b) {
		return 0, false
	}
	return p, true
}
