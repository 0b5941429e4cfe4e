package build

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/bellbuild/bellbuild/build/debpkg"
	"github.com/bellbuild/bellbuild/images/arch"
	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fstree"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// arm64Debs keeps the Debian packages the arm64 tests fetch (the kernel
// package is 60 MB) for every test of a run and between runs.
const arm64Debs = "/var/cache/bellbuild-test/debs"

// needARM64 skips a test that bakes for arm64 when the host cannot:
// apt knows no arm64 packages (make deps adds the architecture), or
// qemu-user is missing (a busybox stage lists its applets through it).
func needARM64(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("apt-cache", "show", "--no-all-versions", "busybox-static:arm64").Output(); err != nil || len(out) == 0 {
		testtool.Skipf(t, "apt knows no arm64 packages: dpkg --add-architecture arm64 && apt-get update (make deps does it): %v", err)
	}
	testtool.LookPath(t, "qemu-aarch64-static", "qemu-user-static")
	testtool.LookPath(t, "dpkg-deb", "dpkg")
}

// arm64Options is testOptions whose cache fetches Debian packages into
// arm64Debs, with bellbuild cross-built for arm64 as the arm64 applier.
func arm64Options(t testing.TB) Options {
	t.Helper()
	o := testOptions(t)
	if err := os.MkdirAll(arm64Debs, 0o755); err != nil {
		testtool.Skipf(t, "no shared package cache: %v", err)
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(arm64Debs, filepath.Join(o.CacheDir, "debs")); err != nil {
		t.Fatal(err)
	}
	o.Appliers = map[string]string{arch.ARM64: testtool.BinaryArch(t, arch.ARM64)}
	return o
}

// fetchARM64 fetches an arm64 package into the shared cache.
func fetchARM64(t testing.TB, name string) *debpkg.Package {
	t.Helper()
	p, err := (&debpkg.Cache{Dir: arm64Debs}).Fetch(context.Background(), name, arch.ARM64)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestARM64 bakes the test site's arm64 profile (busybox-static:arm64,
// linux-image-arm64, outputs initramfs, raw and iso) once, checks what
// each artifact holds, bakes it again from a cold segment cache for byte
// identity, and boots the disk and the ISO under AAVMF: the disk twice,
// its config volume rewritten between the boots as `bellbuild config
// write` does.
func TestARM64(t *testing.T) {
	needARM64(t)
	needMediaTools(t)
	s := testSite(t)
	sp := spec(t, s, "arm64")
	o := arm64Options(t)
	o.Site = s
	m, err := Image(context.Background(), sp, o)
	if err != nil {
		t.Fatal(err)
	}
	dir := m.Stats.Dir

	t.Run("artifacts", func(t *testing.T) {
		if m.Arch != arch.ARM64 {
			t.Errorf("manifest arch %q, want arm64", m.Arch)
		}
		var pkgs []string
		for _, in := range m.Inputs {
			if in.Name == "stage" && !strings.HasPrefix(in.Path, "deb:busybox-static=") {
				t.Errorf("stage input %+v, want busybox from busybox-static", in)
			}
			if in.Kind == "deb" {
				name, _, _ := strings.Cut(in.Path, "=")
				pkgs = append(pkgs, name)
			}
			if in.Name == "applier" && in.SHA256 == "" {
				t.Errorf("the applier's input has no sha256: %+v", in)
			}
			if strings.Contains(in.Path, o.CacheDir) || strings.Contains(in.Path, arm64Debs) {
				t.Errorf("input %+v names the cache", in)
			}
		}
		for _, want := range []string{"linux-image-arm64", SystemdBootPackage} {
			if !slices.Contains(pkgs, want) {
				t.Errorf("manifest inputs lack package %s: %v", want, pkgs)
			}
		}
		if got, format, err := arch.KernelFile(filepath.Join(dir, KernelFile)); err != nil || got != arch.ARM64 {
			t.Errorf("vmlinuz: %s %s %v, want an arm64 kernel", got, format, err)
		}
		tree := unpack(t, filepath.Join(dir, InitramfsFile))
		for _, p := range []string{applierPath, "bin/busybox"} {
			e := tree.Get(p)
			if e == nil {
				t.Fatalf("initramfs lacks /%s", p)
			}
			if got, err := arch.ELF(bytes.NewReader(readAll(t, e.Data))); err != nil || got != arch.ARM64 {
				t.Errorf("/%s: %s %v, want an arm64 ELF", p, got, err)
			}
		}
		if inittab := string(readAll(t, tree.Get("etc/inittab").Data)); !strings.Contains(inittab, "ttyAMA0::respawn:") {
			t.Errorf("inittab has no shell on ttyAMA0:\n%s", inittab)
		}
		mods := base(t, tree, "lib/modules/"+m.KernelVersion+"/kernel/drivers/net")
		if !slices.Contains(mods, "virtio_net.ko") {
			t.Errorf("no virtio_net.ko in the initramfs: %v", mods)
		}
		if e := tree.Get("etc/bellbuild/modules"); e == nil || strings.Contains(string(readAll(t, e.Data)), "e1000") {
			t.Error("the arm64 image's module list is missing or names x86 drivers")
		}

		img := filepath.Join(dir, DiskFile)
		if out, err := exec.Command("sgdisk", "-v", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
			t.Errorf("sgdisk -v: %v\n%s", err, out)
		}
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		table, err := gpt.Read(f, 512, 512)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := table.Partitions[1]; got.Name != disk.SlotA || got.Type != gpt.LinuxRootArm64 {
			t.Errorf("partition 2: %s type %s, want %s type %s (root slot a, arm64)", got.Name, got.Type, disk.SlotA, gpt.LinuxRootArm64)
		}
		parts := partitions(t, img)
		loader := mtoolsType(t, img, parts[disk.ESPName][0], "EFI/BOOT/BOOTAA64.EFI")
		want := mustRead(t, filepath.Join(fetchARM64(t, SystemdBootPackage).Root, "usr/lib/systemd/boot/efi/systemd-bootaa64.efi"))
		if loader != string(want) {
			t.Error("the ESP's BOOTAA64.EFI is not Debian's arm64 systemd-boot")
		}
		iso := mustRead(t, filepath.Join(dir, ISOFile))
		if bytes.Contains(iso, []byte("ISOLINUX")) {
			t.Error("the arm64 ISO carries ISOLINUX")
		}
		if cat := iso[19*2048:]; cat[0] != 1 || cat[1] != 0xEF {
			t.Errorf("El Torito validation entry: header %d platform %#x, want 1 and 0xEF (UEFI)", cat[0], cat[1])
		}
	})

	t.Run("reproducible", func(t *testing.T) {
		o2 := arm64Options(t)
		o2.Site = s
		o2.Appliers = o.Appliers
		m2, err := Image(context.Background(), sp, o2)
		if err != nil {
			t.Fatal(err)
		}
		if m2.Stats.StageCached || m2.Stats.ApplierCached {
			t.Fatal("the second bake took segments from a cache: it was to start cold")
		}
		if !slices.Equal(m.Artifacts, m2.Artifacts) {
			t.Errorf("two bakes differ:\n%+v\n%+v", m.Artifacts, m2.Artifacts)
		}
		if a, b := mustRead(t, filepath.Join(dir, ManifestFile)), mustRead(t, filepath.Join(m2.Stats.Dir, ManifestFile)); !bytes.Equal(a, b) {
			t.Errorf("manifests differ:\n%s\n%s", a, b)
		}
	})

	t.Run("boots", func(t *testing.T) {
		testtool.SkipVMArch(t, testvm.ARM64)
		t.Run("disk then config write", func(t *testing.T) {
			t.Parallel()
			img := filepath.Join(t.TempDir(), DiskFile)
			copyFile(t, filepath.Join(dir, DiskFile), img, 0o600)
			node := sp.Bundle.Default
			node.Node, node.Profile = "a1", "arm64"
			boot := func(t *testing.T, want string) {
				vm := testtool.NewVM(t, testvm.Config{Arch: testvm.ARM64, Firmware: testvm.AAVMF, Drives: []testvm.Drive{{Path: img}}})
				waitLong(t, vm, `^bellbuild: root PARTLABEL=root-a, writable layer tmpfs, configuration /run/bellbuild/config/bellbuild/`)
				waitLong(t, vm, `check: swappiness=`+want+`$`)
				waitLong(t, vm, `^bellbuild: node=\S+ profile=arm64 slot=a image=[0-9a-f]{12} changes=[1-9]\d* errors=0$`)
				waitLong(t, vm, `^bellbuild: busybox init: shell on ttyAMA0$`)
				waitLong(t, vm, `^bellbuild:/# `)
				vm.Send("sync; poweroff -f\n")
				ctx, cancel := context.WithTimeout(context.Background(), mediaBootTimeout)
				defer cancel()
				if err := vm.VM.Wait(ctx); err != nil {
					t.Fatalf("after poweroff -f: %v", err)
				}
			}
			t.Run("as baked", func(t *testing.T) { boot(t, "23") })
			if t.Failed() {
				return
			}
			node.Conf.Sysctl = map[string]string{"vm.swappiness": "47"}
			writeNode(t, img, &node)
			t.Run("after config write", func(t *testing.T) { boot(t, "47") })
		})
		t.Run("ISO as a CD", func(t *testing.T) {
			t.Parallel()
			vm := testtool.NewVM(t, testvm.Config{Arch: testvm.ARM64, Firmware: testvm.AAVMF,
				Drives: []testvm.Drive{{Path: filepath.Join(dir, ISOFile), Media: "cdrom", ReadOnly: true}}})
			waitLong(t, vm, `^bellbuild: root LABEL=BELLBUILD:/bellbuild/root.squashfs, `)
			waitLong(t, vm, `check: swappiness=23$`)
			waitLong(t, vm, `^bellbuild: node=\S+ profile=arm64 changes=[1-9]\d* errors=0$`)
		})
	})
}

// TestWrongArch: a bake whose applier, kernel or stage is built for
// another architecture than the profile's is refused, the error naming
// the part and both architectures, and nothing is written.
func TestWrongArch(t *testing.T) {
	needHost(t)
	needARM64(t)
	armKernel, err := filepath.Glob(filepath.Join(fetchARM64(t, "linux-image-arm64").Root, "boot/vmlinuz-*"))
	if err != nil || len(armKernel) == 0 {
		// The metapackage has no kernel: take the one it depends on.
		p := fetchARM64(t, "linux-image-arm64")
		armKernel, _ = filepath.Glob(filepath.Join(fetchARM64(t, debpkg.DependsOn(p.Depends, "linux-image-")[0]).Root, "boot/vmlinuz-*"))
	}
	if len(armKernel) == 0 {
		t.Fatal("no arm64 kernel in linux-image-arm64's dependency")
	}
	armBusybox := filepath.Join(fetchARM64(t, BusyboxPackage).Root, "bin/busybox")
	hostKernelFile, err := filepath.EvalSymlinks(testKernel)
	if err != nil {
		t.Fatal(err)
	}
	// A stage of the other architecture: its busybox as /sbin/init.
	stageDir := func(t *testing.T, busybox string) string {
		d := t.TempDir()
		for _, p := range []string{"bin", "sbin"} {
			os.MkdirAll(filepath.Join(d, p), 0o755)
		}
		copyFile(t, busybox, filepath.Join(d, "bin/busybox"), 0o755)
		if err := os.Symlink("/bin/busybox", filepath.Join(d, "sbin/init")); err != nil {
			t.Fatal(err)
		}
		return d
	}
	amd64Applier, arm64Applier := testtool.Binary(t), testtool.BinaryArch(t, arch.ARM64)
	busybox := profiles.Stage{Busybox: &profiles.BusyboxStage{}}
	tests := []struct {
		name     string
		arch     string
		stage    func(t *testing.T) profiles.Stage
		kernel   profiles.Kernel
		appliers map[string]string
		applier  string
		want     string
	}{{
		name: "amd64 applier in an arm64 image", arch: "arm64",
		kernel: profiles.Kernel{Package: "linux-image-arm64"}, appliers: map[string]string{"arm64": amd64Applier},
		want: "applier " + amd64Applier + " (--applier-arm64) is built for amd64 (x86-64), but profile p is arch: arm64",
	}, {
		name: "arm64 applier in an amd64 image", arch: "amd64",
		kernel: profiles.Kernel{Path: testKernel}, applier: arm64Applier,
		want: "applier " + arm64Applier + " (--applier) is built for arm64 (aarch64), but profile p is arch: amd64",
	}, {
		name: "x86 kernel in an arm64 image", arch: "arm64",
		kernel: profiles.Kernel{Path: testKernel},
		want:   "kernel " + hostKernelFile + " (x86 bzImage) is built for amd64 (x86-64), but profile p is arch: arm64",
	}, {
		name: "arm64 kernel in an amd64 image", arch: "amd64",
		kernel: profiles.Kernel{Path: armKernel[0]},
		want:   "kernel " + armKernel[0] + " (arm64 Image) is built for arm64 (aarch64), but profile p is arch: amd64",
	}, {
		name: "arm64 stage in an amd64 image", arch: "amd64",
		stage:  func(t *testing.T) profiles.Stage { return profiles.Stage{Dir: stageDir(t, armBusybox)} },
		kernel: profiles.Kernel{Path: testKernel},
		want:   "stage /sbin/init (→ /bin/busybox) is built for arm64 (aarch64), but profile p is arch: amd64",
	}, {
		name: "amd64 stage in an arm64 image", arch: "arm64",
		stage:  func(t *testing.T) profiles.Stage { return profiles.Stage{Dir: stageDir(t, "/bin/busybox")} },
		kernel: profiles.Kernel{Package: "linux-image-arm64"},
		want:   "stage /sbin/init (→ /bin/busybox) is built for amd64 (x86-64), but profile p is arch: arm64",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := busybox
			if tc.stage != nil {
				st = tc.stage(t)
			}
			sp := &profiles.ImageSpec{Profile: "p", Chain: []string{"p"}, Arch: tc.arch, Stage: st, Kernel: tc.kernel, Outputs: []string{"initramfs"}}
			o := arm64Options(t)
			o.Appliers = tc.appliers
			if tc.applier != "" {
				o.Applier = tc.applier
			}
			if tc.appliers == nil && tc.arch == "arm64" {
				o.Appliers = map[string]string{"arm64": arm64Applier}
			}
			_, err := Image(context.Background(), sp, o)
			if !errors.Is(err, ErrWrongArch) {
				t.Fatalf("error %v, want ErrWrongArch", err)
			}
			if want := "profile p: " + tc.want + ": wrong architecture"; err.Error() != want {
				t.Errorf("error\n%s\nwant\n%s", err, want)
			}
			if _, err := os.Stat(filepath.Join(o.OutDir, "p")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused bake wrote %s/p", o.OutDir)
			}
		})
	}
}

// TestStageArchProbe: the stage's architecture is read from /sbin/init
// through its links, else /bin/busybox, the systemd binary or /bin/sh; a
// stage with none of them (or only scripts) is not judged.
func TestStageArchProbe(t *testing.T) {
	elf := func(machine byte) fstree.Content {
		h := make([]byte, 64)
		copy(h, "\x7fELF\x02\x01\x01")
		h[18] = machine
		return fstree.Bytes(h)
	}
	tests := []struct {
		name string
		add  func(t *fstree.Tree)
		want string // "" accepted
	}{
		{"init through two links", func(t *fstree.Tree) {
			t.Add(fstree.Entry{Path: "usr/lib/systemd/systemd", Type: fstree.Regular, Mode: 0o755, Size: 64, Data: elf(183)})
			t.Add(fstree.Entry{Path: "lib", Type: fstree.Symlink, Mode: 0o777, Target: "usr/lib"})
			t.Add(fstree.Entry{Path: "sbin/init", Type: fstree.Symlink, Mode: 0o777, Target: "../lib/systemd/systemd"})
		}, "stage /sbin/init (→ /usr/lib/systemd/systemd) is built for arm64 (aarch64), but profile p is arch: amd64: wrong architecture"},
		{"a script init, an x86 shell", func(t *fstree.Tree) {
			t.AddFile("sbin/init", []byte("#!/bin/sh\nexec /bin/sh\n"), 0o755, 0, 0)
			t.Add(fstree.Entry{Path: "bin/sh", Type: fstree.Regular, Mode: 0o755, Size: 64, Data: elf(62)})
		}, ""},
		{"no programs", func(t *fstree.Tree) { t.AddFile("etc/motd", []byte("hi\n"), 0o644, 0, 0) }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := fstree.New()
			tc.add(tr)
			err := checkStageArch(tr, "amd64", "p")
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDebootstrapForeign: a debootstrap stage for arm64 runs debootstrap
// --arch=arm64, and refuses to start (before anything is downloaded)
// when the kernel cannot run arm64 programs for the second stage.
func TestDebootstrapForeign(t *testing.T) {
	d := &profiles.Debootstrap{Suite: "bookworm", Variant: "minbase", Include: []string{"b", "a"}}
	if got, want := strings.Join(debootstrapArgs(d, "arm64", "/r"), " "), "--arch=arm64 --variant=minbase --include=a,b bookworm /r"; got != want {
		t.Errorf("arm64 args %q, want %q", got, want)
	}
	if got, want := strings.Join(debootstrapArgs(d, "amd64", "/r"), " "), "--variant=minbase --include=a,b bookworm /r"; got != want {
		t.Errorf("amd64 args %q, want %q", got, want)
	}
	fake := t.TempDir()
	old := binfmtDir
	binfmtDir = fake
	defer func() { binfmtDir = old }()
	for _, tc := range []struct {
		name, status, handler, want string
	}{
		{"not mounted", "", "", fake + " is not mounted"},
		{"not registered", "enabled\n", "", "it is not registered"},
		{"disabled", "enabled\n", "disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n", "it is disabled"},
		{"enabled", "enabled\n", "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(filepath.Join(fake, "status"))
			os.Remove(filepath.Join(fake, "qemu-aarch64"))
			if tc.status != "" {
				os.WriteFile(filepath.Join(fake, "status"), []byte(tc.status), 0o644)
			}
			if tc.handler != "" {
				os.WriteFile(filepath.Join(fake, "qemu-aarch64"), []byte(tc.handler), 0o644)
			}
			err := checkBinfmt("arm64")
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrNoBinfmt) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "update-binfmts --enable qemu-aarch64") {
				t.Errorf("error %v, want ErrNoBinfmt saying %q and how to enable it", err, tc.want)
			}
		})
	}
	// Through a bake (on a kernel that cannot run arm64 programs, faked):
	// refused before debootstrap runs.
	os.Remove(filepath.Join(fake, "status"))
	os.Remove(filepath.Join(fake, "qemu-aarch64"))
	testtool.Root(t, "a debootstrap stage needs root")
	sp := &profiles.ImageSpec{Profile: "p", Chain: []string{"p"}, Arch: "arm64", Stage: profiles.Stage{Debootstrap: d},
		Kernel: profiles.Kernel{From: "stage"}, Outputs: []string{"initramfs"}}
	o := testOptions(t)
	if _, err := exec.LookPath("debootstrap"); err != nil {
		testtool.Skipf(t, "debootstrap not installed")
	}
	_, err := Image(context.Background(), sp, o)
	if !errors.Is(err, ErrNoBinfmt) {
		t.Fatalf("bake: %v, want ErrNoBinfmt", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(o.CacheDir, "debootstrap")); len(ents) > 1 {
		t.Errorf("the refused bake left a debootstrap root: %v", ents)
	}
}

// multiArchOCI writes an OCI layout whose index lists one manifest per
// architecture, each of one layer with a file of the given content at
// sbin/init.
func multiArchOCI(t *testing.T, inits map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	blob := func(data []byte, media string) map[string]any {
		sum := sha256.Sum256(data)
		p := filepath.Join(dir, "blobs", "sha256", hex.EncodeToString(sum[:]))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return map[string]any{"digest": "sha256:" + hex.EncodeToString(sum[:]), "size": len(data), "mediaType": media}
	}
	var manifests []any
	for _, a := range []string{"amd64", "arm64"} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "sbin/", Typeflag: tar.TypeDir, Mode: 0o755})
		tw.WriteHeader(&tar.Header{Name: "sbin/init", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(inits[a]))})
		tw.Write(inits[a])
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		layer := blob(buf.Bytes(), "application/vnd.oci.image.layer.v1.tar")
		cfg := blob([]byte(`{"architecture":"`+a+`","os":"linux"}`), "application/vnd.oci.image.config.v1+json")
		m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": []any{layer}})
		d := blob(m, "application/vnd.oci.image.manifest.v1+json")
		d["platform"] = map[string]string{"os": "linux", "architecture": a}
		manifests = append(manifests, d)
	}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestOCIStageArch: one multi-platform OCI layout baked for each
// architecture gives each its own manifest's files (the stage check
// passes: the index's arm64 manifest was chosen for arm64).
func TestOCIStageArch(t *testing.T) {
	needHost(t)
	needARM64(t)
	inits := map[string][]byte{
		"amd64": mustRead(t, "/bin/busybox"),
		"arm64": mustRead(t, filepath.Join(fetchARM64(t, BusyboxPackage).Root, "bin/busybox")),
	}
	dir := multiArchOCI(t, inits)
	for _, tc := range []struct {
		arch   string
		kernel profiles.Kernel
	}{
		{"amd64", profiles.Kernel{Path: testKernel}},
		{"arm64", profiles.Kernel{Package: "linux-image-arm64"}},
	} {
		t.Run(tc.arch, func(t *testing.T) {
			sp := &profiles.ImageSpec{Profile: "oci", Chain: []string{"oci"}, Arch: tc.arch, Stage: profiles.Stage{OCI: dir}, Kernel: tc.kernel, Outputs: []string{"initramfs"}}
			o := arm64Options(t)
			m, err := Image(context.Background(), sp, o)
			if err != nil {
				t.Fatal(err)
			}
			tree := unpack(t, filepath.Join(m.Stats.Dir, InitramfsFile))
			e := tree.Get("sbin/init")
			if e == nil {
				t.Fatal("no /sbin/init")
			}
			if got := readAll(t, e.Data); !bytes.Equal(got, inits[tc.arch]) {
				t.Errorf("/sbin/init is not the %s manifest's", tc.arch)
			}
		})
	}
}
