package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// cutSite is a site whose one node holds what a configuration cut short
// would revert: a user with sudo and a key, a second user, files, sysctl
// values and limits.
func cutSite(t *testing.T) string {
	t.Helper()
	site := filepath.Join(t.TempDir(), "site")
	writeTestFile(t, filepath.Join(site, "profiles/p.yaml"), `conf:
  sysctl:
    vm.swappiness: 10
    kernel.pid_max: 4194304
  limits:
    nofile:
      domain: "*"
      type: soft
      item: nofile
      value: 65536
  files:
    /etc/motd:
      content: |
        managed by bellbuild
        second line
  uamlite:
    users:
    - user_name: ops
      user_sudo: true
      user_sshkeys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvCKado9531t9oyr7ok/dUnUOGkvPSS1rh63JQy4IoH ops@example.org
    - user_name: deploy
      user_sshkeys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvCKado9531t9oyr7ok/dUnUOGkvPSS1rh63JQy4IoH deploy@example.org
`)
	writeTestFile(t, filepath.Join(site, "nodes.yaml"), "nodes:\n- name: n1\n  mac: 52:54:00:00:00:01\n  profile: p\n")
	return site
}

// wholeRoot reads every file, link and directory under root, the
// applier's own state included.
func wholeRoot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, root)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "-> " + target
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("%v %s", fi.Mode(), data)
		default:
			out[rel] = fi.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cuts returns every prefix of data that ends at a line boundary, and one
// that ends in the middle of each line, shortest first; data itself is
// not among them. (A file that lacks only its last newline, or in JSON
// only its closing brace's line, is not among them either: its content is
// all there.)
func cuts(data []byte) [][]byte {
	var out [][]byte
	start := 0
	for start < len(data) {
		end := start + strings.IndexByte(string(data[start:]), '\n') + 1
		if end <= start {
			end = len(data)
		}
		out = append(out, data[:start])
		if mid := start + (end-start-1)/2; mid > start { // inside the line's text
			out = append(out, data[:mid])
		}
		start = end
	}
	return out
}

// TestApplyRefusesCutShort renders a node as YAML and as JSON, applies it,
// then applies every prefix of the file cut at a line boundary or in the
// middle of a line: each is refused with exit 1, and the root (the
// applier's ledger and report included) stays exactly as the whole file
// left it. A YAML file cut at a line is still valid YAML; without an
// integrity check the missing half's users, sudo rights and keys would be
// reverted.
func TestApplyRefusesCutShort(t *testing.T) {
	site := cutSite(t)
	for _, format := range []string{"yaml", "json"} {
		t.Run(format, func(t *testing.T) {
			code, full, errs := runBin(t, "render", "-C", site, "--node", "n1", "-o", format)
			if code != 0 {
				t.Fatalf("render: exit %d\n%s", code, errs)
			}
			dir := t.TempDir()
			conf := filepath.Join(dir, "node."+format)
			writeTestFile(t, conf, full)
			root := applyRoot(t)
			if code, out, errs := runBin(t, "apply", "--config", conf, "--root", root, "--offline"); code != 0 {
				t.Fatalf("the whole file: exit %d\n%s%s", code, out, errs)
			}
			before := wholeRoot(t, root)
			if !strings.Contains(before["/etc/sudoers.d/bellbuild-ops"], "ops ALL=") {
				t.Fatalf("the whole file did not give ops sudo: %q", before["/etc/sudoers.d/bellbuild-ops"])
			}
			for _, cut := range cuts([]byte(full)) {
				writeTestFile(t, conf, string(cut))
				code, out, errs := runBin(t, "apply", "--config", conf, "--root", root, "--offline")
				if code != 1 {
					t.Errorf("cut after %d of %d bytes (%q): exit %d, want 1\nstdout: %s\nstderr: %s", len(cut), len(full), tail(cut), code, out, errs)
				}
				if diff := cmp.Diff(before, wholeRoot(t, root)); diff != "" {
					t.Fatalf("cut after %d of %d bytes (%q) changed the root (-before +after):\n%s", len(cut), len(full), tail(cut), diff)
				}
			}
		})
	}
}

// tail is the end of a cut file, for messages.
func tail(b []byte) string {
	if len(b) > 40 {
		b = b[len(b)-40:]
	}
	return string(b)
}
