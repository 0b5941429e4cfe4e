package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/confvol"
	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func needMtools(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mtype"); err != nil {
		testtool.Skipf(t, "mtype not installed (Debian package mtools): %v", err)
	}
}

// volumeFile reads a file from a FAT volume at offset off of img.
func volumeFile(t *testing.T, img string, off int64, p string) string {
	t.Helper()
	cmd := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", img, off), "::/"+p)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mtype %s: %v\n%s", p, err, out)
	}
	return string(out)
}

// rendered is what `bellbuild render -o json --show-secrets` prints for
// --node NAME or --profile P of the embedded site: the node's own
// configuration, its (inline) secrets included.
func rendered(t *testing.T, flag, name string) string {
	t.Helper()
	var out bytes.Buffer
	o := renderFlags{format: "json", showSecrets: true}
	if flag == "--node" {
		o.node = name
	} else {
		o.profile = name
	}
	if err := runRender(o, &out, io.Discard); err != nil {
		t.Fatalf("render %s %s: %v", flag, name, err)
	}
	return out.String()
}

func TestConfigImage(t *testing.T) {
	needMtools(t)
	out := filepath.Join(t.TempDir(), "conf.img")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"config", "image", "-o", out, "--node", "demo-2"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	got := volumeFile(t, out, 0, confvol.NodePath)
	if want := rendered(t, "--node", "demo-2"); got != want {
		t.Errorf("node.json on the volume differs from render -o json --show-secrets:\n got %s\nwant %s", got, want)
	}
	if !strings.Contains(got, `"vm.swappiness": "60"`) {
		t.Errorf("node.json lacks demo-2's sysctl:\n%s", got)
	}
}

func TestConfigWriteDisk(t *testing.T) {
	needMtools(t)
	esp := fstree.New()
	esp.AddFile("EFI/BOOT/BOOTX64.EFI", []byte("not really a loader"), 0o644, 0, 0)
	root := bytes.Repeat([]byte{0x68, 0x73, 0x71, 0x73}, 1<<18)
	img := filepath.Join(t.TempDir(), "disk.raw")
	l, err := disk.WriteFile(img, disk.Spec{ESP: esp, Root: bytes.NewReader(root), RootSize: int64(len(root)),
		Config: confvol.Tree([]byte(rendered(t, "--node", "demo-1")), 0)})
	if err != nil {
		t.Fatal(err)
	}
	c := l.Partition(disk.ConfigName)
	before := sumOutside(t, img, c.Offset, c.Size)

	// Flags before and after the subcommand both work.
	var stdout, stderr bytes.Buffer
	if code := run([]string{"config", "--node", "demo-2", "write", img}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	if got, want := volumeFile(t, img, c.Offset, confvol.NodePath), rendered(t, "--node", "demo-2"); got != want {
		t.Errorf("node.json after write:\n got %s\nwant %s", got, want)
	}
	if after := sumOutside(t, img, c.Offset, c.Size); after != before {
		t.Error("config write changed bytes outside the config partition")
	}

	// A directory target is a mounted volume: node.json is replaced in it.
	dir := t.TempDir()
	if code := run([]string{"config", "write", dir, "--profile", "demo"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, confvol.NodePath))
	if err != nil || string(b) != rendered(t, "--profile", "demo") {
		t.Errorf("mounted volume's node.json = %q (%v)", b, err)
	}
}

func sumOutside(t *testing.T, img string, off, size int64) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	h := sha256.New()
	io.Copy(h, io.NewSectionReader(f, 0, off))
	io.Copy(h, io.NewSectionReader(f, off+size, st.Size()-off-size))
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no subcommand", []string{"config", "--node", "demo-1"}, 1, "bellbuild config: missing subcommand: image or write (see 'bellbuild help config')\n"},
		{"unknown subcommand", []string{"config", "burn", "--node", "demo-1"}, 1, "bellbuild config: unknown subcommand \"burn\": want image or write\n"},
		{"image without -o", []string{"config", "image", "--node", "demo-1"}, 1, "bellbuild config: config image: want -o FILE and no arguments\n"},
		{"neither node nor profile", []string{"config", "image", "-o", filepath.Join(dir, "x.img")}, 1, "bellbuild config: give exactly one of --node and --profile\n"},
		{"unknown node", []string{"config", "image", "-o", filepath.Join(dir, "x.img"), "--node", "nope"}, 1, "bellbuild config: node \"nope\": not found\n"},
		{"not a disk", []string{"config", "write", "/dev/null", "--node", "demo-1"}, 1, "bellbuild config: confvol: /dev/null: reading the GPT: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.msg) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d with %q", code, stderr.String(), tc.code, tc.msg)
			}
		})
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) > 0 {
		t.Errorf("failed commands left files: %v", left)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"512", 512, true}, {"500K", 500 << 10, true}, {"500m", 500 << 20, true},
		{"20G", 20 << 30, true}, {"1T", 1 << 40, true},
		{"", 0, false}, {"G", 0, false}, {"-1G", 0, false}, {"1.5G", 0, false}, {"9999999T", 0, false}, {"10X", 0, false},
	} {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%t", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
