package layout

import "testing"

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
