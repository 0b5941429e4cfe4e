package build

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/images/fstree"
)

// BusyboxPaths are where a static busybox is looked for on the build host
// (Debian's busybox-static installs /bin/busybox).
var BusyboxPaths = []string{"/bin/busybox", "/usr/bin/busybox"}

// busyboxFiles is the small /etc a busybox stage gets: enough for busybox
// init to give a shell on the serial console, for the applier to manage
// users, and for exec scripts to run. ttyS0 stands for the architecture's
// serial console (serialConsole).
var busyboxFiles = []struct {
	path string
	mode os.FileMode
	data string
}{
	{"etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
	{"etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n"},
	{"etc/shadow", 0o600, "root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n"},
	{"etc/hostname", 0o644, "bellbuild\n"},
	{"etc/hosts", 0o644, "127.0.0.1\tlocalhost\n::1\tlocalhost\n"},
	{"etc/shells", 0o644, "/bin/sh\n/bin/ash\n"},
	{"etc/profile", 0o644, "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\h:\\w\\$ '\n"},
	// busybox init: rcS once, then a shell on the serial console (the
	// kernel command line says console=ttyS0), respawned when it exits.
	{"etc/inittab", 0o644, `::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
`},
	{"etc/init.d/rcS", 0o755, `#!/bin/sh
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts 2>/dev/null
# a disk or ISO boot's init has mounted /run, with the config volume in it
grep -q '^[^ ]* /run ' /proc/mounts || mount -t tmpfs -o nosuid,nodev tmpfs /run 2>/dev/null
hostname -F /etc/hostname
echo "bellbuild: busybox init: shell on ttyS0"
`},
}

// busyboxStage builds a minimal root for architecture a from a static
// busybox (the host's, or one fetched for a): the binary at /bin/busybox,
// every applet it lists as a symlink to it, the usual directories and
// busyboxFiles. Owners are root; nothing of the host but the binary goes
// in. A busybox of another architecture lists its applets through
// qemu-user (runForeign).
func busyboxStage(ctx context.Context, bin, a string) (*fstree.Tree, string, error) {
	if bin == "" {
		for _, p := range BusyboxPaths {
			if _, err := os.Stat(p); err == nil {
				bin = p
				break
			}
		}
		if bin == "" {
			return nil, "", fmt.Errorf("busybox stage: no busybox at %s (apt-get install busybox-static)", strings.Join(BusyboxPaths, " or "))
		}
	}
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return nil, "", fmt.Errorf("busybox stage: %w", err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return nil, "", fmt.Errorf("busybox stage: %w", err)
	}
	if err := checkStatic(real); err != nil {
		return nil, "", fmt.Errorf("busybox stage: %w (install busybox-static)", err)
	}
	out, err := runForeign(ctx, a, real, "--list-full").Output()
	if err != nil {
		return nil, "", fmt.Errorf("busybox stage: %s --list-full: %w", real, err)
	}
	t := fstree.New()
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "etc/init.d", "root", "proc", "sys", "dev", "run", "mnt", "var", "var/lib", "lib", "lib/modules"} {
		mode := os.FileMode(0o755)
		if d == "root" {
			mode = 0o700
		}
		t.Add(fstree.Entry{Path: d, Type: fstree.Dir, Mode: mode})
	}
	t.Add(fstree.Entry{Path: "tmp", Type: fstree.Dir, Mode: 0o777 | os.ModeSticky})
	t.Add(fstree.Entry{Path: "bin/busybox", Type: fstree.Regular, Mode: 0o755, Size: st.Size(), Data: fstree.File(real)})
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	for _, a := range applets {
		a = fstree.Clean(a)
		if a == "bin/busybox" || strings.Contains(a, "..") {
			continue
		}
		t.Add(fstree.Entry{Path: a, Type: fstree.Symlink, Mode: 0o777, Target: "/bin/busybox"})
	}
	// init is what the boot hands over to.
	t.Add(fstree.Entry{Path: "sbin/init", Type: fstree.Symlink, Mode: 0o777, Target: "/bin/busybox"})
	for _, f := range busyboxFiles {
		t.AddFile(f.path, []byte(strings.ReplaceAll(f.data, "ttyS0", serialConsole(a))), f.mode, 0, 0)
	}
	return t, real, nil
}

// runForeign is the command that runs bin (an ELF executable for
// architecture a) with args on the build host: bin itself for the host's
// architecture, else bin under qemu-user's static emulator
// (qemu-aarch64-static, package qemu-user-static) when it is installed,
// else bin itself (a binfmt_misc handler may run it).
func runForeign(ctx context.Context, a, bin string, args ...string) *exec.Cmd {
	if !native(a) {
		if q, err := exec.LookPath("qemu-" + qemuArch(a) + "-static"); err == nil {
			return exec.CommandContext(ctx, q, append([]string{bin}, args...)...)
		}
	}
	return exec.CommandContext(ctx, bin, args...)
}

// qemuArch is QEMU's name of an architecture.
func qemuArch(a string) string {
	switch a {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return a
}

// checkStatic fails when the ELF file has a program interpreter (is
// dynamically linked): in an image it would have no libc to run with.
func checkStatic(file string) error {
	interp, err := elfInterp(file)
	if err != nil {
		return err
	}
	if interp != "" {
		return fmt.Errorf("%s is dynamically linked (interpreter %s)", file, interp)
	}
	return nil
}
