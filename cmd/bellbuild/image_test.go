package main

import (
	"crypto/sha256"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// TestImageAndRun is `make demo` in a temporary directory: the real binary
// bakes the embedded demo profile, then `run --node demo-1 --expect` boots
// it and returns as soon as the applier's summary names the node.
func TestImageAndRun(t *testing.T) {
	testtool.SkipVM(t)
	if _, err := os.Stat("/vmlinuz"); err != nil {
		testtool.Skipf(t, "no host kernel at /vmlinuz (apt-get install linux-image-amd64)")
	}
	bin := testtool.Binary(t)
	out := filepath.Join(t.TempDir(), "out")
	env := append(os.Environ(), "BELLBUILD_CACHE="+filepath.Join(t.TempDir(), "cache"))

	image := exec.Command(bin, "image", "demo", "-o", out, "--applier", bin)
	image.Env = env
	b, err := image.CombinedOutput()
	if err != nil {
		t.Fatalf("bellbuild image demo: %v\n%s", err, b)
	}
	for _, want := range []string{out + "/demo/vmlinuz\t", out + "/demo/initramfs.cpio.zst\t", "cmdline: console=ttyS0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("image output lacks %q:\n%s", want, b)
		}
	}

	run := exec.Command(bin, "run", "demo", "-o", out, "--node", "demo-1", "--timeout", "180s", "--expect", "bellbuild: node=demo-1 profile=demo")
	run.Env = env
	b, err = run.CombinedOutput()
	if err != nil {
		t.Fatalf("bellbuild run: %v\n%s", err, b)
	}
	for _, want := range []string{"bellbuild.node=demo-1", "[010-report.sh] demo: swappiness=30", `found "bellbuild: node=demo-1 profile=demo"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("run output lacks %q:\n%s", want, b)
		}
	}

	// A text that never comes: status 1 once the VM is gone or the time
	// is up (a bad kernel command line makes the VM panic and stop).
	fail := exec.Command(bin, "run", "demo", "-o", out, "--timeout", "180s", "--append", "rdinit=/nonexistent", "--expect", "never printed")
	fail.Env = env
	b, err = fail.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("run --expect of a missing text: %v, want exit status 1\n%s", err, b)
	}
}

func TestRunWithoutImage(t *testing.T) {
	var stdout strings.Builder
	err := runVM(t.Context(), runFlags{out: t.TempDir(), profile: "demo"}, nil, &stdout)
	if err == nil || !strings.Contains(err.Error(), "bake it first: bellbuild image demo") {
		t.Errorf("err = %v, want a hint to bake first", err)
	}
}

// TestRunMedia bakes a disk and an ISO of a busybox profile with a
// credential and boots each with `run --boot`, the node chosen by MAC: the
// disk under UEFI, the ISO under BIOS. `config write` filled the disk's
// config volume from the site's PKI: the disk's node gets its host
// certificate and credential in place, and an exec script prints each
// file's sha256 and mode on the console, which match what the PKI issued.
// The ISO carries the certificates only: its node reports the keys
// pending. The disk file is unchanged by the boot (the guest wrote to an
// overlay). Bad --boot uses are refused before a VM starts.
func TestRunMedia(t *testing.T) {
	testtool.SkipVM(t)
	for _, p := range []string{"/vmlinuz", testvm.OVMF, "/usr/lib/ISOLINUX/isolinux.bin"} {
		if _, err := os.Stat(p); err != nil {
			testtool.Skipf(t, "%v (Debian packages linux-image-amd64, ovmf, isolinux)", err)
		}
	}
	bin := testtool.Binary(t)
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "profiles/media.yaml"), `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0]
outputs: [raw, iso]
conf:
  sysctl:
    vm.swappiness: 31
  credentials:
  - name: web
  exec:
    050-credentials.sh:
      data: |
        #!/bin/sh
        cd /etc/credentials/x509 || exit 0
        for f in $(find . | sort); do
          if [ -f "$f" ]; then sum=$(sha256sum < "$f" | cut -d' ' -f1); else sum=dir; fi
          echo "cred $(stat -c '%a %u:%g' "$f") $sum $f"
        done
`)
	writeTestFile(t, filepath.Join(site, "site.yaml"), "domain: example.org\n")
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), "nodes:\n- name: m1\n  mac: 52:54:00:00:07:01\n  profile: media\n")
	pkiInit(t, site)
	out := filepath.Join(t.TempDir(), "out")
	env := append(os.Environ(), "BELLBUILD_CACHE="+filepath.Join(t.TempDir(), "cache"))
	image := exec.Command(bin, "image", "media", "-C", site, "-o", out, "--applier", bin)
	image.Env = env
	if b, err := image.CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image: %v\n%s", err, b)
	}
	disk := filepath.Join(out, "media", "disk.raw")
	write := exec.Command(bin, "config", "write", disk, "-C", site, "--node", "m1")
	write.Env = env
	if b, err := write.CombinedOutput(); err != nil {
		t.Fatalf("bellbuild config write: %v\n%s", err, b)
	}
	before := fileSum(t, disk)
	console := map[string]string{}
	for _, boot := range []string{"disk", "iso-bios"} {
		run := exec.Command(bin, "run", "media", "-o", out, "--boot", boot, "--mac", "52:54:00:00:07:01", "--timeout", "300s", "--expect", "bellbuild: node=m1 profile=media")
		run.Env = env
		b, err := run.CombinedOutput()
		if err != nil {
			t.Errorf("run --boot %s: %v\n%s", boot, err, b)
		}
		console[boot] = strings.ReplaceAll(string(b), "\r", "")
	}
	// The disk: every file the PKI issued for m1, at its path with its
	// mode and owner, byte for byte.
	issued := issuedFiles(t, site, "m1", "web")
	for p, want := range issued {
		if !strings.Contains(console["disk"], want+" ./"+p+"\n") {
			t.Errorf("the disk's console lacks %q for %s", want, p)
		}
	}
	if strings.Contains(console["disk"], "pending=") {
		t.Errorf("the disk's node reports pending credentials")
	}
	// The ISO (an image for any machine, which gets its certificates by
	// enrolment): the CAs go in, the credential's two certificates wait
	// (pending=2), and no certificate or key file is written.
	if !strings.Contains(console["iso-bios"], "errors=0 pending=2") || strings.Contains(console["iso-bios"], "private_key.pem") ||
		strings.Contains(console["iso-bios"], "cert.pem") || !strings.Contains(console["iso-bios"], issued["ca.pem"]+" ./ca.pem\n") {
		t.Errorf("the ISO's node: want the CAs, no certificate or key file, pending=2; console:\n%s", console["iso-bios"])
	}
	if fileSum(t, disk) != before {
		t.Error("booting the disk changed disk.raw")
	}
	// What run refuses, before any VM starts.
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--boot", "disk", "--node", "m1"}, "--node and --append need --boot kernel"},
		{[]string{"--boot", "floppy"}, `--boot "floppy": want kernel, disk, iso or iso-bios`},
	} {
		var stdout, stderr strings.Builder
		code := run(append([]string{"run", "media", "-o", out}, tc.args...), &stdout, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("run %q: exit %d, stderr %q, want 1 and %q", tc.args, code, stderr.String(), tc.msg)
		}
	}
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// issuedFiles is what /etc/credentials/x509 must hold for node's host
// certificate and credential name, from what the PKI issued and keeps:
// relative path → "MODE UID:GID SHA256" as the test script prints it.
func issuedFiles(t *testing.T, site, node, name string) map[string]string {
	t.Helper()
	sum := func(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }
	key := func(slot string) []byte {
		b, err := os.ReadFile(filepath.Join(site, "private/pki/keys", slot+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The newest certificate of each slot, from the PKI's log.
	certs := map[string][]byte{}
	log, err := os.ReadFile(filepath.Join(site, "private/pki/log.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(log)), "\n") {
		var r struct {
			Op, Slot string
			Cert     []byte
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		if r.Op == "issue" {
			certs[r.Slot] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Cert})
		}
	}
	var ca, crl []byte
	for _, k := range []string{"root", "hosts", "services", "users"} {
		for _, f := range []struct {
			to   *[]byte
			name string
		}{{&ca, k + ".pem"}, {&crl, k + ".crl.pem"}} {
			b, err := os.ReadFile(filepath.Join(site, "pki", f.name))
			if err != nil {
				t.Fatal(err)
			}
			*f.to = append(*f.to, b...)
		}
	}
	out := map[string]string{
		"ca.pem":               "644 0:0 " + sum(ca),
		"crl.pem":              "644 0:0 " + sum(crl),
		"host":                 "750 0:0 dir",
		"host/cert.pem":        "644 0:0 " + sum(certs["host/"+node]),
		"host/private_key.pem": "400 0:0 " + sum(key("host/"+node)),
		name:                   "750 0:0 dir",
	}
	for _, side := range []string{"client", "server"} {
		slot := "service/" + node + "/" + name + "/" + side
		out[name+"/"+side] = "750 0:0 dir"
		out[name+"/"+side+"/cert.pem"] = "644 0:0 " + sum(certs[slot])
		out[name+"/"+side+"/private_key.pem"] = "400 0:0 " + sum(key("service/"+node+"+"+name+"+"+side))
	}
	return out
}
