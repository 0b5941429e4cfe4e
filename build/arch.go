package build

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/bellbuild/bellbuild/images/arch"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/profiles"
)

// ErrWrongArch is wrapped by the error of a bake whose kernel, stage or
// applier is built for another architecture than the image (the profile's
// arch:).
var ErrWrongArch = errors.New("wrong architecture")

// BootModulesARM64 are BootModules for arm64 machines: the same but for
// the x86-only drivers (e1000, ata_piix), which the arm64 kernel lacks.
var BootModulesARM64 = slices.DeleteFunc(slices.Clone(BootModules), func(m string) bool { return m == "e1000" || m == "ata_piix" })

// specArch is spec's architecture, DefaultArch when it sets none.
func specArch(spec *profiles.ImageSpec) string {
	if spec.Arch == "" {
		return profiles.DefaultArch
	}
	return spec.Arch
}

// native reports whether the build host runs programs of architecture a.
func native(a string) bool { return a == runtime.GOARCH }

// modules is the list of modules an image of architecture a carries and
// loads: Options.Modules, else the architecture's boot modules.
func (b *baker) modules(a string) []string {
	if b.opts.Modules != nil {
		return b.opts.Modules
	}
	if a == arch.ARM64 {
		return BootModulesARM64
	}
	return BootModules
}

// serialConsole is the serial port the kernel of an image of architecture
// a calls its console: the 16550 UART of PCs, the PL011 of arm64 servers
// and of QEMU's virt machine.
func serialConsole(a string) string {
	if a == arch.ARM64 {
		return "ttyAMA0"
	}
	return "ttyS0"
}

// wrongArch is the error for a part (kernel, stage, applier) of another
// architecture than the image.
func wrongArch(part, what, got, want, profile string) error {
	return fmt.Errorf("%s %s is built for %s, but profile %s is arch: %s: %w", part, what, arch.Describe(got), profile, want, ErrWrongArch)
}

// checkKernelArch refuses a kernel that is not built for the image's
// architecture, or whose format says nothing of it.
func checkKernelArch(k *kernel, want, profile string) error {
	var r io.ReaderAt
	name := k.file
	if k.file != "" {
		f, err := os.Open(k.file)
		if err != nil {
			return fmt.Errorf("kernel: %w", err)
		}
		defer f.Close()
		r = f
	} else {
		name = "stage:/boot/vmlinuz-" + k.version
		rc, err := k.content.Open()
		if err != nil {
			return fmt.Errorf("kernel %s: %w", name, err)
		}
		defer rc.Close()
		ra, ok := rc.(io.ReaderAt)
		if !ok {
			return fmt.Errorf("kernel %s: cannot read its header", name)
		}
		r = ra
	}
	got, format, err := arch.Kernel(r)
	if err != nil {
		return fmt.Errorf("kernel %s: cannot tell its architecture: %w", name, err)
	}
	if got != want {
		return wrongArch("kernel", name+" ("+format+")", got, want, profile)
	}
	return nil
}

// stageProbes are the programs whose ELF header tells a stage's
// architecture, first found first: what the boot hands over to, else the
// shell.
var stageProbes = []string{"sbin/init", "bin/busybox", "usr/lib/systemd/systemd", "bin/sh"}

// checkStageArch refuses a stage whose init (or busybox, or shell) is an
// ELF executable of another architecture. A stage without any of them (a
// data-only tree) is not checked.
func checkStageArch(t *fstree.Tree, want, profile string) error {
	for _, p := range stageProbes {
		e, real := followTree(t, p)
		if e == nil || e.Type != fstree.Regular || e.Data == nil {
			continue
		}
		rc, err := e.Data.Open()
		if err != nil {
			return fmt.Errorf("stage /%s: %w", real, err)
		}
		var got string
		if ra, ok := rc.(io.ReaderAt); ok {
			got, err = arch.ELF(ra)
		} else {
			var h [20]byte
			n, _ := io.ReadFull(rc, h[:])
			got, err = arch.ELF(bytesReaderAt(h[:n]))
		}
		rc.Close()
		if err != nil {
			continue // a script, or an ELF of a machine we do not name
		}
		if got != want {
			what := "/" + p
			if real != p {
				what += " (→ /" + real + ")"
			}
			return wrongArch("stage", what, got, want, profile)
		}
		return nil
	}
	return nil
}

// followTree resolves p's symlinks inside the tree (up to 40), returning
// the entry and its path.
func followTree(t *fstree.Tree, p string) (*fstree.Entry, string) {
	cur := fstree.Clean(p)
	for range 40 {
		cur = resolveParents(t, cur)
		e := t.Get(cur)
		if e == nil {
			return nil, cur
		}
		if e.Type != fstree.Symlink {
			if e.LinkTo != "" {
				if l := t.Get(e.LinkTo); l != nil {
					return l, cur
				}
			}
			return e, cur
		}
		target := e.Target
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(cur), target)
		}
		cur = fstree.Clean(target)
	}
	return nil, cur
}

type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// binfmtDir is where the kernel lists binfmt_misc handlers (a variable
// for tests).
var binfmtDir = "/proc/sys/fs/binfmt_misc"

// ErrNoBinfmt means programs of another architecture cannot run on the
// build host: no enabled qemu-user handler in binfmt_misc.
var ErrNoBinfmt = errors.New("no binfmt_misc handler for this architecture")

// checkBinfmt fails unless the kernel runs ELF executables of
// architecture a through an enabled qemu-user handler (what debootstrap's
// second stage of a foreign root needs: it runs the packages' maintainer
// scripts in a chroot).
func checkBinfmt(a string) error {
	name := "qemu-" + qemuArch(a)
	data, err := os.ReadFile(filepath.Join(binfmtDir, name))
	if err == nil && strings.HasPrefix(string(data), "enabled") {
		return nil
	}
	why := "it is disabled"
	if err != nil {
		why = "it is not registered"
		if _, serr := os.Stat(filepath.Join(binfmtDir, "status")); serr != nil {
			why = binfmtDir + " is not mounted"
		}
	}
	return fmt.Errorf("%w: %s: %s (the second stage runs %s programs: apt-get install qemu-user-static binfmt-support, then update-binfmts --enable %s)", ErrNoBinfmt, filepath.Join(binfmtDir, name), why, a, name)
}
