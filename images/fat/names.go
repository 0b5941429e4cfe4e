package fat

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
)

// noLabel is the BPB label of a volume without one.
var noLabel = [11]byte{'N', 'O', ' ', 'N', 'A', 'M', 'E', ' ', ' ', ' ', ' '}

// shortChars are the characters besides A–Z and 0–9 allowed in an 8.3 name.
const shortChars = "!#$%&'()-@^_`{}~"

// volumeLabel validates and pads a volume label.
func volumeLabel(s string) ([11]byte, error) {
	if s == "" {
		return noLabel, nil
	}
	if len(s) > 11 {
		return noLabel, fmt.Errorf("fat: label %q is longer than 11 characters: %w", s, ErrUnsupported)
	}
	var l [11]byte
	for i := range l {
		l[i] = ' '
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if !shortChar(c) && c != ' ' {
			return noLabel, fmt.Errorf("fat: label %q has character %q: %w", s, c, ErrUnsupported)
		}
		l[i] = c
	}
	return l, nil
}

func shortChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(shortChars, c) >= 0
}

// checkName rejects names a FAT long name cannot hold.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("name %q: %w", name, ErrUnsupported)
	}
	if len(utf16.Encode([]rune(name))) > 255 {
		return fmt.Errorf("name longer than 255 UTF-16 units: %w", ErrUnsupported)
	}
	for _, r := range name {
		if r < 0x20 || strings.ContainsRune(`"*/:<>?\|`, r) || r == 0x7F {
			return fmt.Errorf("name %q has character %q: %w", name, r, ErrUnsupported)
		}
	}
	if strings.TrimRight(name, ". ") != name {
		return fmt.Errorf("name %q ends in a dot or space: %w", name, ErrUnsupported)
	}
	return nil
}

// exactShort returns name as an 8.3 entry when it is already a valid,
// upper-case 8.3 name (then no long-name entries are needed).
func exactShort(name string) ([11]byte, bool) {
	var s [11]byte
	for i := range s {
		s[i] = ' '
	}
	base, ext, hasDot := strings.Cut(name, ".")
	if len(base) == 0 || len(base) > 8 || len(ext) > 3 || (hasDot && ext == "") || strings.Contains(ext, ".") {
		return s, false
	}
	for i := 0; i < len(base); i++ {
		if !shortChar(base[i]) {
			return s, false
		}
		s[i] = base[i]
	}
	for i := 0; i < len(ext); i++ {
		if !shortChar(ext[i]) {
			return s, false
		}
		s[8+i] = ext[i]
	}
	return s, true
}

// assignShortNames gives every child of d its 8.3 entry: the name itself
// when it is a valid upper-case 8.3 name, otherwise a unique alias
// ("LOADER~1.CON") with long-name entries carrying the real name. Names
// that differ only in case collide on FAT and are rejected.
func assignShortNames(d *node) error {
	taken := map[[11]byte]bool{}
	folded := map[string]string{}
	for _, c := range d.children {
		f := strings.ToUpper(c.name)
		if other, dup := folded[f]; dup {
			return fmt.Errorf("fat: %s: %q and %q are the same name on FAT: %w", d.e.Path, other, c.name, ErrUnsupported)
		}
		folded[f] = c.name
		if s, ok := exactShort(c.name); ok {
			c.short = s
			taken[s] = true
		}
	}
	for _, c := range d.children {
		if _, ok := exactShort(c.name); ok {
			continue
		}
		c.lfn = true
		base, ext := aliasParts(c.name)
		found := false
		for i := 1; i < 1000000 && !found; i++ {
			tail := "~" + strconv.Itoa(i)
			b := base
			if len(b)+len(tail) > 8 {
				b = b[:8-len(tail)]
			}
			var s [11]byte
			for j := range s {
				s[j] = ' '
			}
			copy(s[:], b+tail)
			copy(s[8:], ext)
			if !taken[s] {
				c.short, taken[s], found = s, true, true
			}
		}
		if !found {
			return fmt.Errorf("fat: %s: no free short name for %q: %w", d.e.Path, c.name, ErrUnsupported)
		}
	}
	return nil
}

// aliasParts maps a long name to the base and extension of its alias:
// upper case, invalid characters replaced by '_', spaces and extra dots
// dropped, base at most 8 and extension at most 3 characters.
func aliasParts(name string) (string, string) {
	clean := func(s string, n int) string {
		var b strings.Builder
		for _, r := range s {
			if b.Len() == n {
				break
			}
			if r == ' ' || r == '.' {
				continue
			}
			c := byte('_')
			if r < 0x80 {
				c = byte(r)
				if c >= 'a' && c <= 'z' {
					c -= 'a' - 'A'
				}
				if !shortChar(c) {
					c = '_'
				}
			}
			b.WriteByte(c)
		}
		return b.String()
	}
	trimmed := strings.TrimLeft(name, ".")
	base, ext := trimmed, ""
	if i := strings.LastIndexByte(trimmed, '.'); i > 0 {
		base, ext = trimmed[:i], trimmed[i+1:]
	}
	b := clean(base, 8)
	if b == "" {
		b = "_"
	}
	return b, clean(ext, 3)
}
