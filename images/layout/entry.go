package layout

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Entry is a slot's boot entry file on the ESP, EntriesDir/NAME.conf, named
//
//	bellbuild-GEN-SLOT[+LEFT[-DONE]].conf
//
// GEN counts the images the disk has had (1 for the baked one, each
// upgrade one more), so that systemd-boot, which sorts entries by their id
// in descending version order, puts the newest first and boots it; SLOT is
// a or b. The +LEFT-DONE suffix is systemd's boot counting: systemd-boot
// renames the file at each boot it tries (+3 → +2-1 → +1-2 → +0-3), an
// entry with no tries left is sorted last (booted only when nothing else
// is left), and an entry without the suffix is good: the init removes the
// suffix once the slot's first apply finished without errors (what
// systemd-bless-boot does).
type Entry struct {
	Gen  int
	Slot string
	// Counting is false for a good entry (no suffix); then Left and Done
	// are 0.
	Counting   bool
	Left, Done int
}

var entryRE = regexp.MustCompile(`^bellbuild-([1-9][0-9]{0,8})-([ab])(?:\+([0-9]{1,4})(?:-([0-9]{1,4}))?)?\.conf$`)

// ParseEntry parses an entry's file name; ok is false for a file that is
// not a slot entry.
func ParseEntry(name string) (Entry, bool) {
	m := entryRE.FindStringSubmatch(name)
	if m == nil {
		return Entry{}, false
	}
	e := Entry{Slot: m[2]}
	e.Gen, _ = strconv.Atoi(m[1])
	if m[3] != "" {
		e.Counting = true
		e.Left, _ = strconv.Atoi(m[3])
		if m[4] != "" {
			e.Done, _ = strconv.Atoi(m[4])
		}
	}
	return e, true
}

// Name is the entry's file name.
func (e Entry) Name() string {
	s := fmt.Sprintf("bellbuild-%d-%s", e.Gen, e.Slot)
	if e.Counting {
		s += "+" + strconv.Itoa(e.Left)
		if e.Done > 0 {
			s += "-" + strconv.Itoa(e.Done)
		}
	}
	return s + ".conf"
}

// Path is the entry's path on the ESP.
func (e Entry) Path() string { return EntriesDir + "/" + e.Name() }

// Bad reports whether systemd-boot has given up on the entry (no tries
// left).
func (e Entry) Bad() bool { return e.Counting && e.Left == 0 }

// Good returns the entry marked good: without its counter.
func (e Entry) Good() Entry { return Entry{Gen: e.Gen, Slot: e.Slot} }

// PanicArg makes a kernel that panics reboot after 10 s, so that a slot
// that panics uses up its tries and systemd-boot falls back to the other
// slot. It goes first on a slot's command line: a profile's own panic=
// comes later and wins.
const PanicArg = "panic=10"

// SlotCmdline is the command line of slot's entry: PanicArg, the image's
// command line (the manifest's), where the slot's root and the config
// volume are, the slot and the SHA-256 of its root image.
func SlotCmdline(cmdline, slot, image string) string {
	parts := []string{PanicArg}
	if c := strings.Join(strings.Fields(cmdline), " "); c != "" {
		parts = append(parts, c)
	}
	parts = append(parts, SlotRootArg(slot), ConfigArg, SlotParam+"="+slot, ImageParam+"="+image)
	return strings.Join(parts, " ")
}

// EntryText is a slot's boot entry (Boot Loader Specification type 1):
// its title, the slot's kernel and initramfs, and options.
func EntryText(title, slot, options string) string {
	return "title " + title + "\nlinux /" + SlotKernel(slot) + "\ninitrd /" + SlotInitrd(slot) + "\noptions " + options + "\n"
}

// LoaderConfText is loader.conf on a disk with slots: no menu, boot the
// first slot entry in systemd-boot's order (the newest with tries left).
const LoaderConfText = "timeout 0\ndefault " + EntryPattern + "\neditor no\nconsole-mode keep\n"
