package firstboot

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func TestCompareDebVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"2.10-3", "2.10-3", 0},
		{"2.10-3", "2.9-1", 1},
		{"2.10-3", "2.10-10", -1},
		{"1:1.0", "2.0", 1},
		{"1.0~rc1", "1.0", -1},
		{"1.0~rc1", "1.0~~", 1},
		{"1.0", "1.0+b1", -1},
		{"1.0a", "1.0", 1},
		{"1.0-1", "1.0", 1},
		{"0:1.0", "1.0", 0},
		{"1.001", "1.1", 0},
		{"2.36-9+deb12u4", "2.36-9+deb12u10", -1},
		{"1.2.3", "1.2.3.0", -1},
		{"1.0.", "1.0-", 1},
	} {
		t.Run(c.a+" vs "+c.b, func(t *testing.T) {
			got := compareDebVersions(c.a, c.b)
			if sign(got) != c.want {
				t.Errorf("compareDebVersions(%q, %q) = %d, want sign %d", c.a, c.b, got, c.want)
			}
			if back := compareDebVersions(c.b, c.a); sign(back) != -c.want {
				t.Errorf("compareDebVersions(%q, %q) = %d, want sign %d", c.b, c.a, back, -c.want)
			}
		})
	}
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

func readStatusFixture(t *testing.T) dpkgDB {
	t.Helper()
	data, err := os.ReadFile("testdata/apt/status")
	if err != nil {
		t.Fatal(err)
	}
	db, err := parseDpkgStatus(data)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestStrictRemovals(t *testing.T) {
	db := readStatusFixture(t)
	for _, c := range []struct {
		name                 string
		requested, whitelist []string
		want                 []string
	}{
		{
			// app keeps its first alternative, its :any dependency and its
			// recommendation; dpkg keeps both providers of awk.
			name: "requested app, whitelisted tree", requested: []string{"app"}, whitelist: []string{"tree"},
			want: []string{"half", "hello", "junk"},
		},
		{
			name: "nothing requested", want: []string{"app", "app-data", "half", "hello", "junk", "libbar", "libfoo1", "tree"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			if diff := cmp.Diff(c.want, strictRemovals(db, c.requested, c.whitelist)); diff != "" {
				t.Errorf("strict removals (-want +got):\n%s", diff)
			}
		})
	}
}

// aptFixtureRoot is a root with the status fixture as its dpkg database,
// and a ledger saying bellbuild installed gawk and found mawk installed.
func aptFixtureRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	data, err := os.ReadFile("testdata/apt/status")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "var/lib/dpkg"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, dpkgStatusPath), data, 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := host.Open(host.Options{RootDir: root})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.Ledger.Put("apt", "pkg/gawk", host.Record{Extra: map[string]string{"preexisting": "", "version": ""}})
	h.Ledger.Put("apt", "pkg/mawk", host.Record{Extra: map[string]string{"preexisting": "1.3.4.20200120-3.1", "version": ""}})
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	return root
}

// applyApt runs the apt module's Check, then Apply, on root.
func applyApt(t *testing.T, root string, conf *nodeconf.Apt, plan bool) ([]host.Change, []string, string) {
	t.Helper()
	var logBuf testtool.Buffer
	h, err := host.Open(host.Options{RootDir: root, Plan: plan,
		Log: slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c := &nodeconf.Conf{Apt: conf}
	errs := (aptModule{}).Check(context.Background(), h, c)
	if len(errs) == 0 {
		errs = (aptModule{}).Apply(context.Background(), h, c)
	}
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, err := range errs {
		msgs = append(msgs, err.Error())
	}
	return h.Changes(), msgs, logBuf.String()
}

// TestAptPlan: a plan reads the dpkg database and runs nothing (the root
// has no apt, dpkg nor shell: running anything would fail).
func TestAptPlan(t *testing.T) {
	root := aptFixtureRoot(t)
	conf := &nodeconf.Apt{
		Packages: []nodeconf.Package{
			{Name: "hello", Version: "2.10-3"},
			{Name: "tree", Version: "2.2.0-1"},
			{Name: "newpkg", Debconf: []nodeconf.Debconf{
				{Question: "newpkg/password", QuestionType: "password", Answer: "s3cret"},
				{Question: "newpkg/mode", QuestionType: "select", Answer: "fast"},
			}},
			{Name: "app"},
		},
		BlacklistPkgs: []string{"junk", "gone"},
		Strict:        true,
		WhitelistPkgs: []string{"libbar"},
	}
	before, _ := os.ReadFile(filepath.Join(root, host.LedgerPath))
	changes, errs, log := applyApt(t, root, conf, true)
	if len(errs) > 0 {
		t.Fatalf("errors: %q", errs)
	}
	want := []host.Change{
		{Module: "apt", Item: "debconf newpkg newpkg/password", Action: "set", To: "(password, not shown)"},
		{Module: "apt", Item: "debconf newpkg newpkg/mode", Action: "set", To: "fast"},
		{Module: "apt", Item: "dpkg", Action: "recover", From: "half", To: "dpkg --configure -a"},
		{Module: "apt", Item: "package tree", Action: "update", From: "2.1.0-1", To: "2.2.0-1"},
		{Module: "apt", Item: "package newpkg", Action: "install", To: "-"},
		{Module: "apt", Item: "package gawk", Action: "purge", From: "1:5.2.1-2"},
		{Module: "apt", Item: "package junk", Action: "purge", From: "0.1", To: "blacklisted"},
		// strict: the requested, the whitelisted and what they need stay;
		// gawk stays too (it provides awk, which dpkg needs: apt would
		// refuse to remove both providers).
		{Module: "apt", Item: "package half", Action: "purge", From: "3.0", To: "strict"},
	}
	if diff := cmp.Diff(want, changes); diff != "" {
		t.Errorf("plan (-want +got):\n%s", diff)
	}
	if strings.Contains(log, "s3cret") {
		t.Errorf("the log shows a password answer:\n%s", log)
	}
	after, _ := os.ReadFile(filepath.Join(root, host.LedgerPath))
	if string(before) != string(after) {
		t.Errorf("the plan changed the ledger")
	}
}

func TestAptCheck(t *testing.T) {
	checkBadConf(t, "apt", aptModule{})
	t.Run("downgrade without allow_downgrade", func(t *testing.T) {
		root := aptFixtureRoot(t)
		_, errs, _ := applyApt(t, root, &nodeconf.Apt{Packages: []nodeconf.Package{
			{Name: "hello", Version: "2.9-1"}, {Name: "tree", Version: "2.0-1", AllowDowngrade: true},
		}}, true)
		want := []string{"hello: version 2.9-1 is older than the installed 2.10-3: set allow_downgrade to downgrade"}
		if diff := cmp.Diff(want, errs); diff != "" {
			t.Errorf("errors (-want +got):\n%s", diff)
		}
	})
}

// debootstrapRecipe is what the cached test root is made of; its hash names
// the cache, so a changed recipe makes a new one.
const debootstrapRecipe = "debootstrap --variant=minbase --arch=amd64 bookworm ROOT http://deb.debian.org/debian\n" +
	"apt-get update\napt-get install --download-only -y hello tree sudo\n"

const testCacheDir = "/var/cache/bellbuild-test"

// debianRoot returns a fresh copy of a real Debian bookworm minbase root,
// made once with debootstrap and cached under /var/cache/bellbuild-test
// (keyed by the recipe), with the .debs of hello, tree and sudo downloaded.
func debianRoot(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("apt tests install packages in a debootstrap root: skipped under -short")
	}
	if os.Geteuid() != 0 {
		testtool.Skipf(t, "apt tests chroot into a Debian root: need root")
	}
	if runtime.GOARCH != "amd64" {
		testtool.Skipf(t, "the cached root is amd64; this is %s", runtime.GOARCH)
	}
	for _, tool := range []string{"debootstrap", "unshare", "chroot", "cp"} {
		if _, err := lookTool(tool); err != nil {
			testtool.Skipf(t, "apt tests need %v", err)
		}
	}
	sum := sha256.Sum256([]byte(debootstrapRecipe))
	cache := filepath.Join(testCacheDir, "debootstrap-"+hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(testCacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(testCacheDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cache + ".complete"); err != nil {
		t.Logf("making the cached Debian root %s (about a minute)", cache)
		tmp := cache + ".tmp"
		os.RemoveAll(tmp)
		os.RemoveAll(cache)
		cmd := exec.Command("debootstrap", "--variant=minbase", "--arch=amd64", "bookworm", tmp, "http://deb.debian.org/debian")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("debootstrap: %v\n%s", err, lastLines(out, 20))
		}
		h, err := host.Open(host.Options{RootDir: tmp})
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"update", "-q"}, {"install", "-q", "--download-only", "-y", "hello", "tree", "sudo"}} {
			if out, err := inRoot(context.Background(), h, aptEnv, "apt-get", args...).CombinedOutput(); err != nil {
				t.Fatalf("apt-get %v: %v\n%s", args, err, out)
			}
		}
		h.Close()
		if err := os.Rename(tmp, cache); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cache+".complete", []byte(debootstrapRecipe), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("cp", "-a", cache, root).CombinedOutput(); err != nil {
		t.Fatalf("copy the cached root: %v\n%s", err, out)
	}
	return root
}

// inDebian runs a command in the test root (as the test's own setup, not
// through the module).
func inDebian(t *testing.T, root string, name string, args ...string) string {
	t.Helper()
	h, err := host.Open(host.Options{RootDir: root})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	out, err := inRoot(context.Background(), h, aptEnv, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func dpkgState(t *testing.T, root, pkg string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, dpkgStatusPath))
	if err != nil {
		t.Fatal(err)
	}
	db, err := parseDpkgStatus(data)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := db[pkg]
	if !ok {
		return "absent"
	}
	return p.state() + " " + p.Version
}

type statusStamp struct{ ino, mtime int64 }

func stampOf(t *testing.T, p string) statusStamp {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return statusStamp{int64(st.Ino), st.Mtim.Nano()}
}

func changeList(cs []host.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Action+" "+c.Item)
	}
	return out
}

// TestAptDebian runs the module against a real Debian root: install a
// pinned version with debconf answers, converge, purge, blacklist, recover
// an interrupted dpkg, strict mode, and a signed repository.
func TestAptDebian(t *testing.T) {
	root := debianRoot(t)
	mounts := hostMountsUnder(t, root)
	t.Cleanup(func() {
		if got := hostMountsUnder(t, root); !cmp.Equal(got, mounts) {
			t.Errorf("apt runs left mounts in the host's namespace: %v", got)
		}
	})
	status := filepath.Join(root, dpkgStatusPath)
	// The cache may be older than the mirror's last point release: pin
	// the version the mirror has now.
	inDebian(t, root, "apt-get", "update", "-q")
	policy := inDebian(t, root, "apt-cache", "policy", "hello")
	var version string
	for _, line := range strings.Split(policy, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Candidate: "); ok {
			version = v
		}
	}
	if version == "" || version == "(none)" {
		t.Fatalf("no candidate for hello:\n%s", policy)
	}
	const secret = "s3cret-answer-0f9e"
	hello := nodeconf.Package{Name: "hello", Version: version, Debconf: []nodeconf.Debconf{
		{Question: "hello/secret", QuestionType: "password", Answer: secret},
		{Question: "hello/greeting", QuestionType: "string", Answer: "bonjour"},
	}}
	step := func(name string, conf *nodeconf.Apt, plan bool, want []string) string {
		t.Helper()
		start := time.Now()
		changes, errs, log := applyApt(t, root, conf, plan)
		t.Logf("%s: %v in %v", name, changeList(changes), time.Since(start).Round(time.Millisecond))
		if len(errs) > 0 {
			t.Fatalf("%s: errors:\n%s\nlog:\n%s", name, strings.Join(errs, "\n"), log)
		}
		if diff := cmp.Diff(want, changeList(changes)); diff != "" {
			t.Errorf("%s: changes (-want +got):\n%s", name, diff)
		}
		for _, c := range changes {
			if strings.Contains(c.From+c.To, secret) {
				t.Errorf("%s: a change shows the password answer: %+v", name, c)
			}
		}
		if strings.Contains(log, secret) {
			t.Errorf("%s: the log shows the password answer", name)
		}
		return log
	}

	installed := []string{"set debconf hello hello/secret", "set debconf hello hello/greeting", "install package hello"}
	s0 := stampOf(t, status)
	step("plan", &nodeconf.Apt{Packages: []nodeconf.Package{hello}}, true, installed)
	if stampOf(t, status) != s0 || dpkgState(t, root, "hello") != "absent" {
		t.Fatalf("the plan changed the dpkg database")
	}
	step("install pinned", &nodeconf.Apt{Packages: []nodeconf.Package{hello}}, false, installed)
	if got := dpkgState(t, root, "hello"); got != "installed "+version {
		t.Fatalf("hello: %s, want installed %s", got, version)
	}
	pw, err := os.ReadFile(filepath.Join(root, "var/cache/debconf/passwords.dat"))
	if err != nil || !strings.Contains(string(pw), secret) {
		t.Errorf("the password answer did not reach debconf's passwords.dat: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(root, "var/cache/debconf/passwords.dat")); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("passwords.dat: %v %v", fi.Mode(), err)
	}
	if cfg, _ := os.ReadFile(filepath.Join(root, "var/cache/debconf/config.dat")); strings.Contains(string(cfg), secret) || !strings.Contains(string(cfg), "bonjour") {
		t.Errorf("config.dat: want the string answer, not the password")
	}

	s1 := stampOf(t, status)
	step("same again: nothing, the versioned package stays", &nodeconf.Apt{Packages: []nodeconf.Package{hello}}, false, nil)
	step("plan on a converged root", &nodeconf.Apt{Packages: []nodeconf.Package{hello}}, true, nil)
	if stampOf(t, status) != s1 || dpkgState(t, root, "hello") != "installed "+version {
		t.Errorf("a rerun touched the dpkg database (hello: %s)", dpkgState(t, root, "hello"))
	}

	step("removed from the configuration: purged", &nodeconf.Apt{}, false, []string{"purge package hello"})
	if got := dpkgState(t, root, "hello"); got != "absent" && !strings.HasPrefix(got, "not-installed") {
		t.Errorf("hello after purge: %s", got)
	}

	inDebian(t, root, "apt-get", "install", "-y", "-q", "tree")
	step("blacklisted: purged though bellbuild did not install it", &nodeconf.Apt{BlacklistPkgs: []string{"tree"}}, false, []string{"purge package tree"})
	if got := dpkgState(t, root, "tree"); got != "absent" && !strings.HasPrefix(got, "not-installed") {
		t.Errorf("tree after blacklist: %s", got)
	}

	debs, _ := filepath.Glob(filepath.Join(root, "var/cache/apt/archives/hello_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("cached hello .deb: %v", debs)
	}
	inDebian(t, root, "dpkg", "--unpack", strings.TrimPrefix(debs[0], root))
	if got := dpkgState(t, root, "hello"); got != "unpacked "+version {
		t.Fatalf("hello after dpkg --unpack: %s", got)
	}
	step("interrupted dpkg is finished first", &nodeconf.Apt{Packages: []nodeconf.Package{{Name: "hello"}}}, false, []string{"recover dpkg"})
	if got := dpkgState(t, root, "hello"); got != "installed "+version {
		t.Errorf("hello after recovery: %s", got)
	}

	inDebian(t, root, "apt-get", "install", "-y", "-q", "tree")
	step("strict: only what nobody asked for goes", &nodeconf.Apt{Strict: true, WhitelistPkgs: []string{"tree"}}, false, []string{"purge package hello"})
	if got := dpkgState(t, root, "tree"); !strings.HasPrefix(got, "installed ") {
		t.Errorf("whitelisted tree after strict: %s", got)
	}
	if got := dpkgState(t, root, "hello"); got != "absent" && !strings.HasPrefix(got, "not-installed") {
		t.Errorf("hello after strict: %s", got)
	}

	key, err := os.ReadFile("/usr/share/keyrings/debian-archive-keyring.gpg")
	if err != nil {
		testtool.Skipf(t, "no Debian archive keyring on this machine for the repository step: %v", err)
	}
	repo := &nodeconf.Apt{Repositories: []nodeconf.Repository{{
		URL: "http://deb.debian.org/debian", Distributions: []string{"bookworm-updates"}, Components: []string{"main"},
		GPGKey: armorPublicKey(key),
	}}}
	keyFile := "/etc/apt/keyrings/bellbuild-" + host.Hash([]byte(strings.TrimSpace(repo.Repositories[0].GPGKey) + "\n"))[:16] + ".asc"
	step("a signed repository", repo, false, []string{"create " + keyFile, "create " + aptSourcesPath})
	list, _ := os.ReadFile(filepath.Join(root, aptSourcesPath))
	if want := "# Written by bellbuild apply (apt repositories).\ndeb [signed-by=" + keyFile + "] http://deb.debian.org/debian bookworm-updates main\n"; string(list) != want {
		t.Errorf("sources:\n%s\nwant:\n%s", list, want)
	}
	if lists, _ := filepath.Glob(filepath.Join(root, "var/lib/apt/lists/*bookworm-updates*InRelease")); len(lists) == 0 {
		t.Errorf("apt-get update did not fetch the new repository")
	}
	step("repository removed", &nodeconf.Apt{}, false, []string{"revert " + aptSourcesPath, "revert " + keyFile})
	if _, err := os.Stat(filepath.Join(root, aptSourcesPath)); err == nil {
		t.Errorf("%s left behind", aptSourcesPath)
	}
}

// armorPublicKey wraps an OpenPGP key in ASCII armor (RFC 4880 §6), as
// a site's YAML carries it.
func armorPublicKey(bin []byte) string {
	const poly, init = 0x1864CFB, 0xB704CE
	crc := uint32(init)
	for _, b := range bin {
		crc ^= uint32(b) << 16
		for range 8 {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= poly
			}
		}
	}
	crc &= 0xFFFFFF
	var b strings.Builder
	b.WriteString("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n")
	enc := base64.StdEncoding.EncodeToString(bin)
	for len(enc) > 64 {
		b.WriteString(enc[:64] + "\n")
		enc = enc[64:]
	}
	b.WriteString(enc + "\n")
	fmt.Fprintf(&b, "=%s\n", base64.StdEncoding.EncodeToString([]byte{byte(crc >> 16), byte(crc >> 8), byte(crc)}))
	b.WriteString("-----END PGP PUBLIC KEY BLOCK-----\n")
	return b.String()
}
