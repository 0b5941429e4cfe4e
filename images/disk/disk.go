// Package disk assembles bellbuild's immutable GPT disk image: an EFI
// System Partition (FAT32: boot loader, kernel, initramfs), a read-only
// root partition holding a squashfs image — or, with Spec.SlotSize, two
// root slots root-a (the image) and root-b (empty, for an upgrade) — and
// a small FAT32 config volume labelled BELLCONF holding the node's
// configuration.
//
// Every partition is streamed into the disk file at its offset (nothing is
// held in memory), and the GPT (github.com/diskfs/go-diskfs) is written
// last, so that the disk and partition GUIDs can be derived from what the
// partitions hold: the same inputs give a byte-identical disk.
package disk

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/images/fat"
	"github.com/bellbuild/bellbuild/images/fstree"
	imagelayout "github.com/bellbuild/bellbuild/images/layout"
)

// Partition names in the GPT and filesystem labels: the init finds the
// root by PARTLABEL=bellroot and the config volume by LABEL=BELLCONF (or
// PARTLABEL=bellconf); the names it looks for are images/layout's.
const (
	ESPName    = "esp"
	RootName   = imagelayout.RootPartition
	ConfigName = "bellconf"
	// DataName is the optional fourth partition (Spec.DataSize), left
	// empty: the init formats it on first boot and keeps the writable
	// layer over the root there.
	DataName    = imagelayout.DataPartition
	ESPLabel    = "ESP"
	ConfigLabel = imagelayout.ConfigLabel
)

// SlotA and SlotB are the GPT names of the two root slots of a disk made
// with Spec.SlotSize (root-a holds the image, root-b is left empty).
var (
	SlotA = imagelayout.SlotPartition(imagelayout.SlotA)
	SlotB = imagelayout.SlotPartition(imagelayout.SlotB)
)

// MinDataSize is the smallest data partition Grow leaves on a disk.
const MinDataSize = 64 << 20

const (
	sector = 512
	mib    = 1 << 20
	// attrReadOnly is the GPT attribute (bit 60) the Discoverable
	// Partitions Specification reads as "mount read-only".
	attrReadOnly = 1 << 60
)

// guidNamespace is the UUIDv5 namespace of every GUID bellbuild derives.
var guidNamespace = uuid.MustParse("6f1c1e8a-9b0e-4f57-a8a5-7b1d2e3c4b50")

// ErrRootSize is returned (wrapped) when the root reader does not hold
// exactly Spec.RootSize bytes.
var ErrRootSize = errors.New("root content size mismatch")

// Spec is what goes on the disk. Sizes of 0 mean "fit the content".
type Spec struct {
	// ESP is the EFI System Partition's content (see ESP for the usual one).
	ESP *fstree.Tree
	// ESPFunc, instead of ESP, makes the ESP's content once the root is
	// written, from the root image's SHA-256 (hex), so that a boot entry
	// can name the image it boots. It is first called with 64 zeros to
	// size the ESP: the content's sizes must not depend on the hash.
	ESPFunc func(rootSHA256 string) (*fstree.Tree, error)
	// ESPSize is the ESP's size in bytes; 0: the smallest FAT32 that holds it.
	ESPSize int64
	// Root is the root filesystem image (a squashfs), RootSize bytes long.
	Root     io.Reader
	RootSize int64
	// RootFunc, instead of Root, writes the root image straight into its
	// partition (e.g. squashfs.Write on w) and returns its size: nothing
	// is staged in a temporary file. w starts at the partition's first
	// byte; it may seek within what it has written.
	RootFunc func(w io.WriteSeeker) (int64, error)
	// RootPartSize reserves more than RootSize for the root partition.
	RootPartSize int64
	// Slots makes two root slots instead of the one root partition:
	// root-a with the root image and root-b left empty (not written: the
	// file stays sparse), each SlotSize bytes (rounded up to MiB; 0:
	// twice the root image). SlotSize > 0 implies Slots.
	Slots    bool
	SlotSize int64
	// Config is the config volume's content (nil: an empty volume).
	Config *fstree.Tree
	// ConfigSize is the config volume's size; 0: the smallest FAT32.
	ConfigSize int64
	// Arch is the architecture the disk boots ("" is AMD64): the root
	// partition's GPT type is that architecture's root type.
	Arch string
	// DataSize, when > 0, adds the data partition (belldata) of that many
	// bytes (rounded up to MiB) after the config volume. It is written as
	// zeros, i.e. not at all: the image file stays sparse.
	DataSize int64
}

// Partition is one partition of a written disk.
type Partition struct {
	Index  int
	Name   string
	Offset int64 // bytes from the start of the disk
	Size   int64 // bytes
	GUID   string
	// SHA256 of the bytes written into the partition.
	SHA256 string
	// Used is how many bytes from the partition's start may hold data:
	// every byte past it is zero (never written). Extent is the SHA-256
	// of those Used bytes (zeros skipped within them included), what an
	// installer that copies only them checks.
	Used   int64
	Extent string
}

// Layout describes a written disk.
type Layout struct {
	Size       int64
	GUID       string
	Partitions []Partition
}

// Partition returns the partition called name, or nil.
func (l *Layout) Partition(name string) *Partition {
	for i := range l.Partitions {
		if l.Partitions[i].Name == name {
			return &l.Partitions[i]
		}
	}
	return nil
}

func roundMiB(n int64) int64 { return (n + mib - 1) &^ (mib - 1) }

// Plan computes the layout of spec without writing anything (GUIDs and
// hashes are left empty). With RootFunc the root's size is only known once
// it is written: Plan then assumes RootPartSize.
func Plan(spec Spec) (*Layout, error) {
	espSize, confSize, err := fatSizes(spec)
	if err != nil {
		return nil, err
	}
	rootSize := max(spec.RootPartSize, spec.RootSize)
	if rootSize <= 0 {
		return nil, fmt.Errorf("disk: root: no content")
	}
	if spec.SlotSize > 0 && rootSize > roundMiB(spec.SlotSize) {
		return nil, fmt.Errorf("disk: root image of %d bytes is larger than the slot size %d", rootSize, spec.SlotSize)
	}
	return layout(espSize, rootSize, slotSize(spec, rootSize), confSize, spec.DataSize), nil
}

// slotSize is the size of each root slot for a root of rootSize bytes (0:
// no slots).
func slotSize(spec Spec, rootSize int64) int64 {
	switch {
	case spec.SlotSize > 0:
		return spec.SlotSize
	case spec.Slots:
		return 2 * rootSize
	}
	return 0
}

func fatSizes(spec Spec) (esp, conf int64, err error) {
	t, err := espTree(spec, zeroHash)
	if err != nil {
		return 0, 0, err
	}
	esp, err = fat.Size(t, fat.Options{Label: ESPLabel, Size: spec.ESPSize})
	if err != nil {
		return 0, 0, fmt.Errorf("disk: esp: %w", err)
	}
	conf, err = fat.Size(configTree(spec), fat.Options{Label: ConfigLabel, Size: spec.ConfigSize})
	if err != nil {
		return 0, 0, fmt.Errorf("disk: config: %w", err)
	}
	return esp, conf, nil
}

// zeroHash stands for the root's hash while the ESP is sized.
var zeroHash = strings.Repeat("0", 64)

// espTree is the ESP's content for a root image whose SHA-256 is sum.
func espTree(spec Spec, sum string) (*fstree.Tree, error) {
	if spec.ESPFunc == nil {
		return spec.ESP, nil
	}
	t, err := spec.ESPFunc(sum)
	if err != nil {
		return nil, fmt.Errorf("disk: esp: %w", err)
	}
	return t, nil
}

func configTree(spec Spec) *fstree.Tree {
	if spec.Config == nil {
		return fstree.New()
	}
	return spec.Config
}

// layout places the three partitions (four with a data partition, one
// more with two root slots) MiB-aligned from 1 MiB on, and leaves 1 MiB at
// the end for the backup GPT.
func layout(espSize, rootSize, slotSize, confSize, dataSize int64) *Layout {
	l := &Layout{}
	off := int64(mib) // after the protective MBR and the primary GPT
	type part struct {
		name string
		size int64
	}
	parts := []part{{ESPName, espSize}, {RootName, rootSize}}
	if slotSize > 0 {
		parts = []part{{ESPName, espSize}, {SlotA, slotSize}, {SlotB, slotSize}}
	}
	parts = append(parts, part{ConfigName, confSize})
	if dataSize > 0 {
		parts = append(parts, part{DataName, dataSize})
	}
	for i, p := range parts {
		size := roundMiB(p.size)
		l.Partitions = append(l.Partitions, Partition{Index: i + 1, Name: p.name, Offset: off, Size: size})
		off += size
	}
	l.Size = off + mib
	return l
}

// Write writes the disk described by spec into f, which must be empty (it
// is truncated first; unwritten space stays sparse):
//
//  1. the root image (from Root, or written in place by RootFunc) into
//     its partition (root-a with two slots), after where the ESP goes;
//  2. the ESP at 1 MiB (ESPFunc makes it now, knowing the root's hash);
//  3. the config volume after the root (after both slots);
//  4. the protective MBR and both GPTs, with GUIDs derived from what the
//     partitions hold.
func Write(f *os.File, spec Spec) (*Layout, error) {
	if (spec.Root == nil) == (spec.RootFunc == nil) {
		return nil, fmt.Errorf("disk: root: give exactly one of Root and RootFunc")
	}
	if (spec.ESP == nil) == (spec.ESPFunc == nil) {
		return nil, fmt.Errorf("disk: esp: give exactly one of ESP and ESPFunc")
	}
	if _, err := lookupArch(spec.Arch); err != nil {
		return nil, err
	}
	espSize, confSize, err := fatSizes(spec)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(0); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	// The root's size may be unknown until it is written: lay out the
	// ESP and the root's start first, the rest once the root is there.
	first := max(spec.RootPartSize, spec.RootSize, 1)
	l := layout(espSize, first, slotSize(spec, first), confSize, spec.DataSize)
	esp, root := &l.Partitions[0], &l.Partitions[1]

	// 1. The root image.
	var rootBytes int64
	if spec.RootFunc != nil {
		n, err := spec.RootFunc(io.NewOffsetWriter(f, root.Offset))
		if err != nil {
			return nil, fmt.Errorf("disk: root: %w", err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, root.Offset, n)); err != nil {
			return nil, fmt.Errorf("disk: root: %w", err)
		}
		root.SHA256, rootBytes = hex.EncodeToString(h.Sum(nil)), n
	} else {
		hw := newPartWriter(f, root.Offset)
		n, err := io.Copy(hw, io.LimitReader(spec.Root, spec.RootSize+1))
		if err != nil {
			return nil, fmt.Errorf("disk: root: %w", err)
		}
		if n != spec.RootSize {
			return nil, fmt.Errorf("disk: root: read %d bytes, want %d: %w", n, spec.RootSize, ErrRootSize)
		}
		root.SHA256, rootBytes = hex.EncodeToString(hw.h.Sum(nil)), n
	}
	root.Used, root.Extent = rootBytes, root.SHA256
	rootPart := max(spec.RootPartSize, rootBytes)
	final := layout(espSize, rootPart, slotSize(spec, rootPart), confSize, spec.DataSize)
	final.Partitions[1].SHA256, final.Partitions[1].Used, final.Partitions[1].Extent = root.SHA256, root.Used, root.Extent
	if spec.SlotSize > 0 && rootBytes > final.Partitions[1].Size {
		return nil, fmt.Errorf("disk: root image of %d bytes is larger than the slot size %d", rootBytes, spec.SlotSize)
	}
	l = final
	esp = &l.Partitions[0]
	conf := l.Partition(ConfigName)
	if err := f.Truncate(l.Size); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}

	// 2. The ESP.
	t, err := espTree(spec, l.Partitions[1].SHA256)
	if err != nil {
		return nil, err
	}
	if err := writeFAT(f, esp, t, ESPLabel); err != nil {
		return nil, fmt.Errorf("disk: esp: %w", err)
	}
	// 3. The config volume.
	if err := writeFAT(f, conf, configTree(spec), ConfigLabel); err != nil {
		return nil, fmt.Errorf("disk: config: %w", err)
	}
	// An empty slot and the data partition hold nothing.
	for i := range l.Partitions {
		if p := &l.Partitions[i]; p.Name == SlotB || p.Name == DataName {
			p.Extent = emptyHash
		}
	}
	// 4. The GPT, with GUIDs derived from the content.
	if err := writeGPT(f, l, spec.Arch); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	return l, nil
}

// emptyHash is the SHA-256 of nothing: the Extent of a partition with no
// Used bytes.
var emptyHash = hex.EncodeToString(sha256.New().Sum(nil))

// WriteFile writes the disk to path whole or not at all (package
// atomicfile). The file is mode 0600: its config volume carries the node's
// configuration, password hashes included.
func WriteFile(path string, spec Spec) (*Layout, error) {
	var l *Layout
	var werr error
	err := atomicfile.WriteFrom(path, 0o600, func(f *os.File) error {
		l, werr = Write(f, spec)
		return werr
	})
	switch {
	case werr != nil:
		return nil, werr
	case err != nil:
		return nil, fmt.Errorf("disk: %w", err)
	}
	return l, nil
}

// writeFAT writes a FAT32 volume of t into partition p (which must read
// as zeros: free space is skipped) and records its hash.
func writeFAT(f *os.File, p *Partition, t *fstree.Tree, label string) error {
	hw := newPartWriter(f, p.Offset)
	err := fat.Write(hw, t, fat.Options{Label: label, Size: p.Size, HiddenSectors: uint32(p.Offset / sector), Sparse: true})
	if err != nil {
		return err
	}
	p.SHA256 = hex.EncodeToString(hw.h.Sum(nil))
	// The extent is every byte up to the last one written, skipped
	// (zero) ones included: read back, as an installer will read it.
	p.Used = hw.end
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, p.Offset, p.Used)); err != nil {
		return err
	}
	p.Extent = hex.EncodeToString(h.Sum(nil))
	return nil
}

// writeGPT derives every GUID and writes the protective MBR and both GPTs.
func writeGPT(f *os.File, l *Layout, arch string) error {
	for i := range l.Partitions {
		p := &l.Partitions[i]
		p.GUID = DeriveGUID("partition", p.Name, p.SHA256)
	}
	l.GUID = ""
	return WriteGPT(f, l, arch)
}

// WriteGPT writes the protective MBR and both GPTs of l into f, a disk of
// l.Size bytes for architecture arch ("" is AMD64: the root slots' type):
// the primary table in its first 34 sectors, the backup in its last 33.
// Partitions keep their GUIDs; the disk's, when l.GUID is empty, is
// derived from the partitions.
func WriteGPT(f *os.File, l *Layout, arch string) error {
	info, err := lookupArch(arch)
	if err != nil {
		return err
	}
	types := map[string]gpt.Type{ESPName: gpt.EFISystemPartition, RootName: info.rootType,
		SlotA: info.rootType, SlotB: info.rootType, ConfigName: gpt.LinuxFilesystem, DataName: gpt.LinuxFilesystem}
	all := sha256.New()
	table := &gpt.Table{LogicalSectorSize: sector, PhysicalSectorSize: sector, ProtectiveMBR: true}
	for i := range l.Partitions {
		p := &l.Partitions[i]
		if p.GUID == "" {
			return fmt.Errorf("disk: gpt: partition %s has no GUID", p.Name)
		}
		fmt.Fprintf(all, "%s %s %d %d\n", p.Name, p.SHA256, p.Offset, p.Size)
		gp := &gpt.Partition{
			Index: p.Index,
			Start: uint64(p.Offset / sector),
			End:   uint64((p.Offset+p.Size)/sector - 1),
			Type:  types[p.Name],
			Name:  p.Name,
			GUID:  p.GUID,
		}
		if p.Name == RootName || p.Name == SlotA || p.Name == SlotB {
			gp.Attributes = attrReadOnly
		}
		table.Partitions = append(table.Partitions, gp)
	}
	if l.GUID == "" {
		l.GUID = DeriveGUID("disk", hex.EncodeToString(all.Sum(nil)))
	}
	table.GUID = l.GUID
	if err := table.Write(f, l.Size); err != nil {
		return fmt.Errorf("disk: gpt: %w", err)
	}
	return nil
}

// DeriveGUID returns a name-based (version 5) UUID of parts in bellbuild's
// namespace, in upper case as GPT tools print it.
func DeriveGUID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s", len(p), p)
	}
	u := uuid.NewSHA1(guidNamespace, h.Sum(nil))
	return strings.ToUpper(u.String())
}

// partWriter writes sequentially into a partition and hashes what it
// writes; Seek skips (sparse) space without hashing it. end is one past
// the last byte written.
type partWriter struct {
	w   *io.OffsetWriter
	h   hash.Hash
	end int64
}

func newPartWriter(f *os.File, off int64) *partWriter {
	return &partWriter{w: io.NewOffsetWriter(f, off), h: sha256.New()}
}

func (p *partWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.h.Write(b[:n])
	if n > 0 {
		pos, _ := p.w.Seek(0, io.SeekCurrent)
		p.end = max(p.end, pos)
	}
	return n, err
}

func (p *partWriter) Seek(off int64, whence int) (int64, error) { return p.w.Seek(off, whence) }
