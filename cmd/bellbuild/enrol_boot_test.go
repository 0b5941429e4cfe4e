package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/boot"
	"github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	pxeenrol "github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// bootRoot is a root for the init's Run: the node's rendered file, a
// kernel command line naming the lab's endpoint, a busybox inittab.
func bootRoot(t *testing.T, lab *enrolLab, node string, edit func(*nodeconf.Node)) string {
	t.Helper()
	root := applyRoot(t)
	n, err := lab.s.RenderNode(node)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(n)
	}
	writeConf(t, filepath.Join(root, "node.json"), n)
	writeTestFile(t, filepath.Join(root, "etc/inittab"), "::sysinit:/etc/init.d/rcS\n")
	writeTestFile(t, filepath.Join(root, "proc/cmdline"), "console=ttyS0 bellbuild.node="+node+" "+
		wire.ParamURL+"="+lab.url+" "+wire.ParamCA+"="+lab.ep.root+" "+wire.ParamNet+"="+n.MACs[0]+",192.0.2.50,255.255.255.0,\n")
	return root
}

// TestBootEnrols runs the init's Run on a root whose command line names
// serve's endpoint: a manual node prints its pending line and waits; once
// approved it applies its whole configuration, its credentials installed
// with keys made on the node; a node with enrol_wait 0 carries on pending,
// with the day-2 run arranged, and that run (bellbuild apply) enrols it
// once approved.
func TestBootEnrols(t *testing.T) {
	lab := newEnrolLab(t, pxeenrol.Options{})
	ctx := context.Background()

	t.Run("waits for approval", func(t *testing.T) {
		root := bootRoot(t, lab, "n1", nil)
		con := &testtool.Buffer{}
		done := make(chan *boot.Result)
		go func() {
			done <- boot.Run(ctx, boot.Options{Root: root, Console: con, Config: "node.json",
				Enrol: boot.EnrolOptions{PollMin: 20 * time.Millisecond, PollMax: 50 * time.Millisecond}})
		}()
		fp := waitFor(t, con, `bellbuild: node=n1 enrolment pending fingerprint=(sha256:[0-9a-f]{64})`)
		if _, err := os.Stat(filepath.Join(root, "etc/credentials/x509/svc/client/private_key.pem")); err == nil {
			t.Fatal("a service key is in place before approval")
		}
		if _, err := lab.node(t, fp, "approve", "n1"); err != nil {
			t.Fatal(err)
		}
		res := <-done
		if !regexpMatch(`(?m)^bellbuild: node=n1 profile=p changes=\d+ errors=0 enrol=approved$`, con.String()) {
			t.Fatalf("console:\n%s", con.String())
		}
		if res.Node == nil || res.Node.Conf.X509 == nil {
			t.Fatalf("result node %+v", res.Node)
		}
		// The service key the credentials module installed is the one
		// the node made (and kept in its enrolment directory).
		installed, err := os.ReadFile(filepath.Join(root, "etc/credentials/x509/svc/client/private_key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		made, _ := os.ReadFile(filepath.Join(root, enrol.Dir, "credentials/svc.client.key"))
		if !bytes.Equal(installed, made) {
			t.Error("the installed service key is not the one made on the node")
		}
		if _, err := os.Stat(filepath.Join(root, "etc/credentials/x509/ca.pem")); err != nil {
			t.Error(err)
		}
		// Day 2 renews: the init left an hourly run.
		inittab, _ := os.ReadFile(filepath.Join(root, "etc/inittab"))
		if !strings.Contains(string(inittab), "::respawn:/bellbuild/bellbuild apply --config node.json --root / --node n1 --watch --resync 1h0m0s") {
			t.Errorf("no hourly day-2 run in inittab:\n%s", inittab)
		}
	})

	t.Run("carries on, day 2 enrols", func(t *testing.T) {
		root := bootRoot(t, lab, "n4", func(n *nodeconf.Node) { n.Enrol = &nodeconf.Enrol{Wait: "0s"} })
		con := &testtool.Buffer{}
		boot.Run(ctx, boot.Options{Root: root, Console: con, Config: "node.json"})
		out := con.String()
		fp := regexp.MustCompile(`enrolment pending fingerprint=(sha256:[0-9a-f]{64})`).FindStringSubmatch(out)
		if fp == nil || !regexpMatch(`(?m)^bellbuild: node=n4 profile=p changes=\d+ errors=0 pending=\d+ enrol=pending$`, out) {
			t.Fatalf("console:\n%s", out)
		}
		inittab, _ := os.ReadFile(filepath.Join(root, "etc/inittab"))
		if !strings.Contains(string(inittab), "::respawn:/bellbuild/bellbuild apply --config node.json --root / --node n4 --watch --resync 1m0s") {
			t.Errorf("no day-2 enrolment in inittab:\n%s", inittab)
		}
		// Day 2, still pending.
		code, stdout, stderr := runCmd(t, "apply", "--config", filepath.Join(root, "node.json"), "--root", root, "--node", "n4", "--offline")
		if code != 0 || !strings.HasSuffix(stdout, " enrol=pending\n") || !strings.Contains(stderr, "enrolment pending fingerprint="+fp[1]) {
			t.Fatalf("day 2 before approval: exit %d\n%s%s", code, stdout, stderr)
		}
		if _, err := lab.node(t, fp[1], "approve", "n4"); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr = runCmd(t, "apply", "--config", filepath.Join(root, "node.json"), "--root", root, "--node", "n4", "--offline")
		if code != 0 || !regexpMatch(`errors=0 enrol=approved\n$`, stdout) || strings.Contains(stdout, "pending=") {
			t.Fatalf("day 2 after approval: exit %d\n%s%s", code, stdout, stderr)
		}
		if _, err := os.Stat(filepath.Join(root, "etc/credentials/x509/svc/server/private_key.pem")); err != nil {
			t.Error(err)
		}
	})
}

// waitFor waits for a console line matching re and returns its first
// group.
func waitFor(t *testing.T, con *testtool.Buffer, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := rx.FindStringSubmatch(con.String()); m != nil {
			return m[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no console line matches %s:\n%s", re, con.String())
	return ""
}
