package debpkg

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func TestParseStanza(t *testing.T) {
	in := "Package: linux-image-arm64\nVersion: 6.1.192-3\nDepends: linux-image-6.1.0-57-arm64 (= 6.1.192-3)\nDescription: Linux for\n 64-bit ARMv8 machines\n .\n more\nSHA256: ab\n\nPackage: second\n"
	got := parseStanza([]byte(in))
	for k, want := range map[string]string{
		"Package": "linux-image-arm64", "Version": "6.1.192-3", "SHA256": "ab",
		"Depends":     "linux-image-6.1.0-57-arm64 (= 6.1.192-3)",
		"Description": "Linux for\n64-bit ARMv8 machines\n.\nmore",
	} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
}

func TestDependsOn(t *testing.T) {
	for _, tc := range []struct{ depends, prefix, want string }{
		{"linux-image-6.1.0-57-arm64 (= 6.1.192-3)", "linux-image-", "linux-image-6.1.0-57-arm64"},
		{"kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool", "linux-", "linux-base linux-initramfs-tool"},
		{"libc6:arm64 (>= 2.34)", "libc", "libc6"},
		{"", "linux-image-", ""},
	} {
		if got := strings.Join(DependsOn(tc.depends, tc.prefix), " "); got != tc.want {
			t.Errorf("DependsOn(%q, %q) = %q, want %q", tc.depends, tc.prefix, got, tc.want)
		}
	}
}

// needArm64Apt skips unless apt knows arm64 packages.
func needArm64Apt(t *testing.T) {
	t.Helper()
	testtool.LookPath(t, "apt-get", "apt")
	testtool.LookPath(t, "dpkg-deb", "dpkg")
	if out, err := exec.Command("apt-cache", "show", "--no-all-versions", "busybox-static:arm64").Output(); err != nil || len(out) == 0 {
		testtool.Skipf(t, "apt knows no arm64 packages: dpkg --add-architecture arm64 && apt-get update (make deps): %v", err)
	}
}

// TestFetch fetches busybox-static for arm64 into an empty cache: the
// .deb checked against apt's SHA256, its content unpacked; a second fetch
// downloads nothing; a cached .deb that no longer matches is fetched
// again; a package apt does not know is ErrNotFound.
func TestFetch(t *testing.T) {
	needArm64Apt(t)
	var log bytes.Buffer
	c := &Cache{Dir: t.TempDir(), Log: slog.New(slog.NewTextHandler(&log, nil))}
	ctx := context.Background()
	p, err := c.Fetch(ctx, "busybox-static", "arm64")
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "busybox-static" || p.Arch != "arm64" || p.Version == "" || !strings.HasPrefix(p.ID(), "busybox-static=") {
		t.Errorf("package %+v", p)
	}
	if sum, err := fileSHA256(p.Deb); err != nil || sum != p.SHA256 {
		t.Errorf("%s: sha256 %s %v, want %s", p.Deb, sum, err, p.SHA256)
	}
	bin, err := os.ReadFile(filepath.Join(p.Root, "bin/busybox"))
	if err != nil || len(bin) < 20 || string(bin[:4]) != "\x7fELF" || bin[18] != 183 {
		t.Fatalf("unpacked bin/busybox is not an aarch64 ELF: %v", err)
	}
	if n := strings.Count(log.String(), "debpkg: downloading"); n != 1 {
		t.Errorf("%d downloads logged, want 1:\n%s", n, log.String())
	}
	if _, err := c.Fetch(ctx, "busybox-static", "arm64"); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(log.String(), "debpkg: downloading"); n != 1 {
		t.Errorf("the second fetch downloaded again:\n%s", log.String())
	}
	// A .deb cut short in the cache is replaced.
	if err := os.Truncate(p.Deb, 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(ctx, "busybox-static", "arm64"); err != nil {
		t.Fatal(err)
	}
	if sum, _ := fileSHA256(p.Deb); sum != p.SHA256 {
		t.Error("a damaged .deb was kept")
	}
	ents, _ := os.ReadDir(c.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".download-") || strings.HasPrefix(e.Name(), ".unpack-") {
			t.Errorf("temporary %s left in the cache", e.Name())
		}
	}
	_, err = c.Fetch(ctx, "no-such-package-bellbuild", "arm64")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "dpkg --add-architecture arm64 && apt-get update") {
		t.Errorf("unknown package: %v", err)
	}
	if _, err := c.Fetch(ctx, "../etc", "arm64"); err == nil {
		t.Error("a name with a path was accepted")
	}
}

// TestResolveMemo: while apt's state is unchanged, a fetch of a package
// fetched before does not run apt-cache (a failing one shadows it in
// PATH); once the state changes, it does, and fails with it.
func TestResolveMemo(t *testing.T) {
	needArm64Apt(t)
	state := filepath.Join(t.TempDir(), "lists")
	os.WriteFile(state, []byte("1"), 0o644)
	old := aptState
	aptState = append(slices.Clone(old), state)
	defer func() { aptState = old }()
	c := &Cache{Dir: t.TempDir(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx := context.Background()
	first, err := c.Fetch(ctx, "busybox-static", "arm64")
	if err != nil {
		t.Fatal(err)
	}
	fake := t.TempDir()
	os.WriteFile(filepath.Join(fake, "apt-cache"), []byte("#!/bin/sh\necho 'E: apt-cache shadowed by the test' >&2\nexit 100\n"), 0o755)
	t.Setenv("PATH", fake+":"+os.Getenv("PATH"))
	again, err := c.Fetch(ctx, "busybox-static", "arm64")
	if err != nil {
		t.Fatalf("a fetch with apt's state unchanged ran apt-cache: %v", err)
	}
	if *again != *first {
		t.Errorf("the memo gave %+v, apt-cache %+v", again, first)
	}
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(state, []byte("22"), 0o644)
	if _, err := c.Fetch(ctx, "busybox-static", "arm64"); err == nil || !strings.Contains(err.Error(), "apt-cache shadowed by the test") {
		t.Errorf("a fetch after apt's state changed: %v, want apt-cache's error", err)
	}
}
