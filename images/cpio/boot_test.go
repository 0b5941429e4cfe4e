package cpio

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/kmod"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// noise is Content of pseudo-random bytes made on demand.
type noise struct {
	seed uint64
	size int64
}

func (n noise) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.LimitReader(&noiseReader{r: rand.New(rand.NewPCG(n.seed, n.seed))}, n.size)), nil
}

type noiseReader struct{ r *rand.Rand }

func (n *noiseReader) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(n.r.Uint32())
	}
	return len(b), nil
}

func (n noise) sum(t *testing.T) string {
	rc, _ := n.Open()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestKernelUnpacks boots the host's kernel on an initramfs written by
// Write through compress.Zstd: several zstd frames (each ending on a
// whole entry, which is what the kernel accepts), a hardlink group whose
// names and data lie in different frames, device nodes, owners and a
// setuid file. The init script reports what the kernel made of it.
func TestKernelUnpacks(t *testing.T) {
	testtool.SkipVM(t)
	kernel, _, err := kmod.Host()
	if err != nil {
		testtool.Skipf(t, "%v (apt-get install linux-image-amd64): cannot boot", err)
	}
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		testtool.Skipf(t, "no /bin/busybox (apt-get install busybox-static): cannot boot")
	}

	// Fillers bigger than a frame: the frames end after them, between
	// entries, however far past ZstdFrameSize that is.
	fillers := []noise{{1, 20 << 20}, {2, 20 << 20}, {3, 24<<20 + 3}}
	tr := fstree.New()
	tr.Add(fstree.Entry{Path: "bin/busybox", Type: fstree.Regular, Mode: 0o755, Size: fileSize(t, busybox), Data: fstree.File(busybox)})
	tr.Add(fstree.Entry{Path: "bin/sh", Type: fstree.Symlink, Target: "busybox"})
	tr.Add(fstree.Entry{Path: "dev/console", Type: fstree.CharDev, Mode: 0o600, Major: 5, Minor: 1})
	tr.Add(fstree.Entry{Path: "dev/null", Type: fstree.CharDev, Mode: 0o666, Major: 1, Minor: 3})
	tr.Add(fstree.Entry{Path: "dev/sda", Type: fstree.BlockDev, Mode: 0o660, GID: 6, Major: 8, Minor: 0})
	tr.Add(fstree.Entry{Path: "proc", Type: fstree.Dir, Mode: 0o555})
	tr.AddFile("bin/su", []byte("not really su\n"), 0o755|os.ModeSetuid, 0, 0)
	tr.Add(fstree.Entry{Path: "home/bob", Type: fstree.Dir, Mode: 0o700, UID: 4242, GID: 4243})
	tr.AddFile("home/bob/notes", []byte("hi\n"), 0o640, 4242, 4243)
	// A hardlink group spread over the frames: the data goes with
	// z/last, after 64 MiB of fillers.
	tr.AddFile("m/head", []byte("payload\n"), 0o644, 0, 0)
	tr.Add(fstree.Entry{Path: "a/first", Type: fstree.Regular, LinkTo: "m/head"})
	tr.Add(fstree.Entry{Path: "z/last", Type: fstree.Regular, LinkTo: "m/head"})
	for i, f := range fillers {
		tr.Add(fstree.Entry{Path: fmt.Sprintf("f/%d", i+1), Type: fstree.Regular, Mode: 0o644, Size: f.size, Data: f})
	}

	var init strings.Builder
	init.WriteString("#!/bin/sh\nexport PATH=/bin\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\n")
	init.WriteString("echo BEGIN-CHECK\n")
	for i := range fillers {
		fmt.Fprintf(&init, "sha256sum /f/%d\n", i+1)
	}
	init.WriteString("stat -c '%n %F %a %u:%g %h %t,%T' /dev/console /dev/null /dev/sda /bin/su /home/bob /home/bob/notes /a/first /m/head /z/last\n")
	init.WriteString("[ $(stat -c %i /a/first) = $(stat -c %i /z/last) ] && [ $(stat -c %i /a/first) = $(stat -c %i /m/head) ] && echo SAME-INODE\n")
	init.WriteString("cat /a/first\n")
	init.WriteString("echo END-CHECK\npoweroff -f\n")
	tr.AddFile("init", []byte(init.String()), 0o755, 0, 0)

	var img bytes.Buffer
	z, err := compress.Zstd(&img)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(z, tr, Options{MTime: epoch(1_700_000_000)}); err != nil {
		t.Fatal(err)
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	frames, err := compress.Frames(bytes.NewReader(img.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) < 3 {
		t.Fatalf("%d zstd frames, want at least 3 for this test to mean anything", len(frames))
	}
	initrd := filepath.Join(t.TempDir(), "initramfs.cpio.zst")
	if err := os.WriteFile(initrd, img.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	vm := testtool.NewVM(t, testvm.Config{
		Kernel:  kernel,
		Initrd:  initrd,
		Cmdline: "console=ttyS0 panic=-1 loglevel=3",
	})
	vm.Wait(`END-CHECK`)
	console := strings.ReplaceAll(vm.Console(), "\r", "")
	if strings.Contains(console, "Initramfs unpacking failed") {
		t.Errorf("kernel: %s", regexp.MustCompile(`Initramfs unpacking failed.*`).FindString(console))
	}
	m := regexp.MustCompile(`(?s)BEGIN-CHECK\n(.*?)END-CHECK`).FindStringSubmatch(console)
	if m == nil {
		t.Fatal("no check block on the console")
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(m[1]), "\n") {
		if !strings.HasPrefix(l, "[") { // kernel messages may interleave
			got = append(got, l)
		}
	}
	var want []string
	for i, f := range fillers {
		want = append(want, fmt.Sprintf("%s  /f/%d", f.sum(t), i+1))
	}
	want = append(want,
		"/dev/console character special file 600 0:0 1 5,1",
		"/dev/null character special file 666 0:0 1 1,3",
		"/dev/sda block special file 660 0:6 1 8,0",
		"/bin/su regular file 4755 0:0 1 0,0",
		"/home/bob directory 700 4242:4243 2 0,0",
		"/home/bob/notes regular file 640 4242:4243 1 0,0",
		"/a/first regular file 644 0:0 3 0,0",
		"/m/head regular file 644 0:0 3 0,0",
		"/z/last regular file 644 0:0 3 0,0",
		"SAME-INODE",
		"payload",
	)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("the kernel's view of the initramfs (-want +got):\n%s", d)
	}
}

func fileSize(t *testing.T, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
