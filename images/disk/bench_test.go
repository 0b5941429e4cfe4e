package disk

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/images/fstree"
	sample "github.com/bellbuild/bellbuild/images/internal/fixture"
	"github.com/bellbuild/bellbuild/images/squashfs"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// shellPipeline is what one writes without bellbuild: mksquashfs, two
// mkfs.vfat + mcopy volumes, sgdisk and dd. $1 root, $2 work dir, $3
// kernel, $4 initrd, $5 systemd-boot, $6 epoch. With ASSEMBLE_ONLY set it
// reuses the work dir's root.sqfs.
const shellPipeline = `set -eu
root=$1 w=$2 kernel=$3 initrd=$4 loader=$5 epoch=$6
export MTOOLS_SKIP_CHECK=1
cd "$w"
rm -f esp.img conf.img disk.raw
if [ -z "${ASSEMBLE_ONLY:-}" ]; then
  rm -f root.sqfs
  mksquashfs "$root" root.sqfs -comp zstd -Xcompression-level 3 -processors 2 \
    -noappend -quiet -no-progress -mkfs-time "$epoch" -all-time "$epoch" >/dev/null
fi
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
// with this package — squashfs at zstd level 3 (the default) and at level
// 1 — and with the shell pipeline above, side by side, and reports wall and
// CPU time ratios (ours / the shell's).
//
//	go test -run '^$' -bench DiskVsShell -benchtime 3x ./images/disk
func BenchmarkDiskVsShell(b *testing.B) {
	for _, tool := range []string{"mksquashfs", "mkfs.vfat", "mcopy", "sgdisk", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(b, "%s not installed: %v", tool, err)
		}
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	initrds, _ := filepath.Glob("/boot/initrd.img-*")
	if len(kernels) == 0 || len(initrds) == 0 {
		testtool.Skipf(b, "no /boot/vmlinuz-* and /boot/initrd.img-* (linux-image-amd64)")
	}
	kernel, initrd := kernels[len(kernels)-1], initrds[len(initrds)-1]
	root := sample.BenchRoot()
	w := b.TempDir()
	// Warm the page cache so that both read from memory.
	exec.Command("tar", "-cf", "/dev/null", "-C", root, ".").Run()

	ours := func(level int) (wall, cpu time.Duration, rootSize int64) {
		start, c0 := time.Now(), cpuTime(syscall.RUSAGE_SELF)
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
		var n int64
		_, err = WriteFile(filepath.Join(w, "ours.raw"), Spec{ESP: esp, Config: conf,
			RootFunc: func(ws io.WriteSeeker) (int64, error) {
				n, err = squashfs.Write(ws, tree, squashfs.Options{MkfsTime: epoch, Workers: 2, Level: level})
				return n, err
			}})
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start), cpuTime(syscall.RUSAGE_SELF) - c0, n
	}

	type result struct {
		wall, cpu time.Duration
		size      int64
	}
	var l3, l1, sh result
	b.ResetTimer()
	for range b.N {
		wall, cpu, size := ours(3)
		l3 = result{l3.wall + wall, l3.cpu + cpu, size}
		wall, cpu, size = ours(1)
		l1 = result{l1.wall + wall, l1.cpu + cpu, size}

		start, c0 := time.Now(), cpuTime(syscall.RUSAGE_CHILDREN)
		out, err := exec.Command("bash", "-c", shellPipeline, "pipeline", root, w, kernel, initrd, SystemdBoot, fmt.Sprint(epoch)).CombinedOutput()
		if err != nil {
			b.Fatalf("shell pipeline: %v\n%s", err, out)
		}
		st, err := os.Stat(filepath.Join(w, "root.sqfs"))
		if err != nil {
			b.Fatal(err)
		}
		sh = result{sh.wall + time.Since(start), sh.cpu + cpuTime(syscall.RUSAGE_CHILDREN) - c0, st.Size()}
	}
	b.StopTimer()
	n := float64(b.N)
	for _, r := range []struct {
		name string
		r    result
	}{{"zstd3", l3}, {"zstd1", l1}, {"shell", sh}} {
		b.ReportMetric(r.r.wall.Seconds()/n, r.name+"-wall-s")
		b.ReportMetric(r.r.cpu.Seconds()/n, r.name+"-cpu-s")
		b.ReportMetric(float64(r.r.size)/1e6, r.name+"-root-MB")
	}
	b.Logf("root %s, per disk: level 3 %.2fs wall %.2fs CPU; level 1 %.2fs wall %.2fs CPU; shell pipeline %.2fs wall %.2fs CPU",
		root, l3.wall.Seconds()/n, l3.cpu.Seconds()/n, l1.wall.Seconds()/n, l1.cpu.Seconds()/n, sh.wall.Seconds()/n, sh.cpu.Seconds()/n)
}

// cpuTime is the user+system time of this process or of its waited-for
// children.
func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(who, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAssembleVsShell isolates what this package does: given a
// finished squashfs image, build the disk around it (two FAT32 volumes,
// the GPT, the copy) — disk.WriteFile against mkfs.vfat + mcopy + sgdisk +
// dd.
//
//	go test -run '^$' -bench AssembleVsShell -benchtime 5x ./images/disk
func BenchmarkAssembleVsShell(b *testing.B) {
	for _, tool := range []string{"mksquashfs", "mkfs.vfat", "mcopy", "sgdisk", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			testtool.Skipf(b, "%s not installed: %v", tool, err)
		}
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	initrds, _ := filepath.Glob("/boot/initrd.img-*")
	if len(kernels) == 0 || len(initrds) == 0 {
		testtool.Skipf(b, "no /boot/vmlinuz-* and /boot/initrd.img-* (linux-image-amd64)")
	}
	kernel, initrd := kernels[len(kernels)-1], initrds[len(initrds)-1]
	w := b.TempDir()
	sq := filepath.Join(w, "root.sqfs")
	if out, err := exec.Command("mksquashfs", sample.BenchRoot(), sq, "-comp", "zstd", "-processors", "2", "-noappend", "-quiet", "-no-progress").CombinedOutput(); err != nil {
		b.Fatalf("mksquashfs: %v\n%s", err, out)
	}
	sst, err := os.Stat(sq)
	if err != nil {
		b.Fatal(err)
	}
	var ours, shell, oursCPU, shellCPU time.Duration
	b.ResetTimer()
	for range b.N {
		start, c0 := time.Now(), cpuTime(syscall.RUSAGE_SELF)
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
		f, err := os.Open(sq)
		if err != nil {
			b.Fatal(err)
		}
		_, err = WriteFile(filepath.Join(w, "ours.raw"), Spec{ESP: esp, Config: conf, Root: f, RootSize: sst.Size()})
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)
		oursCPU += cpuTime(syscall.RUSAGE_SELF) - c0

		start, c0 = time.Now(), cpuTime(syscall.RUSAGE_CHILDREN)
		cmd := exec.Command("bash", "-c", shellPipeline, "pipeline", "/nonexistent", w, kernel, initrd, SystemdBoot, fmt.Sprint(epoch))
		cmd.Env = append(os.Environ(), "ASSEMBLE_ONLY=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("shell pipeline: %v\n%s", err, out)
		}
		shell += time.Since(start)
		shellCPU += cpuTime(syscall.RUSAGE_CHILDREN) - c0
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "ours-wall-s")
	b.ReportMetric(oursCPU.Seconds()/n, "ours-cpu-s")
	b.ReportMetric(shell.Seconds()/n, "shell-wall-s")
	b.ReportMetric(shellCPU.Seconds()/n, "shell-cpu-s")
	b.Logf("assemble around a %d-byte squashfs: ours %.3fs wall %.3fs CPU, shell %.3fs wall %.3fs CPU",
		sst.Size(), ours.Seconds()/n, oursCPU.Seconds()/n, shell.Seconds()/n, shellCPU.Seconds()/n)
}
