package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bellbuild/bellbuild/build"
	"github.com/bellbuild/bellbuild/build/debpkg"
	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe"
	"github.com/bellbuild/bellbuild/pxe/bakes"
	"github.com/bellbuild/bellbuild/pxe/dhcp"
	fwire "github.com/bellbuild/bellbuild/pxe/fleet/wire"
	"github.com/bellbuild/bellbuild/pxe/grub"
	"github.com/bellbuild/bellbuild/pxe/httpboot"
	"github.com/bellbuild/bellbuild/pxe/install"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
	"github.com/bellbuild/bellbuild/pxe/leases"
	"github.com/bellbuild/bellbuild/pxe/state/etcd"
	"github.com/bellbuild/bellbuild/pxe/tftp"
)

func init() {
	register(&command{
		name:    "serve",
		summary: "network-boot the inventory's machines by MAC: DHCP, TFTP and HTTP",
		usage:   "[-C SITE [--env ENV]] --interface IF [--dhcp full|proxy|off] [--pool START-END[/PREFIX] ...] [--artifacts OUT] [--state DIR] [--https-addr ADDR] [--private DIR] [--identity FILE]",
		help: `serve boots every machine of the site's inventory from the network, as the
node its MAC address names, with the artifacts 'bellbuild image' baked
into OUT/PROFILE/ (vmlinuz, initramfs.cpio.zst, manifest.json):

  1. DHCP gives the machine an address (its "ip" label, else one of the
     pools; kept across restarts in the lease file) and the name of the
     loader for its firmware (DHCP option 93): undionly.kpxe (BIOS),
     ipxe.efi (x86-64 UEFI), from /usr/lib/ipxe over TFTP; for arm64 UEFI
     (below) grubnetaa64.efi;
  2. iPXE asks DHCP again and is sent its boot script,
     http://SERVER:8080/ipxe?mac=MAC (or tftp:// with --boot-via tftp);
  3. the script boots OUT/PROFILE/vmlinuz and initramfs.cpio.zst with the
     manifest's command line plus bellbuild.node=NAME;
  4. the image's init applies the node's configuration. The node's
     rendered configuration is also served, to that node's address only,
     at /files/node.json.

A profile baked again is served from its new bake within a second of the
next request for it, without a restart: its nodes' node.json name the new
image, and a request is always answered from one bake (a download begun
before goes on with the old one). A manifest that is not whole leaves the
bake served as it was (an error in the log).

With a site PKI, node.json (like the image's bundle) carries the nodes'
certificates (issued from the private directory: --private,
$BELLBUILD_PRIVATE, else SITE/private), never their private keys: on a
network-booted node the credentials are pending until their keys come.
Likewise node.json never holds a secret value of the site ("!secret
NAME", or a password hash or private file written inline): it names them,
and the node applies the rest. --identity FILE (or
$BELLBUILD_AGE_IDENTITY) is the age identity that decrypts the site's
secrets for the configurations an approved node is given over mutual
TLS; serve refuses to start when it cannot decrypt every one of them.

With a site PKI (bellbuild pki init), serve also opens the enrolment
endpoint on --https-addr (HTTPS, :8443), with a certificate it issues
itself from the hosts sub-CA for its address (its key kept in the
private directory: --private, $BELLBUILD_PRIVATE, else SITE/private).
Each machine's kernel command line then names the endpoint and pins the
site's root CA (bellbuild.enrol=, bellbuild.enrol_ca=): the node makes a
key pair, sends a CSR, and gets its host certificate once its key is
approved — by an operator (bellbuild node approve), or by the policy the
site gives it (enrol: first-key, enrol: {pinned: FP}) — and only then,
over mutual TLS, its whole configuration and its credentials'
certificates. What enrolment keeps (pending CSRs, approvals, pinned
keys, issued serials) is in STATE/enrol, written and fsynced before each
answer; bellbuild node list|approve|deny|retire read and change it while
serve runs. See docs/enrolment.md.

The boot network is the site's (SITE/site.yaml's network: server,
subnet, pools) where it declares one: --server-ip and --pool replace
its server and pools, and the interface gives what is still unknown.
Before anything is opened, every node's "ip" label is checked against
it: the server's own address, a network or broadcast address, an
address outside every subnet, one inside a dynamic pool (which could
lease it to another machine first) and two nodes with one address stop
serve, each problem naming the node and the pool (exit status 1).

arm64 machines (a node whose profile is arch: arm64) boot through GRUB,
as Debian has no arm64 iPXE: their UEFI firmware fetches
grubnetaa64.efi, GRUB's network image (package grub-efi-arm64-bin:arm64,
fetched into the cache and unpacked the first time an arm64 machine is in
the inventory, or --loader-arm64 PATH), which reads grub/grub.cfg over
TFTP; serve answers it with the configuration of the machine that address
is leased to, which boots the kernel and the initramfs over TFTP with the
same command line, bellbuild.node=NAME included. A machine whose firmware
is of another architecture than its image gets no boot file (a warning in
the log); an arm64 image's /ipxe script is not used.

MAC addresses not in the inventory get no answer, unless
--default-profile names a profile for them. --dhcp proxy answers only
the PXE part beside an existing DHCP server; --dhcp off leaves DHCP to
others entirely. Relayed requests get an address of the pool whose
subnet holds the relay: give such pools their prefix (START-END/24).
TFTP sends the kernel and initramfs 16 blocks ahead of the client's
ACKs (--tftp-window; any RFC 1350 client works, and the window shrinks
for one that drops bursts); the loaders go in lock-step, since firmware
fetches them. Each boot step logs one line per machine (phase=dhcp-offer, dhcp-ack,
tftp-loader, ipxe-script, kernel, initrd); /metrics serves Prometheus
counters and /healthz answers "ok".

Example:
  bellbuild image demo -o out
  bellbuild serve --interface br0 --pool 192.0.2.100-192.0.2.199 --artifacts out
  bellbuild serve -C site --interface br0 --artifacts out     # site.yaml's network, enrolment on :8443
  bellbuild serve -C site --interface eth1 --dhcp proxy --artifacts out`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o serveFlags
			o.site.register(fs)
			registerPrivate(fs, &o.private)
			registerIdentity(fs, &o.identities, "approved nodes' configurations")
			fs.StringVar(&o.iface, "interface", "", "boot network `IF` (DHCP listens only there; its address is the server's)")
			fs.StringVar(&o.serverIP, "server-ip", "", "this server's `IP` on the boot network (default: site.yaml's network.server, else the interface's)")
			fs.StringVar(&o.dhcp, "dhcp", pxe.DHCPFull, "DHCP `MODE`: full, proxy or off")
			fs.Func("pool", "addresses to lease, `START-END[/PREFIX]` (repeatable; default: site.yaml's network.pools; PREFIX defaults to site.yaml's subnet, else the interface's)", func(s string) error {
				o.pools = append(o.pools, s)
				return nil
			})
			fs.StringVar(&o.artifacts, "artifacts", "out", "`OUT` directory of 'bellbuild image'")
			fs.StringVar(&o.state, "state", "/var/lib/bellbuild", "state `DIR` (leases, the nodes' rendered files, enrolment, reports; bellbuild node and status read it), or etcd://HOST:PORT,... shared by several serve instances")
			fs.StringVar(&o.statusAuth, "status-auth", "", "a token `FILE`: the status page (HTTPS /) also takes \"Authorization: Bearer TOKEN\" besides a user certificate of the site PKI")
			fs.StringVar(&o.work, "work", "/var/lib/bellbuild", "with --state etcd://: the local `DIR` of the nodes' rendered files")
			o.etcd.register(fs)
			fs.StringVar(&o.leases, "leases", "", "lease `FILE` (default STATE/leases)")
			fs.StringVar(&o.httpAddr, "http-addr", "0.0.0.0:8080", "HTTP listen `ADDR` (off: no HTTP)")
			fs.StringVar(&o.httpsAddr, "https-addr", "0.0.0.0:8443", "enrolment endpoint's HTTPS listen `ADDR` (off: no enrolment)")
			fs.DurationVar(&o.httpIdle, "http-idle-timeout", httpboot.DefaultIdleTimeout, "close an HTTP keep-alive connection that asks nothing for `DURATION`")
			fs.IntVar(&o.httpMaxConns, "http-max-conns", httpboot.DefaultMaxConns, "HTTP connections open at once (`N`); more wait, and the longest idle is closed to make room")
			fs.StringVar(&o.tftpAddr, "tftp-addr", "0.0.0.0:69", "TFTP listen `ADDR` (off: no TFTP)")
			fs.UintVar(&o.tftpWindow, "tftp-window", tftp.DefaultWindow, "TFTP blocks sent ahead of the client's ACKs (`N`; 1: lock-step)")
			fs.StringVar(&o.bootVia, "boot-via", "http", "how iPXE fetches script, kernel and initramfs: `http` or tftp")
			fs.StringVar(&o.defaultProfile, "default-profile", "", "boot MACs not in the inventory with `PROFILE` (default: ignore them)")
			fs.DurationVar(&o.leaseTime, "lease-time", time.Hour, "DHCP lease `DURATION`")
			fs.StringVar(&o.loaders, "loaders", pxe.LoaderDir, "`DIR` of the iPXE loaders")
			fs.StringVar(&o.loaderARM64, "loader-arm64", "", "GRUB's network EFI image for arm64 machines, `PATH` (default: grubnetaa64.efi of Debian's grub-efi-arm64-bin:arm64, fetched into the cache)")
			fs.StringVar(&o.cache, "cache", "", "cache `DIR` the arm64 GRUB is fetched into (default $BELLBUILD_CACHE, else ~/.cache/bellbuild)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unexpected arguments %q", args)
				}
				return runServe(ctx, o)
			}
		},
	})
}

type serveFlags struct {
	site                     siteFlags
	private                  string
	identities               []string
	iface, serverIP, dhcp    string
	pools                    []string
	artifacts, state, leases string
	work, statusAuth         string
	etcd                     etcdFlags
	httpAddr, tftpAddr       string
	httpsAddr                string
	bootVia, defaultProfile  string
	leaseTime                time.Duration
	loaders, loaderARM64     string
	cache                    string
	tftpWindow               uint
	httpIdle                 time.Duration
	httpMaxConns             int
}

func runServe(ctx context.Context, o serveFlags) error {
	if o.tftpWindow < 1 || o.tftpWindow > tftp.MaxWindow {
		return fmt.Errorf("--tftp-window %d: want 1 to %d blocks", o.tftpWindow, tftp.MaxWindow)
	}
	// 1. Load the site, and the identity that decrypts its secrets. An
	// environment's bakes and state are its own: OUT/ENV and STATE/ENV.
	site, err := o.site.load()
	if err != nil {
		return printSiteErrors(os.Stderr, err)
	}
	// The state: a directory (STATE/ENV), or etcd shared with other
	// serve instances (the rendered files then live in WORK/ENV).
	st, closeState, err := openState(ctx, o.state, site, o.private, o.etcd)
	if err != nil {
		return err
	}
	defer closeState()
	shared := etcd.IsURL(o.state) || isEtcdHTTP(o.state)
	if shared {
		o.state = o.work
	}
	o.artifacts, o.state = envDir(o.artifacts, site), envDir(o.state, site)
	configs, err := serveConfigs(site, o.identities, o.private)
	if err != nil {
		return err
	}
	// 2. Work out the boot network and check every node's fixed address
	// against it, before anything is opened.
	nw, err := o.network(site)
	if err != nil {
		return err
	}
	if err := site.CheckNetwork(nw); err != nil {
		return printSiteErrors(os.Stderr, err)
	}
	cfg := pxe.Config{
		Interface: o.iface, DHCP: o.dhcp, LeaseTime: o.leaseTime, Artifacts: o.artifacts,
		HTTPAddr: o.httpAddr, TFTPAddr: o.tftpAddr, BootVia: o.bootVia,
		Loaders: pxe.DefaultLoaders(o.loaders), TFTP: tftp.Config{Window: o.tftpWindow},
		HTTP:     httpboot.Limits{IdleTimeout: o.httpIdle, MaxConns: o.httpMaxConns},
		ServerIP: nw.Server,
	}
	for _, p := range nw.Pools {
		cfg.Pools = append(cfg.Pools, dhcp.Pool{Range: leases.Range{Start: p.Start, End: p.End}, Subnet: p.Subnet})
	}
	if o.dhcp == pxe.DHCPFull && len(cfg.Pools) == 0 {
		return errors.New("--dhcp full needs at least one --pool START-END (or network.pools in site.yaml)")
	}
	if len(cfg.Loaders) == 0 {
		slog.Warn("no iPXE loaders found: firmware PXE clients cannot boot (apt-get install ipxe)", "dir", o.loaders)
	}
	// 3. Render every node's configuration into STATE/nodes/NAME/.
	cfg.LeaseFile = o.leases
	if shared && o.leases == "" {
		cfg.SharedLeases = st
	}
	if cfg.LeaseFile == "" && cfg.SharedLeases == nil && o.dhcp != pxe.DHCPProxy {
		cfg.LeaseFile = filepath.Join(o.state, "leases")
	}
	if cfg.LeaseFile != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.LeaseFile), 0o700); err != nil {
			return err
		}
	}
	cfg.Files = filepath.Join(o.state, "nodes")
	// Boot lines go through a buffer flushed every 100 ms: a DHCP storm
	// logs thousands of lines a second, and one write each would cost
	// more than answering the packet.
	logOut := newFlushWriter(os.Stderr, 100*time.Millisecond)
	defer logOut.Close()
	cfg.Log = slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: logLevel()}))
	// Each profile's bake is taken again when it is baked again: a new
	// manifest in OUT/PROFILE is served, with its nodes' configurations,
	// without a restart.
	backend, err := newSiteBackend(ctx, site, o.private, o.artifacts, cfg.Files, o.defaultProfile,
		backendOptions{serveURL: o.serveURL(nw.Server), log: cfg.Log})
	if err != nil {
		return err
	}
	defer backend.Close()
	// Installs: which nodes boot from their disks, in the state (as
	// enrolment's, shared when it is; bellbuild node list and reinstall
	// read it).
	cfg.Installs = install.New(st, nil)
	if backend.arm64 {
		p, err := arm64Loader(ctx, o.loaderARM64, o.cache)
		if err != nil {
			slog.Warn("no GRUB for arm64 machines: they cannot boot", "err", err)
		} else {
			cfg.Loaders[grub.Loader] = p
		}
	}
	// 4. Serve until interrupted. The enrolment endpoint (HTTPS), when the site has a PKI.
	if err := o.enrolment(ctx, site, configs, st, &cfg); err != nil {
		return err
	}
	srv, err := pxe.New(cfg, backend)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// serveURL is serve's HTTP URL as the machines reach it ("" with HTTP
// off): what a node's configuration names its image at.
func (o serveFlags) serveURL(server netip.Addr) string {
	if o.httpAddr == "off" {
		return ""
	}
	_, port, err := net.SplitHostPort(o.httpAddr)
	if err != nil || port == "0" {
		return ""
	}
	return "http://" + net.JoinHostPort(server.String(), port)
}

// network is the boot network serve works with: site.yaml's network
// (profiles.Site.Network), with each part a flag gives replaced by it, and
// what is still unknown taken from the interface. The server's address is
// --server-ip, else site.yaml's, else the interface's; the pools are the
// --pool flags, else site.yaml's; a pool without a prefix lies in
// site.yaml's subnet, else the interface's.
func (o serveFlags) network(site *profiles.Site) (profiles.Network, error) {
	nw, _ := site.Network()
	var ifAddr netip.Addr
	var ifSubnet netip.Prefix
	if o.iface != "" {
		var err error
		if ifAddr, ifSubnet, err = pxe.InterfaceAddr(o.iface); err != nil {
			return nw, err
		}
	}
	ifPos := profiles.Pos{File: "--interface " + o.iface}
	switch {
	case o.serverIP != "":
		a, err := netip.ParseAddr(o.serverIP)
		if err != nil || !a.Is4() {
			return nw, fmt.Errorf("--server-ip %q: want an IPv4 address", o.serverIP)
		}
		nw.Server, nw.ServerPos = a, profiles.Pos{File: "--server-ip"}
	case nw.Server.IsValid(): // site.yaml's
	case ifAddr.IsValid():
		nw.Server, nw.ServerPos = ifAddr, ifPos
	default:
		return nw, errors.New("need --interface (or --server-ip, or network.server in site.yaml)")
	}
	switch {
	case !nw.Subnet.IsValid():
		nw.Subnet, nw.SubnetPos = ifSubnet, ifPos
	case ifSubnet.IsValid() && ifSubnet != nw.Subnet:
		slog.Warn("the interface is not on site.yaml's subnet", "interface", o.iface, "subnet", ifSubnet, "site", nw.Subnet)
	}
	if len(o.pools) > 0 {
		nw.Pools = nil
		for _, s := range o.pools {
			p, err := parsePool(s, nw.Subnet)
			if err != nil {
				return nw, err
			}
			nw.Pools = append(nw.Pools, p)
		}
	}
	return nw, nil
}

// flushWriter buffers writes and flushes them every interval (and on
// Close). It is safe for concurrent use.
type flushWriter struct {
	mu   sync.Mutex
	w    *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

func newFlushWriter(w io.Writer, interval time.Duration) *flushWriter {
	f := &flushWriter{w: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				f.mu.Lock()
				f.w.Flush()
				f.mu.Unlock()
			case <-f.stop:
				return
			}
		}
	}()
	return f
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w.Write(p)
}

// Close stops the flusher and flushes what is left.
func (f *flushWriter) Close() error {
	close(f.stop)
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w.Flush()
}

// parsePool parses a --pool flag, START-END[/PREFIX]; without a prefix the
// range must lie in subnet (the interface's, or site.yaml's).
func parsePool(s string, subnet netip.Prefix) (profiles.Pool, error) {
	p, err := profiles.ParsePool(s, subnet)
	switch {
	case errors.Is(err, profiles.ErrOutsideSubnet):
		return p, fmt.Errorf("--pool %q: not inside the interface's subnet %v: give its prefix (START-END/24)", s, p.Subnet)
	case err != nil:
		return p, fmt.Errorf("--pool: %w", err)
	}
	p.Pos = profiles.Pos{File: "--pool"}
	return p, nil
}

// siteBackend answers pxe's Lookup from the inventory and the baked
// artifacts. The nodes are rendered once, at start; each profile's
// machines are made from its current bake (pxe/bakes), again when it is
// baked again: a lookup is a map read, and at most once a second a look
// at the profile's manifest (DHCP asks for every packet).
type siteBackend struct {
	byMAC map[string]macNode
	def   string // the default profile ("": unknown MACs do not boot)
	bakes *bakes.Set[*bakedMachines]
	// arm64 is set when some machine boots an arm64 image (at start).
	arm64 bool
}

// macNode is the node a MAC address boots as.
type macNode struct{ profile, node string }

// bakedMachines is what serve makes of one bake of a profile: the
// machines of its nodes (and the default profile's machine), each with
// the bake's files held open (pxe.Machine.Bake).
type bakedMachines struct {
	byNode map[string]*pxe.Machine
	def    *pxe.Machine
}

// NodeFile is the name each node's rendered configuration is served as
// (/files/node.json, tftp files/node.json).
const NodeFile = "node.json"

// backendOptions are newSiteBackend's optional settings.
type backendOptions struct {
	// serveURL is serve's HTTP URL: each node's configuration names its
	// profile's image there (nodeconf.Image), when the profile has a disk.
	serveURL string
	// log gets the lines of bakes taken and refused (default
	// slog.Default()); interval is how often a profile's manifest is
	// looked at (default bakes.DefaultInterval).
	log      *slog.Logger
	interval time.Duration
}

func newSiteBackend(ctx context.Context, site *profiles.Site, private, out, files, defaultProfile string, opts ...backendOptions) (_ *siteBackend, err error) {
	var bo backendOptions
	if len(opts) > 0 {
		bo = opts[0]
	}
	if bo.log == nil {
		bo.log = slog.Default()
	}
	b := &siteBackend{byMAC: map[string]macNode{}}
	infos := site.Nodes()
	nodes := make([]*nodeconf.Node, len(infos))
	for i, n := range infos {
		node, err := site.RenderNode(n.Name)
		if err != nil {
			return nil, fmt.Errorf("rendering node %s: %w", n.Name, err)
		}
		nodes[i] = node
	}
	// Served over plain HTTP and TFTP: the CA bundle, never a key (the
	// machines enrol for their certificates), and no secret value
	// (RenderNode is the public configuration).
	if err := certify(ctx, site, private, nodes, publicOnly, true); err != nil {
		return nil, err
	}
	byProfile := map[string][]int{}
	for i, n := range infos {
		byProfile[n.Profile] = append(byProfile[n.Profile], i)
		for _, mac := range n.MACs {
			hw, err := net.ParseMAC(mac)
			if err != nil {
				return nil, fmt.Errorf("node %s: %w", n.Name, err)
			}
			b.byMAC[hw.String()] = macNode{profile: n.Profile, node: n.Name}
		}
	}
	if defaultProfile != "" {
		if !slices.Contains(site.ProfileNames(), defaultProfile) {
			return nil, fmt.Errorf("--default-profile %s: no such profile in the site", defaultProfile)
		}
		b.def = defaultProfile
	}
	// What a bake of a profile makes: its nodes' machines, and their
	// configurations (node.json) naming the bake's image.
	bakeMachines := func(profile string, bake *bakes.Bake) (*bakedMachines, error) {
		var baked bakedInfo
		var im *wire.ImageManifest
		if bake != nil {
			baked, im = readBaked(profile, bake.Manifest, bo.log)
			baked.ID = manifestID(bake.Manifest)
		}
		// The machine is told which image it boots (bellbuild.image=,
		// the manifest's hash), and says so in its reports.
		cmdline := baked.Cmdline
		if baked.ID != "" {
			cmdline = strings.TrimSpace(cmdline + " " + fwire.ParamImage + "=" + baked.ID)
		}
		machine := func() *pxe.Machine {
			m := &pxe.Machine{
				Profile: profile,
				Kernel:  filepath.Join(profile, build.KernelFile),
				Initrd:  filepath.Join(profile, build.InitramfsFile),
				Cmdline: cmdline,
				Arch:    baked.Arch,
			}
			if bake != nil {
				m.Bake = bake
			}
			return m
		}
		bm := &bakedMachines{byNode: map[string]*pxe.Machine{}}
		if profile == b.def {
			bm.def = machine()
		}
		for _, i := range byProfile[profile] {
			n := infos[i]
			// The image the node installs and upgrades to: its
			// profile's current bake, named by its root hash.
			rn := *nodes[i]
			rn.Image = nil
			if im != nil && bo.serveURL != "" && len(n.MACs) > 0 {
				hw, err := net.ParseMAC(n.MACs[0])
				if err != nil {
					return nil, fmt.Errorf("node %s: %w", n.Name, err)
				}
				rn.Image = &nodeconf.Image{Profile: im.Profile, Arch: im.Disk.Arch, Root: im.Disk.Root.SHA256, URL: wire.ImageURL(bo.serveURL, hw)}
			}
			if rn.Install != nil && im == nil {
				bo.log.Warn("node installs onto its disk, but its profile has no disk image: it boots the installer, which stops", "node", n.Name,
					"profile", n.Profile, "fix", "outputs: [raw] in profile "+n.Profile+", then bellbuild image "+n.Profile+" -o "+out)
			}
			data, err := nodeconf.Marshal(&rn, nodeconf.JSON)
			if err != nil {
				return nil, err
			}
			if err := writeFileChanged(filepath.Join(files, n.Name, NodeFile), data); err != nil {
				return nil, err
			}
			m := machine()
			m.Name = n.Name
			m.Files = map[string]string{NodeFile: NodeFile}
			m.Enrol = machineEnrol(rn.Enrol)
			m.Install = rn.Install != nil
			if im != nil {
				m.Image = &pxe.Image{
					Manifest: filepath.Join(profile, build.ManifestFile), Disk: filepath.Join(profile, build.DiskFile),
					Kernel: filepath.Join(profile, build.KernelFile), Initrd: filepath.Join(profile, build.DiskInitrdFile),
				}
			}
			if n.IP.IsValid() { // its "ip" label, checked by profiles
				m.IP = n.IP.AsSlice()
			}
			bm.byNode[n.Name] = m
		}
		return bm, nil
	}
	b.bakes, err = bakes.New(bakes.Config{
		Dir: out, Manifest: build.ManifestFile, Interval: bo.interval, Log: bo.log,
		// What installs and upgrades read, held; the network boot's
		// initramfs opened by name, so that a re-bake can reuse it
		// (build/reuse.go).
		Files: []string{build.KernelFile, build.DiskFile, build.DiskInitrdFile}, Live: []string{build.InitramfsFile},
	}, bakeMachines)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	// Each profile's bake, taken now: the nodes' files are written
	// before serve answers.
	used := slices.Sorted(maps.Keys(byProfile))
	if b.def != "" && byProfile[b.def] == nil {
		used = append(used, b.def)
	}
	for _, p := range used {
		bm, err := b.bakes.Get(p)
		if err != nil {
			return nil, err
		}
		for _, m := range bm.byNode {
			b.arm64 = b.arm64 || m.Arch == "arm64"
		}
		if bm.def != nil {
			b.arm64 = b.arm64 || bm.def.Arch == "arm64"
		}
		if _, err := os.Stat(filepath.Join(out, p, build.KernelFile)); err != nil {
			slog.Warn("profile not baked: its machines will not boot", "profile", p, "want", filepath.Join(out, p, build.KernelFile),
				"fix", "bellbuild image "+p+" -o "+out)
		}
	}
	return b, nil
}

// Lookup implements pxe.Backend: the machine of mac's node as its
// profile's current bake makes it.
func (b *siteBackend) Lookup(_ context.Context, mac net.HardwareAddr) (*pxe.Machine, error) {
	if mn, ok := b.byMAC[mac.String()]; ok {
		bm, err := b.bakes.Get(mn.profile)
		if err != nil {
			return nil, err
		}
		return bm.byNode[mn.node], nil
	}
	if b.def != "" {
		bm, err := b.bakes.Get(b.def)
		if err != nil {
			return nil, err
		}
		return bm.def, nil
	}
	return nil, pxe.ErrUnknown
}

// Close closes the bakes' files.
func (b *siteBackend) Close() error { return b.bakes.Close() }

// readBaked reads what serve needs of a bake's manifest: the kernel
// command line and the architecture, and the description of the image a
// node installs and upgrades to (nil when the bake has no disk of this
// bellbuild's: two root slots, a root hash).
func readBaked(profile string, data []byte, log *slog.Logger) (bakedInfo, *wire.ImageManifest) {
	var info bakedInfo
	if err := json.Unmarshal(data, &info); err != nil {
		log.Warn("unreadable manifest", "profile", profile, "err", err)
		return bakedInfo{}, nil
	}
	var m wire.ImageManifest
	if err := json.Unmarshal(data, &m); err != nil || m.Disk == nil {
		return info, nil
	}
	if err := m.Check(); err != nil {
		log.Warn("the profile's disk cannot be installed", "profile", profile, "err", err)
		return info, nil
	}
	return info, &m
}

// bakedInfo is what serve reads of a bake's manifest.
type bakedInfo struct {
	Cmdline string `json:"cmdline"`
	Arch    string `json:"arch"`
	// ID is the image's (imageID: the manifest's SHA-256).
	ID string `json:"-"`
}

// GRUBPackage ships grubnetaa64.efi, which arm64 machines boot from the
// network (Debian has no arm64 iPXE).
const (
	GRUBPackage  = "grub-efi-arm64-bin"
	grubNetImage = "usr/lib/grub/arm64-efi/monolithic/grubnetaa64.efi"
)

// arm64Loader returns GRUB's network EFI image for arm64: path when given,
// else Debian's, fetched for arm64 into the cache (debpkg) the first time.
func arm64Loader(ctx context.Context, path, cache string) (string, error) {
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("--loader-arm64: %w", err)
		}
		return path, nil
	}
	if cache == "" {
		cache = os.Getenv("BELLBUILD_CACHE")
	}
	if cache == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("cache directory: %w (set BELLBUILD_CACHE or --cache)", err)
		}
		cache = filepath.Join(dir, "bellbuild")
	}
	p, err := (&debpkg.Cache{Dir: filepath.Join(cache, "debs")}).Fetch(ctx, GRUBPackage, "arm64")
	if err != nil {
		return "", fmt.Errorf("%w (or pass --loader-arm64 PATH)", err)
	}
	return filepath.Join(p.Root, grubNetImage), nil
}

// writeFileChanged replaces path with data (mode 0600, its directory
// made 0700), whole or not at all, unless path holds data already.
func writeFileChanged(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}
