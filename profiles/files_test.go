package profiles

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// secretLine is what the file outside the site holds: no message may
// show any of it.
const secretLine = "root:$6$SECRETSALT$SECRETHASHSECRETHASH:19000:0:99999:7:::"

// TestBadFiles: site files that cannot live in testdata/bad (symbolic
// links out of the site, FIFOs, devices, files over the size limit, a
// 1 MB string repeated 20,000 times by aliases) are each refused, at
// once, with a message that names the file and says what it is, and that
// never holds what the file it leads to holds. $SECRET in a message is
// the secret file's path.
func TestBadFiles(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(secret, []byte(secretLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		root  bool // needs root (mknod)
		setup func(t *testing.T, site string)
		want  string
	}{{
		name:  "profile linked to a file outside the site",
		setup: func(t *testing.T, site string) { symlink(t, secret, site, "profiles/a.yaml") },
		want:  "profiles/a.yaml: a symbolic link to $SECRET, outside the site: site files are read only from inside it\n",
	}, {
		name:  "profile linked to /etc/shadow",
		setup: func(t *testing.T, site string) { symlink(t, "/etc/shadow", site, "profiles/a.yaml") },
		want:  "profiles/a.yaml: a symbolic link to /etc/shadow, outside the site: site files are read only from inside it\n",
	}, {
		name:  "nodes.yaml linked to /dev/zero",
		setup: func(t *testing.T, site string) { symlink(t, "/dev/zero", site, "nodes.yaml") },
		want:  "nodes.yaml: a symbolic link to /dev/zero, outside the site: site files are read only from inside it\n",
	}, {
		name: "relative link that climbs out of the site",
		setup: func(t *testing.T, site string) {
			writeFile(t, filepath.Join(filepath.Dir(site), "outside.yaml"), secretLine+"\n")
			symlink(t, "../../outside.yaml", site, "profiles/a.yaml")
		},
		want: "profiles/a.yaml: a symbolic link to ../../outside.yaml, outside the site: site files are read only from inside it\n",
	}, {
		name: "profiles directory linked out of the site",
		setup: func(t *testing.T, site string) {
			os.RemoveAll(filepath.Join(site, "profiles"))
			symlink(t, "/etc", site, "profiles")
		},
		want: "profiles: not a site: profiles is a symbolic link to /etc, outside the site: site files are read only from inside it\n",
	}, {
		name:  "nodes.yaml a FIFO",
		setup: func(t *testing.T, site string) { mkfifo(t, filepath.Join(site, "nodes.yaml")) },
		want:  "nodes.yaml: a FIFO (named pipe), not a regular file\n",
	}, {
		name: "profile linked to a FIFO inside the site",
		setup: func(t *testing.T, site string) {
			mkfifo(t, filepath.Join(site, "pipe"))
			symlink(t, "../pipe", site, "profiles/a.yaml")
		},
		want: "profiles/a.yaml: a symbolic link to ../pipe, which is a FIFO (named pipe), not a regular file\n",
	}, {
		name:  "site.yaml linked out of the site",
		setup: func(t *testing.T, site string) { symlink(t, secret, site, "site.yaml") },
		want:  "site.yaml: a symbolic link to $SECRET, outside the site: site files are read only from inside it\n",
	}, {
		name: "nodes.yaml a directory",
		setup: func(t *testing.T, site string) {
			if err := os.Mkdir(filepath.Join(site, "nodes.yaml"), 0o755); err != nil {
				t.Fatal(err)
			}
		},
		want: "nodes.yaml: a directory, not a regular file\n",
	}, {
		name:  "dangling link",
		setup: func(t *testing.T, site string) { symlink(t, "nosuch.yaml", site, "profiles/a.yaml") },
		want:  "profiles/a.yaml: a symbolic link to nosuch.yaml, which does not exist\n",
	}, {
		name: "profile a character device",
		root: true,
		setup: func(t *testing.T, site string) {
			// 1:5 is /dev/zero.
			if err := syscall.Mknod(filepath.Join(site, "profiles/a.yaml"), syscall.S_IFCHR|0o644, 1<<8|5); err != nil {
				t.Fatal(err)
			}
		},
		want: "profiles/a.yaml: a character device, not a regular file\n",
	}, {
		name: "profile over the size limit",
		setup: func(t *testing.T, site string) {
			p := filepath.Join(site, "profiles/a.yaml")
			if err := os.WriteFile(p, []byte("conf: {}\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, MaxFileSize+1); err != nil {
				t.Fatal(err)
			}
		},
		want: "profiles/a.yaml: too large: 16777217 bytes, over the limit of 16777216 bytes (16 MiB) for a site file\n",
	}, {
		// validate passed this, and `render -o json` wrote the string
		// 20,000 times (~20 GB).
		name: "a 1 MB string repeated 20,000 times by aliases",
		setup: func(t *testing.T, site string) {
			var b strings.Builder
			b.WriteString("conf:\n  files:\n    /etc/big: {content: &big " + strings.Repeat("x", 1<<20) + "}\n  exec:\n    run.sh:\n      data: x\n      args:\n")
			for range 20_000 {
				b.WriteString("      - *big\n")
			}
			writeFile(t, filepath.Join(site, "profiles/a.yaml"), b.String())
		},
		want: "profiles/a.yaml:3:25: the file expands to more than 67108864 bytes (64 MiB) of keys and values (aliases?)\n",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root {
				testtool.Root(t, "mknod makes the device")
			}
			site := t.TempDir()
			writeFile(t, filepath.Join(site, "profiles/p.yaml"), "conf: {}\n")
			tt.setup(t, site)
			got := loadErrors(t, site, secret)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			if hash := strings.Split(secretLine, ":")[1]; strings.Contains(got, hash) {
				t.Errorf("the message shows %q, of the file the link leads to", hash)
			}
		})
	}
}

// TestLinkInsideSite: a symbolic link that stays inside the site is
// followed, as os.Root allows.
func TestLinkInsideSite(t *testing.T) {
	site := t.TempDir()
	writeFile(t, filepath.Join(site, "shared/base.yaml"), "conf: {sysctl: {vm.swappiness: 7}}\n")
	symlink(t, "../shared/base.yaml", site, "profiles/base.yaml")
	s, err := Load(site)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.RenderProfile("base", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Conf.Sysctl["vm.swappiness"]; got != "7" {
		t.Errorf("vm.swappiness = %q, want 7 (read through the link)", got)
	}
}

// TestValuesFileBounded: a values file named on the command line may be
// a link, but /dev/zero is refused rather than read until the memory ends.
func TestValuesFileBounded(t *testing.T) {
	_, err := LoadValues("/dev/zero")
	if err == nil || err.Error() != "/dev/zero: a character device, not a regular file" {
		t.Errorf("LoadValues(/dev/zero) = %v", err)
	}
	big := filepath.Join(t.TempDir(), "values.yaml")
	writeFile(t, big, "conf: {}\n")
	if err := os.Truncate(big, MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadValues(big); err == nil || !strings.Contains(err.Error(), "too large: 16777217 bytes") {
		t.Errorf("LoadValues(a 16 MiB + 1 file) = %v", err)
	}
}

// loadErrors loads site, which must fail within a minute (a FIFO must not
// make it wait), and returns its errors one per line, files relative to
// the site and the secret's path as $SECRET.
func loadErrors(t *testing.T, site, secret string) string {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, err := Load(site); done <- err }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("Load did not return in a minute")
	}
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("Load = %v, want an ErrorList", err)
	}
	var b strings.Builder
	for _, e := range list {
		line := strings.TrimPrefix(e.Error(), site+string(filepath.Separator))
		line = strings.ReplaceAll(line, secret, "$SECRET")
		b.WriteString(line + "\n")
	}
	return b.String()
}

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, site, rel string) {
	t.Helper()
	p := filepath.Join(site, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func mkfifo(t *testing.T, p string) {
	t.Helper()
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
}
