package testvm

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestArgsARM64(t *testing.T) {
	base := []string{"-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "1024", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"}
	tests := []struct {
		name string
		c    Config
		want []string
	}{
		{"kernel", Config{Arch: ARM64, Kernel: "k", Initrd: "i", Cmdline: "console=ttyAMA0"},
			append(base[:len(base):len(base)], "-kernel", "k", "-initrd", "i", "-append", "console=ttyAMA0")},
		{"disk and CD under AAVMF, a comma in a path", Config{Arch: ARM64, Firmware: AAVMF, FirmwareVars: "v,1.fd",
			Drives: []Drive{{Path: "a.raw", Snapshot: true}, {Path: "b.iso", Media: "cdrom"}, {Path: "c.iso", Interface: "ide"}}},
			append(base[:len(base):len(base)],
				"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+AAVMF, "-drive", "if=pflash,format=raw,unit=1,file=v,,1.fd",
				"-drive", "if=none,id=drive0,file=a.raw,format=raw,snapshot=on", "-device", "virtio-blk-pci,drive=drive0,bootindex=1",
				"-drive", "if=none,id=drive1,file=b.iso,format=raw,media=cdrom,readonly=on", "-device", "virtio-scsi-pci,id=scsi0",
				"-device", "scsi-cd,bus=scsi0.0,drive=drive1,bootindex=2",
				"-drive", "if=none,id=drive2,file=c.iso,format=raw,media=cdrom,readonly=on", "-device", "scsi-cd,bus=scsi0.0,drive=drive2,bootindex=3")},
		{"pxe over tap", Config{Arch: ARM64, Firmware: AAVMF, FirmwareVars: "v.fd", BootNetwork: true, NICs: []NIC{{Netdev: "tap", Ifname: "tap1", MAC: "52:54:00:00:01:02"}}},
			append(base[:len(base):len(base)],
				"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+AAVMF, "-drive", "if=pflash,format=raw,unit=1,file=v.fd",
				"-netdev", "tap,id=net0,ifname=tap1,script=no,downscript=no", "-device", "virtio-net-pci,netdev=net0,romfile=,mac=52:54:00:00:01:02,bootindex=1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.c.Args()); diff != "" {
				t.Errorf("Args (-want +got):\n%s", diff)
			}
		})
	}
}
