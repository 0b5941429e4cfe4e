package testvm_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// TestARM64VarsCopy: an arm64 VM with firmware and no variable store of
// its own gets a writable copy of AAVMF's template, removed when it is
// closed. (A stand-in emulator prints its arguments.)
func TestARM64VarsCopy(t *testing.T) {
	testtool.Stat(t, testvm.AAVMFVars, "qemu-efi-aarch64")
	bin := filepath.Join(t.TempDir(), "fake-qemu")
	os.WriteFile(bin, []byte("#!/bin/sh\nfor a; do printf '%s\\n' \"$a\"; done\n"), 0o755)
	vm, err := testvm.Start(context.Background(), testvm.Config{Arch: testvm.ARM64, Binary: bin, Firmware: testvm.AAVMF})
	if err != nil {
		t.Fatal(err)
	}
	<-vm.Exited()
	var vars string
	for _, l := range strings.Split(vm.Console(), "\n") {
		if v, ok := strings.CutPrefix(l, "if=pflash,format=raw,unit=1,file="); ok {
			vars = v
		}
	}
	if vars == "" || vars == testvm.AAVMFVars {
		t.Fatalf("no copy of the variable store among the arguments:\n%s", vm.Console())
	}
	if st, err := os.Stat(vars); err != nil || st.Size() == 0 {
		t.Fatalf("the copy %s: %v", vars, err)
	}
	vm.Close()
	if _, err := os.Stat(vars); !os.IsNotExist(err) {
		t.Errorf("the copy %s is still there after Close: %v", vars, err)
	}
}
