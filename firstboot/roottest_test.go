package firstboot

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// entry describes one path of a test root: "file MODE UID:GID\nCONTENT",
// "dir MODE UID:GID" or "link TARGET". The same form is what snapshot
// returns, so expected states read like the trees that build them.
type rootTree map[string]string

func fileEntry(mode string, owner string, content string) string {
	return "file " + mode + " " + owner + "\n" + content
}
func dirEntry(mode, owner string) string { return "dir " + mode + " " + owner }
func linkEntry(target string) string     { return "link " + target }

// absent marks, in an expected diff, a path that must not exist.
const absent = "<absent>"

// baseRoot is a minimal target root: its accounts differ from the build
// host's on purpose (uid 1234 "app"), so a lookup against the wrong
// /etc/passwd fails the tests.
var baseRoot = rootTree{
	"/etc":        dirEntry("0755", "0:0"),
	"/etc/passwd": fileEntry("0644", "0:0", "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\napp:x:1234:1235:App:/srv/app:/bin/sh\n"),
	"/etc/group":  fileEntry("0644", "0:0", "root:x:0:\ndaemon:x:1:\napp:x:1235:\nops:x:2000:app\n"),
}

// build creates t in dir (on top of baseRoot).
func buildRoot(t *testing.T, root string, trees ...rootTree) {
	t.Helper()
	all := rootTree{}
	for _, tr := range append([]rootTree{baseRoot}, trees...) {
		for p, e := range tr {
			all[p] = e
		}
	}
	paths := sortedKeys(all)
	for _, p := range paths {
		e := all[p]
		full := filepath.Join(root, p)
		kind, rest, _ := strings.Cut(e, " ")
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		switch kind {
		case "link":
			if err := os.Symlink(rest, full); err != nil {
				t.Fatal(err)
			}
			continue
		case "dir":
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		case "file":
			_, content, _ := strings.Cut(rest, "\n")
			if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("bad rootTree entry %q for %s", e, p)
		}
		head, _, _ := strings.Cut(rest, "\n")
		var mode uint32
		var uid, gid int
		if _, err := fmt.Sscanf(head, "%o %d:%d", &mode, &uid, &gid); err != nil {
			t.Fatalf("bad rootTree entry %q for %s: %v", e, p, err)
		}
		if err := os.Chown(full, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, host.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
}

// stamp is what must not change for a file that was not rewritten.
type stamp struct {
	Ino   uint64
	Mtime int64
	Ctime int64
}

// snapshot reads the whole root (but the applier's own state directory)
// into a rootTree, and the inode and times of every entry.
func snapshot(t *testing.T, root string) (rootTree, map[string]stamp) {
	t.Helper()
	out, stamps := rootTree{}, map[string]stamp{}
	err := filepath.WalkDir(root, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		p := "/" + strings.TrimPrefix(strings.TrimPrefix(full, root), "/")
		if p == "/" {
			return nil
		}
		if p == "/var/lib/bellbuild" {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(full)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		stamps[p] = stamp{st.Ino, st.Mtim.Nano(), st.Ctim.Nano()}
		meta := fmt.Sprintf("%04o %d:%d", unixPerm(fi.Mode()), st.Uid, st.Gid)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(full)
			out[p] = linkEntry(target)
		case fi.IsDir():
			out[p] = dirEntry(meta[:4], meta[5:])
		default:
			data, err := os.ReadFile(full)
			if err != nil {
				return err
			}
			out[p] = fileEntry(meta[:4], meta[5:], string(data))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, stamps
}

func unixPerm(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// patched returns before with diff applied (absent deletes).
func patched(before, diff rootTree) rootTree {
	out := rootTree{}
	for p, e := range before {
		out[p] = e
	}
	for p, e := range diff {
		if e == absent {
			delete(out, p)
		} else {
			out[p] = e
		}
	}
	return out
}

// withoutNewDirs drops the directories of got that before did not have
// (parents the applier created and need not remove).
func withoutNewDirs(got, before rootTree) rootTree {
	out := rootTree{}
	for p, e := range got {
		if _, ok := before[p]; !ok && strings.HasPrefix(e, "dir ") {
			continue
		}
		out[p] = e
	}
	return out
}

func applyConf(t *testing.T, root string, conf nodeconf.Conf, plan bool) *Report {
	t.Helper()
	rep, err := Apply(context.Background(), Options{RootDir: root, Plan: plan}, &nodeconf.Node{Node: "n1", Profile: "p", Conf: conf})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(rep.Errors) > 0 {
		t.Fatalf("Apply reported errors:\n%s", strings.Join(rep.Errors, "\n"))
	}
	return rep
}

// rootCase is one end-to-end case of the applier on a real root directory:
// the root before, the configuration, and what changes (path → entry, or
// absent). The driver then applies the same configuration again (nothing
// may change: not a byte, not an inode, not an mtime; the report says 0
// changes), then applies Reverted (default: an empty configuration) and
// expects the root as it was before, but for directories created.
type rootCase struct {
	name     string
	before   rootTree
	conf     nodeconf.Conf
	want     rootTree
	reverted *nodeconf.Conf
	// revertedWant, when set, is the expected diff from before after the
	// revert (for a partial removal); default: no diff.
	revertedWant rootTree
}

func runRootCases(t *testing.T, cases []rootCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			buildRoot(t, root, tc.before)
			before, _ := snapshot(t, root)

			// Plan first: it reports the changes and makes none.
			plan := applyConf(t, root, tc.conf, true)
			if got, _ := snapshot(t, root); !cmp.Equal(got, before) {
				t.Fatalf("--plan changed the root (-before +after):\n%s", cmp.Diff(before, got))
			}
			if _, err := os.Lstat(filepath.Join(root, "var/lib/bellbuild")); err == nil {
				t.Errorf("--plan created var/lib/bellbuild")
			}

			rep := applyConf(t, root, tc.conf, false)
			got, stamps := snapshot(t, root)
			if diff := cmp.Diff(patched(before, tc.want), withPlainNewDirs(got, before, tc.want)); diff != "" {
				t.Fatalf("after apply (-want +got):\n%s", diff)
			}
			if len(rep.Changes) == 0 {
				t.Errorf("apply reported no changes")
			}
			if diff := cmp.Diff(rep.Changes, plan.Changes); diff != "" {
				t.Errorf("apply did not do what --plan said (-did +planned):\n%s", diff)
			}

			// The same configuration again: nothing at all.
			rep = applyConf(t, root, tc.conf, false)
			if len(rep.Changes) != 0 {
				t.Errorf("second run reported changes: %+v", rep.Changes)
			}
			got2, stamps2 := snapshot(t, root)
			if diff := cmp.Diff(got, got2); diff != "" {
				t.Errorf("second run changed the root (-first +second):\n%s", diff)
			}
			if diff := cmp.Diff(stamps, stamps2); diff != "" {
				t.Errorf("second run rewrote files (inode/mtime/ctime, -first +second):\n%s", diff)
			}
			if plan := applyConf(t, root, tc.conf, true); len(plan.Changes) != 0 {
				t.Errorf("--plan on a converged root reported changes: %+v", plan.Changes)
			}

			// Remove the items: the root comes back.
			rev := nodeconf.Conf{}
			if tc.reverted != nil {
				rev = *tc.reverted
			}
			applyConf(t, root, rev, false)
			got3, _ := snapshot(t, root)
			if diff := cmp.Diff(patched(before, tc.revertedWant), withoutNewDirs(got3, before)); diff != "" {
				t.Errorf("after removing the items (-want +got):\n%s", diff)
			}
			if tc.reverted == nil {
				if led := ledgerText(t, root); led != "{}" {
					t.Errorf("ledger not empty after everything was removed:\n%s", led)
				}
			}
		})
	}
}

// withPlainNewDirs drops the directories of got that neither before nor
// want has, when they are plain (0755 root): parents created on the way.
func withPlainNewDirs(got, before, want rootTree) rootTree {
	out := rootTree{}
	for p, e := range got {
		_, b := before[p]
		_, w := want[p]
		if !b && !w && e == dirEntry("0755", "0:0") {
			continue
		}
		out[p] = e
	}
	return out
}

// ledgerText is the ledger of root as the next run would read it (the
// snapshot with the journal replayed): its modules, as indented JSON.
func ledgerText(t *testing.T, root string) string {
	t.Helper()
	l, err := host.ReadLedger(root)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.MarshalIndent(l.Modules, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
