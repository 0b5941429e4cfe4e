package disk

import (
	"fmt"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// Architectures of Spec.Arch and Boot.Arch ("" is AMD64).
const (
	AMD64 = "amd64"
	ARM64 = "arm64"
)

// archInfo is what the architecture changes on a disk: the root
// partition's type (the Discoverable Partitions Specification's root
// type of that architecture) and where UEFI looks for the removable-media
// boot loader.
type archInfo struct {
	rootType   gpt.Type
	loaderPath string
}

var archs = map[string]archInfo{
	AMD64: {gpt.LinuxRootX86_64, "EFI/BOOT/BOOTX64.EFI"},
	ARM64: {gpt.LinuxRootArm64, "EFI/BOOT/BOOTAA64.EFI"},
}

func lookupArch(a string) (archInfo, error) {
	if a == "" {
		a = AMD64
	}
	info, ok := archs[a]
	if !ok {
		return archInfo{}, fmt.Errorf("disk: architecture %q: want %s or %s", a, AMD64, ARM64)
	}
	return info, nil
}

// LoaderPath returns the removable-media boot loader's path on an ESP for
// architecture a ("" for an unknown one).
func LoaderPath(a string) string {
	info, _ := lookupArch(a)
	return info.loaderPath
}
