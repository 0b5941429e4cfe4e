package testtool

import (
	"context"
	"testing"

	"github.com/bellbuild/bellbuild/testvm"
)

// TestBootPanicPowersOff boots the host's Debian kernel with no initramfs:
// it cannot mount a root, panics, and with panic=-1 under -no-reboot QEMU
// exits — the harness's power-off detection on a real VM.
func TestBootPanicPowersOff(t *testing.T) {
	SkipVM(t)
	kernel := "/vmlinuz"
	Stat(t, kernel, "linux-image-amd64")
	vm := NewVM(t, testvm.Config{Kernel: kernel, Cmdline: "console=ttyS0 panic=-1 quiet"})
	vm.Wait(`Kernel panic - not syncing`)
	ctx, cancel := context.WithTimeout(context.Background(), BootTimeout)
	defer cancel()
	if err := vm.VM.Wait(ctx); err != nil {
		t.Fatalf("QEMU after the panic: %v", err)
	}
}
