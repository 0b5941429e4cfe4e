package testvm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestArgs(t *testing.T) {
	base := []string{"-accel", "tcg", "-m", "1024", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"}
	tests := []struct {
		name string
		c    Config
		want []string
	}{
		{"kernel", Config{Kernel: "k", Initrd: "i", Cmdline: "console=ttyS0"},
			append(base[:len(base):len(base)], "-kernel", "k", "-initrd", "i", "-append", "console=ttyS0")},
		{"disks", Config{MemoryMiB: 512, Drives: []Drive{{Path: "a.raw"}, {Path: "b.iso", Interface: "ide", Media: "cdrom", ReadOnly: true}}},
			append(replace(base, "1024", "512"), "-drive", "file=a.raw,format=raw,if=virtio,index=0", "-drive", "file=b.iso,format=raw,if=ide,index=1,media=cdrom,readonly=on")},
		{"pxe over tap with UEFI", Config{Firmware: OVMF, BootNetwork: true, NICs: []NIC{{Netdev: "tap", Ifname: "tap0", MAC: "52:54:00:00:00:01", Model: "e1000"}}},
			append(base[:len(base):len(base)], "-bios", OVMF, "-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no", "-device", "e1000,netdev=net0,mac=52:54:00:00:00:01", "-boot", "n")},
		{"user nic", Config{CPUs: 2, NICs: []NIC{{}}},
			append(replace(base, "1", "2"), "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0")},
		{"network first, then the disk, reboots kept", Config{Reboot: true, Drives: []Drive{{Path: "a.raw", BootIndex: 2}}, NICs: []NIC{{BootIndex: 1}}},
			append(base[:len(base)-1:len(base)-1], "-drive", "file=a.raw,format=raw,if=none,id=drive0,index=0", "-device", "virtio-blk-pci,drive=drive0,bootindex=2",
				"-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,bootindex=1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.c.Args()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Args (-want +got):\n%s", diff)
			}
			for _, a := range got {
				if strings.Contains(a, "kvm") {
					t.Errorf("argument %q: never KVM", a)
				}
			}
		})
	}
}

func replace(s []string, old, new string) []string {
	out := append([]string(nil), s...)
	for i, v := range out {
		if v == old {
			out[i] = new
			return out
		}
	}
	return out
}

// fakeConsole is a stand-in emulator for the harness's own console
// handling: it prints lines (with the serial port's CRLF), an unfinished
// prompt, answers one line of input, and exits with the status given as
// its last argument.
const fakeConsole = `#!/bin/sh
printf 'booting\r\n'
printf 'bellbuild: node=a profile=p changes=1 errors=0\r\n'
printf 'second: 2\r\n'
printf 'prompt# '
read line
printf 'got: %s\r\n' "$line"
for a; do last=$a; done
exit $last
`

func fakeVM(t *testing.T, status string) *VM {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "fake-qemu")
	if err := os.WriteFile(bin, []byte(fakeConsole), 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "console.log")
	vm, err := Start(context.Background(), Config{Binary: bin, LogFile: log, Extra: []string{status}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm
}

func TestConsole(t *testing.T) {
	vm := fakeVM(t, "0")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := vm.WaitFor(ctx, regexp.MustCompile(`^bellbuild: node=(\S+) .* errors=(\d+)$`))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"bellbuild: node=a profile=p changes=1 errors=0", "a", "0"}, m); diff != "" {
		t.Errorf("match (-want +got):\n%s", diff)
	}
	// Matches continue after the previous one: "booting" is behind us.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = vm.WaitFor(short, regexp.MustCompile(`booting`))
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitFor(booting) after it was passed: err = %v, want a deadline", err)
	}
	// Once the prompt is there, WaitForLine still does not see it: its
	// line is not finished.
	for !strings.Contains(vm.Console(), "prompt# ") {
		select {
		case <-ctx.Done():
			t.Fatal("no prompt")
		case <-time.After(10 * time.Millisecond):
		}
	}
	short, cancelShort = context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = vm.WaitForLine(short, regexp.MustCompile(`prompt# `))
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitForLine(prompt) on an unfinished line: err = %v, want a deadline", err)
	}
	if err := vm.Send("hello\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitForLine(ctx, regexp.MustCompile(`^prompt# got: hello$`)); err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(ctx); err != nil {
		t.Errorf("clean exit: %v", err)
	}
	// An unfinished line (a prompt) matches WaitFor.
	vm2 := fakeVM(t, "0")
	if err := vm2.Expect("prompt# ", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	vm2.Send("x\n")
	if !strings.Contains(vm.Console(), "second: 2\nprompt# got: hello\n") {
		t.Errorf("console without CRs: %q", vm.Console())
	}
}

func TestConsoleExit(t *testing.T) {
	vm := fakeVM(t, "3")
	vm.Send("x\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := vm.WaitFor(ctx, regexp.MustCompile(`never printed`))
	if !errors.Is(err, ErrExited) {
		t.Fatalf("err = %v, want ErrExited", err)
	}
	select {
	case <-vm.Exited():
	default:
		t.Fatal("Exited not closed after ErrExited")
	}
	if vm.ExitErr() == nil {
		t.Error("exit status 3 reported as success")
	}
	// Output that arrived before the exit is still searchable.
	if err := vm.Expect("got: x", time.Second); err != nil {
		t.Errorf("output before the exit: %v", err)
	}
}

func TestCloseKills(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "fake-qemu")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho up\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	vm, err := Start(context.Background(), Config{Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Expect("up", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := vm.cmd.Process.Pid
	vm.Close()
	vm.Close() // twice is fine
	select {
	case <-vm.Exited():
	default:
		t.Fatal("Close returned with the process running")
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
		if data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat")); !strings.Contains(string(data), ") Z") {
			t.Errorf("process %d still exists after Close", pid)
		}
	}
}

func TestVisible(t *testing.T) {
	for in, want := range map[string]string{
		"plain": "plain",
		"[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.": "[  OK  ] Reached target multi-user.target - Multi-User System.",
		"\x1b[?2004lgot: 41":  "got: 41",
		"\x1b[Kerased\x1bMup": "erasedup",
	} {
		if got := visible(in); got != want {
			t.Errorf("visible(%q) = %q, want %q", in, got, want)
		}
	}
}
