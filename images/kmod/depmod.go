package kmod

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
)

// Depmod makes the modules.dep of a modules directory whose package ships
// none (a Debian kernel package runs depmod in its postinst, so a package
// unpacked but not installed has only the module files): each module's
// dependencies are the "depends=" of its .modinfo section, which the
// kernel's build (modpost) derived from the symbols it uses, as depmod
// does. Lines are in path order, dependencies as the module lists them.
// Compressed modules (.ko.xz, .ko.zst, .ko.gz) are not read: for those,
// run depmod.
func Depmod(dir string) ([]byte, error) {
	type mod struct {
		rel  string
		deps []string
	}
	var mods []mod
	byName := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.Contains(d.Name(), ".ko") {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !strings.HasSuffix(d.Name(), ".ko") {
			return fmt.Errorf("kmod: %s/%s: compressed module: run depmod", dir, rel)
		}
		info, err := modinfo(p)
		if err != nil {
			return fmt.Errorf("kmod: %s/%s: %w", dir, rel, err)
		}
		m := mod{rel: rel}
		if dep := info["depends"]; dep != "" {
			m.deps = strings.Split(dep, ",")
		}
		mods = append(mods, m)
		byName[Name(rel)] = rel
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].rel < mods[j].rel })
	var b bytes.Buffer
	for _, m := range mods {
		b.WriteString(m.rel + ":")
		for _, d := range m.deps {
			p, ok := byName[Name(d)]
			if !ok {
				return nil, fmt.Errorf("kmod: %s/%s depends on %s, which is not in %s", dir, m.rel, d, dir)
			}
			b.WriteString(" " + p)
		}
		b.WriteString("\n")
	}
	return b.Bytes(), nil
}

// modinfo reads a module's .modinfo section: NUL-separated key=value.
func modinfo(file string) (map[string]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			if _, seen := out[k]; !seen {
				out[k] = v
			}
		}
	}
	return out, nil
}
