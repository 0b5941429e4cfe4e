// Package slots keeps an installed disk's two root slots (A/B) on its EFI
// System Partition, where systemd-boot reads them:
//
//   - one boot entry per slot, loader/entries/bellbuild-GEN-SLOT[+L-D].conf
//     (images/layout.Entry): systemd-boot boots the newest entry that has
//     tries left and counts each try in the file's name;
//   - MarkGood drops a slot's counter once its boot applied without
//     errors (what systemd-bless-boot does);
//   - FailedUpgrade finds the newer slot systemd-boot gave up on (no tries
//     left), whose image the machine then refuses to try again
//     (bellbuild/failed, one image hash a line);
//   - Begin, WriteBoot and Commit write a new image's kernel, initramfs
//     and entry into the other slot, its entry last, so a slot cut short
//     is never booted.
//
// Every file is written to a temporary name, synced, then renamed (vfat
// renames within a directory in one step).
package slots

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/images/layout"
)

// FailedFile lists, on the ESP, the images (root hashes) whose slot
// systemd-boot gave up on: an upgrader does not try them again.
const FailedFile = "bellbuild/failed"

// ESP is a mounted EFI System Partition.
type ESP struct {
	// Dir is where it is mounted.
	Dir string
}

// Slot is one slot entry found on the ESP.
type Slot struct {
	layout.Entry
	// Image is the root hash its command line names (bellbuild.image=).
	Image string
	// Options is its command line.
	Options string
}

// Entries lists the slot entries, newest first.
func (e ESP) Entries() ([]Slot, error) {
	dir := filepath.Join(e.Dir, layout.EntriesDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Slot
	for _, d := range ents {
		en, ok := layout.ParseEntry(d.Name())
		if !ok {
			continue
		}
		s := Slot{Entry: en}
		data, err := os.ReadFile(filepath.Join(dir, d.Name()))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "options "); ok {
				s.Options = strings.TrimSpace(v)
			}
		}
		for _, f := range strings.Fields(s.Options) {
			if v, ok := strings.CutPrefix(f, layout.ImageParam+"="); ok {
				s.Image = v
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Gen > out[j].Gen })
	return out, nil
}

// Find returns slot's entry (the newest, should there be two), or nil.
func Find(entries []Slot, slot string) *Slot {
	for i := range entries {
		if entries[i].Slot == slot {
			return &entries[i]
		}
	}
	return nil
}

// MarkGood drops slot's boot counter: systemd-boot boots it from now on
// without counting. It reports whether there was a counter to drop.
func (e ESP) MarkGood(slot string) (bool, error) {
	ents, err := e.Entries()
	if err != nil {
		return false, err
	}
	s := Find(ents, slot)
	if s == nil {
		return false, fmt.Errorf("slot %s has no boot entry in %s", slot, filepath.Join(e.Dir, layout.EntriesDir))
	}
	if !s.Counting {
		return false, nil
	}
	if err := e.rename(s.Path(), s.Good().Path()); err != nil {
		return false, err
	}
	return true, nil
}

// FailedUpgrade returns the entry of the slot other than running that is
// newer than running's and that systemd-boot gave up on (no tries left):
// an upgrade that never came up, so the machine is back on running. nil
// when there is none.
func FailedUpgrade(entries []Slot, running string) *Slot {
	own := Find(entries, running)
	other := Find(entries, layout.OtherSlot(running))
	if other == nil || !other.Bad() || (own != nil && other.Gen < own.Gen) {
		return nil
	}
	return other
}

// Failed lists the images recorded as failed, oldest first.
func (e ESP) Failed() ([]string, error) {
	data, err := os.ReadFile(filepath.Join(e.Dir, FailedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(data)), nil
}

// maxFailed bounds the list: the oldest go first.
const maxFailed = 16

// AddFailed records image as failed (once).
func (e ESP) AddFailed(image string) error {
	list, err := e.Failed()
	if err != nil {
		return err
	}
	for _, f := range list {
		if f == image {
			return nil
		}
	}
	list = append(list, image)
	if len(list) > maxFailed {
		list = list[len(list)-maxFailed:]
	}
	return e.writeFile(FailedFile, strings.NewReader(strings.Join(list, "\n")+"\n"), "")
}

// Remove deletes slot's entries: nothing boots the slot any more.
func (e ESP) Remove(slot string) error {
	ents, err := e.Entries()
	if err != nil {
		return err
	}
	for _, s := range ents {
		if s.Slot == slot {
			if err := os.Remove(filepath.Join(e.Dir, s.Path())); err != nil {
				return err
			}
		}
	}
	return atomicfile.SyncDir(filepath.Join(e.Dir, layout.EntriesDir))
}

// Begin starts writing a new image into slot: its entry goes first, so
// that nothing boots the slot while it is written. It returns the
// generation the new entry will have (one more than any there).
func (e ESP) Begin(slot string) (int, error) {
	ents, err := e.Entries()
	if err != nil {
		return 0, err
	}
	gen := 1
	for _, s := range ents {
		gen = max(gen, s.Gen+1)
	}
	return gen, e.Remove(slot)
}

// ErrHash is returned (wrapped) when a file written does not have the
// SHA-256 it should.
var ErrHash = errors.New("sha256 mismatch")

// WriteBoot writes slot's kernel or initramfs (what: layout.SlotKernel or
// layout.SlotInitrd of slot) from r, checking that it has the SHA-256
// sum; a file that does not is not put in place.
func (e ESP) WriteBoot(path string, r io.Reader, sum string) error {
	return e.writeFile(path, r, sum)
}

// Commit writes slot's entry, generation gen, with tries boots to prove
// itself: from now on systemd-boot boots the slot.
func (e ESP) Commit(slot string, gen, tries int, title, options string) error {
	en := layout.Entry{Gen: gen, Slot: slot, Counting: tries > 0, Left: tries}
	return e.writeFile(en.Path(), strings.NewReader(layout.EntryText(title, slot, options)), "")
}

// writeFile writes rel from r through a temporary file, synced, checked
// against sum when it is set, then renamed in place.
func (e ESP) writeFile(rel string, r io.Reader, sum string) error {
	dst := filepath.Join(e.Dir, rel)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && sum != "" && hex.EncodeToString(h.Sum(nil)) != sum {
		err = fmt.Errorf("%s: %w: got %x, want %s", rel, ErrHash, h.Sum(nil), sum)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}

func (e ESP) rename(from, to string) error {
	if err := os.Rename(filepath.Join(e.Dir, from), filepath.Join(e.Dir, to)); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(filepath.Join(e.Dir, to)))
}
