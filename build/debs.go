package build

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/build/debpkg"
	"github.com/bellbuild/bellbuild/images/arch"
	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/images/kmod"
	"github.com/bellbuild/bellbuild/images/layout"
)

// Debian packages a bake fetches for an image of another architecture
// than the build host's (package debpkg: downloaded and unpacked into
// the cache, never installed).
const (
	BusyboxPackage     = "busybox-static"   // /bin/busybox
	SystemdBootPackage = "systemd-boot-efi" // the UEFI boot loader of disk.raw and image.iso
)

// debs is the bake's Debian package cache, under the cache directory.
func (b *baker) debs() *debpkg.Cache {
	return &debpkg.Cache{Dir: filepath.Join(b.opts.CacheDir, "debs"), Log: b.log}
}

// fetch fetches a package for architecture a and records it as an input.
func (b *baker) fetch(ctx context.Context, name, a string) (*debpkg.Package, Input, error) {
	p, err := b.debs().Fetch(ctx, name, a)
	if err != nil {
		return nil, Input{}, err
	}
	return p, Input{Name: "package", Kind: "deb", Path: p.ID(), SHA256: p.SHA256}, nil
}

// packageKernel is kernel: {package: NAME}: the Debian kernel package NAME
// for architecture a, fetched and unpacked. A metapackage
// (linux-image-arm64) is followed to the versioned package it depends on.
// The package's modules have no modules.dep (its postinst would run
// depmod): one is made from the modules' own dependency lists and kept
// in the unpacked package.
func (b *baker) packageKernel(ctx context.Context, name, a string) (*kernel, []Input, error) {
	var inputs []Input
	for hop := 0; ; hop++ {
		p, in, err := b.fetch(ctx, name, a)
		if err != nil {
			return nil, nil, fmt.Errorf("kernel: %w", err)
		}
		inputs = append(inputs, in)
		vmlinuz, _ := filepath.Glob(filepath.Join(p.Root, "boot", "vmlinuz-*"))
		if len(vmlinuz) == 0 {
			deps := debpkg.DependsOn(p.Depends, "linux-image-")
			if len(deps) == 0 || hop >= 2 {
				return nil, nil, fmt.Errorf("kernel: package %s has no /boot/vmlinuz-* and depends on no linux-image-* package: %w", p.ID(), ErrNoKernel)
			}
			name = deps[0]
			continue
		}
		sort.Slice(vmlinuz, func(i, j int) bool { return kmod.VersionLess(vmlinuz[i], vmlinuz[j]) })
		file := vmlinuz[len(vmlinuz)-1]
		st, err := os.Stat(file)
		if err != nil {
			return nil, nil, fmt.Errorf("kernel: %w", err)
		}
		v := strings.TrimPrefix(filepath.Base(file), "vmlinuz-")
		mods := filepath.Join(p.Root, layout.ModulesDir(v))
		if err := ensureModulesDep(mods); err != nil {
			return nil, nil, fmt.Errorf("kernel %s: %w", p.ID(), err)
		}
		k := &kernel{file: file, size: st.Size(), version: v, modules: mods, display: "deb:" + p.ID() + ":/boot/" + filepath.Base(file)}
		return k, inputs, nil
	}
}

// ensureModulesDep writes dir/modules.dep (kmod.Depmod) when it is
// missing, whole or not at all.
func ensureModulesDep(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	dep, err := kmod.Depmod(dir)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, "modules.dep"), dep, 0o644)
}

// busyboxFor returns the static busybox for images of architecture a:
// Options.Busybox when set, the build host's for its own architecture,
// else Debian's busybox-static for a, fetched (its input is recorded when
// in is not nil).
func (b *baker) busyboxFor(ctx context.Context, a string) (string, *Input, error) {
	if b.opts.Busybox != "" || native(a) {
		bin := b.opts.Busybox
		for _, p := range BusyboxPaths {
			if _, err := os.Stat(p); bin == "" && err == nil {
				bin = p
			}
		}
		if bin == "" {
			return "", nil, fmt.Errorf("no busybox at %s (apt-get install busybox-static)", strings.Join(BusyboxPaths, " or "))
		}
		return bin, nil, nil
	}
	p, in, err := b.fetch(ctx, BusyboxPackage, a)
	if err != nil {
		return "", nil, err
	}
	return filepath.Join(p.Root, "bin", "busybox"), &in, nil
}

// efiNames are the UEFI names of each architecture: the removable-media
// loader path's suffix (BOOTX64.EFI) and systemd-boot's file name.
var efiNames = map[string]string{arch.AMD64: "x64", arch.ARM64: "aa64"}

// systemdBootFor returns systemd-boot for images of architecture a: the
// build host's (package systemd-boot-efi) for its own architecture, else
// Debian's systemd-boot-efi for a, fetched.
func (b *baker) systemdBootFor(ctx context.Context, a string) (string, *Input, error) {
	name := "systemd-boot" + efiNames[a] + ".efi"
	if native(a) {
		return filepath.Join("/usr/lib/systemd/boot/efi", name), nil, nil
	}
	p, in, err := b.fetch(ctx, SystemdBootPackage, a)
	if err != nil {
		return "", nil, err
	}
	return filepath.Join(p.Root, "usr/lib/systemd/boot/efi", name), &in, nil
}
