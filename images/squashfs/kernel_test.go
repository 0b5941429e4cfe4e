package squashfs

import (
	"context"
	"crypto/md5"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/kmod"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
	"github.com/google/go-cmp/cmp"
)

// kernelModules returns the host kernel (package linux-image-amd64), its
// modules directory and the module files (relative to it) that mods need,
// dependencies first; it skips the test when the host has no kernel.
func kernelModules(t *testing.T, mods ...string) (kernel, kdir string, files []string) {
	t.Helper()
	kernel, kdir, err := kmod.Host()
	if err != nil {
		testtool.Skipf(t, "%v (apt-get install linux-image-amd64)", err)
	}
	d, err := kmod.Open(kdir)
	if err != nil {
		t.Fatal(err)
	}
	if files, err = d.Closure(mods...); err != nil {
		t.Fatal(err)
	}
	return kernel, kdir, files
}

// bootInitramfs makes an initramfs with the cpio CLI: busybox, the
// modules, the inspect helper (testdata/inspect, built static) and init as
// /init.
func bootInitramfs(t *testing.T, kdir string, mods []string, init string) string {
	t.Helper()
	for _, tool := range []string{"cpio", "/bin/busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(t, "%s not installed (apt-get install cpio busybox-static): %v", tool, err)
		}
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "dev", "proc", "sys", "mnt", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile := func(src, dst string, mode os.FileMode) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	copyFile("/bin/busybox", filepath.Join(root, "bin/busybox"), 0o755)
	if err := os.Symlink("busybox", filepath.Join(root, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(root, "bin/inspect"), "./testdata/inspect")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the inspect helper: %v\n%s", err, out)
	}
	for _, m := range mods {
		copyFile(filepath.Join(kdir, m), filepath.Join(root, "lib/modules", path.Base(m)), 0o644)
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | cpio --quiet -o -H newc -R 0:0 > "+img)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	return img
}

// TestKernelMount boots the host kernel on an image and has it read it:
// every inode's type, mode, owner, link count, inode number and device of a
// tree of every type; the whole of a 5,000-entry directory plus lookups at
// its end; and the checksums of multi-block zstd files.
func TestKernelMount(t *testing.T) {
	testtool.SkipVM(t)
	kernel, kdir, mods := kernelModules(t, "virtio_pci", "virtio_blk", "squashfs")

	tr := everyType()
	tr.Merge(bigDir(5000))
	tr.Merge(blocks())
	tr.Merge(farLinks())
	tr.Reproducible(1700000000)
	img := writeImage(t, tr, Options{Exportable: true})

	// What the kernel must show.
	const big = "usr/share/doc"
	var stats []string
	inos := map[*fstree.Entry]int{}
	links := tr.Links()
	walk := tr.Walk()
	next := 1
	for _, e := range walk {
		if g := links[e.Path]; g != nil && g.Members[0] != e {
			inos[e] = inos[g.Members[0]]
			continue
		}
		inos[e] = next
		next++
	}
	var names []string
	for _, e := range walk {
		if path.Dir(e.Path) == big {
			names = append(names, path.Base(e.Path))
		}
		if strings.HasPrefix(e.Path, big+"/") || strings.HasPrefix(e.Path, "m/") {
			continue
		}
		src := e
		nlink := 1
		if g := links[e.Path]; g != nil {
			src, nlink = g.Head, len(g.Members)
		}
		if e.Type == fstree.Dir {
			nlink = 2
			for _, c := range tr.Children(e.Path) {
				if c.Type == fstree.Dir {
					nlink++
				}
			}
		}
		p := "/mnt"
		if e.Path != "." {
			p += "/" + e.Path
		}
		stats = append(stats, fmt.Sprintf("%s %x %d %d %d %d %x %x %d", p, src.UnixMode(), src.UID, src.GID, nlink, inos[e], e.Major, e.Minor, src.MTime))
	}
	lookups := []string{names[0], names[2502], names[4999], names[4995] + "/copyright"}
	sums := []string{"random-5m", "text-6m", "holes-2m", "zeros-3m", "hard/b", "random-5m-dup", "block-plus-one", big + "/" + lookups[1]}
	var want []string
	want = append(want, stats...)
	want = append(want, fmt.Sprintf("ENTRIES %d", len(names)))
	want = append(want, fmt.Sprintf("NAMES %x", md5.Sum([]byte(strings.Join(names, "\n")+"\n"))))
	for _, l := range lookups {
		want = append(want, "LOOKUP "+l+" ok")
	}
	// readdir's inode numbers come from the directory entries, whose
	// deltas from their header cannot span 32767.
	for _, dir := range []string{".", "z"} {
		var lsi []string
		for _, c := range tr.Children(dir) {
			lsi = append(lsi, fmt.Sprintf("%d %s", inos[c], path.Base(c.Path)))
		}
		want = append(want, "READDIR "+strings.Join(lsi, " "))
	}
	for _, s := range sums {
		src := tr.Get(s)
		if g := links[s]; g != nil {
			src = g.Head
		}
		want = append(want, fmt.Sprintf("%x  /mnt/%s", contentHash(t, src), s))
	}

	var xattrPaths []string
	for _, e := range walk {
		names := make([]string, 0, len(e.Xattrs))
		for n := range e.Xattrs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			want = append(want, fmt.Sprintf("XATTR /mnt/%s %s=%x", e.Path, n, e.Xattrs[n]))
		}
		if len(names) > 0 {
			xattrPaths = append(xattrPaths, "'/mnt/"+e.Path+"'")
		}
	}
	if len(xattrPaths) < 4 {
		t.Fatalf("the tree has %d entries with xattrs, want several", len(xattrPaths))
	}

	var init strings.Builder
	init.WriteString("#!/bin/sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n")
	init.WriteString("mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n")
	for _, m := range mods {
		fmt.Fprintf(&init, "insmod /lib/modules/%s || echo INSMOD-FAILED %s\n", path.Base(m), path.Base(m))
	}
	init.WriteString("for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done\n")
	init.WriteString("mount -t squashfs -o ro /dev/vda /mnt || echo MOUNT-FAILED\n")
	init.WriteString("echo BEGIN-CHECK\n")
	fmt.Fprintf(&init, "find /mnt -path '/mnt/%s/*' -prune -o -path '/mnt/m/*' -prune -o -exec stat -c '%%n %%f %%u %%g %%h %%i %%t %%T %%Y' {} +\n", big)
	fmt.Fprintf(&init, "echo ENTRIES $(ls -A /mnt/%s | wc -l)\n", big)
	fmt.Fprintf(&init, "echo NAMES $(ls -A /mnt/%s | md5sum | cut -d' ' -f1)\n", big)
	for _, l := range lookups {
		fmt.Fprintf(&init, "[ -e '/mnt/%s/%s' ] && echo 'LOOKUP %s ok'\n", big, l, l)
	}
	init.WriteString("inspect readdir /mnt\ninspect readdir /mnt/z\n")
	for _, s := range sums {
		fmt.Fprintf(&init, "sha256sum '/mnt/%s'\n", s)
	}
	init.WriteString("inspect xattrs " + strings.Join(xattrPaths, " ") + "\n")

	// The multi-block files again, gzip (zlib) compressed, on a second drive.
	gz := blocks()
	gz.Reproducible(1700000000)
	drives := []testvm.Drive{{Path: img, ReadOnly: true}, {Path: writeImage(t, gz, Options{Compression: Gzip}), ReadOnly: true}}
	init.WriteString("mkdir -p /gz; mount -t squashfs -o ro /dev/vdb /gz || echo MOUNT-FAILED vdb\n")
	for _, s := range []string{"text-6m", "holes-2m", "hard/b", "one-block-dup"} {
		fmt.Fprintf(&init, "sha256sum '/gz/%s'\n", s)
		src := gz.Get(s)
		if g := gz.Links()[s]; g != nil {
			src = g.Head
		}
		want = append(want, fmt.Sprintf("%x  /gz/%s", contentHash(t, src), s))
	}
	init.WriteString("umount /gz\n")

	// A real tree: this machine's /usr/share/doc (the directory whose
	// listing go-diskfs's writer corrupted), on a third drive.
	const docs = "/usr/share/doc"
	if host, err := fstree.FromDir(docs); err != nil {
		t.Logf("no %s to mount (%v): checking the generated tree only", docs, err)
	} else {
		want = append(want, hostTreeChecks(t, host)...)
		drives = append(drives, testvm.Drive{Path: writeImage(t, host, Options{}), ReadOnly: true})
		init.WriteString("mkdir -p /doc; mount -t squashfs -o ro /dev/vdc /doc || echo MOUNT-FAILED vdc\n")
		init.WriteString("echo DOC-ENTRIES $(find /doc | wc -l)\n")
		init.WriteString("echo DOC-NONDIRS $(find /doc ! -type d -exec stat -c '%n %f %u %g %h %s %Y' {} + | md5sum | cut -d' ' -f1)\n")
		init.WriteString("echo DOC-DIRS $(find /doc -type d -exec stat -c '%n %f %u %g %h %Y' {} + | md5sum | cut -d' ' -f1)\n")
		init.WriteString("echo DOC-DATA $(find /doc -type f -exec cat {} + | md5sum | cut -d' ' -f1)\n")
		init.WriteString("umount /doc\n")
	}
	init.WriteString("echo END-CHECK\numount /mnt\npoweroff -f\n")

	initrd := bootInitramfs(t, kdir, mods, init.String())
	vm := testtool.NewVM(t, testvm.Config{
		Kernel:  kernel,
		Initrd:  initrd,
		Cmdline: "console=ttyS0 panic=-1 loglevel=3",
		Drives:  drives,
	})
	// Booting takes a few seconds under TCG; reading 150 MB of documentation
	// through the emulated CPU's zstd takes longer on a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 2*testtool.BootTimeout)
	defer cancel()
	if _, err := vm.WaitFor(ctx, regexp.MustCompile(`END-CHECK`)); err != nil {
		t.Fatalf("waiting for the guest's checks: %v", err)
	}
	console := strings.ReplaceAll(vm.Console(), "\r", "")
	m := regexp.MustCompile(`(?s)BEGIN-CHECK\n(.*?)END-CHECK`).FindStringSubmatch(console)
	if m == nil {
		t.Fatalf("no check block on the console")
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(m[1]), "\n") {
		// Kernel messages may interleave; keep the check's lines.
		if strings.HasPrefix(l, "[") {
			continue
		}
		got = append(got, l)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the kernel's view of the image (-want +got):\n%s", diff)
	}
}

// hostTreeChecks is what the guest prints about a tree read from this
// machine and mounted at /doc: the number of entries, digests of every
// entry's stat (in the kernel's readdir order, which is Walk order) and of
// all file contents in that order.
func hostTreeChecks(t *testing.T, tr *fstree.Tree) []string {
	t.Helper()
	links := tr.Links()
	nondirs, dirs, data := md5.New(), md5.New(), md5.New()
	for _, e := range tr.Walk() {
		p := "/doc"
		if e.Path != "." {
			p += "/" + e.Path
		}
		src, nlink := e, 1
		if g := links[e.Path]; g != nil {
			src, nlink = g.Head, len(g.Members)
		}
		switch e.Type {
		case fstree.Dir:
			nlink = 2
			for _, c := range tr.Children(e.Path) {
				if c.Type == fstree.Dir {
					nlink++
				}
			}
			fmt.Fprintf(dirs, "%s %x %d %d %d %d\n", p, src.UnixMode(), src.UID, src.GID, nlink, src.MTime)
			continue
		case fstree.Regular:
			if src.Data != nil {
				rc, err := src.Data.Open()
				if err != nil {
					t.Fatal(err)
				}
				_, err = io.Copy(data, rc)
				rc.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		size := src.Size
		if e.Type == fstree.Symlink {
			size = int64(len(e.Target))
		}
		if e.Type != fstree.Regular && e.Type != fstree.Symlink {
			size = 0
		}
		fmt.Fprintf(nondirs, "%s %x %d %d %d %d %d\n", p, src.UnixMode(), src.UID, src.GID, nlink, size, src.MTime)
	}
	return []string{
		fmt.Sprintf("DOC-ENTRIES %d", tr.Len()),
		fmt.Sprintf("DOC-NONDIRS %x", nondirs.Sum(nil)),
		fmt.Sprintf("DOC-DIRS %x", dirs.Sum(nil)),
		fmt.Sprintf("DOC-DATA %x", data.Sum(nil)),
	}
}
