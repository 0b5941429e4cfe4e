package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fbenrol "github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/firstboot/report"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/fleet"
	fwire "github.com/bellbuild/bellbuild/pxe/fleet/wire"
)

// recorded is what serve's state directory holds for node (the file
// itself, not what the recorder says).
func (lab *enrolLab) recorded(t *testing.T, node string) []fleet.Stored {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(lab.state, filepath.FromSlash(fleet.Key(node))))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var h fleet.History
	if err := json.Unmarshal(data, &h); err != nil {
		t.Fatalf("%s: %v", fleet.Key(node), err)
	}
	return h.Reports
}

// queued is what waits on the node's root, read from the file.
func queued(t *testing.T, root string) []fwire.Report {
	t.Helper()
	q, err := report.Queued(root)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func testReport(node string, start time.Time, errs ...string) fwire.Report {
	r := fwire.Report{Node: node, Profile: "p", Config: "sha256:" + strings.Repeat("1", 64), Trigger: "apply",
		Changes: []fwire.Change{{Module: "files", Action: "create", Item: "/etc/motd"}}, Errors: []fwire.Error{},
		Start: start.UTC(), DurationMS: 12}
	for _, e := range errs {
		r.Errors = append(r.Errors, report.SplitError(e))
	}
	return r
}

// TestReports: a node's reports over real sockets, before and after its
// enrolment — refused from an address not leased to it (kept on the
// node), taken from its leased address as unverified (with what was
// kept), refused without a certificate once it is enrolled, taken with
// its host certificate as verified; a batch sent again is ignored; an
// unreachable serve keeps the newest reports only.
func TestReports(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{})
	ctx := context.Background()
	root := t.TempDir()
	c := lab.clientIn(t, filepath.Join(root, fbenrol.Dir), "n1", "52:54:00:00:00:01", io.Discard)
	if ok, err := c.Enrol(ctx, 0); ok || err != nil {
		t.Fatalf("Enrol = %v, %v; want pending", ok, err)
	}
	opts := report.Options{Root: root, Poster: c}
	t0 := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)

	// 1. No lease for 127.0.0.1: refused, kept on the node.
	r1 := testReport("n1", t0, "sysctl: net.ipv4.ip_forward: no such key")
	if _, err := report.Send(ctx, opts, r1); !errors.Is(err, report.ErrNotSent) || !strings.Contains(err.Error(), "has no lease") {
		t.Fatalf("Send without a lease: %v", err)
	}
	if q := queued(t, root); len(q) != 1 || q[0].Errors[0] != (fwire.Error{Module: "sysctl", Item: "net.ipv4.ip_forward", Message: "no such key"}) {
		t.Fatalf("queued after a refusal: %+v", q)
	}
	if got := lab.recorded(t, "n1"); len(got) != 0 {
		t.Fatalf("recorded without a lease: %+v", got)
	}

	// 2. Leased to another machine's MAC: still refused.
	lab.owners.lease("127.0.0.1", "52:54:00:00:00:02")
	if _, err := report.Send(ctx, opts, testReport("n1", t0.Add(time.Minute))); !errors.Is(err, report.ErrNotSent) || !strings.Contains(err.Error(), "which is not node n1") {
		t.Fatalf("Send from n2's address: %v", err)
	}

	// 3. From n1's leased address: the three, unverified; the queue is
	// emptied.
	lab.owners.lease("127.0.0.1", "52:54:00:00:00:01")
	ans, err := report.Send(ctx, opts, testReport("n1", t0.Add(2*time.Minute)))
	if err != nil || ans.Accepted != 3 || ans.Verified {
		t.Fatalf("Send from the leased address: %+v %v", ans, err)
	}
	if q := queued(t, root); len(q) != 0 {
		t.Errorf("queue after a send: %+v", q)
	}
	got := lab.recorded(t, "n1")
	if len(got) != 3 || got[0].Verified || got[0].From != "127.0.0.1" || !got[0].Start.Equal(t0) || got[2].Start != t0.Add(2*time.Minute) {
		t.Fatalf("recorded: %+v", got)
	}
	if got[0].Errors[0].Message != "no such key" || got[0].Changes[0].Item != "/etc/motd" {
		t.Errorf("recorded report 0: %+v", got[0].Report)
	}

	// 4. The same batch again: nothing new.
	var again fwire.Answer
	if _, _, err := c.Post(ctx, fwire.ReportsPath("n1"), fwire.Batch{Reports: []fwire.Report{r1}}, &again); err != nil || again.Accepted != 0 || again.Ignored != 1 {
		t.Errorf("a replayed report: %+v %v", again, err)
	}
	if n := len(lab.recorded(t, "n1")); n != 3 {
		t.Errorf("%d reports after a replay, want 3", n)
	}

	// 5. Enrolled: a report without the certificate is refused; with it,
	// verified.
	if _, err := lab.node(t, c.Fingerprint(), "approve", "n1"); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Enrol(ctx, 0); !ok || err != nil {
		t.Fatalf("Enrol after approval = %v, %v", ok, err)
	}
	other := lab.client(t, "n1", "52:54:00:00:00:01", io.Discard) // a new key, no certificate
	if _, err := report.Send(ctx, report.Options{Root: t.TempDir(), Poster: other}, testReport("n1", t0.Add(3*time.Minute))); !errors.Is(err, report.ErrNotSent) ||
		!strings.Contains(err.Error(), "node n1 is enrolled: its reports need its host certificate") {
		t.Errorf("an unverified report of an enrolled node: %v", err)
	}
	ans, err = report.Send(ctx, opts, testReport("n1", t0.Add(4*time.Minute)))
	if err != nil || ans.Accepted != 1 || !ans.Verified {
		t.Fatalf("Send with the host certificate: %+v %v", ans, err)
	}
	if got := lab.recorded(t, "n1"); len(got) != 4 || !got[3].Verified {
		t.Errorf("recorded after the verified report: %+v", got)
	}

	// 6. `bellbuild apply` on the node's root reports its run, with the
	// hash of the configuration the site renders for it, and its error
	// (the root has no /etc/passwd for the credential's owner).
	n1, err := lab.s.RenderNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	want, err := nodeconf.ConfigHash(n1)
	if err != nil {
		t.Fatal(err)
	}
	data, err := nodeconf.Marshal(n1, nodeconf.JSON)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "node.json")
	if err := os.WriteFile(conf, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := runCmd(t, "apply", "--config", conf, "--root", root, "--offline"); code != 1 || strings.Contains(stderr, "report") {
		t.Fatalf("apply: exit %d\n%s%s", code, stdout, stderr)
	}
	got = lab.recorded(t, "n1")
	last := got[len(got)-1]
	if len(got) != 5 || last.Trigger != "apply" || !last.Verified || last.Config != want || last.Profile != "p" ||
		len(last.Errors) != 1 || last.Errors[0] != (fwire.Error{Module: "credentials", Item: "svc", Message: `owner: user "root": not found in /etc/passwd`}) {
		t.Errorf("apply's report (want config %s): %+v", want, last)
	}

	// 7. Serve out of reach: the run goes on at once; the newest
	// reports are kept.
	// The node's real client, to a port where nothing listens.
	gone, err := fbenrol.New(fbenrol.Options{Endpoint: fbenrol.Endpoint{URL: "https://" + freePort(t), Node: "n1", MAC: "52:54:00:00:00:01", RootPin: lab.ep.root},
		Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dead := report.Options{Root: t.TempDir(), Poster: gone, Timeout: 2 * time.Second}
	start := time.Now()
	for i := range fwire.MaxBatch + 4 {
		if _, err := report.Send(ctx, dead, testReport("n1", t0.Add(time.Duration(i)*time.Hour))); !errors.Is(err, report.ErrNotSent) {
			t.Fatalf("Send %d to nobody: %v", i, err)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("%d sends to an unreachable serve took %v", fwire.MaxBatch+4, d)
	}
	q := queued(t, dead.Root)
	if len(q) != fwire.MaxBatch || !q[0].Start.Equal(t0.Add(4*time.Hour)) || !q[len(q)-1].Start.Equal(t0.Add(time.Duration(fwire.MaxBatch+3)*time.Hour)) {
		t.Errorf("queue: %d reports, from %v to %v; want the newest %d", len(q), q[0].Start, q[len(q)-1].Start, fwire.MaxBatch)
	}
}

// TestReportsRefused: what serve refuses of a node's reports, and that
// it records nothing of a refused batch.
func TestReportsRefused(t *testing.T) {
	lab := newEnrolLab(t, enrol.Options{})
	lab.owners.lease("127.0.0.1", "52:54:00:00:00:01")
	hc := lab.rawClient(t, nil)
	t0 := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	batch := func(rs ...fwire.Report) []byte { return mustJSON(t, fwire.Batch{Reports: rs}) }
	long := testReport("n1", t0)
	long.Errors = []fwire.Error{{Message: strings.Repeat("x", fwire.MaxText+1)}}
	many := make([]fwire.Report, fwire.MaxBatch+1)
	for i := range many {
		many[i] = testReport("n1", t0.Add(time.Duration(i)*time.Second))
	}
	for _, tt := range []struct {
		name, node string
		body       []byte
		code       int
		want       string
	}{
		{"malformed", "n1", []byte(`{"reports": [`), 400, "not the JSON this endpoint takes"},
		{"unknown field", "n1", []byte(`{"reports": [], "extra": 1}`), 400, "not the JSON this endpoint takes"},
		{"empty", "n1", batch(), 400, "a batch holds 1 to 16 reports, not 0"},
		{"too many", "n1", batch(many...), 400, "not 17"},
		{"another node's", "n1", batch(testReport("n2", t0)), 400, "sent for node"},
		{"no time", "n1", batch(testReport("n1", time.Time{})), 400, "no start time"},
		{"too long", "n1", batch(long), 400, "a text of 1025 bytes"},
		{"oversized", "n1", append([]byte(`{"reports": [{"node": "`), bytes.Repeat([]byte("a"), fwire.MaxBody)...), 413, "larger than"},
		{"for n2 from n1's address", "n2", batch(testReport("n2", t0)), 403, "which is not node n2"},
		{"bad node name", "N..1", batch(testReport("n1", t0)), 400, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := hc.Post(lab.url+fwire.ReportsPath(tt.node), "application/json", bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code || !strings.Contains(string(body), tt.want) {
				t.Errorf("%d %s, want %d with %q", resp.StatusCode, body, tt.code, tt.want)
			}
		})
	}
	for _, n := range []string{"n1", "n2"} {
		if got := lab.recorded(t, n); len(got) != 0 {
			t.Errorf("%s: recorded from refused batches: %+v", n, got)
		}
	}
}
