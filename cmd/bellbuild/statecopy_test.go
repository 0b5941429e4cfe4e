package main

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/pxe/fleet"
	fwire "github.com/bellbuild/bellbuild/pxe/fleet/wire"
	"github.com/bellbuild/bellbuild/pxe/leases"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
	"github.com/bellbuild/bellbuild/pxe/state/etcd/etcdtest"
)

// copySource is a state directory as serve leaves it: an enrolment
// record, reports, and a lease file of three leases (one renewed).
func copySource(t *testing.T) (dir string, want []leases.Lease) {
	t.Helper()
	dir = t.TempDir()
	st, err := pxestate.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := st.Update(ctx, "enrol/nodes/n1", func([]byte) ([]byte, error) { return []byte(`{"node":"n1","key":"sha256:ab"}`), nil }); err != nil {
		t.Fatal(err)
	}
	rec := fleet.NewRecorder(st, fleet.Options{})
	if _, err := rec.Record(ctx, "n1", []fwire.Report{testReport("n1", time.Now())}, true, "192.0.2.5"); err != nil {
		t.Fatal(err)
	}
	l, err := leases.Open(filepath.Join(dir, "leases"), leases.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, ip := range []string{"192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.10"} {
		mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, byte(i % 3)}
		if _, err := l.Ack(ctx, mac, netip.MustParseAddr(ip), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	want = l.Leases()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, want
}

// files is every file under dir but the lease file and locks.
func files(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".lock") || filepath.Base(p) == "leases" {
			return err
		}
		data, _ := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = string(data)
		return nil
	})
	return out
}

func checkCopied(t *testing.T, src, dst string, want []leases.Lease) {
	t.Helper()
	if diff := cmp.Diff(files(t, src), files(t, dst)); diff != "" {
		t.Errorf("state after the round trip (-before +after):\n%s", diff)
	}
	got, err := leases.ReadLog(filepath.Join(dst, "leases"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(leaseLines(want), leaseLines(got)); diff != "" {
		t.Errorf("leases (-want +got):\n%s", diff)
	}
}

// TestStateCopyDir: directory to directory; a second copy into a
// target that holds another value for a key stops, overwriting nothing.
func TestStateCopyDir(t *testing.T) {
	src, want := copySource(t)
	dst := filepath.Join(t.TempDir(), "new")
	site := filepath.Join(t.TempDir(), "site")
	for name, data := range statusSite {
		writeTestFile(t, filepath.Join(site, name), data)
	}
	if code, out, errs := runCmd(t, "state", "copy", "-C", site, "--from", src, "--to", dst); code != 0 || out != "copied 2 keys and 3 leases\n" {
		t.Fatalf("state copy: exit %d, %q %s", code, out, errs)
	}
	checkCopied(t, src, dst, want)
	other := filepath.Join(t.TempDir(), "other")
	writeTestFile(t, filepath.Join(other, "enrol/nodes/n1"), `{"node":"n1","key":"sha256:cd"}`)
	if code, _, errs := runCmd(t, "state", "copy", "-C", site, "--from", src, "--to", other); code != 1 || !strings.Contains(errs, "state enrol/nodes/n1: the target holds another value: not overwritten") {
		t.Errorf("copy onto another value: exit %d, %s", code, errs)
	}
	if data, _ := os.ReadFile(filepath.Join(other, "enrol/nodes/n1")); string(data) != `{"node":"n1","key":"sha256:cd"}` {
		t.Errorf("the target's value was overwritten: %s", data)
	}
}

// TestStateCopyEtcd: a directory to a real etcd cluster and back: the
// same state, byte for byte, and the same leases.
func TestStateCopyEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd cluster: skipped under -short")
	}
	c := etcdtest.Start(t, etcdtest.Options{})
	src, want := copySource(t)
	dst := filepath.Join(t.TempDir(), "back")
	site := filepath.Join(t.TempDir(), "site")
	for name, data := range statusSite {
		writeTestFile(t, filepath.Join(site, name), data)
	}
	for _, step := range [][2]string{{src, c.URL()}, {c.URL(), dst}} {
		if code, out, errs := runCmd(t, "state", "copy", "-C", site, "--from", step[0], "--to", step[1]); code != 0 || out != "copied 2 keys and 3 leases\n" {
			t.Fatalf("state copy %s -> %s: exit %d, %q %s", step[0], step[1], code, out, errs)
		}
	}
	checkCopied(t, src, dst, want)
}

func leaseLines(ls []leases.Lease) []string {
	var out []string
	for _, l := range ls {
		out = append(out, fmt.Sprintf("%s %s %d", l.IP, l.MAC, l.Expiry.Unix()))
	}
	return out
}
