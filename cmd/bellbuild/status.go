package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bellbuild/bellbuild/build"
	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/fleet"
	"github.com/bellbuild/bellbuild/pxe/state/etcd"
)

func init() {
	register(&command{
		name:    "status",
		summary: "the fleet: each inventory node's last applier run, configuration and image",
		usage:   "-C SITE [--state DIR | --server URL [--token-file F | --cert F --key F]] [--artifacts OUT] [--failing] [--stale D] [--label k=v ...] [-o text|json]",
		help: `status shows one row per inventory node, from the reports its applier
runs send to serve (at boot, bellbuild apply, --watch, the DaemonSet):

  NODE  STATE  CONFIG (desired/applied)  IMAGE (desired/running)  LAST SEEN  ERRORS

A node's state is the first of these that applies:

  never seen        no report yet
  failing           its last run had errors (the first is shown)
  stale             its last report is older than --stale (default 24h)
  pending approval  its key waits for 'bellbuild node approve'
  reboot pending    it waits for a reboot
  drifted           it applied another configuration than the site
                    renders for it now (or runs another image)
  ok                the site's configuration, applied without error

The reports come from serve's state directory (--state, serve's:
/var/lib/bellbuild; STATE/ENV with environments), or from a running serve
(--server https://HOST:8443, which answers with the site it serves; its
certificate is checked against the site's root CA, SITE/pki/root.pem, and
it wants a user certificate, 'pki issue user', or the token of its
--status-auth). The desired image is the hash of OUT/PROFILE/manifest.json
when --artifacts names the bakes.

--failing shows the failing nodes only, --stale D the nodes not seen for D
or more (and makes D the threshold of "stale"), --label k=v (repeatable)
the nodes with those labels.

Exit status: 0, or 1 when a node shown is failing (or on an error).

Examples:
  bellbuild status -C site
  bellbuild status -C site --failing -o json
  bellbuild status -C site --stale 2h --label rack=r1
  bellbuild status -C site --server https://192.0.2.1:8443 --token-file ~/.bellbuild-token`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o statusFlags
			o.site.register(fs)
			fs.StringVar(&o.state, "state", "/var/lib/bellbuild", "serve's state `DIR`, or etcd://HOST:PORT,... (serve's --state)")
			fs.StringVar(&o.server, "server", "", "ask a running serve at `URL` (https://HOST:PORT) instead of reading the state")
			fs.StringVar(&o.tokenFile, "token-file", "", "with --server: the status token in `FILE`")
			fs.StringVar(&o.cert, "cert", "", "with --server: a user certificate `FILE` (PEM) from the site PKI")
			fs.StringVar(&o.key, "key", "", "with --server: its key `FILE`")
			fs.StringVar(&o.artifacts, "artifacts", "", "the bakes' directory `OUT`, for the desired images")
			fs.BoolVar(&o.failing, "failing", false, "failing nodes only")
			fs.DurationVar(&o.stale, "stale", 0, "nodes not seen for `D` or more only (and D is the stale threshold)")
			fs.Var((*labelFlag)(&o.labels), "label", "nodes with label `k=v` only (repeatable)")
			fs.StringVar(&o.output, "o", "text", "output `FORMAT`, text or json")
			o.etcd.register(fs)
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unexpected arguments %q", args)
				}
				return runStatus(ctx, o, os.Stdout)
			}
		},
	})
}

type statusFlags struct {
	site                                siteFlags
	state, server, tokenFile, cert, key string
	artifacts, output                   string
	failing                             bool
	stale                               time.Duration
	labels                              map[string]string
	etcd                                etcdFlags
}

// runStatus:
//  1. the rows: from serve (--server), else from the site and the state;
//  2. the selection (--failing, --stale, --label);
//  3. printed; exit status 1 when a row shown is failing.
func runStatus(ctx context.Context, o statusFlags, stdout io.Writer) error {
	if o.output != "text" && o.output != "json" {
		return fmt.Errorf("-o %q: want text or json", o.output)
	}
	if o.stale < 0 {
		return fmt.Errorf("--stale %v: want a positive duration", o.stale)
	}
	// 1. The rows.
	var rows []fleet.Row
	var err error
	if o.server != "" {
		rows, err = statusFromServer(ctx, o)
	} else {
		rows, err = statusFromState(ctx, o)
	}
	if err != nil {
		return err
	}
	// 2. The selection.
	now := time.Now()
	var sel []fleet.Row
	for _, r := range rows {
		if o.failing && r.State != fleet.StateFailing {
			continue
		}
		if o.stale > 0 && !r.LastSeen.IsZero() && now.Sub(r.LastSeen) < o.stale {
			continue
		}
		if !hasLabels(r.Labels, o.labels) {
			continue
		}
		sel = append(sel, r)
	}
	// 3. Printed.
	if o.output == "json" {
		if sel == nil {
			sel = []fleet.Row{}
		}
		data, err := json.MarshalIndent(sel, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", data)
	} else {
		printFleet(stdout, sel, now)
	}
	for _, r := range sel {
		if r.State == fleet.StateFailing {
			return exitError{1}
		}
	}
	return nil
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// printFleet is the table: hashes shortened, times relative to now.
func printFleet(w io.Writer, rows []fleet.Row, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPROFILE\tSTATE\tCONFIG\tIMAGE\tLAST SEEN\tERRORS")
	for _, r := range rows {
		seen := "never"
		if !r.LastSeen.IsZero() {
			seen = fleet.Ago(now.Sub(r.LastSeen))
			if !r.Verified {
				seen += " (unverified)"
			}
		}
		errs := "-"
		if r.Errors > 0 {
			errs = r.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Node, r.Profile, r.State,
			pair(r.DesiredConfig, r.AppliedConfig), pair(r.DesiredImage, r.RunningImage), seen, errs)
	}
	tw.Flush()
}

// pair is "desired" when both agree, else "desired/applied", each a
// short hash ("-" when not known).
func pair(want, have string) string {
	if want == have {
		return fleet.ShortHash(want)
	}
	return fleet.ShortHash(want) + "/" + fleet.ShortHash(have)
}

// statusFromState computes the rows from the site and serve's state.
func statusFromState(ctx context.Context, o statusFlags) ([]fleet.Row, error) {
	if o.site.dir == "" {
		return nil, errors.New("-C SITE is required: the site says which nodes exist and what they should run")
	}
	site, err := o.site.load()
	if err != nil {
		return nil, printSiteErrors(os.Stderr, err)
	}
	if !etcd.IsURL(o.state) && !isEtcdHTTP(o.state) {
		if _, err := os.Stat(envDir(o.state, site)); err != nil {
			return nil, fmt.Errorf("serve's state: %w", err)
		}
	}
	st, closeState, err := openState(ctx, o.state, site, "", o.etcd)
	if err != nil {
		return nil, err
	}
	defer closeState()
	return fleet.View(ctx, siteWants{site: site, artifacts: envDir(o.artifacts, site)}, fleet.NewRecorder(st, fleet.Options{}),
		registryEnrolments{enrol.NewRegistry(st, nil, enrol.Options{})}, fleet.ViewOptions{Stale: o.stale})
}

// statusFromServer asks serve (GET /status.json) over TLS, serve's
// certificate checked against the site's root CA.
func statusFromServer(ctx context.Context, o statusFlags) ([]fleet.Row, error) {
	u, err := url.Parse(o.server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want https://HOST:PORT", o.server)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.site.dir != "" {
		pool := x509.NewCertPool()
		data, err := os.ReadFile(filepath.Join(o.site.dir, "pki", "root.pem"))
		if err != nil {
			return nil, fmt.Errorf("the site's root CA, to check serve's certificate: %w", err)
		}
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("%s: no certificate", filepath.Join(o.site.dir, "pki", "root.pem"))
		}
		tc.RootCAs = pool
	}
	if o.cert != "" || o.key != "" {
		pair, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	q := url.Values{}
	if o.stale > 0 {
		q.Set("stale", o.stale.String())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(o.server, "/")+"/status.json?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	if o.tokenFile != "" {
		tok, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("serve %s: %w", u.Host, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("serve %s: %w", u.Host, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("serve %s: %s: %s", u.Host, resp.Status, strings.TrimSpace(string(data)))
	}
	var st fleet.Status
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("serve %s: %w", u.Host, err)
	}
	return st.Nodes, nil
}

// siteWants is the site as a fleet.Inventory: each inventory node's
// configuration hash, rendered now, and its profile's baked image.
type siteWants struct {
	site      *profiles.Site
	artifacts string
}

func (s siteWants) Wants(ctx context.Context) ([]fleet.Want, error) {
	var out []fleet.Want
	images := map[string]bakedImage{}
	for _, n := range s.site.Nodes() {
		w := fleet.Want{Node: n.Name, Profile: n.Profile, Labels: n.Labels}
		rn, err := s.site.RenderNode(n.Name)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if w.Config, err = nodeconf.ConfigHash(rn); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if s.artifacts != "" {
			img, ok := images[n.Profile]
			if !ok {
				img, err = readBakedImage(filepath.Join(s.artifacts, n.Profile, build.ManifestFile))
				if err != nil {
					return nil, err
				}
				images[n.Profile] = img
			}
			w.Image, w.ImageRoot = img.ID, img.Root
		}
		out = append(out, w)
	}
	return out, nil
}

// bakedImage names a baked image as its machines report it.
type bakedImage struct {
	// ID is the SHA-256 of its manifest (manifestID): what serve puts on
	// a network boot's command line.
	ID string
	// Root is the SHA-256 of its disk's root image: what a slot of an
	// installed disk boots with ("" without outputs: [raw]).
	Root string
}

// readBakedImage reads a bake's manifest (a zero bakedImage when it was not
// baked).
func readBakedImage(manifest string) (bakedImage, error) {
	data, err := os.ReadFile(manifest)
	if errors.Is(err, fs.ErrNotExist) {
		return bakedImage{}, nil
	}
	if err != nil {
		return bakedImage{}, err
	}
	var m struct {
		Disk *build.DiskInfo `json:"disk"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return bakedImage{}, fmt.Errorf("%s: %w", manifest, err)
	}
	img := bakedImage{ID: manifestID(data)}
	if m.Disk != nil {
		img.Root = m.Disk.Root.SHA256
	}
	return img, nil
}

// manifestID is the ID of the image a manifest describes.
func manifestID(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// imageID is the ID of the image a manifest describes ("" when it was
// not baked).
func imageID(manifest string) (string, error) {
	img, err := readBakedImage(manifest)
	return img.ID, err
}

// registryEnrolments is serve's enrolment registry as fleet.Enrolments.
type registryEnrolments struct{ reg *enrol.Registry }

func (r registryEnrolments) PendingApproval(ctx context.Context, node string) (bool, error) {
	rec, err := r.reg.Get(ctx, node)
	if err != nil {
		return false, err
	}
	return rec.Key == "" && rec.Retired.IsZero() && len(rec.Pending) > 0, nil
}
