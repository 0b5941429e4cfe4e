package kmod

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// TestDepmodMatchesDepmod: for every module of the host's kernel, the
// dependencies Depmod reads from the modules' .modinfo load the same
// modules as the modules.dep Debian's depmod wrote (which lists each
// module's whole closure).
func TestDepmodMatchesDepmod(t *testing.T) {
	_, dir, err := Host()
	if err != nil {
		testtool.Skipf(t, "%v (Debian package linux-image-amd64)", err)
	}
	data, err := Depmod(dir)
	if err != nil {
		t.Fatal(err)
	}
	ours, err := Parse(dir, bytes.NewReader(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ours.deps) != len(theirs.deps) || len(ours.deps) < 100 {
		t.Fatalf("Depmod lists %d modules, depmod %d", len(ours.deps), len(theirs.deps))
	}
	bad := 0
	for mod := range theirs.deps {
		a, _ := ours.Closure(Name(mod))
		b, _ := theirs.Closure(Name(mod))
		slices.Sort(a)
		slices.Sort(b)
		if !slices.Equal(a, b) {
			if bad++; bad <= 5 {
				t.Errorf("%s: Depmod loads %v, depmod %v", mod, a, b)
			}
		}
	}
}

func TestDepmodErrors(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "kernel"), 0o755)
	os.WriteFile(filepath.Join(dir, "kernel/a.ko.xz"), []byte("x"), 0o644)
	if _, err := Depmod(dir); err == nil || !strings.Contains(err.Error(), "compressed module: run depmod") {
		t.Errorf("compressed module: %v", err)
	}
	os.Remove(filepath.Join(dir, "kernel/a.ko.xz"))
	os.WriteFile(filepath.Join(dir, "kernel/b.ko"), []byte("not ELF"), 0o644)
	if _, err := Depmod(dir); err == nil || !strings.Contains(err.Error(), "kernel/b.ko") {
		t.Errorf("a .ko that is not ELF: %v", err)
	}
}
