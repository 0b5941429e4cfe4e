package profiles_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/sitediff"
	"github.com/bellbuild/bellbuild/profiles/siterev"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// BenchmarkDiff is `bellbuild diff -C SITE HEAD~1 HEAD` of the 5,000-node
// site (profiles.GenSite, 200 profiles) whose two revisions differ in one
// base profile: a sysctl of p000, which every profile and node inherits
// (the most a one-line change can touch). Each op reads both revisions through git archive,
// loads (checks, renders) both, renders every node and image spec of
// both and compares them (goal: under 2 s).
func BenchmarkDiff(b *testing.B) {
	if _, err := exec.LookPath("git"); err != nil {
		testtool.Skipf(b, "git not found (apt-get install git)")
	}
	repo := b.TempDir()
	profiles.GenSite(b, repo, 200, 5000)
	git := func(args ...string) {
		b.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.org"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q")
	git("add", ".")
	git("commit", "-q", "-m", "site")
	base := filepath.Join(repo, "profiles", "p000.yaml")
	data, err := os.ReadFile(base)
	if err != nil {
		b.Fatal(err)
	}
	changed := strings.Replace(string(data), "    kernel.p0.a: 1\n", "    kernel.p0.a: 7\n", 1)
	if changed == string(data) {
		b.Fatal("p000 has no kernel.p0.a: 1")
	}
	if err := os.WriteFile(base, []byte(changed), 0o644); err != nil {
		b.Fatal(err)
	}
	git("commit", "-q", "-am", "p000: kernel.p0.a 7")
	nodes := 0
	cpu := profiles.CPUTime()
	for b.Loop() {
		// Both revisions at once, as the command reads them.
		var sides [2]sitediff.Side
		var errs [2]error
		var wg sync.WaitGroup
		for i, rev := range []string{"HEAD~1", "HEAD"} {
			wg.Go(func() {
				s, tmp, err := siterev.Checkout(b.Context(), repo, rev, "")
				sides[i], errs[i] = sitediff.Side{Site: s, Dir: tmp}, err
			})
		}
		wg.Wait()
		if err := errors.Join(errs[:]...); err != nil {
			b.Fatal(err)
		}
		r, err := sitediff.Compare(sides[0], sides[1])
		for _, sd := range sides {
			os.RemoveAll(sd.Dir)
		}
		if err != nil {
			b.Fatal(err)
		}
		nodes = len(r.Nodes)
	}
	if nodes == 0 {
		b.Fatal("no node changes")
	}
	b.ReportMetric((profiles.CPUTime()-cpu).Seconds()/float64(b.N), "cpu-s/op")
	b.ReportMetric(float64(nodes), "nodes-changed")
}
