package testvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// QEMU is the emulator the harness runs for x86-64 VMs.
const QEMU = "qemu-system-x86_64"

// QEMUARM64 is the emulator of arm64 VMs (Debian package qemu-system-arm):
// the "virt" machine with a Cortex-A57, always under TCG.
const QEMUARM64 = "qemu-system-aarch64"

// OVMF is where Debian's ovmf package puts the UEFI firmware.
const OVMF = "/usr/share/ovmf/OVMF.fd"

// AAVMF is Debian's UEFI firmware for arm64 (package qemu-efi-aarch64),
// mapped read-only as the first flash device; AAVMFVars is the template
// of its variable store, of which each VM gets a writable copy (the
// second flash device).
const (
	AAVMF     = "/usr/share/AAVMF/AAVMF_CODE.fd"
	AAVMFVars = "/usr/share/AAVMF/AAVMF_VARS.fd"
)

// Architectures of Config.Arch.
const (
	AMD64 = "amd64"
	ARM64 = "arm64"
)

// Emulator returns the QEMU binary that runs VMs of architecture arch
// ("" is amd64).
func Emulator(arch string) string {
	if arch == ARM64 {
		return QEMUARM64
	}
	return QEMU
}

// Serial returns the serial console's device name in a Linux guest of
// architecture arch: ttyS0 on a PC, ttyAMA0 (the PL011) on the virt machine.
func Serial(arch string) string {
	if arch == ARM64 {
		return "ttyAMA0"
	}
	return "ttyS0"
}

// Config describes one VM. The zero value plus a Kernel (or a bootable
// drive or NIC) is enough: 1024 MiB, one CPU, no NIC, no disk.
type Config struct {
	// Kernel, Initrd and Cmdline boot a Linux kernel directly (-kernel,
	// -initrd, -append).
	Kernel  string
	Initrd  string
	Cmdline string
	// MemoryMiB defaults to 1024; CPUs to 1.
	MemoryMiB int
	CPUs      int
	// Drives are attached in order.
	Drives []Drive
	// NICs are attached in order. With no NIC the VM has no network at all.
	NICs []NIC
	// BootNetwork boots from the first NIC (-boot n): PXE through the
	// NIC's option ROM.
	BootNetwork bool
	// Firmware replaces SeaBIOS (e.g. OVMF for UEFI).
	Firmware string
	// LogFile, when set, receives a copy of the console as it arrives.
	LogFile string
	// Console, when set, also receives the console as it arrives (a
	// terminal for `bellbuild run`).
	Console io.Writer
	// Extra arguments appended to QEMU's command line.
	Extra []string
	// Binary overrides the emulator's path (default: Emulator(Arch) from
	// PATH).
	Binary string
	// Reboot lets a guest that reboots start again in the same VM (its
	// console continues); by default (-no-reboot) a reboot ends the VM.
	// Boot counting needs it: each try is a reboot.
	Reboot bool
	// Arch is the guest's architecture: "" or "amd64" (a PC), or "arm64"
	// (QEMU's virt machine; Firmware is then flash: AAVMF, with
	// FirmwareVars as its variable store; CD-ROMs are SCSI disks on a
	// virtio-scsi controller; every device has its boot index in the
	// order drives, then NICs).
	Arch string
	// FirmwareVars is the writable variable store of an arm64 VM's
	// firmware; "" makes Start give the VM a copy of AAVMFVars, removed
	// when the VM is closed.
	FirmwareVars string
}

// Drive is a disk image.
type Drive struct {
	Path string
	// Format defaults to "raw".
	Format string
	// Interface defaults to "virtio"; "ide", "none" (for -device) also work.
	Interface string
	// Media is "disk" (default) or "cdrom".
	Media    string
	ReadOnly bool
	// Snapshot sends the guest's writes to a temporary overlay: the file
	// is left as it was.
	Snapshot bool
	// BootIndex, when > 0, puts the drive in the firmware's boot order
	// (a virtio-blk device with bootindex=N; OVMF follows it, lowest
	// first). Interface must be "" or "virtio".
	BootIndex int
}

// NIC is a network interface.
type NIC struct {
	// Netdev is "user" (default) or "tap".
	Netdev string
	// Ifname is the host tap device for a tap netdev (created beforehand).
	Ifname string
	// MAC is the guest's hardware address; QEMU picks one when empty.
	MAC string
	// Model defaults to "virtio-net-pci"; "e1000" works with SeaBIOS's PXE
	// ROM as well.
	Model string
	// BootIndex, when > 0, puts the NIC in the firmware's boot order
	// (bootindex=N): with a drive's at a higher index, the machine boots
	// from the network first and from the disk when that fails or exits.
	BootIndex int
}

// Args returns QEMU's argument list for c (without the binary). The
// serial console is QEMU's stdio; there is no display and no monitor.
func (c Config) Args() []string {
	mem := c.MemoryMiB
	if mem == 0 {
		mem = 1024
	}
	cpus := c.CPUs
	if cpus == 0 {
		cpus = 1
	}
	if c.Arch == ARM64 {
		return c.argsARM64(mem, cpus)
	}
	a := []string{
		"-accel", "tcg", // never KVM: nested KVM hangs on this project's machines
		"-m", strconv.Itoa(mem),
		"-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-monitor", "none",
		"-serial", "stdio",
	}
	if !c.Reboot {
		a = append(a, "-no-reboot")
	}
	if c.Firmware != "" {
		a = append(a, "-bios", c.Firmware)
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Cmdline != "" {
			a = append(a, "-append", c.Cmdline)
		}
	}
	for i, d := range c.Drives {
		format := d.Format
		if format == "" {
			format = "raw"
		}
		iface := d.Interface
		if iface == "" {
			iface = "virtio"
		}
		opt := fmt.Sprintf("file=%s,format=%s,if=%s,index=%d", d.Path, format, iface, i)
		if d.Media != "" {
			opt += ",media=" + d.Media
		}
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		if d.Snapshot {
			opt += ",snapshot=on"
		}
		if d.BootIndex > 0 && iface == "virtio" {
			opt = strings.Replace(opt, ",if=virtio,", fmt.Sprintf(",if=none,id=drive%d,", i), 1)
			a = append(a, "-drive", opt, "-device", fmt.Sprintf("virtio-blk-pci,drive=drive%d,bootindex=%d", i, d.BootIndex))
			continue
		}
		a = append(a, "-drive", opt)
	}
	for i, n := range c.NICs {
		id, netdev := netdevArg(i, n)
		a = append(a, "-netdev", netdev)
		model := n.Model
		if model == "" {
			model = "virtio-net-pci"
		}
		dev := model + ",netdev=" + id
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		if n.BootIndex > 0 {
			dev += fmt.Sprintf(",bootindex=%d", n.BootIndex)
		}
		a = append(a, "-device", dev)
	}
	if c.BootNetwork {
		a = append(a, "-boot", "n")
	}
	return append(a, c.Extra...)
}

// argsARM64 is Args for an arm64 guest: the virt machine, its PL011 as
// the serial console, the firmware in flash, devices on PCI.
func (c Config) argsARM64(mem, cpus int) []string {
	a := []string{
		"-M", "virt", "-cpu", "cortex-a57",
		"-accel", "tcg",
		"-m", strconv.Itoa(mem),
		"-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-monitor", "none",
		"-serial", "stdio",
	}
	if !c.Reboot {
		a = append(a, "-no-reboot")
	}
	if c.Firmware != "" {
		a = append(a, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+strings.ReplaceAll(c.Firmware, ",", ",,"))
		if c.FirmwareVars != "" {
			a = append(a, "-drive", "if=pflash,format=raw,unit=1,file="+strings.ReplaceAll(c.FirmwareVars, ",", ",,"))
		}
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Cmdline != "" {
			a = append(a, "-append", c.Cmdline)
		}
	}
	boot := 1
	scsi := false
	for i, d := range c.Drives {
		format := d.Format
		if format == "" {
			format = "raw"
		}
		id := fmt.Sprintf("drive%d", i)
		// QEMU reads ",," as a comma inside an option's value.
		opt := fmt.Sprintf("if=none,id=%s,file=%s,format=%s", id, strings.ReplaceAll(d.Path, ",", ",,"), format)
		cd := d.Media == "cdrom" || d.Interface == "ide"
		if cd {
			opt += ",media=cdrom"
		}
		if d.ReadOnly || cd {
			opt += ",readonly=on"
		}
		if d.Snapshot {
			opt += ",snapshot=on"
		}
		a = append(a, "-drive", opt)
		if cd {
			if !scsi {
				a = append(a, "-device", "virtio-scsi-pci,id=scsi0")
				scsi = true
			}
			a = append(a, "-device", fmt.Sprintf("scsi-cd,bus=scsi0.0,drive=%s,bootindex=%d", id, boot))
		} else {
			a = append(a, "-device", fmt.Sprintf("virtio-blk-pci,drive=%s,bootindex=%d", id, boot))
		}
		boot++
	}
	for i, n := range c.NICs {
		id, netdev := netdevArg(i, n)
		a = append(a, "-netdev", netdev)
		model := n.Model
		if model == "" {
			model = "virtio-net-pci"
		}
		dev := model + ",netdev=" + id
		if !strings.Contains(model, "romfile=") {
			// QEMU's default ROM is an x86 iPXE: AAVMF has its own driver.
			dev += ",romfile="
		}
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		if c.BootNetwork {
			dev += fmt.Sprintf(",bootindex=%d", boot)
			boot++
		}
		a = append(a, "-device", dev)
	}
	return append(a, c.Extra...)
}

// ErrExited means the VM stopped (powered off, panicked with -no-reboot,
// or was killed) before the awaited text appeared.
var ErrExited = errors.New("vm exited")

// VM is a running QEMU process.
type VM struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   *os.File
	vars  string // a variable store Start copied, removed by Close

	mu      sync.Mutex
	console bytes.Buffer
	cursor  int           // WaitFor searches from here
	changed chan struct{} // closed and replaced whenever output arrives

	exited   chan struct{}
	exitErr  error
	readDone chan struct{}

	closeOnce sync.Once
}

// Start boots c. The VM runs until it powers off, ctx is cancelled, or
// Close is called; Close must always be called.
func Start(ctx context.Context, c Config) (*VM, error) {
	bin := c.Binary
	if bin == "" {
		p, err := exec.LookPath(Emulator(c.Arch))
		if err != nil {
			return nil, fmt.Errorf("testvm: %w", err)
		}
		bin = p
	}
	for _, f := range []string{c.Kernel, c.Initrd, c.Firmware} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("testvm: %w", err)
		}
	}
	vm := &VM{changed: make(chan struct{}), exited: make(chan struct{}), readDone: make(chan struct{})}
	if c.Arch == ARM64 && c.Firmware != "" && c.FirmwareVars == "" {
		vars, err := copyVars(AAVMFVars)
		if err != nil {
			return nil, fmt.Errorf("testvm: firmware variables: %w", err)
		}
		c.FirmwareVars, vm.vars = vars, vars
	}
	if c.LogFile != "" {
		f, err := os.Create(c.LogFile)
		if err != nil {
			vm.closeLog()
			return nil, fmt.Errorf("testvm: console log: %w", err)
		}
		vm.log = f
	}
	cmd := exec.CommandContext(ctx, bin, c.Args()...)
	// QEMU dies with us, even when the test binary is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		vm.closeLog()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		vm.closeLog()
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		vm.closeLog()
		return nil, fmt.Errorf("testvm: starting %s: %w", bin, err)
	}
	vm.cmd, vm.stdin = cmd, stdin
	go vm.read(stdout, c.Console)
	go func() {
		<-vm.readDone
		err := cmd.Wait()
		if err != nil && stderr.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		vm.mu.Lock()
		vm.exitErr = err
		vm.mu.Unlock()
		close(vm.exited)
		vm.notify()
	}()
	return vm, nil
}

func (vm *VM) read(r io.Reader, mirror io.Writer) {
	defer close(vm.readDone)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			vm.mu.Lock()
			vm.console.Write(chunk)
			vm.mu.Unlock()
			if vm.log != nil {
				vm.log.Write(chunk)
			}
			if mirror != nil {
				mirror.Write(chunk)
			}
			vm.notify()
		}
		if err != nil {
			return
		}
	}
}

func (vm *VM) notify() {
	vm.mu.Lock()
	close(vm.changed)
	vm.changed = make(chan struct{})
	vm.mu.Unlock()
}

// Console returns everything the VM printed so far, with carriage returns
// removed.
func (vm *VM) Console() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return strings.ReplaceAll(vm.console.String(), "\r", "")
}

// WaitFor waits until a console line matches re and returns the match
// (re.FindStringSubmatch of that line, without its terminal escape
// sequences: systemd's colours, bash's bracketed-paste switches). Lines are searched from just after
// the previous match, so successive calls see the console in order; the
// unfinished last line is searched too (a prompt has no newline). It fails
// with ErrExited when the VM stops first, or with ctx's error.
func (vm *VM) WaitFor(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	return vm.wait(ctx, re, true)
}

// WaitForLine is WaitFor for complete lines only: the match is returned
// once the line's newline has arrived (so that a caller that stops the VM
// then has seen, and mirrored, the whole line).
func (vm *VM) WaitForLine(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	return vm.wait(ctx, re, false)
}

func (vm *VM) wait(ctx context.Context, re *regexp.Regexp, partial bool) ([]string, error) {
	for {
		vm.mu.Lock()
		changed := vm.changed
		data := vm.console.Bytes()[vm.cursor:]
		start := 0
		for start <= len(data) {
			end := bytes.IndexByte(data[start:], '\n')
			last := end < 0
			if last {
				end = len(data)
			} else {
				end += start
			}
			if last && !partial {
				break
			}
			line := visible(strings.TrimRight(string(data[start:end]), "\r"))
			if m := re.FindStringSubmatch(line); m != nil {
				if last {
					vm.cursor += end
				} else {
					vm.cursor += end + 1
				}
				vm.mu.Unlock()
				return m, nil
			}
			if last {
				break
			}
			start = end + 1
		}
		vm.mu.Unlock()
		select {
		case <-vm.exited:
			// Output read before the exit was searched above; look once
			// more in case it arrived together with the exit.
			vm.mu.Lock()
			rest := string(vm.console.Bytes()[vm.cursor:])
			vm.mu.Unlock()
			for _, line := range strings.Split(visible(strings.ReplaceAll(rest, "\r", "")), "\n") {
				if m := re.FindStringSubmatch(line); m != nil {
					return m, nil
				}
			}
			return nil, fmt.Errorf("waiting for %q: %w (%v)", re, ErrExited, vm.ExitErr())
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %q: %w", re, ctx.Err())
		case <-changed:
		}
	}
}

// Expect waits up to timeout for a console line containing text.
func (vm *VM) Expect(text string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := vm.WaitFor(ctx, regexp.MustCompile(regexp.QuoteMeta(text)))
	return err
}

// Send types s on the serial console.
func (vm *VM) Send(s string) error {
	_, err := io.WriteString(vm.stdin, s)
	return err
}

// Write types b on the serial console (VM is an io.Writer for a terminal's
// input).
func (vm *VM) Write(b []byte) (int, error) { return vm.stdin.Write(b) }

// Exited is closed when the QEMU process has ended (the guest powered off,
// the kernel panicked under -no-reboot, or the VM was killed).
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// ExitErr is QEMU's exit status once Exited is closed (nil for a clean
// power-off).
func (vm *VM) ExitErr() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.exitErr
}

// Wait waits for the VM to power off, or for ctx.
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.exited:
		return vm.ExitErr()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Kill stops the VM at once (it is the same as Close).
func (vm *VM) Kill() error { return vm.Close() }

// Close kills QEMU if it still runs, waits for it, and closes the console
// log. It is safe to call more than once.
func (vm *VM) Close() error {
	vm.closeOnce.Do(func() {
		vm.stdin.Close()
		select {
		case <-vm.exited:
		default:
			vm.cmd.Process.Kill()
			<-vm.exited
		}
		vm.closeLog()
	})
	return nil
}

func (vm *VM) closeLog() {
	if vm.log != nil {
		vm.log.Close()
	}
	if vm.vars != "" {
		os.Remove(vm.vars)
	}
}

// copyVars copies the firmware's variable store template to a temporary
// file.
func copyVars(template string) (string, error) {
	in, err := os.Open(template)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp("", "testvm-vars-*.fd")
	if err != nil {
		return "", err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out.Name())
		return "", err
	}
	return out.Name(), nil
}

// escapes matches ANSI/VT100 control sequences: CSI (ESC [ ... final byte)
// and two-byte ESC sequences.
var escapes = regexp.MustCompile(`\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])`)

// visible is line as a terminal shows it, without escape sequences.
func visible(line string) string {
	if !strings.Contains(line, "\x1b") {
		return line
	}
	return escapes.ReplaceAllString(line, "")
}

// netdevArg is the -netdev of the i-th NIC n, and its id.
func netdevArg(i int, n NIC) (id, arg string) {
	id = fmt.Sprintf("net%d", i)
	switch n.Netdev {
	case "", "user":
		return id, "user,id=" + id
	case "tap":
		return id, fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", id, n.Ifname)
	}
	return id, n.Netdev + ",id=" + id
}
