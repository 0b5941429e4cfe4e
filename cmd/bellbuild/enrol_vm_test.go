package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// enrolVMSite is a busybox site whose nodes enrol: n1 is approved by
// hand, f1 and f2 by first key. Each has a credential, and a script that
// says on the console whether its key is there, and the hashes of its key
// and certificate when it is.
const enrolVMProfile = `stage: {busybox: {}}
kernel: {path: /vmlinuz}
cmdline: [console=ttyS0, quiet]
conf:
  credentials:
  - {name: svc}
  files:
    /etc/lab/token:
      content: !secret lab-token
      mode: "0600"
  exec:
    010-svc.sh:
      rerun_policy: always
      data: |
        #!/bin/sh
        d=/etc/credentials/x509/svc/client
        if [ -f $d/private_key.pem ]; then
          echo "lab: svc key=$(sha256sum $d/private_key.pem | cut -d' ' -f1) cert=$(sha256sum $d/cert.pem | cut -d' ' -f1)"
        else
          echo "lab: svc key none"
        fi
        if [ -f /etc/lab/token ]; then
          echo "lab: token=$(sha256sum /etc/lab/token | cut -d' ' -f1)"
        else
          echo "lab: token none"
        fi
`

const enrolVMNodes = `nodes:
- {name: n1, mac: "52:54:00:00:00:01", profile: lab}
- {name: f1, mac: "52:54:00:00:00:11", profile: lab, enrol: first-key}
- {name: f2, mac: "52:54:00:00:00:12", profile: lab, enrol: first-key}
`

// TestEnrolmentVMs network-boots busybox VMs from serve in a namespace:
//
//  1. a manual node prints its pending line and its fingerprint, and has
//     no service key; `node approve` with that fingerprint, and within
//     one poll it converges: its summary says enrol=approved and its
//     script reads back the key and the certificate serve signed;
//  2. a second VM with the same MAC (a new key: the node is diskless) is
//     refused and gets nothing;
//  3. `node retire`: the node's next renewal is refused, openssl
//     verify -crl_check rejects its certificate, node list says retired;
//  4. two first-key nodes boot at once with no operator action;
//  5. `bellbuild run -C SITE` enrols its VM with an endpoint of its own.
func TestEnrolmentVMs(t *testing.T) {
	testtool.SkipVM(t)
	openssl := testtool.LookPath(t, "openssl", "openssl")
	ns := newNetns(t, 4)
	bin := testtool.Binary(t)
	site := t.TempDir()
	writeTestFile(t, filepath.Join(site, "site.yaml"), "domain: example.org\n")
	writeTestFile(t, filepath.Join(site, "profiles/lab.yaml"), enrolVMProfile)
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), enrolVMNodes)
	if out, err := exec.Command(bin, "pki", "init", "-C", site, "--root-out", t.TempDir()).CombinedOutput(); err != nil {
		t.Fatalf("pki init: %v\n%s", err, out)
	}
	// A secret file: serve's identity decrypts it, for approved nodes only.
	identity := filepath.Join(t.TempDir(), "serve.age")
	recipient, err := exec.Command(bin, "secret", "keygen", "-o", identity).Output()
	if err != nil {
		t.Fatalf("secret keygen: %v", err)
	}
	writeTestFile(t, filepath.Join(site, "secrets/recipients.txt"), strings.TrimSpace(string(recipient))+"\n")
	const token = "lab-token-5f1c2e9a\n"
	set := exec.Command(bin, "secret", "set", "-C", site, "lab-token")
	set.Stdin = strings.NewReader(token)
	if out, err := set.CombinedOutput(); err != nil {
		t.Fatalf("secret set: %v\n%s", err, out)
	}
	tokenSum := fmt.Sprintf("%x", sha256.Sum256([]byte(token)))
	out := t.TempDir()
	if b, err := exec.Command(bin, "image", "lab", "-C", site, "-o", out).CombinedOutput(); err != nil {
		t.Fatalf("bellbuild image: %v\n%s", err, b)
	}
	state := t.TempDir()
	log := startServe(t, ns, bin, "-C", site, "--pool", "192.0.2.100-192.0.2.199", "--artifacts", out, "--state", state, "--identity", identity)
	if !strings.Contains(log.String(), "https=0.0.0.0:8443") {
		t.Fatalf("serve opened no enrolment endpoint:\n%s", log.String())
	}
	qemu := ns.qemu(t)
	nodeCmd := func(args ...string) string {
		t.Helper()
		o, err := exec.Command(bin, append([]string{"node"}, append(args, "-C", site, "--state", state)...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, o)
		}
		return string(o)
	}
	boot := func(t testing.TB, tap, mac string) *testtool.VM {
		return testtool.NewVM(t, testvm.Config{Binary: qemu, BootNetwork: true,
			NICs: []testvm.NIC{{Netdev: "tap", Ifname: tap, MAC: mac}}})
	}

	// The first three steps share n1's VM: one test, no subtests (a VM
	// belongs to the test that made it).
	// 1. A manual node, approved.
	vm1 := boot(t, "tap0", "52:54:00:00:00:01")
	var fp string
	{
		fp = vm1.Wait(`bellbuild: node=n1 enrolment pending fingerprint=(sha256:[0-9a-f]{64})`)[1]
		if !strings.Contains(vm1.Console(), "lab: svc key none") || !strings.Contains(vm1.Console(), "lab: token none") {
			t.Errorf("before approval the script did not say the key and the secret are missing:\n%s", vm1.Console())
		}
		if l := nodeCmd("list"); !regexpMatch(`(?m)^n1 +pending +manual +`+fp+` +192\.0\.2\.1\d\d `, l) {
			t.Errorf("node list:\n%s", l)
		}
		nodeCmd("approve", "n1", "--fingerprint", fp)
		m := vm1.Wait(`lab: svc key=([0-9a-f]{64}) cert=([0-9a-f]{64})`)
		// The secret file came with the approved configuration.
		vm1.Wait(`lab: token=` + tokenSum)
		vm1.Wait(`bellbuild: node=n1 profile=lab changes=\d+ errors=0 enrol=approved`)
		// The certificate in place is the one serve signed for n1's svc.
		if want := issuedCertSum(t, site, "service/n1/svc/client"); m[2] != want {
			t.Errorf("installed certificate sha256 %s, want %s (the PKI's)", m[2], want)
		}
		// Nothing serve keeps holds the key.
		filepath.WalkDir(state, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if data, _ := os.ReadFile(p); strings.Contains(string(data), "PRIVATE KEY") {
					t.Errorf("%s holds a private key", p)
				}
			}
			return nil
		})
	}
	if t.Failed() {
		return
	}

	// 2. A second VM with the same MAC.
	{
		// n1 takes its NIC down while the impostor has its MAC.
		vm1.Wait(`busybox init: shell on ttyS0`)
		time.Sleep(2 * time.Second) // the shell's prompt
		vm1.Write([]byte("ip link set eth0 down; echo lab: link down\n"))
		vm1.Wait(`^lab: link down`)
		vm2 := boot(t, "tap1", "52:54:00:00:00:01")
		fp2 := vm2.Wait(`bellbuild: node=n1 enrolment refused fingerprint=(sha256:[0-9a-f]{64}): node n1 is enrolled with another key`)[1]
		if fp2 == fp {
			t.Fatal("the second VM has the first one's key")
		}
		if strings.Contains(vm2.Console(), "lab: svc key=") || !strings.Contains(vm2.Console(), "lab: svc key none") ||
			strings.Contains(vm2.Console(), "lab: token=") || !strings.Contains(vm2.Console(), "lab: token none") {
			t.Errorf("the impostor got a key or the secret:\n%s", vm2.Console())
		}
		vm2.Close()
		warned := `level=WARN msg="enrol: another key for an enrolled node refused" node=n1 mac=52:54:00:00:00:01 fingerprint=` + fp2 + ` enrolled=` + fp + ` from=192\.0\.2\.`
		for i := 0; !regexpMatch(warned, log.String()); i++ {
			if i == 50 { // serve flushes its log every 100 ms
				t.Errorf("serve's log has no warning with both fingerprints and the address")
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if m := fetch(t, ns, "http://192.0.2.1:8080/metrics"); !strings.Contains(m, `bellbuild_enrol_refused_total{reason="key-mismatch"}`) {
			t.Errorf("/metrics does not count the refusal")
		}
		vm1.Write([]byte("ip link set eth0 up; echo lab: link up\n"))
		vm1.Wait(`^lab: link up`)
	}

	// 3. Retired.
	{
		// The node's host certificate, as serve recorded it.
		var rec enrol.Record
		data, err := os.ReadFile(filepath.Join(state, enrol.NodeKey("n1")))
		if err != nil || json.Unmarshal(data, &rec) != nil || rec.Cert == "" {
			t.Fatalf("n1's record: %v", err)
		}
		certFile := filepath.Join(t.TempDir(), "host.pem")
		os.WriteFile(certFile, []byte(rec.Cert), 0o644)
		if o := nodeCmd("retire", "n1"); !strings.Contains(o, "retired node n1") {
			t.Fatalf("retire: %s", o)
		}
		// The node's clock in the last third of its certificate's life:
		// its next run (the hourly one the init left, here one by hand)
		// asks for a renewal, which is refused.
		vm1.Write([]byte("date -s @$(( $(date +%s) + 250*86400 )) >/dev/null; /bellbuild/bellbuild apply --config /etc/bellbuild/bundle.json --root / --node n1 2>&1 | grep -v level=; echo lab: apply done\n"))
		vm1.Wait(`renewing the host certificate: refused by serve: node n1 is retired`)
		vm1.Wait(`bellbuild: node=n1 profile=lab changes=\d+ errors=0 pending=\d+ enrol=refused`)
		vm1.Wait(`^lab: apply done`)
		ca := filepath.Join(t.TempDir(), "ca.pem")
		var bundle []byte
		for _, k := range []string{"root", "hosts"} {
			d, _ := os.ReadFile(filepath.Join(site, "pki", k+".pem"))
			bundle = append(bundle, d...)
		}
		os.WriteFile(ca, bundle, 0o644)
		if o, err := execCommand(openssl, "verify", "-CAfile", ca, certFile); err != nil {
			t.Fatalf("openssl verify without the CRL: %v\n%s", err, o)
		}
		if o, err := execCommand(openssl, "verify", "-CAfile", ca, "-crl_check", "-CRLfile", filepath.Join(site, "pki", "hosts.crl.pem"), certFile); err == nil || !strings.Contains(o, "certificate revoked") {
			t.Errorf("openssl verify -crl_check accepted the retired node's certificate: %v\n%s", err, o)
		}
		if l := nodeCmd("list"); !regexpMatch(`(?m)^n1 +retired +manual `, l) {
			t.Errorf("node list:\n%s", l)
		}
	}
	vm1.Close()

	t.Run("first-key nodes, no operator", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, n := range []struct{ name, mac, tap string }{{"f1", "52:54:00:00:00:11", "tap2"}, {"f2", "52:54:00:00:00:12", "tap3"}} {
			wg.Go(func() {
				vm := boot(t, n.tap, n.mac)
				vm.Wait(`lab: svc key=[0-9a-f]{64}`)
				vm.Wait(`bellbuild: node=` + n.name + ` profile=lab changes=\d+ errors=0 enrol=approved`)
			})
		}
		wg.Wait()
		if l := nodeCmd("list"); !regexpMatch(`(?m)^f1 +approved +first-key `, l) || !regexpMatch(`(?m)^f2 +approved +first-key `, l) {
			t.Errorf("node list:\n%s", l)
		}
	})

	// 5. bellbuild run starts an endpoint of its own for the VM (first key).
	t.Run("run", func(t *testing.T) {
		cmd := exec.Command(bin, "run", "lab", "-C", site, "-o", out, "--node", "n1", "--timeout", "170s", "--expect", "enrol=approved")
		o, err := cmd.CombinedOutput()
		if err != nil || !regexpMatch(`lab: svc key=[0-9a-f]{64}`, string(o)) {
			t.Errorf("bellbuild run: %v\n%s", err, o)
		}
	})
}

// issuedCertSum is the SHA-256 of the PEM chain the enrolment endpoint
// sends for slot's newest certificate (the certificate, then its CA's), as
// the node writes it to cert.pem.
func issuedCertSum(t *testing.T, site, slot string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(site, "private", "pki", "log.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var der []byte
	for _, l := range strings.Split(string(data), "\n") {
		var r struct {
			Op, Slot string
			Cert     string
		}
		if json.Unmarshal([]byte(l), &r) == nil && r.Op == "issue" && r.Slot == slot {
			der, _ = base64.StdEncoding.DecodeString(r.Cert)
		}
	}
	if der == nil {
		t.Fatalf("no %s in the PKI's log", slot)
	}
	ca, _ := os.ReadFile(filepath.Join(site, "pki", string(pki.Services)+".pem"))
	sum := sha256.Sum256(append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca...))
	return hex.EncodeToString(sum[:])
}
