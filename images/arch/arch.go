// Package arch tells which CPU architecture a file is built for: an ELF
// executable by its header's machine field, a Linux kernel image by the
// header of its format (an x86 bzImage's boot header, an arm64 Image's
// magic number, or the machine field of a PE/EFI image). Architectures are
// named as Debian and Go name them: amd64, arm64.
package arch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// The architectures bellbuild bakes for.
const (
	AMD64 = "amd64"
	ARM64 = "arm64"
)

// Supported lists them.
var Supported = []string{AMD64, ARM64}

// ErrUnknown is wrapped by the errors of a file whose format (or whose
// architecture) is not recognised.
var ErrUnknown = errors.New("unrecognised format")

// Describe names an architecture the way both worlds know it:
// "amd64 (x86-64)", "arm64 (aarch64)".
func Describe(a string) string {
	switch a {
	case AMD64:
		return "amd64 (x86-64)"
	case ARM64:
		return "arm64 (aarch64)"
	case "386":
		return "386 (32-bit x86)"
	case "arm":
		return "arm (32-bit)"
	}
	return a
}

// ELF machine numbers (e_machine).
const (
	elfI386    = 3
	elfARM     = 40
	elfX86_64  = 62
	elfAArch64 = 183
)

// PE machine numbers (IMAGE_FILE_MACHINE_*).
const (
	peI386  = 0x14c
	peAMD64 = 0x8664
	peARM64 = 0xaa64
)

// ELF returns the architecture of an ELF file from its header. A file that
// is not ELF, or is ELF for a machine this package does not name, gives an
// error wrapping ErrUnknown.
func ELF(r io.ReaderAt) (string, error) {
	var h [20]byte
	if n, _ := r.ReadAt(h[:], 0); n < len(h) || string(h[:4]) != "\x7fELF" {
		return "", fmt.Errorf("not an ELF file: %w", ErrUnknown)
	}
	var order binary.ByteOrder = binary.LittleEndian
	if h[5] == 2 {
		order = binary.BigEndian
	}
	switch m := order.Uint16(h[18:]); m {
	case elfX86_64:
		return AMD64, nil
	case elfAArch64:
		return ARM64, nil
	case elfI386:
		return "386", nil
	case elfARM:
		return "arm", nil
	default:
		return "", fmt.Errorf("ELF machine %d: %w", m, ErrUnknown)
	}
}

// Kernel returns the architecture of a Linux kernel image and its format:
//
//   - "arm64 Image": the arm64 boot image, magic "ARM\x64" at byte 56
//     (it is also a PE file when built with the EFI stub, as Debian's is);
//   - "x86 bzImage": the boot header "HdrS" at 0x202 (amd64 when its
//     xloadflags say the kernel is 64-bit);
//   - "PE image": an EFI application (a compressed EFI zboot kernel), by
//     its COFF machine field;
//   - "ELF vmlinux", by its ELF header.
//
// Anything else is an error wrapping ErrUnknown.
func Kernel(r io.ReaderAt) (arch, format string, err error) {
	var h [0x240]byte
	n, _ := r.ReadAt(h[:], 0)
	b := h[:n]
	switch {
	case n >= 60 && string(b[56:60]) == "ARM\x64":
		return ARM64, "arm64 Image", nil
	case n >= 0x206 && string(b[0x202:0x206]) == "HdrS":
		// Boot protocol 2.12 and later say in xloadflags (0x236) whether
		// the kernel is 64-bit; every x86-64 kernel since 3.8 has it.
		if n >= 0x238 && binary.LittleEndian.Uint16(b[0x206:]) >= 0x20c && b[0x236]&1 == 0 {
			return "386", "x86 bzImage", nil
		}
		return AMD64, "x86 bzImage", nil
	case n >= 0x40 && string(b[:2]) == "MZ":
		off := int64(binary.LittleEndian.Uint32(b[0x3c:]))
		var pe [6]byte
		if m, _ := r.ReadAt(pe[:], off); m == len(pe) && string(pe[:4]) == "PE\x00\x00" {
			switch mach := binary.LittleEndian.Uint16(pe[4:]); mach {
			case peAMD64:
				return AMD64, "PE image", nil
			case peARM64:
				return ARM64, "PE image", nil
			case peI386:
				return "386", "PE image", nil
			default:
				return "", "PE image", fmt.Errorf("PE machine %#x: %w", mach, ErrUnknown)
			}
		}
	case n >= 4 && string(b[:4]) == "\x7fELF":
		a, err := ELF(r)
		return a, "ELF vmlinux", err
	}
	return "", "", fmt.Errorf("not an x86 bzImage, an arm64 Image, a PE image or an ELF vmlinux: %w", ErrUnknown)
}

// ELFFile is ELF for a file.
func ELFFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	a, err := ELF(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

// KernelFile is Kernel for a file.
func KernelFile(path string) (arch, format string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	a, fm, err := Kernel(f)
	if err != nil {
		return "", fm, fmt.Errorf("%s: %w", path, err)
	}
	return a, fm, nil
}
