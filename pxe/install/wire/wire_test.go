package wire

import (
	"strings"
	"testing"
)

func TestReportCheck(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name string
		r    Report
		err  string
	}{
		{"install done", Report{Event: EventInstallDone, Disk: "/dev/vda", Size: 1 << 30, Image: h}, ""},
		{"by-id disk", Report{Event: EventInstallStart, Disk: "/dev/disk/by-id/virtio-x_1"}, ""},
		{"running", Report{Event: EventRunning, Slot: "b", Running: h}, ""},
		{"unknown event", Report{Event: "rm -rf"}, `report: unknown event "rm -rf"`},
		{"image not a hash", Report{Event: EventUpgradeFailed, Image: "x"}, "report: image is not a SHA-256"},
		{"slot", Report{Event: EventRunning, Slot: "c"}, "report: slot is not a or b"},
		{"disk", Report{Event: EventInstallDone, Disk: "vda; reboot"}, "report: disk is not a device path"},
		{"reboot window", Report{Event: EventUpgradeWritten, Image: h, Reboot: "window 0 2 * * *", RebootAt: "2026-12-08T02:00:00Z"}, ""},
		{"reboot_at not a time", Report{Event: EventUpgradeWritten, Image: h, Reboot: "window 0 2 * * *", RebootAt: "at 2"}, "report: reboot_at is not an RFC 3339 time"},
		{"long error", Report{Event: EventInstallFailed, Error: strings.Repeat("x", 1001)}, "report: text too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ""
			if err := tc.r.Check(); err != nil {
				got = err.Error()
			}
			if got != tc.err {
				t.Errorf("Check() = %q, want %q", got, tc.err)
			}
		})
	}
}

func manifest() *ImageManifest {
	h := strings.Repeat("cd", 32)
	return &ImageManifest{Profile: "p", Disk: &ManifestDisk{
		Arch: "x86_64", Size: 100 << 20, SlotSize: 8 << 20,
		Root: ManifestRoot{SHA256: h, Size: 5000, Offset: 34 << 20},
		Partitions: []DiskPartition{
			{Name: PartESP, Offset: 1 << 20, Size: 33 << 20, Used: 4096, SHA256: h},
			{Name: PartRootA, Offset: 34 << 20, Size: 8 << 20, Used: 5000, SHA256: h},
			{Name: PartRootB, Offset: 42 << 20, Size: 8 << 20, SHA256: h},
			{Name: PartConfig, Offset: 50 << 20, Size: 33 << 20, Used: 512, SHA256: h},
		},
	}}
}

func TestManifestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*ImageManifest)
		err  string
	}{
		{"good", func(*ImageManifest) {}, ""},
		{"no disk", func(m *ImageManifest) { m.Disk = nil }, "profile p: the manifest describes no disk (bake the profile with outputs: [raw])"},
		{"no root hash", func(m *ImageManifest) { m.Disk.Root.SHA256 = "" }, "profile p: the manifest has no root hash"},
		{"overlap", func(m *ImageManifest) { m.Disk.Partitions[1].Offset -= 1 << 20 }, "manifest: partition root-a: offset 34603008, size 8388608, used 5000 do not fit"},
		{"used past size", func(m *ImageManifest) { m.Disk.Partitions[0].Used = 34 << 20 }, "manifest: partition esp: offset 1048576, size 34603008, used 35651584 do not fit"},
		{"single root", func(m *ImageManifest) { m.Disk.Partitions = append(m.Disk.Partitions[:2], m.Disk.Partitions[3]) }, "manifest: no partition root-b: not a disk with two root slots (bake it again with this bellbuild)"},
		{"root elsewhere", func(m *ImageManifest) { m.Disk.Root.Offset = 42 << 20 }, "manifest: the root image (5000 bytes at 44040192) is not root-a's extent"},
		{"past the disk", func(m *ImageManifest) { m.Disk.Size = 60 << 20 }, "manifest: partitions end at 87031808, past the disk's 62914560 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := manifest()
			tc.edit(m)
			got := ""
			if err := m.Check(); err != nil {
				got = err.Error()
			}
			if got != tc.err {
				t.Errorf("Check() = %q, want %q", got, tc.err)
			}
		})
	}
}
