package iso

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/bellbuild/bellbuild/images/fat"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/offset"
)

// writeSystemArea writes sectors 0–15: zeros, except, for a bootable image,
// an MBR whose one partition (type 0xEF) is the EFI image, so that UEFI
// firmware finds its ESP when the image is a disk rather than a CD.
func writeSystemArea(w *offset.Writer, l *layout) error {
	area := make([]byte, firstDataLBA*sector)
	if l.efi != nil {
		p := area[446:462]
		p[0] = 0x00                            // not active
		copy(p[1:4], []byte{0xFE, 0xFF, 0xFF}) // CHS: use the LBA fields
		p[4] = 0xEF                            // EFI system partition
		copy(p[5:8], []byte{0xFE, 0xFF, 0xFF}) // CHS
		binary.LittleEndian.PutUint32(p[8:], l.efi.lba*(sector/512))
		binary.LittleEndian.PutUint32(p[12:], uint32((l.efi.size+511)/512))
		area[510], area[511] = 0x55, 0xAA
	}
	_, err := w.Write(area)
	return err
}

// writeVolumeDescriptors writes the primary volume descriptor, the El
// Torito boot record and the set terminator (sectors 16–18).
func writeVolumeDescriptors(w *offset.Writer, l *layout) error {
	pvd := make([]byte, sector)
	pvd[0] = 1
	copy(pvd[1:6], "CD001")
	pvd[6] = 1
	padded(pvd[8:40], "")          // system identifier
	padded(pvd[40:72], l.volumeID) // volume identifier
	both32(pvd[80:88], l.total)    // volume space size
	both16(pvd[120:124], 1)        // volume set size
	both16(pvd[124:128], 1)        // volume sequence number
	both16(pvd[128:132], sector)   // logical block size
	both32(pvd[132:140], uint32(l.pathSize))
	binary.LittleEndian.PutUint32(pvd[140:], pathLLBA)
	binary.BigEndian.PutUint32(pvd[148:], pathLLBA+l.pathSecs)
	copy(pvd[156:190], dirRecord(l.root, []byte{0}, l))
	padded(pvd[190:318], "")          // volume set
	padded(pvd[318:446], "")          // publisher
	padded(pvd[446:574], "BELLBUILD") // data preparer
	padded(pvd[574:702], "BELLBUILD") // application
	padded(pvd[702:813], "")          // copyright, abstract, bibliographic files
	copy(pvd[813:830], longDate(l, true))
	copy(pvd[830:847], longDate(l, true))
	copy(pvd[847:864], longDate(l, false)) // expiration: none
	copy(pvd[864:881], longDate(l, true))
	pvd[881] = 1 // file structure version

	boot, term := make([]byte, sector), make([]byte, sector)
	if l.efi != nil {
		copy(boot[1:6], "CD001") // type 0: boot record
		boot[6] = 1
		copy(boot[7:39], "EL TORITO SPECIFICATION")
		binary.LittleEndian.PutUint32(boot[71:], catalogLBA)
		terminator(term)
	} else {
		// Not bootable: the set ends at sector 17, and 18 stays unused.
		terminator(boot)
	}
	for _, b := range [][]byte{pvd, boot, term} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

func terminator(b []byte) {
	b[0] = 255
	copy(b[1:6], "CD001")
	b[6] = 1
}

// writeCatalog writes the El Torito boot catalog (sector 19): a validation
// entry, then the default entry, booted without emulation: the BIOS boot
// image when there is one, followed by a final section for the EFI
// platform holding the EFI image; else the EFI image itself.
func writeCatalog(w *offset.Writer, l *layout) error {
	cat := make([]byte, sector)
	if l.efi != nil {
		v := cat[0:32]
		v[0] = 1
		v[1] = 0xEF // EFI
		if l.bios != nil {
			v[1] = 0 // x86: the default entry is the BIOS one
		}
		copy(v[4:28], "BELLBUILD")
		v[30], v[31] = 0x55, 0xAA
		var sum uint16
		for i := 0; i < 32; i += 2 {
			sum += binary.LittleEndian.Uint16(v[i:])
		}
		binary.LittleEndian.PutUint16(v[28:], -sum)
		if l.bios == nil {
			bootEntry(cat[32:64], l.efi)
		} else {
			// BIOS loads 4 virtual (512-byte) sectors, isolinux.bin's
			// first 2 KiB, which loads the rest itself.
			d := cat[32:64]
			d[0] = 0x88
			binary.LittleEndian.PutUint16(d[6:], 4)
			binary.LittleEndian.PutUint32(d[8:], l.bios.lba)
			h := cat[64:96]
			h[0] = 0x91 // final section header
			h[1] = 0xEF // EFI
			binary.LittleEndian.PutUint16(h[2:], 1)
			bootEntry(cat[96:128], l.efi)
		}
	}
	_, err := w.Write(cat)
	return err
}

// bootEntry fills a no-emulation boot entry for the EFI image f.
func bootEntry(d []byte, f *node) {
	d[0] = 0x88 // bootable
	d[1] = 0    // no emulation
	// Sector count in 512-byte units; an EFI image larger than the
	// 16-bit field says 0, which UEFI firmware reads as "to the end
	// of the medium" (the FAT's own size bounds it).
	if n := (f.size + 511) / 512; n <= 0xFFFF {
		binary.LittleEndian.PutUint16(d[6:], uint16(n))
	}
	binary.LittleEndian.PutUint32(d[8:], f.lba)
}

// bootInfoTable patches an El Torito boot image (its whole content, b,
// stored at lba) with the boot information table ISOLINUX reads at byte
// 8: the primary volume descriptor's sector, the image's sector and
// length, and the 32-bit sum of its little-endian words from byte 64 on.
func bootInfoTable(b []byte, lba uint32) {
	clear(b[8:64])
	var sum uint32
	for i := 64; i < len(b); i += 4 {
		var word [4]byte
		copy(word[:], b[i:])
		sum += binary.LittleEndian.Uint32(word[:])
	}
	binary.LittleEndian.PutUint32(b[8:], pvdLBA)
	binary.LittleEndian.PutUint32(b[12:], lba)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(b)))
	binary.LittleEndian.PutUint32(b[20:], sum)
}

// writePathTables writes the L (little-endian) and M (big-endian) path
// tables.
func writePathTables(w *offset.Writer, l *layout) error {
	for _, order := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		b := make([]byte, 0, int(l.pathSecs)*sector)
		for _, d := range l.dirs {
			id := []byte(d.id)
			parent := 1
			if d.parent != nil {
				parent = d.parent.num
			} else {
				id = []byte{0}
			}
			e := make([]byte, 8, 8+len(id)+1)
			e[0] = byte(len(id))
			order.PutUint32(e[2:], d.lba)
			order.PutUint16(e[6:], uint16(parent))
			e = append(e, id...)
			if len(id)%2 == 1 {
				e = append(e, 0)
			}
			b = append(b, e...)
		}
		b = b[:cap(b)]
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// writeDirs writes every directory's records, never across a sector.
func writeDirs(w *offset.Writer, l *layout) error {
	for _, d := range l.dirs {
		if err := w.PadTo(int64(d.lba) * sector); err != nil {
			return fmt.Errorf("iso: %s: %w", d.path, err)
		}
		ext := make([]byte, 0, d.dirSize)
		used := 0
		add := func(r []byte) {
			if used+len(r) > sector {
				ext = append(ext, make([]byte, sector-used)...)
				used = 0
			}
			ext = append(ext, r...)
			used += len(r)
		}
		add(dirRecord(d, []byte{0}, l))
		parent := d.parent
		if parent == nil {
			parent = d
		}
		add(dirRecord(parent, []byte{1}, l))
		for _, c := range d.children {
			if c.isDir || c.size <= maxExtent {
				add(dirRecord(c, []byte(c.id), l))
				continue
			}
			for off := int64(0); off < c.size; off += maxExtent {
				part := *c
				part.lba = c.lba + uint32(off/sector)
				part.size = min(maxExtent, c.size-off)
				r := dirRecord(&part, []byte(c.id), l)
				if off+maxExtent < c.size {
					r[25] |= 0x80 // multi-extent: another record follows
				}
				add(r)
			}
		}
		ext = append(ext, make([]byte, int(d.dirSize)-len(ext))...)
		if _, err := w.Write(ext); err != nil {
			return err
		}
	}
	return nil
}

// writeFiles writes every file's data, each from a sector boundary.
func writeFiles(w *offset.Writer, l *layout) error {
	buf := make([]byte, 256<<10)
	for _, f := range l.files {
		if err := w.PadTo(int64(f.lba) * sector); err != nil {
			return fmt.Errorf("iso: %s: %w", f.path, err)
		}
		start := w.N
		switch {
		case f.efi:
			if err := fat.Write(w, l.espTree, l.espOpts); err != nil {
				return fmt.Errorf("iso: EFI image: %w", err)
			}
		case f.bios:
			var b bytes.Buffer
			if err := fstree.CopyContent(&b, f.path, f.data, f.size, buf); err != nil {
				return fmt.Errorf("iso: %w", err)
			}
			bootInfoTable(b.Bytes(), f.lba)
			if _, err := w.Write(b.Bytes()); err != nil {
				return err
			}
		default:
			if err := fstree.CopyContent(w, f.path, f.data, f.size, buf); err != nil {
				return fmt.Errorf("iso: %w", err)
			}
		}
		if w.N-start != f.size {
			return fmt.Errorf("iso: %s: wrote %d bytes, want %d", f.path, w.N-start, f.size)
		}
	}
	if err := w.PadTo(int64(l.total) * sector); err != nil {
		return fmt.Errorf("iso: %w", err)
	}
	return nil
}

// dirRecord is the directory record of n under the identifier id.
func dirRecord(n *node, id []byte, l *layout) []byte {
	r := make([]byte, recordLen(len(id)))
	r[0] = byte(len(r))
	size := n.size
	if n.isDir {
		size = n.dirSize
	}
	both32(r[2:10], n.lba)
	both32(r[10:18], uint32(size))
	t := l.epochTime
	r[18] = byte(t.Year() - 1900)
	r[19] = byte(t.Month())
	r[20] = byte(t.Day())
	r[21] = byte(t.Hour())
	r[22] = byte(t.Minute())
	r[23] = byte(t.Second())
	if n.isDir {
		r[25] = 0x02
	}
	both16(r[28:32], 1)
	r[32] = byte(len(id))
	copy(r[33:], id)
	return r
}

// longDate is a volume descriptor date: "YYYYMMDDHHMMSScc" and a zone
// byte; unset is all zeros digits.
func longDate(l *layout, set bool) []byte {
	if !set {
		b := []byte("0000000000000000\x00")
		return b
	}
	t := l.epochTime
	return append([]byte(fmt.Sprintf("%04d%02d%02d%02d%02d%02d00", t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second())), 0)
}
