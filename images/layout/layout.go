// Package layout is where things live in a baked image, in one place: the
// bake (package build and the image writers) puts them there, and the init
// (package firstboot/boot, which is the same bellbuild binary running as
// /init) looks for them there. Before this package each side spelled the
// paths itself, and only a VM boot noticed when they disagreed.
//
// Paths are relative to the root they are in (no leading slash), as
// images/fstree and os.Root name them; prefix "/" for an absolute path in
// the running system.
package layout

// Inside the initramfs, and the root image of a disk or an ISO.
const (
	// Applier is the static bellbuild binary: the applier, and the init.
	Applier = "bellbuild/bellbuild"
	// Init is what the kernel runs from an initramfs: a symlink to
	// Applier.
	Init = "init"
	// Bundle is the bake's configuration (nodeconf.Bundle as JSON, mode
	// 0600: it holds password hashes): every node of the profile and
	// the profile's defaults.
	Bundle = "etc/bellbuild/bundle.json"
	// Modules lists the kernel modules the init loads before anything
	// else, one name per line (# comments), with their dependencies
	// from the image's modules.dep.
	Modules = "etc/bellbuild/modules"
	// Mke2fs is busybox, carried by a disk's small initramfs when the
	// disk has a data partition, for the init to format it (busybox runs
	// the applet its name says).
	Mke2fs = "bellbuild/mke2fs"
)

// ModulesDir is the directory of a kernel release's modules (modules.dep,
// modules.builtin and the module files) in an image.
func ModulesDir(release string) string { return "lib/modules/" + release }

// The configuration volume: a FAT filesystem (a disk's third partition,
// or a standalone image) that `bellbuild config write` rewrites on day 2.
const (
	// ConfigLabel is its filesystem label, by which the init finds it.
	ConfigLabel = "BELLCONF"
	// ConfigNode is one rendered node (nodeconf.Node as JSON) on the
	// volume; it wins over ConfigBundle.
	ConfigNode = "bellbuild/node.json"
	// ConfigBundle is the bake's bundle on the volume.
	ConfigBundle = "bellbuild/bundle.json"
	// ConfigCmdline holds kernel command line parameters (one line) that
	// the init adds to its own: what the installer's command line said
	// that the installed disk's boots need too (the enrolment endpoint,
	// the boot NIC's settings).
	ConfigCmdline = "bellbuild/cmdline"
	// ConfigMount is where the init mounts the volume (read-only) in the
	// booted system.
	ConfigMount = "run/bellbuild/config"
)

// Boot media: a GPT disk (disk.raw) and an ISO (image.iso).
const (
	// RootPartition is the GPT name of a disk's root partition (the
	// image as a squashfs).
	RootPartition = "bellroot"
	// DataPartition is the GPT name of a disk's optional data partition,
	// which holds the overlay's writable layer when there is one; the
	// init formats it (ext2, label DataPartition) on the first boot.
	DataPartition = "belldata"
	// ISOLabel is an ISO's volume ID, by which the init finds it.
	ISOLabel = "BELLBUILD"
	// ISORoot is the root image (a squashfs) as a file on the ISO.
	ISORoot = "bellbuild/root.squashfs"
	// ISOBundle is the bake's bundle as a file on the ISO.
	ISOBundle = ConfigBundle
)

// Kernel command line parameters the bake writes and the init reads.
const (
	// RootParam says where the root image is: PARTLABEL=NAME (a squashfs
	// partition) or LABEL=NAME:/FILE (a squashfs file on a volume).
	// Without it, the initramfs itself is the root.
	RootParam = "bellbuild.root"
	// ConfigParam says where the configuration volume is (LABEL=NAME).
	ConfigParam = "bellbuild.config"
	// RootWaitParam bounds, in seconds, the init's wait for the root.
	RootWaitParam = "bellbuild.rootwait"
)

// DiskRootArg, ISORootArg and ConfigArg are the arguments the bake adds to
// a disk's and an ISO's command line.
const (
	DiskRootArg = RootParam + "=PARTLABEL=" + RootPartition
	ISORootArg  = RootParam + "=LABEL=" + ISOLabel + ":/" + ISORoot
	ConfigArg   = ConfigParam + "=LABEL=" + ConfigLabel
)

// A disk's two root slots (A/B): the bake writes the image into slot a and
// leaves slot b empty; an upgrade writes the other slot than the running
// one, and the ESP holds one boot entry per slot (see Entry).
const (
	SlotA = "a"
	SlotB = "b"
	// ESPPartition is the GPT name of a disk's EFI System Partition, which
	// the init mounts to mark its entry good and the upgrader to write
	// the other slot's kernel, initramfs and entry.
	ESPPartition = "esp"
	// SlotParam names the slot a kernel booted from (a or b); ImageParam
	// the SHA-256 of that slot's root image (the manifest's root hash).
	SlotParam  = "bellbuild.slot"
	ImageParam = "bellbuild.image"
	// InstallParam (=1) makes the init run the installer instead of the
	// system; ServeParam is the URL of the serve that booted it.
	InstallParam = "bellbuild.install"
	ServeParam   = "bellbuild.serve"
	// NodeParam names the node a machine boots as (serve's scripts).
	NodeParam = "bellbuild.node"
	// DefaultTries is how many boots a new slot gets before systemd-boot
	// gives up on it (boot counting) and boots the other slot.
	DefaultTries = 3
)

// Slots are the root slots, in order.
var Slots = []string{SlotA, SlotB}

// OtherSlot is the slot that is not s.
func OtherSlot(s string) string {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// SlotPartition is the GPT name of slot s's root partition (root-a, root-b).
func SlotPartition(s string) string { return "root-" + s }

// SlotRootArg is the command line argument that makes the init mount slot
// s's root.
func SlotRootArg(s string) string { return RootParam + "=PARTLABEL=" + SlotPartition(s) }

// Where a slot's boot files are on the ESP.
func SlotKernel(s string) string { return "bellbuild/" + s + "/vmlinuz" }

// SlotInitrd: see SlotKernel.
func SlotInitrd(s string) string { return "bellbuild/" + s + "/initrd.img" }

// Boot loader files on the ESP (systemd-boot).
const (
	// EntriesDir holds the boot entries (Boot Loader Specification type 1).
	EntriesDir = "loader/entries"
	// LoaderConf is systemd-boot's configuration; it boots the first entry
	// matching EntryPattern, in systemd-boot's order (see Entry).
	LoaderConf = "loader/loader.conf"
	// EntryPattern matches every slot entry's id.
	EntryPattern = "bellbuild-*"
)
