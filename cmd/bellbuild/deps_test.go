package main

import (
	"encoding/json"
	"io"
	"os/exec"
	"sort"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/testvm/testtool"
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
	"profiles/secrets":  {"profiles/nodeconf", "images/atomicfile"},                            // the site's secret store (age files), whose values are nodeconf.Secrets; the site model reads it through secrets.Resolver
	"profiles":          {"profiles", "profiles/nodeconf", "profiles/secrets", "profiles/pki"}, // pki: its settings and certificate shapes
	"images":            {"images"},
	// Where things live in an image: the bake writes there and the init
	// reads there, so it depends on neither.
	"images/layout": {},
	// Replacing a file whole or not at all: used by every side, it
	// imports nothing of ours.
	"images/atomicfile": {},
	"build":             {"build", "profiles", "profiles/nodeconf", "images", "pxe/install/wire"}, // wire: the manifest's disk section, which the installer reads
	// Debian packages fetched for another architecture (apt-get download,
	// dpkg-deb -x): it knows nothing of images or the site.
	"build/debpkg": {"images/atomicfile"},
	// firstboot/boot's init loads kernel modules with the modules.dep
	// reader the bake chose them with, and finds what the bake put in the
	// image where images/layout says.
	// The enrolment client speaks serve's protocol (pxe/enrol/wire).
	// The report client speaks serve's report protocol (pxe/fleet/wire),
	// the installer and the upgrader serve's install protocol
	// (pxe/install/wire).
	"firstboot": {"firstboot", "profiles/nodeconf", "images/atomicfile", "images/kmod", "images/layout", "pxe/enrol/wire", "pxe/fleet/wire", "pxe/install/wire"},
	// The installer lays disk.raw out on a disk (images/disk's GPT) and
	// writes the node's configuration volume (images/confvol, fat).
	"firstboot/install": {"firstboot", "profiles/nodeconf", "images/layout", "images/disk", "images/confvol", "images/fat", "images/fstree", "pxe/install/wire"},
	"firstboot/vmtest":  {}, // VM tests of live effects: test files only (they bake with build, boot with testvm)
	"pxe":               {"pxe", "images/atomicfile"},
	// The enrolment protocol, spoken by serve and by the applier: it
	// imports nothing of ours.
	"pxe/enrol/wire": {},
	// The report protocol and the install and upgrade protocol,
	// likewise.
	"pxe/fleet/wire":   {},
	"pxe/install/wire": {},
	// Each profile's current bake: OUT's files and the manifest's
	// install part, nothing of build's.
	"pxe/bakes": {"pxe/install/wire"},
	"testvm":    {"testvm"},
	// Test helpers (they import testing; only test files import them).
	"images/internal/fixture": {"images", "testvm/testtool"},
	"pxe/internal/pxetest":    {"pxe", "testvm/testtool"},
	"deploy":                  {},   // manifests; their test-only package imports nothing of ours
	"cmd":                     {""}, // anything
	// The site's PKI: the schema's types (credentials, secrets), nothing
	// of the site model.
	"profiles/pki": {"profiles/nodeconf", "profiles/internal/parallel", "images/atomicfile"},
	// The worker loop the renderer, the PKI and the diff share: nothing
	// of ours.
	"profiles/internal/parallel": {},
	// Rendezvous placement of services: pure, nothing of ours.
	"profiles/placement": {},
	// A site at a git revision: git archive, unpacked, loaded.
	"profiles/siterev": {"profiles"},
	// What a change of a site does: two sites rendered and compared
	// (the store's file names from profiles/secrets, never a value).
	"profiles/sitediff": {"profiles", "profiles/nodeconf", "profiles/placement", "profiles/secrets"},
}

// testAllowed widens a package's rule for its test files, beyond the test
// helpers (testHelpers) that every test may import.
var testAllowed = map[string][]string{
	"firstboot/vmtest": {"build", "profiles", "firstboot"}, // bake an image, boot it, read the effects
	"deploy":           {"profiles/nodeconf"},              // the manifests carry a rendered node
}

// testHelpers may be imported by any test file (and by nothing else that
// ships: see TestTestHelpersStayInTests).
var testHelpers = []string{"testvm", "testvm/testtool"}

// pkgInfo is what go list says of one of our packages.
type pkgInfo struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

// listPackages lists every package of the module with its imports, test
// files' included.
func listPackages(t *testing.T) []pkgInfo {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		testtool.Skipf(t, "go command not in PATH: cannot list packages")
	}
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Imports,TestImports,XTestImports", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkgInfo
	for {
		var p pkgInfo
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list returned no packages")
	}
	return pkgs
}

func ours(imp string) (string, bool) {
	if !strings.HasPrefix(imp, module+"/") {
		return "", false
	}
	return strings.TrimPrefix(imp, module+"/"), true
}

// TestImportDirection fails when a package imports one of ours that the
// layering above forbids, e.g. firstboot importing profiles; its test
// files are held to the same rule, widened only by testAllowed and the
// test helpers.
func TestImportDirection(t *testing.T) {
	var bad []string
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		rule, ok := ruleFor(rel)
		if !ok {
			bad = append(bad, rel+": no layering rule for this package (add one to deps_test.go)")
			continue
		}
		for _, imp := range p.Imports {
			if dep, ok := ours(imp); ok && !permitted(rule, dep) {
				bad = append(bad, rel+" imports "+dep)
			}
		}
		testRule := append(append(append([]string{rel}, rule...), testHelpers...), testRuleFor(rel)...)
		for _, imp := range append(p.TestImports, p.XTestImports...) {
			if dep, ok := ours(imp); ok && !permitted(testRule, dep) {
				bad = append(bad, rel+" (tests) imports "+dep)
			}
		}
	}
	sort.Strings(bad)
	for _, b := range bad {
		t.Error(b)
	}
}

// TestTestHelpersStayInTests fails when a package that imports "testing"
// outside its test files (a test helper) is imported by a file that is not
// a test, and when package testing reaches the bellbuild binary (and with
// it every image's /init).
func TestTestHelpersStayInTests(t *testing.T) {
	pkgs := listPackages(t)
	helper := map[string]bool{}
	for _, p := range pkgs {
		for _, imp := range p.Imports {
			if imp == "testing" {
				helper[p.ImportPath] = true
			}
		}
	}
	if !helper[module+"/testvm/testtool"] {
		t.Errorf("testvm/testtool does not import testing: the check below proves nothing")
	}
	for _, p := range pkgs {
		for _, imp := range p.Imports {
			if helper[imp] && !helper[p.ImportPath] {
				t.Errorf("%s imports the test helper %s outside its test files", p.ImportPath, imp)
			}
		}
	}
	cmd := exec.Command("go", "list", "-deps", "./cmd/bellbuild")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "testing" || helper[dep] {
			t.Errorf("the bellbuild binary links %s", dep)
		}
	}
}

// testRuleFor is testAllowed's entry for rel (longest prefix).
func testRuleFor(rel string) []string {
	best, found := "", false
	for prefix := range testAllowed {
		if (rel == prefix || strings.HasPrefix(rel, prefix+"/")) && len(prefix) >= len(best) {
			best, found = prefix, true
		}
	}
	if !found {
		return nil
	}
	return testAllowed[best]
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
		{"firstboot/boot", "images/layout", true},
		{"firstboot/boot", "images/squashfs", false},
		{"images/layout", "images/fstree", false},
		{"build", "images/layout", true},
		{"firstboot/boot", "images", false},
		{"profiles/nodeconf", "profiles", false},
		{"profiles/secrets", "profiles", false},
		{"profiles/secrets", "profiles/nodeconf", true}, // its values are nodeconf.Secrets
		{"profiles", "profiles/secrets", true},
		{"firstboot", "profiles/secrets", false},
		{"pxe/http", "profiles/secrets", false},
		{"profiles", "profiles/nodeconf", true},
		{"profiles/pki", "profiles/nodeconf", true},
		{"profiles/pki", "profiles", false},
		{"profiles/pki", "profiles/internal/parallel", true},
		{"profiles/internal/parallel", "profiles", false},
		{"profiles", "profiles/pki", true},
		{"profiles", "profiles/placement", true},
		{"profiles/placement", "profiles", false},
		{"profiles/siterev", "profiles", true},
		{"profiles/sitediff", "profiles/placement", true},
		{"profiles/sitediff", "build", false},
		{"images/cpio", "images/fstree", true},
		{"images/cpio", "profiles/nodeconf", false},
		{"build", "images/cpio", true},
		{"build", "firstboot", false},
		{"pxe/dhcp", "profiles", false},
		{"pxe/enrol", "profiles/pki", false},
		{"firstboot/enrol", "pxe/enrol/wire", true},
		{"firstboot/enrol", "pxe/enrol", false},
		{"pxe/enrol/wire", "pxe/node", false},
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
