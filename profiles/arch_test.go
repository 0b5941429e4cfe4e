package profiles

import (
	"os"
	"path/filepath"
	"testing"
)

// TestArchInherited: arch is inherited like the stage (a child's own
// replaces its parent's), "" when no profile of the chain sets it; the
// embedded demo-arm64 is demo for arm64 with Debian's arm64 kernel.
func TestArchInherited(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"profiles/base.yaml":  "stage: {busybox: {}}\nkernel: {path: /vmlinuz}\n",
		"profiles/arm.yaml":   "inherits: [base]\narch: arm64\nkernel: {package: linux-image-arm64}\n",
		"profiles/child.yaml": "inherits: [arm]\n",
		"profiles/back.yaml":  "inherits: [arm]\narch: amd64\nkernel: {path: /vmlinuz}\n",
	}
	for name, data := range files {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ profile, arch, kernelPackage string }{
		{"base", "", ""},
		{"arm", "arm64", "linux-image-arm64"},
		{"child", "arm64", "linux-image-arm64"},
		{"back", "amd64", ""},
	} {
		sp, err := s.Image(tc.profile)
		if err != nil {
			t.Fatal(err)
		}
		if sp.Arch != tc.arch || sp.Kernel.Package != tc.kernelPackage {
			t.Errorf("%s: arch %q kernel.package %q, want %q %q", tc.profile, sp.Arch, sp.Kernel.Package, tc.arch, tc.kernelPackage)
		}
	}
	sp, err := Default().Image("demo-arm64")
	if err != nil {
		t.Fatal(err)
	}
	if sp.Arch != "arm64" || sp.Kernel.Package != "linux-image-arm64" || sp.Stage.Busybox == nil || len(sp.Cmdline) == 0 || sp.Cmdline[0] != "console=ttyAMA0" {
		t.Errorf("demo-arm64: %+v", sp)
	}
	if len(sp.Bundle.Default.Conf.Exec) == 0 {
		t.Error("demo-arm64 lacks demo's report script")
	}
}
