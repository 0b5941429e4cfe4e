package install

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// Disk is a whole disk the installer may write to.
type Disk struct {
	// Name is the kernel's name (vda, sda, nvme0n1); Dev its node.
	Name, Dev string
	// Size in bytes.
	Size int64
	// ReadOnly disks are never written.
	ReadOnly bool
	// Names are its /dev/disk/by-id/ and /dev/disk/by-path/ names, as
	// udev makes them (from the links when /dev/disk exists, else from
	// sysfs the way udev would for virtio, NVMe and SCSI/SATA disks).
	Names []string
	// Holds says what it holds ("" for nothing: no partition table, no
	// filesystem signature): "a GPT", "a DOS partition table",
	// "partitions", "an ext2/3/4 filesystem", ...
	Holds string
	// Boot is set when the running system uses the disk (a mounted
	// partition: the medium it booted from): never a target.
	Boot bool
}

func (d Disk) String() string {
	s := fmt.Sprintf("%s (%s", d.Dev, humanSize(d.Size))
	if d.Holds != "" {
		s += ", holds " + d.Holds
	} else {
		s += ", empty"
	}
	if d.ReadOnly {
		s += ", read-only"
	}
	if d.Boot {
		s += ", in use: the boot medium"
	}
	return s + ")"
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// notDisks are kernel block devices that are never an install target.
var notDisks = regexp.MustCompile(`^(loop|ram|zram|sr|fd|md|dm-|nbd|mtdblock)`)

// Disks lists the whole disks under sysBlock (/sys/block), each probed
// through its node in devDir (/dev), in natural name order (vda, vdb, ...,
// sdz, sdaa). mounts is /proc/mounts' content: a disk with a mounted
// partition is the boot medium.
func Disks(sysBlock, devDir, mounts string) []Disk {
	ents, _ := os.ReadDir(sysBlock)
	mounted := map[string]bool{}
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[0], "/dev/") {
			mounted[strings.TrimPrefix(f[0], "/dev/")] = true
		}
	}
	var out []Disk
	for _, e := range ents {
		name := e.Name()
		if notDisks.MatchString(name) {
			continue
		}
		dir := filepath.Join(sysBlock, name)
		sectors, err := readInt(filepath.Join(dir, "size"))
		if err != nil || sectors == 0 {
			continue
		}
		d := Disk{Name: name, Dev: filepath.Join(devDir, name), Size: sectors * 512}
		if ro, _ := readInt(filepath.Join(dir, "ro")); ro == 1 {
			d.ReadOnly = true
		}
		var parts []string
		subs, _ := os.ReadDir(dir)
		for _, s := range subs {
			if _, err := os.Stat(filepath.Join(dir, s.Name(), "partition")); err == nil {
				parts = append(parts, s.Name())
			}
		}
		d.Boot = mounted[name]
		for _, p := range parts {
			d.Boot = d.Boot || mounted[p]
		}
		d.Holds = probe(d.Dev, d.Size)
		if d.Holds == "" && len(parts) > 0 {
			d.Holds = "partitions (" + strings.Join(parts, ", ") + ")"
		}
		d.Names = names(dir, name, filepath.Join(devDir, "disk"))
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Name, out[j].Name) })
	return out
}

// naturalLess orders kernel names as people count disks: shorter first
// (sdz before sdaa), then by name (vda, vdb; nvme0n1, nvme1n1).
func naturalLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

func readInt(file string) (int64, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
}

func readString(file string) string {
	data, _ := os.ReadFile(file)
	return strings.TrimSpace(string(data))
}

// probe says what a disk holds: a partition table or a filesystem
// signature at its start (or a backup GPT at its end); "" when it finds
// none.
func probe(dev string, size int64) string {
	f, err := os.Open(dev)
	if err != nil {
		return ""
	}
	defer f.Close()
	head := make([]byte, 68*1024)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	at := func(off int, sig string) bool {
		return off+len(sig) <= len(head) && string(head[off:off+len(sig)]) == sig
	}
	switch {
	case at(512, "EFI PART"):
		return "a GPT"
	case at(1080, "\x53\xef"):
		return "an ext2/3/4 filesystem"
	case at(0, "XFSB"):
		return "an XFS filesystem"
	case at(65600, "_BHRfS_M"):
		return "a btrfs filesystem"
	case at(0, "hsqs"):
		return "a squashfs"
	case at(32769, "CD001"):
		return "an ISO 9660 filesystem"
	case at(512, "LABELONE") || at(0, "LABELONE"):
		return "an LVM physical volume"
	case at(0, "LUKS\xba\xbe"):
		return "a LUKS volume"
	case at(4086, "SWAPSPACE2") || at(4086, "SWAP-SPACE"):
		return "swap space"
	case len(head) >= 4100 && binary.LittleEndian.Uint32(head[4096:]) == 0xa92b4efc:
		return "a RAID member"
	case at(510, "\x55\xaa") && (at(0x52, "FAT32") || at(0x36, "FAT")):
		return "a FAT filesystem"
	case at(510, "\x55\xaa"):
		return "a DOS partition table"
	}
	if size >= 1024 {
		tail := make([]byte, 512)
		if _, err := f.ReadAt(tail, size-512); err == nil && bytes.HasPrefix(tail, []byte("EFI PART")) {
			return "a backup GPT"
		}
	}
	return ""
}

// names are a disk's /dev/disk/by-id/ and by-path/ names: the links under
// byDir (/dev/disk) that point at it when there are any (udev made them),
// else the names udev would make, from sysfs.
func names(sysDir, name, byDir string) []string {
	var out []string
	for _, kind := range []string{"by-id", "by-path"} {
		ents, _ := os.ReadDir(filepath.Join(byDir, kind))
		for _, e := range ents {
			if t, err := os.Readlink(filepath.Join(byDir, kind, e.Name())); err == nil && path.Base(t) == name {
				out = append(out, "/dev/disk/"+kind+"/"+e.Name())
			}
		}
	}
	if len(out) > 0 {
		return out
	}
	dev, _ := filepath.EvalSymlinks(filepath.Join(sysDir, "device"))
	pci := ""
	for _, el := range strings.Split(dev, "/") {
		if pciRE.MatchString(el) {
			pci = el // the last PCI function on the path: the controller
		}
	}
	clean := func(s string) string { return strings.Join(strings.Fields(s), "_") }
	switch {
	case strings.HasPrefix(name, "vd"):
		if s := readString(filepath.Join(sysDir, "serial")); s != "" {
			out = append(out, "/dev/disk/by-id/virtio-"+clean(s))
		}
		if pci != "" {
			out = append(out, "/dev/disk/by-path/pci-"+pci, "/dev/disk/by-path/virtio-pci-"+pci)
		}
	case strings.HasPrefix(name, "nvme"):
		model, serial := readString(filepath.Join(sysDir, "device/model")), readString(filepath.Join(sysDir, "device/serial"))
		if model != "" && serial != "" {
			out = append(out, "/dev/disk/by-id/nvme-"+clean(model)+"_"+clean(serial))
		}
		if nsid := readString(filepath.Join(sysDir, "nsid")); pci != "" && nsid != "" {
			out = append(out, "/dev/disk/by-path/pci-"+pci+"-nvme-"+nsid)
		}
	case strings.HasPrefix(name, "sd"):
		if w := readString(filepath.Join(sysDir, "device/wwid")); strings.HasPrefix(w, "naa.") {
			out = append(out, "/dev/disk/by-id/wwn-0x"+strings.TrimPrefix(w, "naa."))
		}
		model := readString(filepath.Join(sysDir, "device/model"))
		if serial := vpdSerial(filepath.Join(sysDir, "device/vpd_pg80")); model != "" && serial != "" {
			out = append(out, "/dev/disk/by-id/ata-"+clean(model)+"_"+clean(serial))
		}
		if pci != "" {
			if m := ataRE.FindStringSubmatch(dev); m != nil {
				out = append(out, "/dev/disk/by-path/pci-"+pci+"-ata-"+m[1])
			} else if m := hctlRE.FindStringSubmatch(dev); m != nil {
				out = append(out, "/dev/disk/by-path/pci-"+pci+"-scsi-"+m[1])
			}
		}
	}
	return out
}

var (
	pciRE  = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)
	ataRE  = regexp.MustCompile(`/ata(\d+)/`)
	hctlRE = regexp.MustCompile(`/(\d+:\d+:\d+:\d+)(?:/|$)`)
)

// vpdSerial reads the unit serial number from a SCSI VPD page 0x80.
func vpdSerial(file string) string {
	data, err := os.ReadFile(file)
	if err != nil || len(data) < 4 {
		return ""
	}
	n := int(data[3])
	if 4+n > len(data) {
		n = len(data) - 4
	}
	return strings.TrimSpace(string(data[4 : 4+n]))
}

// ErrNoDisk is returned (wrapped) when a disk spec matches no disk, or
// more than one.
var ErrNoDisk = errors.New("no single disk")

// ErrRefused is returned (wrapped) for a disk the installer must not
// write: one that holds something (without wipe), the boot medium, a
// read-only one.
var ErrRefused = errors.New("refused")

// Choose picks the disk spec names among disks, and checks that it may
// be written: never the boot medium or a read-only disk, and one that
// holds a partition table or a filesystem only with wipe. An error lists
// every disk found.
func Choose(spec nodeconf.Install, disks []Disk) (Disk, error) {
	found := func() string {
		if len(disks) == 0 {
			return "none"
		}
		var s []string
		for _, d := range disks {
			s = append(s, d.String())
		}
		return strings.Join(s, "; ")
	}
	usable := func(d Disk) bool { return !d.Boot && !d.ReadOnly }
	var match []Disk
	switch spec.Disk {
	case nodeconf.DiskLargest:
		var best int64
		for _, d := range disks {
			if usable(d) && d.Size >= best {
				if d.Size > best {
					match = nil
				}
				best = d.Size
				match = append(match, d)
			}
		}
	case nodeconf.DiskFirstEmpty:
		for _, d := range disks {
			if usable(d) && d.Holds == "" {
				match = []Disk{d}
				break
			}
		}
	default:
		glob := strings.ContainsAny(spec.Disk, "*?[")
		for _, d := range disks {
			cands := append([]string{d.Dev, "/dev/" + d.Name}, d.Names...)
			for _, c := range cands {
				ok := c == spec.Disk
				if glob {
					ok, _ = path.Match(spec.Disk, c)
				}
				if ok {
					match = append(match, d)
					break
				}
			}
		}
	}
	switch {
	case len(match) == 0:
		return Disk{}, fmt.Errorf("install.disk %q: %w: it matches none of the disks found: %s", spec.Disk, ErrNoDisk, found())
	case len(match) > 1:
		var s []string
		for _, d := range match {
			s = append(s, d.Dev)
		}
		return Disk{}, fmt.Errorf("install.disk %q: %w: it matches %d disks (%s); disks found: %s", spec.Disk, ErrNoDisk, len(match), strings.Join(s, ", "), found())
	}
	d := match[0]
	switch {
	case d.Boot:
		return Disk{}, fmt.Errorf("install.disk %q: %s: %w: it is the medium this system booted from", spec.Disk, d.Dev, ErrRefused)
	case d.ReadOnly:
		return Disk{}, fmt.Errorf("install.disk %q: %s: %w: it is read-only", spec.Disk, d.Dev, ErrRefused)
	case d.Holds != "" && !spec.Wipe:
		return Disk{}, fmt.Errorf("install.disk %q: %s: %w: it holds %s (set install.wipe: true to write over it); disks found: %s", spec.Disk, d.Dev, ErrRefused, d.Holds, found())
	}
	return d, nil
}
