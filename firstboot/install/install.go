// Package install is the installer: what a machine that serve boots with
// bellbuild.install=1 runs instead of its system. It puts its profile's
// disk.raw on one of its disks, laid out to fill it, with its own
// configuration volume, and tells serve (docs/boot-media.md):
//
//  1. fetch its configuration (node.json: install.disk and wipe, and the
//     image it should run) and the image's manifest from serve, and check
//     them: the image is the node's profile's, for this machine, named
//     by its root hash;
//  2. pick the disk (Choose): refuse one that holds something unless
//     wipe, never the boot medium; refuse one too small (Grow) — before
//     anything is written;
//  3. with wipe, clear the disk's first and last MiB (its partition
//     tables: the old system is not bootable from here on);
//  4. copy disk.raw's extents (the ESP, the root image in slot a) straight
//     from serve onto the disk (package fetch: checked, resumed, with
//     progress), clear the first MiB of slot b and of the data partition;
//  5. write the node's configuration volume (its node.json, as `bellbuild
//     config write` would: the configuration serve hands out, which holds
//     no private key);
//  6. write the partition tables last (the backup at the disk's end, the
//     data partition filling the rest), so that an install cut short
//     anywhere before is never bootable: the next boot installs again;
//  7. sync, and report install-done to serve, which boots the machine from
//     its disk from now on.
package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/fetch"
	"github.com/bellbuild/bellbuild/images/confvol"
	"github.com/bellbuild/bellbuild/images/disk"
	"github.com/bellbuild/bellbuild/images/fat"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
)

// Options configure Run.
type Options struct {
	// Serve is serve's URL (bellbuild.serve=): node.json and reports.
	Serve string
	// Node is the node serve booted (bellbuild.node=): its node.json
	// must be that node's.
	Node string
	// Arch is this machine's (amd64, arm64: runtime.GOARCH of the
	// applier, built for it).
	Arch string
	// Console gets what the installer says.
	Console io.Writer
	// SysBlock, DevDir and Mounts are where disks are found (/sys/block,
	// /dev, /proc/mounts' content); tests point them elsewhere.
	SysBlock, DevDir, Mounts string
	// Fetch tunes the copy (progress every 3 s by default).
	Fetch fetch.Options
	// Client makes the small requests (default: 30 s timeout).
	Client *http.Client
	// BootParams are kernel command line parameters the installed
	// disk's boots add to theirs (layout.ConfigCmdline on the
	// configuration volume): the enrolment endpoint, the NIC's settings.
	BootParams []string
}

// Result is what an install did.
type Result struct {
	Disk  Disk
	Image string
	Stats fetch.Stats
}

// ErrManifest is returned (wrapped) for a manifest or a configuration the
// installer cannot use.
var ErrManifest = errors.New("bad image")

// ErrTooSmall is returned (wrapped) for a disk too small for the image.
var ErrTooSmall = disk.ErrTooSmall

// Run installs (steps 1–7 of the package doc). It reports install-start,
// and install-failed with the reason when it stops after that.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Console == nil {
		o.Console = io.Discard
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if o.Fetch.Console == nil {
		o.Fetch.Console, o.Fetch.Prefix = o.Console, "bellbuild: install: "
	}
	printf := func(format string, args ...any) { fmt.Fprintf(o.Console, "bellbuild: install: "+format+"\n", args...) }

	// 1. The configuration and the manifest.
	nodeJSON, node, err := o.node(ctx)
	if err != nil {
		return nil, err
	}
	m, err := o.manifest(ctx, node)
	if err != nil {
		return nil, err
	}

	// 2. The disk.
	disks := Disks(o.SysBlock, o.DevDir, o.Mounts)
	d, err := Choose(*node.Install, disks)
	if err != nil {
		o.report(ctx, wire.Report{Event: wire.EventInstallFailed, Error: err.Error()})
		return nil, err
	}
	dev := "/dev/" + d.Name // what the machine calls it (d.Dev differs in tests)
	l := layoutOf(m)
	g, err := disk.Grow(l, d.Size)
	if err != nil {
		err = fmt.Errorf("%s: %w", d.Dev, err)
		o.report(ctx, wire.Report{Event: wire.EventInstallFailed, Disk: dev, Size: d.Size, Error: err.Error()})
		return nil, err
	}
	printf("node %s: image %s (profile %s) onto %s", node.Node, m.Disk.Root.SHA256[:12], m.Profile, d)
	o.report(ctx, wire.Report{Event: wire.EventInstallStart, Disk: dev, Size: d.Size, Image: m.Disk.Root.SHA256})

	res, err := o.write(ctx, node, nodeJSON, m, d, g)
	if err != nil {
		o.report(ctx, wire.Report{Event: wire.EventInstallFailed, Disk: dev, Size: d.Size, Image: m.Disk.Root.SHA256, Error: err.Error()})
		return nil, err
	}
	// 7. serve records it.
	if err := o.report(ctx, wire.Report{Event: wire.EventInstallDone, Disk: dev, Size: d.Size, Image: m.Disk.Root.SHA256}); err != nil {
		printf("error: telling serve: %v (it boots this machine into the installer again)", err)
		return res, err
	}
	return res, nil
}

// write does steps 3–6 on d.
func (o Options) write(ctx context.Context, node *nodeconf.Node, nodeJSON []byte, m *wire.ImageManifest, d Disk, g *disk.Layout) (*Result, error) {
	printf := func(format string, args ...any) { fmt.Fprintf(o.Console, "bellbuild: install: "+format+"\n", args...) }
	direct, isDirect, err := fetch.OpenTarget(d.Dev, true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.Dev, err)
	}
	defer direct.Close()
	f, err := os.OpenFile(d.Dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.Dev, err)
	}
	defer f.Close()

	// 3. Wipe: nothing of the old system boots once this is done.
	if d.Holds != "" {
		printf("wiping %s (it held %s)", d.Dev, d.Holds)
		if err := zero(f, 0, mib); err != nil {
			return nil, err
		}
		if err := zero(f, d.Size-mib, mib); err != nil {
			return nil, err
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
	}

	// 4. The extents, checked as they come.
	url := node.Image.URL + "/" + wire.Disk
	var parts []fetch.Part
	for _, name := range []string{wire.PartESP, wire.PartRootA} {
		p := m.Partition(name)
		parts = append(parts, fetch.Part{Name: name, URL: url, Offset: p.Offset, Size: p.Used, To: p.Offset, SHA256: p.SHA256})
	}
	st, err := fetch.Copy(ctx, direct, isDirect, parts, o.Fetch)
	if err != nil {
		return nil, err
	}
	if err := direct.Sync(); err != nil {
		return nil, err
	}
	for _, name := range []string{wire.PartRootB, wire.PartData} {
		if p := g.Partition(name); p != nil {
			if err := zero(f, p.Offset, min(mib, p.Size)); err != nil {
				return nil, err
			}
		}
	}

	// 5. The configuration volume.
	conf := g.Partition(wire.PartConfig)
	w := io.NewOffsetWriter(f, conf.Offset)
	tree := confvol.Tree(nodeJSON, 0)
	if len(o.BootParams) > 0 {
		tree.AddFile(layout.ConfigCmdline, []byte(strings.Join(o.BootParams, " ")+"\n"), 0o644, 0, 0)
		tree.Reproducible(0)
	}
	if err := fat.Write(w, tree, fat.Options{Label: confvol.Label, Size: conf.Size, HiddenSectors: uint32(conf.Offset / 512)}); err != nil {
		return nil, fmt.Errorf("the configuration volume: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}

	// 6. The partition tables, last.
	for i := range g.Partitions {
		p := &g.Partitions[i]
		p.GUID = disk.DeriveGUID("install", node.Node, p.Name, p.SHA256)
	}
	if err := disk.WriteGPT(f, g, m.Disk.Arch); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	printf("done: %s holds image %s, %d MB copied in %.1f s", d.Dev, m.Disk.Root.SHA256[:12], st.Bytes/1e6, st.Took.Seconds())
	return &Result{Disk: d, Image: m.Disk.Root.SHA256, Stats: st}, nil
}

const mib = 1 << 20

// zero writes n zero bytes at off.
func zero(f *os.File, off, n int64) error {
	if off < 0 {
		return nil
	}
	_, err := f.WriteAt(make([]byte, n), off)
	return err
}

// layoutOf is disk.raw's layout as the manifest describes it.
func layoutOf(m *wire.ImageManifest) *disk.Layout {
	l := &disk.Layout{Size: m.Disk.Size}
	for i, p := range m.Disk.Partitions {
		l.Partitions = append(l.Partitions, disk.Partition{Index: i + 1, Name: p.Name, Offset: p.Offset, Size: p.Size,
			GUID: p.GUID, SHA256: p.SHA256, Used: p.Used, Extent: p.SHA256})
	}
	return l
}

// node fetches the node's configuration from serve: it must verify, be
// this node's, say where to install and name an image.
func (o Options) node(ctx context.Context) ([]byte, *nodeconf.Node, error) {
	data, err := o.get(ctx, o.Serve+wire.NodeFile)
	if err != nil {
		return nil, nil, fmt.Errorf("the node's configuration: %w", err)
	}
	n, _, err := nodeconf.Decode(data)
	if err != nil {
		return nil, nil, fmt.Errorf("the node's configuration from serve: %w", err)
	}
	switch {
	case n == nil:
		return nil, nil, fmt.Errorf("%w: serve's node.json is not one node's configuration", ErrManifest)
	case o.Node != "" && n.Node != o.Node:
		return nil, nil, fmt.Errorf("%w: serve's node.json is node %s's, this is node %s", ErrManifest, n.Node, o.Node)
	case n.Install == nil:
		return nil, nil, fmt.Errorf("%w: node %s's configuration has no install", ErrManifest, n.Node)
	case n.Image == nil:
		return nil, nil, fmt.Errorf("%w: node %s's configuration names no image (is its profile baked with outputs: [raw]?)", ErrManifest, n.Node)
	}
	if err := n.Install.Check(); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	if err := n.Image.Check(); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	return data, n, nil
}

// manifest fetches the image's manifest and checks it against the node:
// the same profile and root hash, this machine's architecture.
func (o Options) manifest(ctx context.Context, n *nodeconf.Node) (*wire.ImageManifest, error) {
	data, err := o.get(ctx, n.Image.URL+"/"+wire.Manifest)
	if err != nil {
		return nil, fmt.Errorf("the image's manifest: %w", err)
	}
	var m wire.ImageManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: the image's manifest: %v", ErrManifest, err)
	}
	if err := CheckManifest(&m, n, o.Arch); err != nil {
		return nil, err
	}
	return &m, nil
}

// CheckManifest refuses an image the node must not run: a manifest that
// is not a disk with slots or names no root hash, another profile's,
// another architecture's, or not the image the configuration names.
func CheckManifest(m *wire.ImageManifest, n *nodeconf.Node, arch string) error {
	if err := m.Check(); err != nil {
		return fmt.Errorf("%w: %v", ErrManifest, err)
	}
	switch {
	case m.Profile != n.Profile:
		return fmt.Errorf("%w: the image is profile %s's, node %s boots profile %s", ErrManifest, m.Profile, n.Node, n.Profile)
	case arch != "" && m.Disk.Arch != arch:
		return fmt.Errorf("%w: the image is for %s, this machine is %s", ErrManifest, m.Disk.Arch, arch)
	case n.Image != nil && m.Disk.Root.SHA256 != n.Image.Root:
		return fmt.Errorf("%w: serve has image %s of profile %s, the configuration names %s (baked again since?)", ErrManifest, m.Disk.Root.SHA256, m.Profile, n.Image.Root)
	}
	return nil
}

func (o Options) get(ctx context.Context, url string) ([]byte, error) {
	var last error
	for try := 0; try < 5; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(try) * time.Second):
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := o.Client.Do(req)
		if err != nil {
			last = err
			continue
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: %s", url, resp.Status)
		}
		if err != nil {
			last = err
			continue
		}
		return data, nil
	}
	return nil, last
}

// report tells serve an event; its error says whether serve recorded it.
func (o Options) report(ctx context.Context, r wire.Report) error {
	return Report(ctx, o.Client, o.Serve, r)
}

// Report POSTs r to serve at base, trying a few times.
func Report(ctx context.Context, c *http.Client, base string, r wire.Report) error {
	if base == "" {
		return errors.New("no serve to report to")
	}
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	var last error
	for try := 0; try < 3; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(try) * time.Second):
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+wire.ReportPath, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			last = err
			continue
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return nil
		}
		last = fmt.Errorf("serve: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
		if resp.StatusCode/100 == 4 {
			break
		}
	}
	return last
}
