// Package confvol writes bellbuild's config volume: a FAT32 filesystem
// labelled BELLCONF that carries a node's rendered configuration beside an
// immutable root. It is the third partition of the disk images/disk
// builds, or a standalone image (for a USB stick or a virtual CD/disk).
//
// Day 2 is Rewrite: it replaces the config partition of an existing disk
// image (or block device) and touches no byte outside that partition, so
// the boot partition, the root and the partition table stay as baked.
package confvol

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fat"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/layout"
)

// Label is the volume's filesystem label; the init finds it by
// LABEL=BELLCONF.
const Label = disk.ConfigLabel

// NodePath is where the node's rendered configuration (nodeconf.Node as
// JSON) sits on the volume; mounted at /run/bellbuild/config it is
// /run/bellbuild/config/bellbuild/node.json.
const NodePath = layout.ConfigNode

// ErrNoConfigPartition is returned (wrapped) by Rewrite when the disk has
// no config partition.
var ErrNoConfigPartition = errors.New("no config partition")

// Tree returns the volume's content for one node's JSON configuration,
// every time stamp set to epoch.
func Tree(nodeJSON []byte, epoch int64) *fstree.Tree {
	t := fstree.New()
	t.AddFile(NodePath, nodeJSON, 0o644, 0, 0)
	t.Reproducible(epoch)
	return t
}

// Write writes a standalone config volume of files to w; size 0 makes the
// smallest FAT32 volume (see fat.MinSize).
func Write(w io.Writer, files *fstree.Tree, size int64) error {
	if err := fat.Write(w, files, fat.Options{Label: Label, Size: size}); err != nil {
		return fmt.Errorf("confvol: %w", err)
	}
	return nil
}

// WriteFile writes a standalone config volume to path atomically (a
// temporary file in the same directory, synced, renamed), mode 0600: it
// carries password hashes.
func WriteFile(path string, files *fstree.Tree, size int64) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("confvol: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := fat.Write(tmp, files, fat.Options{Label: Label, Size: size, Sparse: true}); err != nil {
		tmp.Close()
		return fmt.Errorf("confvol: %w", err)
	}
	// Sparse skipped the free space at the end: give the file its size.
	end, err := tmp.Seek(0, io.SeekCurrent)
	if err == nil {
		err = tmp.Truncate(end)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("confvol: %w", err)
	}
	return nil
}

// Partition locates the config partition of the GPT disk f: the partition
// named disk.ConfigName. It returns the partition's byte offset and size.
func Partition(f *os.File) (offset, size int64, err error) {
	table, err := gpt.Read(f, 512, 512)
	if err != nil {
		return 0, 0, fmt.Errorf("confvol: %s: reading the GPT: %w", f.Name(), err)
	}
	for _, p := range table.Partitions {
		if p.Name == disk.ConfigName && p.Type != gpt.Unused {
			return int64(p.Start) * 512, int64(p.End-p.Start+1) * 512, nil
		}
	}
	return 0, 0, fmt.Errorf("confvol: %s: no partition named %q: %w", f.Name(), disk.ConfigName, ErrNoConfigPartition)
}

// Rewrite replaces the config partition of the disk image or block device
// at path with a new volume holding files, leaving every byte outside the
// partition as it was. The tree is checked against the partition's size
// (names, entry types, space) and every file's content is read (for the
// volume's serial) before the first byte is overwritten, so a bad tree,
// or a file that changed since the tree was read, changes nothing. The
// volume must not be mounted while it is rewritten; on a running machine
// use WriteDir on the mounted volume.
func Rewrite(path string, files *fstree.Tree) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("confvol: %w", err)
	}
	defer f.Close()
	off, size, err := Partition(f)
	if err != nil {
		return err
	}
	opts := fat.Options{Label: Label, Size: size, HiddenSectors: uint32(off / 512)}
	if _, err := fat.Size(files, opts); err != nil {
		return fmt.Errorf("confvol: %s: %w", path, err)
	}
	if err := fat.Write(io.NewOffsetWriter(f, off), files, opts); err != nil {
		return fmt.Errorf("confvol: %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("confvol: %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("confvol: %s: %w", path, err)
	}
	return nil
}

// WriteDir writes the regular files of files into dir, a mounted config
// volume on a running machine: each file goes to a temporary name in its
// directory, is synced, then renamed over the old one, so the applier's
// path unit only ever sees whole files. Files already in dir that are not
// in files are left alone. A file whose content is not its Size fails
// with an *fstree.SizeError before it replaces anything.
func WriteDir(dir string, files *fstree.Tree) error {
	for _, e := range files.Walk() {
		if e.Type != fstree.Regular {
			continue
		}
		dst := filepath.Join(dir, filepath.FromSlash(e.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("confvol: %w", err)
		}
		err := atomicfile.WriteFrom(dst, 0o600, func(f *os.File) error {
			return fstree.CopyContent(f, e.Path, e.Data, e.Size, nil)
		})
		if err != nil {
			return fmt.Errorf("confvol: %s: %w", dst, err)
		}
	}
	return nil
}
