package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/cpio"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func TestParseSourceDate(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want int64
		ok   bool
	}{
		{"date +%s", "1704067200", 1704067200, true},
		{"zero is 1970", "0", 0, true},
		{"leading zeros", "007", 7, true},
		{"the last 32-bit second", "4294967295", 4294967295, true},
		{"past 2106", "4294967296", 0, false},
		{"past int64", "99999999999999999999", 0, false},
		{"trailing text", "12abc", 0, false},
		{"negative", "-1", 0, false},
		{"plus sign", "+12", 0, false},
		{"hexadecimal", "0x10", 0, false},
		{"fraction", "12.5", 0, false},
		{"spaces", " 12", 0, false},
		{"newline", "12\n", 0, false},
		{"underscore", "1_000", 0, false},
		{"empty", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSourceDate(tc.in)
			if tc.ok {
				if err != nil || got != tc.want {
					t.Errorf("parseSourceDate(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, errSourceDate) {
				t.Errorf("parseSourceDate(%q) = %d, %v; want errSourceDate", tc.in, got, err)
			}
		})
	}
}

// TestSourceDateCommands: image and config read SOURCE_DATE_EPOCH with the
// same parser. Both refuse 12abc with the same message before writing
// anything; both accept 0, which image records as the date of every file
// (not as "unset", which is the fixed default).
func TestSourceDateCommands(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	conf := filepath.Join(dir, "conf.img")
	t.Setenv("BELLBUILD_CACHE", filepath.Join(dir, "cache"))
	t.Setenv("SOURCE_DATE_EPOCH", "12abc")
	const msg = `SOURCE_DATE_EPOCH="12abc": want the seconds since 1970-01-01 UTC as decimal digits`
	for _, args := range [][]string{
		{"image", "minimal", "-o", out},
		{"config", "image", "-o", conf, "--node", "demo-2"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), msg) {
			t.Errorf("%s with SOURCE_DATE_EPOCH=12abc: exit %d, stderr %q; want 1 and %q", args[0], code, stderr.String(), msg)
		}
	}
	for _, p := range []string{out, conf} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s written despite the bad date (%v)", p, err)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"image", "minimal", "-o", out, "--source-date-epoch", "12abc"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "want the seconds since 1970-01-01 UTC") {
		t.Errorf("--source-date-epoch 12abc: exit %d, stderr %q; want 2 and the parser's message", code, stderr.String())
	}

	t.Setenv("SOURCE_DATE_EPOCH", "0")
	if code := run([]string{"config", "image", "-o", conf, "--node", "demo-2"}, &stdout, &stderr); code != 0 {
		t.Errorf("config image with SOURCE_DATE_EPOCH=0: exit %d\n%s", code, stderr.String())
	}
	if _, err := os.Stat("/vmlinuz"); err != nil {
		testtool.Skipf(t, "no host kernel at /vmlinuz (apt-get install linux-image-amd64): the bake with 0 is not checked")
	}
	bin := testtool.Binary(t)
	if code := run([]string{"image", "minimal", "-o", out, "--applier", bin}, &stdout, &stderr); code != 0 {
		t.Fatalf("image with SOURCE_DATE_EPOCH=0: exit %d\n%s", code, stderr.String())
	}
	data, err := os.ReadFile(filepath.Join(out, "minimal", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Epoch *int64 `json:"source_date_epoch"`
	}
	if err := json.Unmarshal(data, &m); err != nil || m.Epoch == nil || *m.Epoch != 0 {
		t.Errorf("manifest source_date_epoch = %v (%v), want 0", m.Epoch, err)
	}
	// The initramfs's files carry it.
	f, err := os.Open(filepath.Join(out, "minimal", "initramfs.cpio.zst"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, _, err := compress.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	tree, err := cpio.Read(zr)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"init", "etc/bellbuild/bundle.json", "bin/busybox"} {
		if e := tree.Get(p); e == nil || e.MTime != 0 {
			t.Errorf("/%s: %+v, want mtime 0", p, e)
		}
	}
}
