package disk

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/images/squashfs"
)

// benchRoot is the root the benchmark puts on the disk: $BELLBUILD_BENCH_ROOT,
// or a finished debootstrap root under /var/cache/bellbuild-test, or
// /usr/bin of this machine.
func benchRoot() string {
	if r := os.Getenv("BELLBUILD_BENCH_ROOT"); r != "" {
		return r
	}
	roots, _ := filepath.Glob("/var/cache/bellbuild-test/debootstrap-*")
	for _, r := range roots {
		if _, err := os.Stat(r + ".complete"); err == nil && !strings.Contains(filepath.Base(r), ".") {
			return r
		}
	}
	return "/usr/bin"
}

// shellPipeline is what one writes without bellbuild: mksquashfs, two
// mkfs.vfat + mcopy volumes, sgdisk and dd. $1 root, $2 work dir, $3
// kernel, $4 initrd, $5 systemd-boot, $6 epoch.
const shellPipeline = `set -eu
root=$1 w=$2 kernel=$3 initrd=$4 loader=$5 epoch=$6
export MTOOLS_SKIP_CHECK=1
cd "$w"
rm -f root.sqfs esp.img conf.img disk.raw
mksquashfs "$root" root.sqfs -comp zstd -Xcompression-level 3 -processors 2 \
  -noappend -quiet -no-progress -mkfs-time "$epoch" -all-time "$epoch" >/dev/null
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
esp=$(( $(mib $(( $(stat -c %s "$kernel") + $(stat -c %s "$initrd") + $(stat -c %s "$loader") ))) + 34 ))
truncate -s ${esp}M esp.img
mkfs.vfat -F 32 -n ESP -i 12345678 esp.img >/dev/null
mmd -i esp.img ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/bellbuild
mcopy -i esp.img "$loader" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i esp.img "$kernel" ::/bellbuild/vmlinuz
mcopy -i esp.img "$initrd" ::/bellbuild/initrd.img
printf 'timeout 0\ndefault bellbuild.conf\n' > loader.conf
printf 'title bellbuild\nlinux /bellbuild/vmlinuz\ninitrd /bellbuild/initrd.img\noptions root=PARTLABEL=bellroot ro\n' > entry.conf
mcopy -i esp.img loader.conf ::/loader/loader.conf
mcopy -i esp.img entry.conf ::/loader/entries/bellbuild.conf
truncate -s 34M conf.img
mkfs.vfat -F 32 -n BELLCONF -i 87654321 conf.img >/dev/null
printf '{"node":"bench"}\n' > node.json
mmd -i conf.img ::/bellbuild
mcopy -i conf.img node.json ::/bellbuild/node.json
rootmib=$(mib $(stat -c %s root.sqfs))
total=$(( 1 + esp + rootmib + 34 + 1 ))
truncate -s ${total}M disk.raw
sgdisk -n 1:1M:+${esp}M -t 1:ef00 -c 1:esp \
  -n 2:0:+${rootmib}M -t 2:8304 -c 2:bellroot \
  -n 3:0:+34M -t 3:8300 -c 3:bellconf disk.raw >/dev/null
dd if=esp.img of=disk.raw bs=1M seek=1 conv=notrunc,sparse status=none
dd if=root.sqfs of=disk.raw bs=1M seek=$(( 1 + esp )) conv=notrunc status=none
dd if=conf.img of=disk.raw bs=1M seek=$(( 1 + esp + rootmib )) conv=notrunc,sparse status=none
`

// BenchmarkDiskVsShell builds the whole disk (ESP with systemd-boot, the
// host kernel and initrd; the root as a zstd squashfs; the config volume)
// with this package and with the shell pipeline above, side by side, and
// reports the time ratio (ours / shell's).
//
//	go test -run '^$' -bench DiskVsShell -benchtime 3x ./images/disk
func BenchmarkDiskVsShell(b *testing.B) {
	for _, tool := range []string{"mksquashfs", "mkfs.vfat", "mcopy", "sgdisk", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("SKIP: %s not installed: %v", tool, err)
		}
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	initrds, _ := filepath.Glob("/boot/initrd.img-*")
	if len(kernels) == 0 || len(initrds) == 0 {
		b.Skip("SKIP: no /boot/vmlinuz-* and /boot/initrd.img-* (linux-image-amd64)")
	}
	kernel, initrd := kernels[len(kernels)-1], initrds[len(initrds)-1]
	root := benchRoot()
	w := b.TempDir()
	// Warm the page cache so that both read from memory.
	exec.Command("tar", "-cf", "/dev/null", "-C", root, ".").Run()

	var ours, shell time.Duration
	var oursSize, shellSize int64
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		tree, err := fstree.FromDir(root)
		if err != nil {
			b.Fatal(err)
		}
		tree.Reproducible(epoch)
		kst, _ := os.Stat(kernel)
		ist, _ := os.Stat(initrd)
		esp, err := ESP(Boot{Kernel: fstree.File(kernel), KernelSize: kst.Size(), Initrd: fstree.File(initrd), InitrdSize: ist.Size(),
			Cmdline: "root=PARTLABEL=bellroot ro", Epoch: epoch})
		if err != nil {
			b.Fatal(err)
		}
		conf := fstree.New()
		conf.AddFile("bellbuild/node.json", []byte(`{"node":"bench"}`+"\n"), 0o644, 0, 0)
		conf.Reproducible(epoch)
		l, err := WriteFile(filepath.Join(w, "ours.raw"), Spec{ESP: esp, Config: conf,
			RootFunc: func(ws io.WriteSeeker) (int64, error) {
				return squashfs.Write(ws, tree, squashfs.Options{MkfsTime: epoch, Workers: 2})
			}})
		if err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)
		oursSize = l.Partition(RootName).Size

		start = time.Now()
		out, err := exec.Command("bash", "-c", shellPipeline, "pipeline", root, w, kernel, initrd, SystemdBoot, fmt.Sprint(epoch)).CombinedOutput()
		if err != nil {
			b.Fatalf("shell pipeline: %v\n%s", err, out)
		}
		shell += time.Since(start)
		st, err := os.Stat(filepath.Join(w, "root.sqfs"))
		if err != nil {
			b.Fatal(err)
		}
		shellSize = st.Size()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "ours-s/op")
	b.ReportMetric(shell.Seconds()/n, "shell-s/op")
	b.ReportMetric(ours.Seconds()/shell.Seconds(), "time-ratio")
	b.ReportMetric(float64(oursSize)/float64(1<<20), "ours-root-MiB")
	b.ReportMetric(float64(shellSize)/float64(1<<20), "shell-root-MiB")
	b.Logf("root %s: ours %.2fs, shell pipeline %.2fs per disk", root, ours.Seconds()/n, shell.Seconds()/n)
}
