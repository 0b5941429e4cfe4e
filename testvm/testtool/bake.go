package testtool

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// SwapBake writes files (name → content) into OUT/PROFILE as a bake
// replaces it (build's swapIn): a new directory beside it, exchanged with
// it in one rename (RENAME_EXCHANGE), the old one then removed; the first
// bake is renamed into place. A reader of OUT/PROFILE sees the old bake or
// the new one whole, never a mix.
func SwapBake(t testing.TB, out, profile string, files map[string][]byte) {
	t.Helper()
	tmp, err := os.MkdirTemp(out, "."+profile+".tmp-")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	final := filepath.Join(out, profile)
	if _, err := os.Lstat(final); errors.Is(err, fs.ErrNotExist) {
		if err := os.Rename(tmp, final); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
}
