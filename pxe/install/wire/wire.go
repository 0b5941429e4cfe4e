// Package wire is the protocol between serve and a machine that installs
// itself onto its disk or upgrades its image (docs/boot-media.md): the
// paths serve hands images out at, the part of a bake's manifest.json
// that the installer and the upgrader read, and the reports a machine
// sends back. serve (package pxe) and the applier (firstboot/install,
// firstboot/upgrade) both import it; it imports nothing of ours.
package wire

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"time"
)

// What serve hands out under ImageURL(base, mac): the image of the profile
// mac boots.
const (
	// Manifest is the bake's manifest.json.
	Manifest = "manifest.json"
	// Disk is disk.raw (Range requests: an installer copies its extents).
	Disk = "disk"
	// Root is the root image alone: disk.raw's bytes at Manifest's
	// disk.root offset and size.
	Root = "root"
	// Kernel and Initrd are what a slot's ESP entry boots: vmlinuz and
	// disk-initrd.cpio.zst.
	Kernel = "kernel"
	Initrd = "initrd"
)

// Files are the names under ImageURL, in order.
var Files = []string{Manifest, Disk, Root, Kernel, Initrd}

// ImagePrefix is the path prefix of the images serve hands out.
const ImagePrefix = "/image/"

// ImageURL is where serve at base (http://SERVER:PORT) hands out the image
// of the profile mac boots.
func ImageURL(base string, mac net.HardwareAddr) string { return base + ImagePrefix + mac.String() }

// ReportPath is where a machine POSTs a Report (JSON); serve takes the
// machine from the address its lease gives the request's source.
const ReportPath = "/report"

// NodeFile is where a machine gets its own configuration (node.json, only
// from the address leased to it).
const NodeFile = "/files/node.json"

// Events a machine reports.
const (
	// EventInstallStart: the installer chose Disk and starts writing.
	EventInstallStart = "install-start"
	// EventInstallFailed: the installer stopped (Error says why; nothing
	// bootable was written).
	EventInstallFailed = "install-failed"
	// EventInstallDone: Disk holds Image, partition table and all; serve
	// records it and boots the machine from its disk from now on.
	EventInstallDone = "install-done"
	// EventUpgradeWritten: Image is in Slot, waiting for a reboot
	// (Reboot: "now", "window CRON" or "manual").
	EventUpgradeWritten = "upgrade-written"
	// EventUpgradeFailed: systemd-boot gave up on Image; the machine is
	// back on Running.
	EventUpgradeFailed = "upgrade-failed"
	// EventRunning: the machine booted Slot, running Running (after an
	// upgrade, or at each boot).
	EventRunning = "running"
)

// Report is what a machine tells serve.
type Report struct {
	Event string `json:"event"`
	// Disk is the install's target (/dev/vda) and Size its size.
	Disk string `json:"disk,omitempty"`
	Size int64  `json:"size,omitempty"`
	// Image is the root hash installed, written or failed.
	Image string `json:"image,omitempty"`
	// Running and Slot are what the machine runs.
	Running string `json:"running,omitempty"`
	Slot    string `json:"slot,omitempty"`
	// Reboot is the reboot policy of a written upgrade, and RebootAt
	// when the machine will reboot into it (RFC 3339: a window's next
	// minute), when it has a time.
	Reboot   string `json:"reboot,omitempty"`
	RebootAt string `json:"reboot_at,omitempty"`
	// Error says why an install stopped.
	Error string `json:"error,omitempty"`
}

var events = []string{EventInstallStart, EventInstallFailed, EventInstallDone, EventUpgradeWritten, EventUpgradeFailed, EventRunning}

var (
	hashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	slotRE = regexp.MustCompile(`^[ab]$`)
	diskRE = regexp.MustCompile(`^/dev/[A-Za-z0-9._:/+-]{1,200}$`)
)

// Check refuses a report serve should not record: an unknown event, or a
// field that is not what it says (a hash, a slot, a device path, bounded
// text).
func (r *Report) Check() error {
	known := false
	for _, e := range events {
		known = known || r.Event == e
	}
	switch {
	case !known:
		return fmt.Errorf("report: unknown event %q", r.Event)
	case r.Image != "" && !hashRE.MatchString(r.Image):
		return errors.New("report: image is not a SHA-256")
	case r.Running != "" && !hashRE.MatchString(r.Running):
		return errors.New("report: running is not a SHA-256")
	case r.Slot != "" && !slotRE.MatchString(r.Slot):
		return errors.New("report: slot is not a or b")
	case r.Disk != "" && !diskRE.MatchString(r.Disk):
		return errors.New("report: disk is not a device path")
	case len(r.Error) > 1000 || len(r.Reboot) > 100:
		return errors.New("report: text too long")
	}
	if r.RebootAt != "" {
		if _, err := time.Parse(time.RFC3339, r.RebootAt); err != nil {
			return errors.New("report: reboot_at is not an RFC 3339 time")
		}
	}
	return nil
}

// ImageManifest is the part of a bake's manifest.json (build.Manifest)
// the installer and the upgrader read.
type ImageManifest struct {
	Profile string `json:"profile"`
	// Cmdline is the image's kernel command line (a slot's entry adds
	// where its root is: layout.SlotCmdline).
	Cmdline   string        `json:"cmdline"`
	Artifacts []Artifact    `json:"artifacts"`
	Disk      *ManifestDisk `json:"disk"`
}

// Artifact is a file of the bake.
type Artifact struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ManifestDisk is disk.raw's description in the manifest (build.DiskInfo,
// an alias: the bake writes this type).
type ManifestDisk struct {
	Arch       string          `json:"arch"`
	Root       ManifestRoot    `json:"root"`
	SlotSize   int64           `json:"slot_size"`
	Size       int64           `json:"size"`
	Partitions []DiskPartition `json:"partitions"`
}

// ManifestRoot is where the root image is in disk.raw.
type ManifestRoot struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Offset int64  `json:"offset"`
}

// DiskPartition is one partition of disk.raw: its place, and its extent
// (Used bytes from its start, with their SHA256; the rest are zeros).
type DiskPartition struct {
	Name   string `json:"name"`
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	GUID   string `json:"guid"`
	Used   int64  `json:"used"`
	SHA256 string `json:"sha256"`
}

// Partition names a disk with slots has (images/disk).
const (
	PartESP    = "esp"
	PartRootA  = "root-a"
	PartRootB  = "root-b"
	PartConfig = "bellconf"
	PartData   = "belldata"
)

// ErrNoRootHash is returned (wrapped) for a manifest that does not name
// its root image by a SHA-256.
var ErrNoRootHash = errors.New("the manifest has no root hash")

// Check refuses a manifest an installer or an upgrader cannot use: no
// disk (not baked with outputs [raw]), no root hash, or partitions that
// are not a disk with two slots (each extent inside its partition, the
// root at the start of root-a).
func (m *ImageManifest) Check() error {
	if m.Disk == nil {
		return fmt.Errorf("profile %s: the manifest describes no disk (bake the profile with outputs: [raw])", m.Profile)
	}
	d := m.Disk
	if !hashRE.MatchString(d.Root.SHA256) {
		return fmt.Errorf("profile %s: %w", m.Profile, ErrNoRootHash)
	}
	seen := map[string]bool{}
	var end int64
	for _, p := range d.Partitions {
		switch {
		case seen[p.Name]:
			return fmt.Errorf("manifest: partition %s twice", p.Name)
		case p.Offset < end || p.Offset%512 != 0 || p.Size <= 0 || p.Size%512 != 0 || p.Used < 0 || p.Used > p.Size:
			return fmt.Errorf("manifest: partition %s: offset %d, size %d, used %d do not fit", p.Name, p.Offset, p.Size, p.Used)
		case !hashRE.MatchString(p.SHA256):
			return fmt.Errorf("manifest: partition %s: no extent hash", p.Name)
		}
		seen[p.Name] = true
		end = p.Offset + p.Size
	}
	for _, n := range []string{PartESP, PartRootA, PartRootB, PartConfig} {
		if !seen[n] {
			return fmt.Errorf("manifest: no partition %s: not a disk with two root slots (bake it again with this bellbuild)", n)
		}
	}
	if end > d.Size {
		return fmt.Errorf("manifest: partitions end at %d, past the disk's %d bytes", end, d.Size)
	}
	a := m.Partition(PartRootA)
	if d.Root.Offset != a.Offset || d.Root.Size != a.Used || d.Root.SHA256 != a.SHA256 || d.SlotSize != a.Size {
		return fmt.Errorf("manifest: the root image (%d bytes at %d) is not root-a's extent", d.Root.Size, d.Root.Offset)
	}
	return nil
}

// Partition returns the partition called name, or nil.
func (m *ImageManifest) Partition(name string) *DiskPartition {
	if m.Disk == nil {
		return nil
	}
	for i := range m.Disk.Partitions {
		if m.Disk.Partitions[i].Name == name {
			return &m.Disk.Partitions[i]
		}
	}
	return nil
}

// Artifact returns the artifact called name, or nil.
func (m *ImageManifest) Artifact(name string) *Artifact {
	for i := range m.Artifacts {
		if m.Artifacts[i].Name == name {
			return &m.Artifacts[i]
		}
	}
	return nil
}
