package fstree_test

import (
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/fstree"
)

// TestFromOCIArch: FromOCIArch takes the index's manifest of the asked
// architecture (makeOCI's arm64 manifest has only the lower layer), and
// names the architecture when the index has none for it.
func TestFromOCIArch(t *testing.T) {
	dir := makeOCI(t)
	for _, tc := range []struct {
		arch      string
		group, a  bool // etc/group present, usr/bin/a the upper layer's
		wantError string
	}{
		{arch: "amd64", group: false, a: true},
		{arch: "arm64", group: true, a: false},
		{arch: "riscv64", wantError: "index lists 2 manifests, 0 for linux/riscv64: bad OCI image layout"},
	} {
		t.Run(tc.arch, func(t *testing.T) {
			tr, err := fstree.FromOCIArch(dir, tc.arch)
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("error %v, want %q", err, tc.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tr.Get("etc/group") != nil; got != tc.group {
				t.Errorf("etc/group present: %v, want %v", got, tc.group)
			}
			e := tr.Get("usr/bin/a")
			if e == nil {
				t.Fatal("no usr/bin/a")
			}
			if got := e.Size == 2; got != tc.a {
				t.Errorf("usr/bin/a is %d bytes: upper layer's %v, want %v", e.Size, got, tc.a)
			}
		})
	}
}
