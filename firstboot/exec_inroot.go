package firstboot

import (
	"context"
	"os/exec"

	"github.com/bellbuild/bellbuild/firstboot/host"
)

// inRootScript prepares a private mount namespace for a command chrooted in
// a target root: it mounts /proc and a minimal /dev only where the root has
// none (a debootstrap or busybox tree), so that apt, dpkg and scripts find
// /proc/self and /dev/null, then execs chroot. The mounts exist only in the
// namespace that util-linux unshare made for this one command: nothing is
// mounted in the host's namespace and nothing stays mounted when the
// command ends. A root that is a live host mounted elsewhere (/host) keeps
// its own /proc and /dev, untouched. The script runs with the applier's
// own shell and tools; the target needs none of them.
const inRootScript = `set -e
r=$1; wd=$2; shift 2
if [ -d "$r/proc" ] && [ ! -e "$r/proc/self" ]; then
	mount -t proc -o nosuid,nodev,noexec bellbuild-proc "$r/proc"
fi
if [ -d "$r/dev" ] && [ ! -c "$r/dev/null" ]; then
	mount -t tmpfs -o nosuid,noexec,mode=0755,size=1m bellbuild-dev "$r/dev"
	mknod -m 0666 "$r/dev/null" c 1 3
	mknod -m 0666 "$r/dev/zero" c 1 5
	mknod -m 0666 "$r/dev/full" c 1 7
	mknod -m 0666 "$r/dev/random" c 1 8
	mknod -m 0666 "$r/dev/urandom" c 1 9
	mknod -m 0666 "$r/dev/tty" c 5 0
	ln -s /proc/self/fd "$r/dev/fd"
	ln -s /proc/self/fd/0 "$r/dev/stdin"
	ln -s /proc/self/fd/1 "$r/dev/stdout"
	ln -s /proc/self/fd/2 "$r/dev/stderr"
	mkdir -m 0755 "$r/dev/pts"
	mkdir -m 1777 "$r/dev/shm"
fi
if [ -n "$wd" ]; then
	exec unshare --root="$r" --wd="$wd" -- "$@"
fi
exec chroot "$r" "$@"
`

// inRoot returns a command that runs name with args inside h's root:
// h.Command's plain run when the root is "/", else chrooted inside a
// private mount namespace (see inRootScript). The command is a single
// process from start to end (unshare, sh and chroot each exec the next),
// so signalling its process group reaches the program itself. Without
// unshare on the applier's side it falls back to a plain chroot.
func inRoot(ctx context.Context, h *host.Host, env []string, name string, args ...string) *exec.Cmd {
	return inRootAt(ctx, h, env, "", name, args...)
}

// inRootAt is inRoot with the working directory wd (a path inside the
// root; "" for "/"). A relative name is found from wd.
func inRootAt(ctx context.Context, h *host.Host, env []string, wd, name string, args ...string) *exec.Cmd {
	unshare, err := lookTool("unshare")
	if h.RootDir == "/" || err != nil {
		cmd := h.Command(ctx, env, name, args...)
		if h.RootDir == "/" {
			cmd.Dir = wd
		}
		return cmd
	}
	env = h.Command(ctx, env, name).Env
	cmd := exec.CommandContext(ctx, unshare, append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", inRootScript, "sh", h.RootDir, wd, name}, args...)...)
	cmd.Env = env
	return cmd
}
