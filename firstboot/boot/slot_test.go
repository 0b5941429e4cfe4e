package boot

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/firstboot/slots"
	"github.com/bellbuild/bellbuild/images/layout"
)

// TestSlotBoot runs the init's slot keeping on an ESP directory: what it
// prints, whether it reboots, and the entries it leaves.
func TestSlotBoot(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []string
		slot    string
		ok      bool
		reboot  bool
		after   []string
		console []string
	}{{
		name: "first boot, good", entries: []string{"bellbuild-1-a+2-1.conf"}, slot: "a", ok: true,
		after: []string{"bellbuild-1-a.conf"}, console: []string{"bellbuild: slot a marked good (image img-bellbuil)"},
	}, {
		name: "first boot, errors, nothing to fall back to", entries: []string{"bellbuild-1-a+2-1.conf"}, slot: "a",
		after: []string{"bellbuild-1-a+2-1.conf"},
	}, {
		name: "upgrade on trial fails", entries: []string{"bellbuild-1-a.conf", "bellbuild-2-b+1-2.conf"}, slot: "b",
		reboot: true, after: []string{"bellbuild-1-a.conf", "bellbuild-2-b+1-2.conf"},
		console: []string{"bellbuild: slot b failed its boot: rebooting (1 more tries, then slot a)"},
	}, {
		name: "upgrade's last try fails", entries: []string{"bellbuild-1-a.conf", "bellbuild-2-b+0-3.conf"}, slot: "b",
		reboot: true, after: []string{"bellbuild-1-a.conf", "bellbuild-2-b+0-3.conf"},
		console: []string{"bellbuild: slot b failed its boot: rebooting (0 more tries, then slot a)"},
	}, {
		name: "fell back", entries: []string{"bellbuild-2-b.conf", "bellbuild-3-a+0-3.conf"}, slot: "b", ok: true,
		after:   []string{"bellbuild-2-b.conf"},
		console: []string{"bellbuild: upgrade to img-bellbuild-3-a failed, running img-bellbuild-2-b"},
	}, {
		name: "good slot fails: no reboot", entries: []string{"bellbuild-1-a.conf", "bellbuild-2-b.conf"}, slot: "b",
		after: []string{"bellbuild-1-a.conf", "bellbuild-2-b.conf"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.MkdirAll(filepath.Join(dir, layout.EntriesDir), 0o755)
			image := ""
			for _, n := range tc.entries {
				en, _ := layout.ParseEntry(n)
				img := "img-" + n[:len("bellbuild-1-a")]
				if en.Slot == tc.slot {
					image = img
				}
				os.WriteFile(filepath.Join(dir, layout.EntriesDir, n), []byte(layout.EntryText("t", en.Slot, layout.SlotCmdline("", en.Slot, img))), 0o644)
			}
			var con strings.Builder
			unmounted := false
			reboot := SlotBoot(&con, tc.slot, image, tc.ok, func() (slots.ESP, func() error, error) {
				return slots.ESP{Dir: dir}, func() error { unmounted = true; return nil }, nil
			})
			if reboot != tc.reboot {
				t.Errorf("reboot %v, want %v", reboot, tc.reboot)
			}
			if !unmounted {
				t.Error("the ESP was not unmounted")
			}
			ents, _ := os.ReadDir(filepath.Join(dir, layout.EntriesDir))
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
			}
			sort.Strings(got)
			if d := cmp.Diff(tc.after, got); d != "" {
				t.Errorf("entries (-want +got):\n%s", d)
			}
			var lines []string
			if s := strings.TrimSpace(con.String()); s != "" {
				lines = strings.Split(s, "\n")
			}
			if d := cmp.Diff(tc.console, lines); d != "" {
				t.Errorf("console (-want +got):\n%s", d)
			}
			if strings.Contains(tc.name, "fell back") {
				if f, _ := (slots.ESP{Dir: dir}).Failed(); len(f) != 1 || f[0] != "img-bellbuild-3-a" {
					t.Errorf("failed list %v", f)
				}
			}
		})
	}
}
