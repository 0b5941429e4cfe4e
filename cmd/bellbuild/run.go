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
		usage:   "PROFILE [-o OUT] [--env ENV] [--arch amd64|arm64] [--boot kernel|disk|iso|iso-bios] [--node NAME] [--mac MAC] [-C SITE [--private DIR]] [--timeout D] [--expect TEXT]",
		help: `run boots OUT/PROFILE (made by 'bellbuild image') in QEMU — always
software emulation (-accel tcg), 1 GiB of memory, one virtio NIC on QEMU's
user network — with the serial console on this terminal and the kernel
command line from the manifest.

--boot picks what boots: kernel (default) hands QEMU the kernel and the
initramfs; disk boots disk.raw under UEFI (OVMF), iso boots image.iso as a
CD under UEFI and iso-bios under BIOS (SeaBIOS, ISOLINUX) — profiles with
outputs [raw] or [iso]. The guest's writes to a disk go to a temporary
overlay: the baked file is not changed.

--arch is the image's architecture, which the manifest records (an
image baked for another one is refused): amd64 boots in
qemu-system-x86_64, arm64 in qemu-system-aarch64 (Debian package
qemu-system-arm; a "virt" machine with a Cortex-A57, the console on its
PL011, ttyAMA0), under UEFI with AAVMF (package qemu-efi-aarch64) for
--boot disk and iso (a CD on virtio-scsi). arm64 has no iso-bios.

--node NAME adds bellbuild.node=NAME to the command line, so the image's
init applies that node's configuration (--boot kernel only: a disk's
command line is on its ESP; write a node onto its config partition with
'bellbuild config write'); --mac boots with that MAC instead, to try the
selection by MAC. On a terminal, keys go to the VM; Ctrl-] quits. The VM is
always stopped when run ends.

With -C SITE and a site PKI, the VM's node (--node, or the inventory's
node of --mac) enrols with an endpoint run starts on this machine's
loopback (the VM reaches it at 10.0.2.2): every key is approved as its
node's first (enrol: first-key), its state is thrown away when run ends,
and the node gets its whole configuration and its credentials as it
would from serve (docs/enrolment.md). The VM's NIC gets the node's MAC.

--expect TEXT (for scripts) ends run with status 0 as soon as a console line
contains TEXT, and status 1 when the VM stops or --timeout (default 120s
with --expect) passes first.

Example:
  bellbuild image demo -o out
  bellbuild run demo -o out --node demo-2
  bellbuild run demo -o out --timeout 120s --expect 'bellbuild: node='
  bellbuild run lab -C site -o out --node web-1 --expect 'enrol=approved'
  bellbuild image demo-arm64 -o out && bellbuild run demo-arm64 -o out --arch arm64
  bellbuild run k8s-worker -C examples/fleet -o out --boot iso-bios`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o runFlags
			fs.StringVar(&o.out, "o", "out", "output `DIR` the image was baked into")
			fs.StringVar(&o.env, "env", "", "the site's environment `NAME`: boot OUT/NAME/PROFILE (default $"+envVar+" when OUT/NAME exists)")
			fs.StringVar(&o.node, "node", "", "boot as inventory node `NAME` (bellbuild.node=)")
			fs.StringVar(&o.mac, "mac", "", "the NIC's `MAC` address")
			fs.DurationVar(&o.timeout, "timeout", 0, "stop the VM after `D` (default: none, or 120s with --expect)")
			fs.StringVar(&o.expect, "expect", "", "exit 0 once a console line contains `TEXT`")
			fs.StringVar(&o.appendArgs, "append", "", "extra kernel command line `ARGS`")
			fs.StringVar(&o.log, "log", "", "also write the console to `FILE`")
			fs.StringVar(&o.boot, "boot", "kernel", "boot the `MEDIUM`: kernel, disk, iso or iso-bios")
			fs.StringVar(&o.site, "C", "", "site `DIR`: its node enrols with an endpoint run starts (first-key)")
			registerPrivate(fs, &o.private)
			fs.StringVar(&o.arch, "arch", "", "the image's architecture, `ARCH` amd64 or arm64 (default: the manifest's)")
			return func(ctx context.Context, args []string) error {
				args, err := positional(fs, args)
				if err != nil {
					return err
				}
				if len(args) != 1 {
					return errors.New("want exactly one PROFILE (see 'bellbuild help run')")
				}
				o.profile = args[0]
				o.out = runOut(o.out, o.env)
				return runVM(ctx, o, os.Stdin, os.Stdout)
			}
		},
	})
}

type runFlags struct {
	out, profile, node, mac, expect, appendArgs, log, boot, arch string
	site, private, env                                           string
	timeout                                                      time.Duration
}

// runOut is where run finds the bakes: OUT/ENV for --env ENV, else for
// $BELLBUILD_ENV when OUT/ENV exists, else OUT.
func runOut(out, env string) string {
	if env != "" {
		return filepath.Join(out, env)
	}
	if e := os.Getenv(envVar); e != "" {
		if fi, err := os.Stat(filepath.Join(out, e)); err == nil && fi.IsDir() {
			return filepath.Join(out, e)
		}
	}
	return out
}

// bootConfig is the VM that boots dir's artifacts the way o.boot says.
func bootConfig(o runFlags, dir, cmdline string) (testvm.Config, string, error) {
	c := testvm.Config{Arch: o.arch}
	uefi, fwPkg := testvm.OVMF, "ovmf"
	if o.arch == testvm.ARM64 {
		uefi, fwPkg = testvm.AAVMF, "qemu-efi-aarch64"
	}
	var file string
	switch o.boot {
	case "", "kernel":
		c.Kernel = filepath.Join(dir, build.KernelFile)
		c.Initrd = filepath.Join(dir, build.InitramfsFile)
		c.Cmdline = cmdline
		return c, "kernel and initramfs, command line: " + cmdline, nil
	case "disk":
		file = filepath.Join(dir, build.DiskFile)
		c.Firmware = uefi
		c.Drives = []testvm.Drive{{Path: file, Snapshot: true}}
	case "iso", "iso-bios":
		file = filepath.Join(dir, build.ISOFile)
		if o.boot == "iso" {
			c.Firmware = uefi
		} else if o.arch == testvm.ARM64 {
			return c, "", errors.New("--boot iso-bios: arm64 has no BIOS (use --boot iso, under UEFI)")
		}
		c.Drives = []testvm.Drive{{Path: file, Interface: "ide", Media: "cdrom", ReadOnly: true}}
	default:
		return c, "", fmt.Errorf("--boot %q: want kernel, disk, iso or iso-bios", o.boot)
	}
	if o.node != "" || o.appendArgs != "" {
		return c, "", fmt.Errorf("--node and --append need --boot kernel: a %s carries its own command line (choose the node with --mac, or write it onto the config partition with 'bellbuild config write')", o.boot)
	}
	if _, err := os.Stat(file); err != nil {
		output := "iso"
		if o.boot == "disk" {
			output = "raw"
		}
		return c, "", fmt.Errorf("%w (add %s to the profile's outputs and bake again)", err, output)
	}
	if c.Firmware != "" {
		if _, err := os.Stat(c.Firmware); err != nil {
			return c, "", fmt.Errorf("UEFI firmware: %w (apt-get install %s)", err, fwPkg)
		}
		return c, file + " under UEFI", nil
	}
	return c, file + " under BIOS", nil
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
	if m.Arch == "" {
		m.Arch = testvm.AMD64 // baked before manifests recorded it
	}
	switch {
	case o.arch == "":
		o.arch = m.Arch
	case o.arch != testvm.AMD64 && o.arch != testvm.ARM64:
		return fmt.Errorf("--arch %q: want amd64 or arm64", o.arch)
	case o.arch != m.Arch:
		return fmt.Errorf("--arch %s: %s was baked for %s (its manifest says arch %s)", o.arch, dir, m.Arch, m.Arch)
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
	c, what, err := bootConfig(o, dir, cmdline)
	if err != nil {
		return err
	}
	if o.site != "" {
		stop, err := o.enrolment(ctx, &c)
		if err != nil {
			return err
		}
		defer stop()
	}
	c.NICs = []testvm.NIC{{MAC: o.mac}}
	c.Console, c.LogFile = stdout, o.log
	fmt.Fprintf(os.Stderr, "bellbuild run: booting %s (%s, kernel %s): %s\n", dir, o.arch, m.KernelVersion, what)
	vm, err := testvm.Start(context.Background(), c)
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
