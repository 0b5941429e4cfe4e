package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/install"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
)

// ErrInstallRefused is InstallMain's error when the install cannot
// succeed by trying again (no disk matches, the disk is refused, the
// image is bad): the machine powers off rather than reinstall in a loop.
var ErrInstallRefused = errors.New("the install is refused")

// ErrInstalled is InstallMain's error when the install is done: the
// machine reboots, from its disk this time.
var ErrInstalled = errors.New("installed: rebooting from the disk")

// ErrInstallAgain is InstallMain's error when the install stopped for
// something that may pass (serve unreachable, the copy given up): the
// machine reboots after a pause and installs again.
var ErrInstallAgain = errors.New("the install stopped; installing again after a reboot")

// InstallMain is the init of a machine serve booted into the installer
// (bellbuild.install=1 on the command line, with bellbuild.serve= and
// bellbuild.net=):
//
//  1. load the image's kernel modules (disk and NIC drivers);
//  2. bring the boot NIC up with the address iPXE had;
//  3. install (package install): the disk chosen, disk.raw copied and
//     checked, the configuration volume with what a disk boot needs to
//     enrol (the enrolment endpoint, the NIC's settings), the partition
//     tables last, install-done told to serve.
//
// It returns ErrInstalled when the install is done (the machine then boots
// from its disk), an error wrapping ErrInstallRefused when trying again
// cannot help (the caller powers off), and one wrapping ErrInstallAgain
// when it may (the caller reboots after a pause, and the next boot
// installs again).
func InstallMain(ctx context.Context, cmdline string) error {
	var con io.Writer = os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		defer f.Close()
		con = f
	}
	printf := func(format string, args ...any) { fmt.Fprintf(con, "bellbuild: install: "+format+"\n", args...) }
	// 1. Modules.
	names, err := ReadModuleList("/" + layout.Modules)
	if err != nil {
		printf("error: %v", err)
	}
	for _, err := range LoadModules("/"+layout.ModulesDir(kernelRelease()), names) {
		printf("error: %v", err)
	}
	// 2. The network.
	serve, _ := Param(cmdline, layout.ServeParam)
	if serve == "" {
		return fmt.Errorf("%w: no %s= on the command line", ErrInstallRefused, layout.ServeParam)
	}
	v, ok := Param(cmdline, wire.ParamNet)
	if !ok {
		return fmt.Errorf("%w: no %s= on the command line", ErrInstallRefused, wire.ParamNet)
	}
	spec, err := ParseNetSpec(v)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInstallRefused, wire.ParamNet, err)
	}
	ifname, err := NetUp(spec, 10*time.Second)
	if err != nil {
		return fmt.Errorf("%w: the network: %v", ErrInstallAgain, err)
	}
	printf("%s up as %s, serve at %s", ifname, spec.IP, serve)
	// 3. Install.
	mounts, _ := os.ReadFile("/proc/mounts")
	node, _ := Param(cmdline, layout.NodeParam)
	_, err = install.Run(ctx, install.Options{Serve: serve, Node: node, Arch: runtime.GOARCH, Console: con,
		SysBlock: "/sys/block", DevDir: "/dev", Mounts: string(mounts), BootParams: DiskBootParams(cmdline)})
	switch {
	case err == nil:
		printf("rebooting from the disk")
		return ErrInstalled
	case errors.Is(err, install.ErrRefused), errors.Is(err, install.ErrNoDisk), errors.Is(err, install.ErrManifest), errors.Is(err, install.ErrTooSmall):
		return fmt.Errorf("%w: %v", ErrInstallRefused, err)
	}
	return fmt.Errorf("%w: %v", ErrInstallAgain, err)
}

// DiskBootParams are the parameters of an installer's command line that
// the installed disk's boots need as well (serve's URL, the enrolment
// endpoint, its CA's pin, the boot NIC's settings): the installer writes them to the
// configuration volume (layout.ConfigCmdline), the init adds them to the
// command line it reads.
func DiskBootParams(cmdline string) []string {
	var out []string
	for _, k := range []string{layout.ServeParam, wire.ParamURL, wire.ParamCA, wire.ParamNet} {
		if v, ok := Param(cmdline, k); ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}
