package layout

import (
	"fmt"
	"testing"
)

// TestLayout pins the layout: it is a contract with every image already
// baked (a new init boots an old disk), so a change must be deliberate.
func TestLayout(t *testing.T) {
	for _, tc := range []struct{ name, got, want string }{
		{"Applier", Applier, "bellbuild/bellbuild"},
		{"Init", Init, "init"},
		{"Bundle", Bundle, "etc/bellbuild/bundle.json"},
		{"Modules", Modules, "etc/bellbuild/modules"},
		{"ModulesDir", ModulesDir("6.1.0-9-amd64"), "lib/modules/6.1.0-9-amd64"},
		{"Mke2fs", Mke2fs, "bellbuild/mke2fs"},
		{"ConfigNode", ConfigNode, "bellbuild/node.json"},
		{"ConfigBundle", ConfigBundle, "bellbuild/bundle.json"},
		{"ConfigMount", ConfigMount, "run/bellbuild/config"},
		{"DiskRootArg", DiskRootArg, "bellbuild.root=PARTLABEL=bellroot"},
		{"ISORootArg", ISORootArg, "bellbuild.root=LABEL=BELLBUILD:/bellbuild/root.squashfs"},
		{"ConfigArg", ConfigArg, "bellbuild.config=LABEL=BELLCONF"},
		{"DataPartition", DataPartition, "belldata"},
		{"RootWaitParam", RootWaitParam, "bellbuild.rootwait"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("%s = %q, want %q", tc.name, tc.got, tc.want)
			}
		})
	}
}

func TestEntry(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Entry
		ok   bool
		bad  bool
	}{
		{"bellbuild-1-a+3.conf", Entry{Gen: 1, Slot: "a", Counting: true, Left: 3}, true, false},
		{"bellbuild-2-b+2-1.conf", Entry{Gen: 2, Slot: "b", Counting: true, Left: 2, Done: 1}, true, false},
		{"bellbuild-3-a+0-3.conf", Entry{Gen: 3, Slot: "a", Counting: true, Left: 0, Done: 3}, true, true},
		{"bellbuild-12-b.conf", Entry{Gen: 12, Slot: "b"}, true, false},
		{"bellbuild.conf", Entry{}, false, false},
		{"bellbuild-0-a.conf", Entry{}, false, false},
		{"bellbuild-1-c.conf", Entry{}, false, false},
		{"bellbuild-1-a+3.conf.tmp", Entry{}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, ok := ParseEntry(tc.name)
			if ok != tc.ok || e != tc.want {
				t.Fatalf("ParseEntry = %+v, %v; want %+v, %v", e, ok, tc.want, tc.ok)
			}
			if !ok {
				return
			}
			if e.Name() != tc.name {
				t.Errorf("Name() = %q, want %q", e.Name(), tc.name)
			}
			if e.Bad() != tc.bad {
				t.Errorf("Bad() = %v", e.Bad())
			}
			if g := e.Good(); g.Counting || g.Name() != "bellbuild-"+itoa(e.Gen)+"-"+e.Slot+".conf" {
				t.Errorf("Good() = %s", g.Name())
			}
		})
	}
	for _, s := range []struct{ got, want string }{
		{SlotRootArg("b"), "bellbuild.root=PARTLABEL=root-b"},
		{SlotKernel("a"), "bellbuild/a/vmlinuz"},
		{SlotInitrd("b"), "bellbuild/b/initrd.img"},
		{OtherSlot("a"), "b"},
		{OtherSlot("b"), "a"},
	} {
		if s.got != s.want {
			t.Errorf("%q, want %q", s.got, s.want)
		}
	}
}

func itoa(n int) string { return fmt.Sprint(n) }
