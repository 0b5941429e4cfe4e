package arch_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"github.com/bellbuild/bellbuild/images/arch"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// header returns n zero bytes with the given bytes set at their offsets.
func header(n int, set map[int][]byte) []byte {
	b := make([]byte, n)
	for off, v := range set {
		copy(b[off:], v)
	}
	return b
}

func u16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func TestKernel(t *testing.T) {
	tests := []struct {
		name         string
		data         []byte
		arch, format string
		err          bool
	}{
		{"arm64 Image with an EFI stub", header(0x240, map[int][]byte{0: []byte("MZ"), 56: []byte("ARM\x64"), 0x3c: u32(0x40), 0x40: []byte("PE\x00\x00"), 0x44: u16(0xaa64)}), "arm64", "arm64 Image", false},
		{"x86-64 bzImage", header(0x240, map[int][]byte{0: []byte("MZ"), 0x202: []byte("HdrS"), 0x206: u16(0x20f), 0x236: {1}}), "amd64", "x86 bzImage", false},
		{"32-bit bzImage", header(0x240, map[int][]byte{0x202: []byte("HdrS"), 0x206: u16(0x20f)}), "386", "x86 bzImage", false},
		{"old bzImage without xloadflags", header(0x240, map[int][]byte{0x202: []byte("HdrS"), 0x206: u16(0x20a)}), "amd64", "x86 bzImage", false},
		{"arm64 EFI zboot image", header(0x100, map[int][]byte{0: []byte("MZ"), 4: []byte("zimg"), 0x3c: u32(0x80), 0x80: []byte("PE\x00\x00"), 0x84: u16(0xaa64)}), "arm64", "PE image", false},
		{"x86-64 PE", header(0x100, map[int][]byte{0: []byte("MZ"), 0x3c: u32(0x80), 0x80: []byte("PE\x00\x00"), 0x84: u16(0x8664)}), "amd64", "PE image", false},
		{"riscv PE", header(0x100, map[int][]byte{0: []byte("MZ"), 0x3c: u32(0x80), 0x80: []byte("PE\x00\x00"), 0x84: u16(0x5064)}), "", "PE image", true},
		{"ELF vmlinux", header(64, map[int][]byte{0: []byte("\x7fELF\x02\x01\x01"), 18: u16(183)}), "arm64", "ELF vmlinux", false},
		{"gzip", header(64, map[int][]byte{0: {0x1f, 0x8b}}), "", "", true},
		{"empty", nil, "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, f, err := arch.Kernel(bytes.NewReader(tc.data))
			if (err != nil) != tc.err || a != tc.arch || f != tc.format {
				t.Errorf("got %q %q %v, want %q %q error %v", a, f, err, tc.arch, tc.format, tc.err)
			}
			if err != nil && !errors.Is(err, arch.ErrUnknown) {
				t.Errorf("error %v does not wrap ErrUnknown", err)
			}
		})
	}
}

func TestELF(t *testing.T) {
	elf := func(class, data byte, machine uint16, order binary.ByteOrder) []byte {
		b := header(64, map[int][]byte{0: []byte("\x7fELF"), 4: {class, data, 1}})
		order.PutUint16(b[18:], machine)
		return b
	}
	tests := []struct {
		name string
		data []byte
		want string
		err  bool
	}{
		{"x86-64", elf(2, 1, 62, binary.LittleEndian), "amd64", false},
		{"aarch64", elf(2, 1, 183, binary.LittleEndian), "arm64", false},
		{"big-endian arm", elf(1, 2, 40, binary.BigEndian), "arm", false},
		{"i386", elf(1, 1, 3, binary.LittleEndian), "386", false},
		{"riscv", elf(2, 1, 243, binary.LittleEndian), "", true},
		{"a script", []byte("#!/bin/sh\necho hello world, a long enough line\n"), "", true},
		{"short", []byte("\x7fELF"), "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := arch.ELF(bytes.NewReader(tc.data))
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("got %q %v, want %q error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

// TestHostFiles: the build host's own kernel and busybox are amd64.
func TestHostFiles(t *testing.T) {
	for _, f := range []string{"/vmlinuz", "/bin/busybox"} {
		testtool.Stat(t, f, "linux-image-amd64, busybox-static")
	}
	if a, f, err := arch.KernelFile("/vmlinuz"); err != nil || a != arch.AMD64 || f != "x86 bzImage" {
		t.Errorf("/vmlinuz: %q %q %v", a, f, err)
	}
	if a, err := arch.ELFFile("/bin/busybox"); err != nil || a != arch.AMD64 {
		t.Errorf("/bin/busybox: %q %v", a, err)
	}
	if _, err := arch.ELFFile("/etc/hostname"); err == nil {
		t.Error("/etc/hostname read as ELF")
	}
	if _, err := arch.ELFFile("/nonexistent"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
