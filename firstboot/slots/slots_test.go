package slots

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/layout"
)

// espWith makes an ESP directory holding entries named names, each with
// the image hash "img-NAME".
func espWith(t *testing.T, names ...string) ESP {
	t.Helper()
	e := ESP{Dir: t.TempDir()}
	dir := filepath.Join(e.Dir, layout.EntriesDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		en, ok := layout.ParseEntry(n)
		text := "not an entry\n"
		if ok {
			text = layout.EntryText("t", en.Slot, layout.SlotCmdline("console=ttyS0", en.Slot, "img-"+n[:len("bellbuild-1-a")]))
		}
		if err := os.WriteFile(filepath.Join(dir, n), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func files(t *testing.T, e ESP) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(e.Dir, layout.EntriesDir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range ents {
		out = append(out, d.Name())
	}
	sort.Strings(out)
	return out
}

func TestEntries(t *testing.T) {
	e := espWith(t, "bellbuild-1-a.conf", "bellbuild-2-b+1-2.conf", "README")
	ents, err := e.Entries()
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 || ents[0].Slot != "b" || ents[0].Image != "img-bellbuild-2-b" || ents[1].Image != "img-bellbuild-1-a" {
		t.Fatalf("entries %+v", ents)
	}
	if !strings.Contains(ents[0].Options, "bellbuild.root=PARTLABEL=root-b") {
		t.Errorf("options %q", ents[0].Options)
	}
}

func TestMarkGood(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before []string
		slot   string
		marked bool
		after  []string
	}{
		{"on trial", []string{"bellbuild-1-a.conf", "bellbuild-2-b+2-1.conf"}, "b", true, []string{"bellbuild-1-a.conf", "bellbuild-2-b.conf"}},
		{"last try", []string{"bellbuild-1-a+0-3.conf"}, "a", true, []string{"bellbuild-1-a.conf"}},
		{"good already", []string{"bellbuild-1-a.conf", "bellbuild-2-b.conf"}, "b", false, []string{"bellbuild-1-a.conf", "bellbuild-2-b.conf"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := espWith(t, tc.before...)
			marked, err := e.MarkGood(tc.slot)
			if err != nil || marked != tc.marked {
				t.Fatalf("MarkGood = %v, %v; want %v", marked, err, tc.marked)
			}
			if d := cmp.Diff(tc.after, files(t, e)); d != "" {
				t.Errorf("entries (-want +got):\n%s", d)
			}
		})
	}
	if _, err := espWith(t, "bellbuild-1-a.conf").MarkGood("b"); err == nil {
		t.Error("marking a slot without an entry: no error")
	}
}

func TestFailedUpgrade(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []string
		running string
		want    string // the failed entry's image, "" for none
	}{
		{"fell back", []string{"bellbuild-2-b.conf", "bellbuild-3-a+0-3.conf"}, "b", "img-bellbuild-3-a"},
		{"still trying", []string{"bellbuild-2-b.conf", "bellbuild-3-a+1-2.conf"}, "b", ""},
		{"older bad slot", []string{"bellbuild-4-b.conf", "bellbuild-3-a+0-3.conf"}, "b", ""},
		{"running the new one", []string{"bellbuild-2-b.conf", "bellbuild-3-a+2-1.conf"}, "a", ""},
		{"one slot", []string{"bellbuild-1-a.conf"}, "a", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ents, err := espWith(t, tc.entries...).Entries()
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if f := FailedUpgrade(ents, tc.running); f != nil {
				got = f.Image
			}
			if got != tc.want {
				t.Errorf("failed upgrade %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFailedList(t *testing.T) {
	e := ESP{Dir: t.TempDir()}
	for _, h := range []string{"h1", "h2", "h1"} {
		if err := e.AddFailed(h); err != nil {
			t.Fatal(err)
		}
	}
	got, err := e.Failed()
	if err != nil || strings.Join(got, " ") != "h1 h2" {
		t.Fatalf("failed %v, %v", got, err)
	}
	for i := range 20 {
		e.AddFailed("x" + string(rune('a'+i)))
	}
	got, _ = e.Failed()
	if len(got) != maxFailed || got[len(got)-1] != "xt" {
		t.Errorf("after 22: %v", got)
	}
}

// TestWriteSlot writes a new image's boot files into slot a beside a
// running slot b: the old entry goes first, a file whose hash is wrong is
// not put in place (nor its temporary left), and the entry comes last
// with the next generation and its tries.
func TestWriteSlot(t *testing.T) {
	e := espWith(t, "bellbuild-1-a+0-3.conf", "bellbuild-2-b.conf")
	gen, err := e.Begin("a")
	if err != nil || gen != 3 {
		t.Fatalf("Begin = %d, %v", gen, err)
	}
	if d := cmp.Diff([]string{"bellbuild-2-b.conf"}, files(t, e)); d != "" {
		t.Fatalf("entries after Begin (-want +got):\n%s", d)
	}
	kernel := "kernel bytes"
	sum := sha256.Sum256([]byte(kernel))
	err = e.WriteBoot(layout.SlotKernel("a"), strings.NewReader(kernel+"!"), hex.EncodeToString(sum[:]))
	if !errors.Is(err, ErrHash) {
		t.Fatalf("a wrong kernel: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(e.Dir, "bellbuild/a/*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
	if err := e.WriteBoot(layout.SlotKernel("a"), strings.NewReader(kernel), hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(e.Dir, "bellbuild/a/vmlinuz")); string(got) != kernel {
		t.Errorf("kernel %q", got)
	}
	if err := e.Commit("a", gen, 3, "bellbuild x (slot a)", "console=ttyS0"); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"bellbuild-2-b.conf", "bellbuild-3-a+3.conf"}, files(t, e)); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
	}
}
