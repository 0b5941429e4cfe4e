package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/build"
)

func init() {
	register(&command{
		name:    "image",
		summary: "bake a profile's boot artifacts: kernel, initramfs with the applier, manifest",
		usage:   "PROFILE [-C SITE [--env ENV]] [-o OUT] [--node NAME ...] [--source-date-epoch N] [--applier PATH] [--applier-arm64 PATH]",
		help: `image bakes PROFILE into OUT/PROFILE/ (OUT/ENV/PROFILE/ for environment
ENV of a site with environments):

  vmlinuz             the kernel (kernel.path, or the stage's /boot)
  initramfs.cpio.zst  the stage with the kernel modules the boot needs, the
                      applier (this bellbuild binary, static) as /init, and
                      the configuration of every node of the profile
  manifest.json       the profile chain, the environment, the site's git
                      commit (with dirty: true and the changed files when
                      the work tree differs from it), every input with its
                      sha256 (the site's files as site:PATH, relative to
                      the site, so another checkout of it gives the same
                      manifest), every artifact with its sha256 and size,
                      the kernel command line, the source date
  rootfs.tar          the whole tree, when the profile lists outputs: [tar]

With a site PKI, each node's configuration carries its certificates
(issued from the private directory: --private, $BELLBUILD_PRIVATE, else
SITE/private), never a private key: an image, an ISO or a disk made for
many machines holds no secret, and the credentials are pending until
their keys come ('bellbuild config write' puts one node's on its disk).
Nor does it hold a secret value of the site ("!secret NAME", or a
password hash or private file written inline): each node's configuration
names them, and its applier holds what needs them (pending=N) until a
configuration with their values comes (a config volume, enrolment).

At boot, /init picks the machine's node (bellbuild.node= on the kernel
command line, else its MAC, else the profile's defaults), applies it, prints
"bellbuild: node=NAME profile=PROFILE changes=N errors=M" on the console and
hands over to the stage's init.

The initramfs is three concatenated segments: the stage (cached by content
under $BELLBUILD_CACHE, default ~/.cache/bellbuild), the applier (cached
too), and the configuration, so changing a profile's conf or adding a node
recompresses only the last, small one. After a bake, the least recently
used cached segments beyond --cache-limit are removed. Same inputs and
source date give byte-identical artifacts; the output directory is replaced
atomically. A re-bake with the same stage does not copy it (100 MB and
more): with the cache to itself, it takes the cached stage's file over,
appends the rest, and gives the cache back the initramfs it replaced,
cut to the stage; while another bake uses the cache, it keeps the
replaced initramfs in OUT/.PROFILE.reuse/ (delete it at will) for the
next bake to extend. An initramfs something else still has open or
linked is never cut.

Stages: {busybox: {}} (from the host's busybox-static), {tarball: FILE},
{oci: DIR}, {dir: DIR}, {debootstrap: {...}} (needs root; cached), and
{profile: NAME} (another profile's baked tree).

Architectures: a profile says arch: amd64 (the default) or arch: arm64,
inherited like the stage; manifest.json records it. For an arm64 image
on an x86-64 build host:

  - the applier is bellbuild for arm64 (static): --applier-arm64 PATH,
    else $BELLBUILD_BIN_ARM64, else cross-built from the source checkout
    (GOARCH=arm64 CGO_ENABLED=0 go build -trimpath, cached by content);
  - {busybox: {}} is Debian's busybox-static:arm64, and kernel: {package:
    linux-image-arm64} Debian's arm64 kernel with its modules, and the
    media's boot loader systemd-boot-efi:arm64 (BOOTAA64.EFI): each fetched
    with apt-get download into the cache and unpacked, never installed
    (needs 'dpkg --add-architecture arm64 && apt-get update', which make
    deps does; busybox's applet list is read through qemu-aarch64-static,
    package qemu-user-static);
  - {oci: DIR} takes the index's linux/arm64 manifest;
  - {debootstrap: {...}} runs debootstrap --arch=arm64, whose second stage
    runs arm64 programs through qemu-user's binfmt_misc handler: install
    qemu-user-static and binfmt-support, and enable it (update-binfmts
    --enable qemu-aarch64);
  - the ISO boots under UEFI only (no ISOLINUX).

A kernel, stage or applier built for another architecture than the
profile's is refused, naming which part is which.

Example:
  bellbuild image demo -o out
  bellbuild image k8s-worker -C examples/fleet -o out --node rack1-07
  bellbuild run demo -o out --node demo-2`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var site siteFlags
			site.register(fs)
			var private string
			registerPrivate(fs, &private)
			var o build.Options
			fs.StringVar(&o.OutDir, "o", "out", "output `DIR` (artifacts go to DIR/PROFILE)")
			fs.Func("node", "bake only inventory node `NAME` (repeatable; default: every node of the profile)", func(s string) error {
				o.Nodes = append(o.Nodes, s)
				return nil
			})
			var epoch sourceDateFlag
			fs.Var(&epoch, "source-date-epoch", "file time stamps, in `SECONDS` since 1970 (default $SOURCE_DATE_EPOCH, else a fixed date)")
			fs.StringVar(&o.Applier, "applier", "", "static bellbuild `PATH` to embed in images of this machine's architecture (default $BELLBUILD_BIN, else this binary)")
			fs.Func("applier-arm64", "static bellbuild for arm64 `PATH` to embed in arm64 images (default $BELLBUILD_BIN_ARM64, else cross-built from the source checkout)", func(p string) error {
				if o.Appliers == nil {
					o.Appliers = map[string]string{}
				}
				o.Appliers["arm64"] = p
				return nil
			})
			fs.StringVar(&o.CacheDir, "cache", "", "cache `DIR` (default $BELLBUILD_CACHE, else ~/.cache/bellbuild)")
			fs.Func("cache-limit", "after the bake, drop the least recently used cached segments beyond `SIZE` (e.g. 20G, 500M; 0: no limit; default 8G)", func(v string) error {
				n, err := parseSize(v)
				if err != nil {
					return err
				}
				o.CacheLimit = n
				if n == 0 {
					o.CacheLimit = -1
				}
				return nil
			})
			return func(ctx context.Context, args []string) error {
				args, err := positional(fs, args)
				if err != nil {
					return err
				}
				if len(args) != 1 {
					return errors.New("want exactly one PROFILE (see 'bellbuild help image')")
				}
				s, err := site.load()
				if err != nil {
					return printSiteErrors(os.Stderr, err)
				}
				spec, err := s.Image(args[0])
				if err != nil {
					return printSiteErrors(os.Stderr, err)
				}
				spec.Revision = siteRevision(ctx, site.dir)
				o.OutDir = envDir(o.OutDir, s)
				if err := certify(ctx, s, private, bundleNodes(spec.Bundle, o.Nodes), publicOnly, true); err != nil {
					return err
				}
				if o.SourceDateEpoch, err = epoch.date(); err != nil {
					return err
				}
				o.Site = s
				if isTerminal(os.Stderr) {
					o.Progress = os.Stderr
				}
				m, err := build.Image(ctx, spec, o)
				if err != nil {
					return err
				}
				return printBake(os.Stdout, m)
			}
		},
	})
}

// positional parses flags that follow the first positional argument too
// ("image demo -o out"), and returns the positional arguments.
func positional(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		pos = append(pos, args[0])
		if err := fs.Parse(args[1:]); err != nil {
			return nil, exitError{2}
		}
		args = fs.Args()
	}
	return pos, nil
}

func printBake(w io.Writer, m *build.Manifest) error {
	for _, a := range m.Artifacts {
		if _, err := fmt.Fprintf(w, "%s/%s\t%d\tsha256:%s\n", m.Stats.Dir, a.Name, a.Size, a.SHA256); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "cmdline: %s\n", m.Cmdline)
	return err
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// parseSize reads a byte count with an optional binary suffix: 512, 500K,
// 500M, 20G, 1T.
func parseSize(v string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSpace(v)
	if num != "" {
		switch strings.ToUpper(num[len(num)-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult > 1 {
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: want a number of bytes, optionally with K, M, G or T", v)
	}
	return n * mult, nil
}
