package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/build"
	"github.com/bellbuild/bellbuild/testvm"
)

func init() {
	register(&command{
		name:    "run",
		summary: "boot a baked image in QEMU with its console attached",
		usage:   "PROFILE [-o OUT] [--node NAME] [--mac MAC] [--timeout D] [--expect TEXT]",
		help: `run boots OUT/PROFILE (made by 'bellbuild image') in QEMU — always
software emulation (-accel tcg), 1 GiB of memory, one virtio NIC on QEMU's
user network — with the serial console on this terminal and the kernel
command line from the manifest.

--node NAME adds bellbuild.node=NAME to the command line, so the image's
init applies that node's configuration; --mac boots with that MAC instead,
to try the selection by MAC. On a terminal, keys go to the VM; Ctrl-]
quits. The VM is always stopped when run ends.

--expect TEXT (for scripts) ends run with status 0 as soon as a console line
contains TEXT, and status 1 when the VM stops or --timeout (default 120s
with --expect) passes first.

Example:
  bellbuild image demo -o out
  bellbuild run demo -o out --node demo-2
  bellbuild run demo -o out --timeout 120s --expect 'bellbuild: node='`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o runFlags
			fs.StringVar(&o.out, "o", "out", "output `DIR` the image was baked into")
			fs.StringVar(&o.node, "node", "", "boot as inventory node `NAME` (bellbuild.node=)")
			fs.StringVar(&o.mac, "mac", "", "the NIC's `MAC` address")
			fs.DurationVar(&o.timeout, "timeout", 0, "stop the VM after `D` (default: none, or 120s with --expect)")
			fs.StringVar(&o.expect, "expect", "", "exit 0 once a console line contains `TEXT`")
			fs.StringVar(&o.appendArgs, "append", "", "extra kernel command line `ARGS`")
			fs.StringVar(&o.log, "log", "", "also write the console to `FILE`")
			return func(ctx context.Context, args []string) error {
				args, err := positional(fs, args)
				if err != nil {
					return err
				}
				if len(args) != 1 {
					return errors.New("want exactly one PROFILE (see 'bellbuild help run')")
				}
				o.profile = args[0]
				return runVM(ctx, o, os.Stdin, os.Stdout)
			}
		},
	})
}

type runFlags struct {
	out, profile, node, mac, expect, appendArgs, log string
	timeout                                          time.Duration
}

// escapeKey (Ctrl-]) ends an interactive run.
const escapeKey = 0x1d

func runVM(ctx context.Context, o runFlags, stdin *os.File, stdout io.Writer) error {
	// 1. The baked artifacts and their command line.
	dir := filepath.Join(o.out, o.profile)
	data, err := os.ReadFile(filepath.Join(dir, build.ManifestFile))
	if err != nil {
		return fmt.Errorf("%w (bake it first: bellbuild image %s -o %s)", err, o.profile, o.out)
	}
	var m build.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, build.ManifestFile), err)
	}
	// panic=-1: a boot that fails reboots at once, and -no-reboot turns
	// that into QEMU exiting instead of hanging.
	cmdline := strings.TrimSpace(m.Cmdline + " panic=-1 " + o.appendArgs)
	if o.node != "" {
		cmdline += " bellbuild.node=" + o.node
	}

	// 2. Boot.
	if o.expect != "" && o.timeout == 0 {
		o.timeout = 120 * time.Second
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	fmt.Fprintf(os.Stderr, "bellbuild run: booting %s (kernel %s) with: %s\n", dir, m.KernelVersion, cmdline)
	vm, err := testvm.Start(context.Background(), testvm.Config{
		Kernel:  filepath.Join(dir, build.KernelFile),
		Initrd:  filepath.Join(dir, build.InitramfsFile),
		Cmdline: cmdline,
		NICs:    []testvm.NIC{{MAC: o.mac}},
		Console: stdout,
		LogFile: o.log,
	})
	if err != nil {
		return err
	}
	defer vm.Close()

	// 3a. Scripted: wait for the text.
	if o.expect != "" {
		_, err := vm.WaitForLine(ctx, regexp.MustCompile(regexp.QuoteMeta(o.expect)))
		if err != nil {
			fmt.Fprintf(os.Stderr, "\nbellbuild run: %v\n", err)
			return exitError{1}
		}
		fmt.Fprintf(os.Stderr, "\nbellbuild run: found %q; stopping the VM\n", o.expect)
		return nil
	}

	// 3b. Interactive: keys to the VM until it powers off or Ctrl-].
	quit := make(chan struct{})
	if restore, ok := rawTerminal(stdin); ok {
		defer restore()
		fmt.Fprintf(os.Stderr, "bellbuild run: Ctrl-] quits\r\n")
		go forwardKeys(stdin, vm, quit)
	}
	select {
	case <-vm.Exited():
		return vm.ExitErr()
	case <-quit:
		return nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			fmt.Fprintf(os.Stderr, "\r\nbellbuild run: --timeout %s passed; stopping the VM\r\n", o.timeout)
			return nil
		}
		return ctx.Err()
	}
}

// forwardKeys copies keys to the VM until Ctrl-] (then closes quit).
func forwardKeys(in io.Reader, vm io.Writer, quit chan struct{}) {
	buf := make([]byte, 256)
	for {
		n, err := in.Read(buf)
		if i := strings.IndexByte(string(buf[:n]), escapeKey); i >= 0 {
			vm.Write(buf[:i])
			close(quit)
			return
		}
		if n > 0 {
			vm.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// rawTerminal puts a terminal in raw mode (keys, Ctrl-C included, go to
// the VM as typed) and returns how to restore it; ok is false for a file
// that is not a terminal.
func rawTerminal(f *os.File) (restore func(), ok bool) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, false
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, false
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }, true
}
