package main

import (
	"encoding/json"
	"io"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/bellbuild/bellbuild"

// allowed says which of bellbuild's own packages each package may import
// (non-test imports). Data flows one way: profiles → build → images, while
// firstboot (applies) and pxe (serves) are leaves that never read the site
// model; testvm is for tests and `bellbuild run`; only cmd sees everything.
// Each key is a package path prefix (relative to the module); the longest
// matching prefix wins.
var allowed = map[string][]string{
	"profiles/nodeconf": {},
	"profiles":          {"profiles", "profiles/nodeconf"},
	"images":            {"images"},
	"build":             {"build", "profiles", "profiles/nodeconf", "images"},
	// firstboot/boot's init loads kernel modules with the modules.dep
	// reader the bake chose them with.
	"firstboot":        {"firstboot", "profiles/nodeconf", "images/kmod"},
	"firstboot/vmtest": {}, // VM tests of live effects: test files only (they bake with build, boot with testvm)
	"pxe":              {"pxe"},
	"testvm":           {"testvm"},
	"deploy":           {},   // manifests; their test-only package imports nothing of ours
	"cmd":              {""}, // anything
}

// TestImportDirection fails when a package imports one of ours that the
// layering above forbids, e.g. firstboot importing profiles.
func TestImportDirection(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go command not in PATH: cannot list packages")
	}
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Imports", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var bad []string
	seen := 0
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		seen++
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		rule, ok := ruleFor(rel)
		if !ok {
			bad = append(bad, rel+": no layering rule for this package (add one to deps_test.go)")
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			dep := strings.TrimPrefix(imp, module+"/")
			if !permitted(rule, dep) {
				bad = append(bad, rel+" imports "+dep)
			}
		}
	}
	if seen == 0 {
		t.Fatal("go list returned no packages")
	}
	sort.Strings(bad)
	for _, b := range bad {
		t.Error(b)
	}
}

func ruleFor(rel string) ([]string, bool) {
	best := ""
	found := false
	for prefix := range allowed {
		if (rel == prefix || strings.HasPrefix(rel, prefix+"/")) && len(prefix) >= len(best) {
			best, found = prefix, true
		}
	}
	return allowed[best], found
}

func permitted(rule []string, dep string) bool {
	for _, p := range rule {
		if p == "" || dep == p || strings.HasPrefix(dep, p+"/") {
			return true
		}
	}
	return false
}

func TestRuleFor(t *testing.T) {
	tests := []struct {
		pkg, dep string
		ok       bool
	}{
		{"firstboot", "profiles/nodeconf", true},
		{"firstboot", "profiles", false},
		{"firstboot/boot", "firstboot/host", true},
		{"firstboot/boot", "images/kmod", true},
		{"firstboot/boot", "images/squashfs", false},
		{"firstboot/boot", "images", false},
		{"profiles/nodeconf", "profiles", false},
		{"profiles", "profiles/nodeconf", true},
		{"images/cpio", "images/fstree", true},
		{"images/cpio", "profiles/nodeconf", false},
		{"build", "images/cpio", true},
		{"build", "firstboot", false},
		{"pxe/dhcp", "profiles", false},
		{"cmd/bellbuild", "build", true},
	}
	for _, tt := range tests {
		rule, ok := ruleFor(tt.pkg)
		if !ok {
			t.Fatalf("no rule for %s", tt.pkg)
		}
		if got := permitted(rule, tt.dep); got != tt.ok {
			t.Errorf("%s importing %s: permitted = %v, want %v", tt.pkg, tt.dep, got, tt.ok)
		}
	}
}
