package fstree

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestLess(t *testing.T) {
	paths := []string{"a-c", "a/b", ".", "a", "b", "a/b/c", "a.d", "a/b-c", "ab"}
	sort.Slice(paths, func(i, j int) bool { return Less(paths[i], paths[j]) })
	want := []string{".", "a", "a/b", "a/b/c", "a/b-c", "a-c", "a.d", "ab", "b"}
	if d := cmp.Diff(want, paths); d != "" {
		t.Errorf("order (-want +got):\n%s", d)
	}
}

func paths(es []*Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Path)
	}
	return out
}

func TestAddMakesParentsAndReplaces(t *testing.T) {
	tr := New()
	tr.AddFile("/usr/bin/../bin/env", []byte("x"), 0o755, 0, 0)
	if d := cmp.Diff([]string{".", "usr", "usr/bin", "usr/bin/env"}, paths(tr.Walk())); d != "" {
		t.Fatalf("walk (-want +got):\n%s", d)
	}
	// A file replacing a directory removes what was below it.
	tr.Add(Entry{Path: "usr/bin", Type: Symlink, Target: "/bin"})
	if d := cmp.Diff([]string{".", "usr", "usr/bin"}, paths(tr.Walk())); d != "" {
		t.Fatalf("walk after replace (-want +got):\n%s", d)
	}
	// A path below a non-directory turns it into a directory.
	tr.AddFile("usr/bin/env", []byte("x"), 0o755, 0, 0)
	if e := tr.Get("usr/bin"); e.Type != Dir || e.Mode != 0o755 {
		t.Fatalf("usr/bin is %s %v, want a 0755 dir", e.Type, e.Mode)
	}
}

func TestLinksSurviveRemoveAndReplace(t *testing.T) {
	mk := func() *Tree {
		tr := New()
		tr.AddFile("bin/busybox", []byte("BB"), 0o755, 0, 0)
		for _, p := range []string{"bin/sh", "sbin/init", "usr/bin/ls"} {
			tr.Add(Entry{Path: p, Type: Regular, LinkTo: "bin/busybox"})
		}
		return tr
	}
	group := func(tr *Tree) []string {
		var out []string
		seen := map[*LinkGroup]bool{}
		links := tr.Links()
		for _, e := range tr.Walk() {
			g := links[e.Path]
			if g == nil || seen[g] {
				continue
			}
			seen[g] = true
			out = append(out, "head="+g.Head.Path)
			out = append(out, paths(g.Members)...)
			if string(g.Head.Data.(Bytes)) != "BB" {
				t.Errorf("head %s lost the content", g.Head.Path)
			}
		}
		return out
	}
	tests := []struct {
		name string
		do   func(*Tree)
		want []string
	}{
		{"as built", func(*Tree) {}, []string{"head=bin/busybox", "bin/busybox", "bin/sh", "sbin/init", "usr/bin/ls"}},
		{"head removed", func(tr *Tree) { tr.Remove("bin/busybox") }, []string{"head=bin/sh", "bin/sh", "sbin/init", "usr/bin/ls"}},
		{"head's dir removed", func(tr *Tree) { tr.Remove("bin") }, []string{"head=sbin/init", "sbin/init", "usr/bin/ls"}},
		{"head replaced", func(tr *Tree) { tr.AddFile("bin/busybox", []byte("new"), 0o755, 0, 0) }, []string{"head=bin/sh", "bin/sh", "sbin/init", "usr/bin/ls"}},
		{"member removed", func(tr *Tree) { tr.Remove("sbin/init") }, []string{"head=bin/busybox", "bin/busybox", "bin/sh", "usr/bin/ls"}},
		{"all but one gone", func(tr *Tree) { tr.Remove("bin"); tr.Remove("sbin") }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := mk()
			tc.do(tr)
			if d := cmp.Diff(tc.want, group(tr)); d != "" {
				t.Errorf("groups (-want +got):\n%s", d)
			}
		})
	}
}

func TestMergeKeepsLowerDirectories(t *testing.T) {
	lower := New()
	lower.Add(Entry{Path: "home/alice", Type: Dir, Mode: 0o700, UID: 1000, GID: 1000})
	upper := New()
	upper.AddFile("home/alice/.profile", []byte("x"), 0o600, 1000, 1000)
	upper.Add(Entry{Path: "srv", Type: Dir, Mode: 0o750, UID: 7})
	upper.AddFile("srv/www/index.html", []byte("x"), 0o644, 0, 0)
	lower.Merge(upper)
	s, err := lower.Summary()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		". dir 0755 0:0",
		"home dir 0755 0:0",
		"home/alice dir 0700 1000:1000",
		"home/alice/.profile file 0600 1000:1000 size=1 sha256=2d711642b726b044",
		"srv dir 0750 7:0",
		"srv/www dir 0755 0:0",
		"srv/www/index.html file 0644 0:0 size=1 sha256=2d711642b726b044",
	}
	if d := cmp.Diff(want, s); d != "" {
		t.Errorf("merged (-want +got):\n%s", d)
	}
}

func TestUnixMode(t *testing.T) {
	tests := []struct {
		typ  Type
		mode fs.FileMode
		unix uint32
	}{
		{Regular, 0o644, 0o100644},
		{Regular, 0o755 | fs.ModeSetuid, 0o104755},
		{Dir, 0o777 | fs.ModeSticky, 0o041777},
		{Dir, 0o2775&^0o2000 | fs.ModeSetgid, 0o042775},
		{Symlink, 0o777, 0o120777},
		{CharDev, 0o666, 0o020666},
		{BlockDev, 0o660, 0o060660},
		{FIFO, 0o600, 0o010600},
		{Socket, 0o755, 0o140755},
	}
	for _, tc := range tests {
		t.Run(tc.typ.String(), func(t *testing.T) {
			e := Entry{Type: tc.typ, Mode: tc.mode}
			if got := e.UnixMode(); got != tc.unix {
				t.Errorf("UnixMode = %#o, want %#o", got, tc.unix)
			}
			typ, mode, err := FromUnixMode(tc.unix)
			if err != nil || typ != tc.typ || mode != tc.mode {
				t.Errorf("FromUnixMode(%#o) = %s %v %v", tc.unix, typ, mode, err)
			}
		})
	}
	if _, _, err := FromUnixMode(0o070644); err == nil {
		t.Error("type 07 accepted")
	}
}

// TestMergeLinkGroups: an upper layer's hardlinks name the upper layer's
// files, whatever the walk order; lower names not in the upper layer keep
// the lower content, still linked together.
func TestMergeLinkGroups(t *testing.T) {
	layer := func(content string, names ...string) *Tree {
		tr := New()
		// The head sorts after its links, so a naive in-order merge
		// would replace it after they were re-pointed.
		tr.AddFile("z/head", []byte(content), 0o755, 0, 0)
		for _, n := range names {
			tr.Add(Entry{Path: n, Type: Regular, LinkTo: "z/head", Size: int64(len(content)), Data: Bytes(content)})
		}
		return tr
	}
	lower := layer("old", "a/one", "b/two", "c/three")
	lower.Merge(layer("new", "a/one", "b/two"))
	s, err := lower.Summary()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		". dir 0755 0:0",
		"a dir 0755 0:0",
		"a/one file 0755 0:0 size=3 sha256=11507a0e2f5e69d5 links=a/one,b/two,z/head",
		"b dir 0755 0:0",
		"b/two file 0755 0:0 size=3 sha256=11507a0e2f5e69d5 links=a/one,b/two,z/head",
		"c dir 0755 0:0",
		"c/three file 0755 0:0 size=3 sha256=cba06b5736faf67e",
		"z dir 0755 0:0",
		"z/head file 0755 0:0 size=3 sha256=11507a0e2f5e69d5 links=a/one,b/two,z/head",
	}
	if d := cmp.Diff(want, s); d != "" {
		t.Errorf("merged (-want +got):\n%s", d)
	}
}

// TestLinkInvariants applies random adds, removes and merges and checks,
// after each, that every hardlink names an existing regular file and that
// the per-target counts match the entries.
func TestLinkInvariants(t *testing.T) {
	names := []string{"a", "a/b", "a/b/c", "a/d", "e", "e/f", "g", "h"}
	r := rand.New(rand.NewPCG(7, 8))
	randomTree := func(tr *Tree, ops int) {
		for range ops {
			p := names[r.IntN(len(names))]
			switch r.IntN(6) {
			case 0, 1:
				tr.AddFile(p, []byte(p), 0o644, 0, 0)
			case 2:
				tr.Add(Entry{Path: p, Type: Dir, Mode: 0o755})
			case 3:
				tr.Add(Entry{Path: p, Type: Symlink, Target: "x"})
			case 4:
				target := names[r.IntN(len(names))]
				if e := tr.Get(target); e != nil && e.Type == Regular && target != p {
					tr.Add(Entry{Path: p, Type: Regular, LinkTo: target, Size: e.Size, Data: e.Data})
				}
			case 5:
				tr.Remove(p)
			}
		}
	}
	check := func(tr *Tree, step string) {
		t.Helper()
		counts := map[string]int{}
		for _, e := range tr.Walk() {
			if e.LinkTo == "" {
				continue
			}
			counts[e.LinkTo]++
			if target := tr.Get(e.LinkTo); target == nil || target.Type != Regular {
				t.Fatalf("%s: %s links to %s, which is %v", step, e.Path, e.LinkTo, target)
			}
		}
		if d := cmp.Diff(counts, tr.linkers, cmpopts.EquateEmpty()); d != "" {
			t.Fatalf("%s: link counts (-actual +kept):\n%s", step, d)
		}
	}
	for i := range 2000 {
		tr := New()
		randomTree(tr, 12)
		check(tr, fmt.Sprintf("tree %d", i))
		upper := New()
		randomTree(upper, 6)
		tr.Merge(upper)
		check(tr, fmt.Sprintf("merge %d", i))
	}
}
