// Package upgrade is the upgrader: on a machine installed on its disk
// (two root slots), it writes the image its configuration names into the
// slot it does not run, and makes systemd-boot try it (docs/boot-media.md):
//
//  1. compare the image running (bellbuild.image=) with the one the
//     configuration names (nodeconf.Image.Root): the same, or one that
//     failed before (the ESP's bellbuild/failed), or already written and
//     waiting for a reboot — nothing to do;
//  2. fetch the image's manifest from serve and check it: this node's
//     profile, this machine's architecture, the root hash the
//     configuration names; the other slot must hold the new root;
//  3. remove the other slot's boot entry (nothing boots a slot being
//     written), then copy the root image alone (not the disk) into the
//     other slot's partition, checked as it comes, and the kernel and the
//     initramfs into the slot's directory of the ESP, each checked
//     against the manifest;
//  4. write the slot's entry last, with three tries (systemd's boot
//     counting): the init marks it good after a clean apply, and
//     systemd-boot boots the running slot again when its tries are used
//     up;
//  5. tell serve (upgrade-written, with the reboot policy).
//
// The caller reboots according to the node's upgrade.reboot.
package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/fetch"
	"github.com/bellbuild/bellbuild/firstboot/install"
	"github.com/bellbuild/bellbuild/firstboot/slots"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
)

// Artifacts of a bake the upgrader fetches besides the root image (the
// manifest's names of what serve hands out as wire.Kernel and
// wire.Initrd).
const (
	KernelArtifact = "vmlinuz"
	InitrdArtifact = "disk-initrd.cpio.zst"
)

// Options configure Run.
type Options struct {
	// Node is the node's configuration: its Image and Upgrade.
	Node *nodeconf.Node
	// Slot and Running are what the machine booted (bellbuild.slot=,
	// bellbuild.image=).
	Slot, Running string
	// Arch is this machine's (runtime.GOARCH).
	Arch string
	// ESP is the running disk's ESP, mounted read-write.
	ESP slots.ESP
	// SysBlock is /sys/class/block, where the other slot's partition is
	// found by its GPT name, and DevDir where its node is (default /dev).
	SysBlock, DevDir string
	// Serve is serve's URL, for the report ("" : none is sent).
	Serve string
	// Console gets what the upgrader says.
	Console io.Writer
	// Fetch tunes the copy of the root image.
	Fetch fetch.Options
	// Client makes the other requests (default: 60 s timeout).
	Client *http.Client
	// RebootAt, when set, says when the caller will reboot into the
	// slot written (zero: no time is set), for serve's node list.
	RebootAt func() time.Time
}

// Result is what Run did.
type Result struct {
	// Image is the image the configuration names; Slot where it is
	// written (empty when nothing was).
	Image, Slot string
	// Written says Run wrote it now; Waiting that it was written before
	// and waits for a reboot.
	Written, Waiting bool
	// Bytes is how many bytes were fetched (root, kernel, initramfs).
	Bytes int64
}

// ErrRefused is returned (wrapped) for an image the node must not run:
// another profile's or architecture's, a manifest without a root hash, a
// slot too small, an image that failed before.
var ErrRefused = errors.New("upgrade refused")

// Pending reports whether the configuration names another image than
// the one running (an upgrade to do or waiting for a reboot).
func Pending(n *nodeconf.Node, running string) bool {
	return n != nil && n.Image != nil && running != "" && n.Image.Root != running
}

// Run upgrades (steps 1–5 of the package doc). It writes nothing unless
// every check passes.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Console == nil {
		o.Console = io.Discard
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: 60 * time.Second}
	}
	if o.Fetch.Console == nil {
		o.Fetch.Console, o.Fetch.Prefix = o.Console, "bellbuild: upgrade: "
	}
	printf := func(format string, args ...any) { fmt.Fprintf(o.Console, "bellbuild: upgrade: "+format+"\n", args...) }
	n := o.Node
	// 1. What to do.
	if n == nil || n.Image == nil {
		return &Result{}, nil
	}
	want := n.Image.Root
	res := &Result{Image: want}
	if !Pending(n, o.Running) {
		return res, nil
	}
	if o.Slot != layout.SlotA && o.Slot != layout.SlotB {
		return res, fmt.Errorf("%w: the running slot is %q, not a or b", ErrRefused, o.Slot)
	}
	failed, err := o.ESP.Failed()
	if err != nil {
		return res, err
	}
	for _, f := range failed {
		if f == want {
			return res, fmt.Errorf("%w: image %s failed to come up before: not tried again until the configuration names another", ErrRefused, short(want))
		}
	}
	target := layout.OtherSlot(o.Slot)
	ents, err := o.ESP.Entries()
	if err != nil {
		return res, err
	}
	if e := slots.Find(ents, target); e != nil && e.Image == want && !e.Bad() {
		res.Slot, res.Waiting = target, true
		return res, nil
	}
	// 2. The manifest, and the slot.
	m, err := o.manifest(ctx)
	if err != nil {
		return res, err
	}
	kernel, initrd := m.Artifact(KernelArtifact), m.Artifact(InitrdArtifact)
	if kernel == nil || initrd == nil {
		return res, fmt.Errorf("%w: the manifest lists no %s or %s", ErrRefused, KernelArtifact, InitrdArtifact)
	}
	dev, size, err := partition(o.SysBlock, o.DevDir, layout.SlotPartition(target))
	if err != nil {
		return res, err
	}
	if size < m.Disk.Root.Size {
		return res, fmt.Errorf("%w: image %s's root is %d bytes, slot %s (%s) holds %d: install the machine again with a larger install.slot_size",
			ErrRefused, short(want), m.Disk.Root.Size, target, dev, size)
	}
	printf("image %s (profile %s) into slot %s (%s), running %s in slot %s", short(want), m.Profile, target, dev, short(o.Running), o.Slot)
	// 3. Nothing boots the slot while it is written.
	gen, err := o.ESP.Begin(target)
	if err != nil {
		return res, err
	}
	f, direct, err := fetch.OpenTarget(dev, false)
	if err != nil {
		return res, fmt.Errorf("%s: %w", dev, err)
	}
	st, err := fetch.Copy(ctx, f, direct, []fetch.Part{{Name: "root", URL: n.Image.URL + "/" + wire.Root, Size: m.Disk.Root.Size, SHA256: want}}, o.Fetch)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, err
	}
	res.Bytes = st.Bytes
	for _, b := range []struct {
		what, path string
		a          *wire.Artifact
	}{{wire.Kernel, layout.SlotKernel(target), kernel}, {wire.Initrd, layout.SlotInitrd(target), initrd}} {
		nb, err := o.boot(ctx, n.Image.URL+"/"+b.what, b.path, b.a)
		if err != nil {
			return res, err
		}
		res.Bytes += nb
	}
	// 4. The entry, last.
	title := "bellbuild " + m.Profile + " (slot " + target + ")"
	if err := o.ESP.Commit(target, gen, layout.DefaultTries, title, layout.SlotCmdline(m.Cmdline, target, want)); err != nil {
		return res, err
	}
	res.Slot, res.Written = target, true
	reboot := n.Upgrade.RebootPolicy()
	printf("slot %s holds image %s (%d bytes fetched): %d tries at the next boot (reboot: %s)", target, short(want), res.Bytes, layout.DefaultTries, reboot)
	// 5. serve.
	if o.Serve != "" {
		rep := wire.Report{Event: wire.EventUpgradeWritten, Image: want, Reboot: reboot}
		if o.RebootAt != nil {
			if at := o.RebootAt(); !at.IsZero() {
				rep.RebootAt = at.UTC().Format(time.RFC3339)
			}
		}
		if err := install.Report(ctx, o.Client, o.Serve, rep); err != nil {
			printf("error: telling serve: %v", err)
		}
	}
	return res, nil
}

// manifest fetches the image's manifest and checks it against the node.
func (o Options) manifest(ctx context.Context) (*wire.ImageManifest, error) {
	data, err := get(ctx, o.Client, o.Node.Image.URL+"/"+wire.Manifest)
	if err != nil {
		return nil, fmt.Errorf("the image's manifest: %w", err)
	}
	var m wire.ImageManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: the image's manifest: %v", ErrRefused, err)
	}
	if err := install.CheckManifest(&m, o.Node, o.Arch); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	return &m, nil
}

// boot fetches a kernel or an initramfs into the ESP, checked against a.
func (o Options) boot(ctx context.Context, url, path string, a *wire.Artifact) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	c := *o.Client
	c.Timeout = 10 * time.Minute
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	cr := &countReader{r: io.LimitReader(resp.Body, a.Size+1)}
	if err := o.ESP.WriteBoot(path, cr, a.SHA256); err != nil {
		return cr.n, fmt.Errorf("%s: %w", a.Name, err)
	}
	return cr.n, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

func get(ctx context.Context, c *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

// partition finds the partition called name (under sysBlock,
// /sys/class/block; one only): its device node in devDir and its size.
func partition(sysBlock, devDir, name string) (string, int64, error) {
	if devDir == "" {
		devDir = "/dev"
	}
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", 0, err
	}
	var found []string
	var size int64
	for _, e := range ents {
		dir := filepath.Join(sysBlock, e.Name())
		data, err := os.ReadFile(filepath.Join(dir, "uevent"))
		if err != nil || !strings.Contains(string(data), "\nPARTNAME="+name+"\n") && !strings.HasPrefix(string(data), "PARTNAME="+name+"\n") {
			continue
		}
		dev := ""
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "DEVNAME="); ok {
				dev = filepath.Join(devDir, v)
			}
		}
		s, _ := os.ReadFile(filepath.Join(dir, "size"))
		sectors, err := strconv.ParseInt(strings.TrimSpace(string(s)), 10, 64)
		if dev == "" || err != nil {
			continue
		}
		found = append(found, dev)
		size = sectors * 512
	}
	if len(found) != 1 {
		return "", 0, fmt.Errorf("want one partition named %s, found %d (%s)", name, len(found), strings.Join(found, ", "))
	}
	return found[0], size, nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
