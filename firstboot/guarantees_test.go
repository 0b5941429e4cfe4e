package firstboot

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.apply from the current output")

// TestBadConfigChangesNothing applies every testdata/bad/NAME.yaml to a
// root: the run must fail with exactly the errors of NAME.apply (schema
// errors from nodeconf's Validate, else every module's Check against the
// root), and the root must be exactly as before — no file, no ledger, no
// report. (NAME.err, where present, is one module's Check output alone.)
func TestBadConfigChangesNothing(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/bad/*.yaml")
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			if name == "apparmor" {
				if _, err := lookTool("apparmor_parser"); err != nil {
					testtool.Skipf(t, "apparmor_parser is not installed (package apparmor): %v", err)
				}
			}
			root := t.TempDir()
			buildRoot(t, root, rootTree{"/srv/data/a": fileEntry("0644", "0:0", "a")})
			before, stamps := snapshot(t, root)

			var got string
			node, _, err := ReadConfig(sealed(t, f))
			if err == nil {
				_, err = Apply(context.Background(), Options{RootDir: root}, node)
				if err == nil {
					t.Fatal("Apply accepted a bad configuration")
				}
			}
			got = strings.ReplaceAll(err.Error(), root, "ROOT") + "\n"
			// Another module's bad inputs (with only a NAME.err of its own
			// Check) are held to "nothing changes" without a golden here.
			golden := strings.TrimSuffix(f, ".yaml") + ".apply"
			_, noGolden := os.Stat(golden)
			_, hasErr := os.Stat(strings.TrimSuffix(f, ".yaml") + ".err")
			switch {
			case *update && (noGolden != nil) && hasErr == nil:
			case *update:
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				fallthrough
			default:
				want, err := os.ReadFile(golden)
				if err != nil && hasErr == nil {
					break
				}
				if err != nil {
					t.Fatalf("%v (run with -update to create it)", err)
				}
				if diff := cmp.Diff(string(want), got); diff != "" {
					t.Errorf("errors (-want +got):\n%s", diff)
				}
			}
			after, stamps2 := snapshot(t, root)
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("a rejected configuration changed the root (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(stamps, stamps2); diff != "" {
				t.Errorf("a rejected configuration touched files (-before +after):\n%s", diff)
			}
			if _, err := os.Stat(filepath.Join(root, host.LedgerPath)); err == nil {
				t.Errorf("a rejected configuration wrote a ledger")
			}
		})
	}
}

// sealed returns a copy of a hand-written rendered node (a testdata
// fixture) that ends with the checksum `bellbuild render` would give it,
// so that ReadConfig takes it as a whole file. A fixture that does not
// decode is returned as it is, for ReadConfig to refuse.
func sealed(t *testing.T, f string) string {
	t.Helper()
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	var n nodeconf.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&n); err != nil {
		return f
	}
	sum, err := nodeconf.Checksum(&n)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(f))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	if err := os.WriteFile(out, append(data, nodeconf.ChecksumKey+": "+sum+"\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func applyNode(root string, conf nodeconf.Conf) (*Report, error) {
	return Apply(context.Background(), Options{RootDir: root}, &nodeconf.Node{Node: "n1", Profile: "p", Conf: conf})
}

// TestConflictNotClobbered: a managed file someone else changed is reported
// as a conflict, neither overwritten nor removed.
func TestConflictNotClobbered(t *testing.T) {
	root := t.TempDir()
	buildRoot(t, root)
	conf := nodeconf.Conf{
		Files:  map[string]nodeconf.File{"/etc/motd": {Content: "managed\n"}},
		Limits: map[string]nodeconf.Limit{"n": {Domain: "*", Type: "soft", Item: "nofile", Value: "10"}},
	}
	applyConf(t, root, conf, false)
	edited := map[string]string{
		"/etc/motd": "edited by an admin\n",
		"/etc/security/limits.d/bellbuild-n.conf": "* soft nofile 99\n",
	}
	for p, c := range edited {
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		name string
		conf nodeconf.Conf
	}{{"rerun", conf}, {"removed", nodeconf.Conf{}}} {
		rep, err := applyNode(root, step.conf)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{
			"limits: /etc/security/limits.d/bellbuild-n.conf: changed outside bellbuild",
			"files: /etc/motd: changed outside bellbuild",
		}
		if step.name == "removed" {
			want = []string{
				"limits: n: /etc/security/limits.d/bellbuild-n.conf: changed outside bellbuild; not removed",
				"files: /etc/motd: changed outside bellbuild; not removed",
			}
		}
		if diff := cmp.Diff(want, rep.Errors); diff != "" {
			t.Errorf("%s: errors (-want +got):\n%s", step.name, diff)
		}
		for p, c := range edited {
			if data, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(data) != c {
				t.Errorf("%s: %s = %q, %v; want the admin's %q", step.name, p, data, err, c)
			}
		}
	}
}

// TestConflictIsErrConflict: the host API reports conflicts as
// host.ErrConflict, for errors.Is.
func TestConflictIsErrConflict(t *testing.T) {
	root := t.TempDir()
	buildRoot(t, root)
	h, err := host.Open(host.Options{RootDir: root})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	spec := host.FileSpec{Path: "/etc/x", Data: []byte("mine\n"), Mode: 0o644}
	if _, err := h.EnsureFile("files", "/etc/x", spec); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "etc/x"), []byte("theirs\n"), 0o644)
	if _, err := h.EnsureFile("files", "/etc/x", spec); !errors.Is(err, host.ErrConflict) {
		t.Errorf("EnsureFile on a changed file: %v, want ErrConflict", err)
	}
	if _, err := h.ReleaseFile("files", "/etc/x", "/etc/x"); !errors.Is(err, host.ErrConflict) {
		t.Errorf("ReleaseFile on a changed file: %v, want ErrConflict", err)
	}
}

// TestKilledBetweenLedgerAndWrite: a run killed after the ledger learned
// of a write but before the write is not a conflict on the next run.
func TestKilledBetweenLedgerAndWrite(t *testing.T) {
	root := t.TempDir()
	buildRoot(t, root, rootTree{"/etc/motd": fileEntry("0644", "0:0", "original\n")})
	applyConf(t, root, nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/motd": {Content: "v1\n"}}}, false)
	// Simulate the kill: the ledger says v2 was written, the file is v1.
	h, err := host.Open(host.Options{RootDir: root})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := h.Ledger.Get("files", "/etc/motd")
	rec.Prev, rec.Hash = rec.Hash, host.Hash([]byte("v2\n"))
	h.Ledger.Put("files", "/etc/motd", rec)
	if err := h.SaveLedger(); err != nil {
		t.Fatal(err)
	}
	h.Close()
	applyConf(t, root, nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/motd": {Content: "v2\n"}}}, false)
	applyConf(t, root, nodeconf.Conf{}, false)
	if data, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(data) != "original\n" {
		t.Errorf("after revert /etc/motd = %q, want the original", data)
	}
}

// TestOneApplierAtATime: a second applier on the same root is refused.
func TestOneApplierAtATime(t *testing.T) {
	root := t.TempDir()
	buildRoot(t, root)
	applyConf(t, root, nodeconf.Conf{}, false) // creates the lock file
	f, err := os.OpenFile(filepath.Join(root, "var/lib/bellbuild/lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	for _, plan := range []bool{false, true} {
		_, err := Apply(context.Background(), Options{RootDir: root, Plan: plan}, &nodeconf.Node{Conf: nodeconf.Conf{Sysctl: map[string]string{"vm.swappiness": "1"}}})
		if !errors.Is(err, ErrLocked) {
			t.Errorf("plan=%v: Apply while locked: %v, want ErrLocked", plan, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, sysctlFile)); err == nil {
		t.Errorf("a refused applier wrote %s", sysctlFile)
	}
}

// TestSecretsStayHidden: the content of a file only its owner may read
// never shows in plans or reports, and the state files are 0600 in a 0700
// directory.
func TestSecretsStayHidden(t *testing.T) {
	root := t.TempDir()
	buildRoot(t, root, rootTree{"/etc/ssl/private/k.pem": fileEntry("0600", "0:0", "OLDSECRET\n")})
	conf := nodeconf.Conf{Files: map[string]nodeconf.File{"/etc/ssl/private/k.pem": {Content: "NEWSECRET\n", Mode: "0600"}}}
	for _, plan := range []bool{true, false} {
		rep := applyConf(t, root, conf, plan)
		text := PlanText(rep) + strings.Join(rep.Errors, "")
		for _, c := range rep.Changes {
			text += c.From + c.To
		}
		if strings.Contains(text, "SECRET") {
			t.Errorf("plan=%v: a secret shows in the report:\n%s", plan, text)
		}
	}
	for _, p := range []string{"var/lib/bellbuild", "var/lib/bellbuild/backup", host.LedgerPath, host.JournalPath, "var/lib/bellbuild/last-run.json", "var/lib/bellbuild/lock"} {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is %v: readable by others", p, fi.Mode().Perm())
		}
	}
	backups, _ := os.ReadDir(filepath.Join(root, "var/lib/bellbuild/backup"))
	for _, b := range backups {
		if fi, _ := b.Info(); fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("backup %s is %v", b.Name(), fi.Mode().Perm())
		}
	}
	if len(backups) != 1 {
		t.Errorf("want 1 backup (the old key), got %d", len(backups))
	}
	_ = fs.ModePerm
}

// TestEveryModuleRegistered: each module of nodeconf.Modules has an
// implementation (Apply would silently skip a missing one).
func TestEveryModuleRegistered(t *testing.T) {
	for _, name := range nodeconf.Modules {
		if _, ok := modules[name]; !ok {
			t.Errorf("module %s is not registered", name)
		}
	}
	if len(modules) != len(nodeconf.Modules) {
		t.Errorf("%d modules registered, nodeconf lists %d", len(modules), len(nodeconf.Modules))
	}
}
