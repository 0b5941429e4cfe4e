package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/fleet"
	pxeinstall "github.com/bellbuild/bellbuild/pxe/install"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
)

func init() {
	register(&command{
		name:    "node",
		summary: "enrolment and installs: list nodes, approve, deny or retire a node's key, reinstall a node",
		usage:   "list|approve|deny|retire|reinstall [NAME] -C SITE [--state DIR] [--private DIR] [--fingerprint FP]",
		help: `A node enrols with 'bellbuild serve' before it gets anything secret: at
boot it makes a key pair (ECDSA P-256; kept on its data partition when it
has one, new on each boot of a diskless node), prints

  bellbuild: node=NAME enrolment pending fingerprint=sha256:HEX

on its console, and sends serve a certificate signing request over HTTPS
(serve's certificate checked against the site's CAs). Once the key is
approved the node gets its host certificate (hosts CA), and with it, over
mutual TLS, its whole configuration and the certificates of its service
credentials (their keys made on the node, never sent). See
docs/enrolment.md.

The site says how a node's key is approved, at a profile's top level or on
its inventory entry:

  enrol: manual               an operator approves it (the default)
  enrol: first-key            the first key seen is approved and pinned (labs)
  enrol: {pinned: sha256:HEX} only that key is approved

These commands read and change the state serve keeps (--state, serve's:
/var/lib/bellbuild), under its locks; a running serve sees a change at the
node's next request:

  node list -C SITE           every inventory node: unknown, pending (each
                              key's fingerprint and the address it came
                              from), approved (its key), retired; and for
                              a node installed on its disk (install: in
                              the site), the disk and when, the slot and
                              image it runs, an upgrade waiting for a
                              reboot or one that failed
  node approve NAME --fingerprint FP
                              signs NAME's pending CSR with the hosts CA;
                              the fingerprint must be a pending CSR's (the
                              one the node printed): no blind approvals.
                              Approving another key of an enrolled node
                              (a reinstalled disk) revokes its old host
                              certificates
  node deny NAME              refuses NAME's pending keys from now on
  node retire NAME            revokes every certificate of NAME (host and
                              services), publishes the CRLs and forgets its
                              key: the node gets nothing but the CRL
  node reinstall NAME         forgets NAME's install: its next network
                              boot installs its disk again (serve boots an
                              installed node from its disk until then)

approve and retire sign with the site's PKI: they need its private
directory (--private, $BELLBUILD_PRIVATE, else SITE/private).

A second key for an enrolled node (a spoofed MAC, a reinstalled disk) is
refused, logged by serve at warning level with both fingerprints and the
address, counted in /metrics (bellbuild_enrol_refused_total{reason=
"key-mismatch"}), and listed here as pending: only 'node approve' makes it
the node's.

Exit status: 0 done, 1 refused or failed (the reason on stderr).

Examples:
  bellbuild node list -C site
  bellbuild node approve web-1 -C site --fingerprint sha256:3f1c...
  bellbuild node retire web-1 -C site`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o nodeFlags
			o.site.register(fs)
			registerPrivate(fs, &o.private)
			fs.StringVar(&o.state, "state", "/var/lib/bellbuild", "serve's state `DIR`, or etcd://HOST:PORT,... (serve's --state)")
			fs.StringVar(&o.fingerprint, "fingerprint", "", "approve: the pending key's fingerprint `FP` (as the node printed it)")
			fs.StringVar(&o.output, "o", "text", "list: output `FORMAT`, text or json")
			o.etcd.register(fs)
			return func(ctx context.Context, args []string) error {
				args, err := positional(fs, args)
				if err != nil {
					return err
				}
				return runNode(ctx, o, args, os.Stdout)
			}
		},
	})
}

type nodeFlags struct {
	site                siteFlags
	private, state      string
	fingerprint, output string
	etcd                etcdFlags
}

func runNode(ctx context.Context, o nodeFlags, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("missing subcommand: list, approve, deny, retire or reinstall (see 'bellbuild help node')")
	}
	sub, args := args[0], args[1:]
	want := 1
	if sub == "list" {
		want = 0
	}
	if len(args) != want {
		if want == 0 {
			return fmt.Errorf("node list takes no argument, got %q", args)
		}
		return fmt.Errorf("node %s takes one node NAME, got %q", sub, args)
	}
	if o.site.dir == "" && sub != "list" {
		return errors.New("-C SITE is required: the site says which nodes exist, and its PKI signs")
	}
	site, err := o.site.load()
	if err != nil {
		return printSiteErrors(os.Stderr, err)
	}
	// serve's state for the site's environment: STATE/ENV.
	st, closeState, err := openState(ctx, o.state, site, o.private, o.etcd)
	if err != nil {
		return err
	}
	defer closeState()
	switch sub {
	case "list":
		return nodeList(ctx, site, enrol.NewRegistry(st, nil, enrol.Options{}), pxeinstall.New(st, nil), o.output, stdout)
	case "approve", "deny", "retire", "reinstall":
		name := args[0]
		if !inInventory(site, name) {
			return fmt.Errorf("node %s is not in the site's inventory (%s)", name, o.site.dir)
		}
		switch sub {
		case "approve":
			return nodeApprove(ctx, site, st, o, name, stdout)
		case "deny":
			fps, err := enrol.NewRegistry(st, nil, enrol.Options{}).Deny(ctx, name)
			if err != nil {
				return err
			}
			for _, fp := range fps {
				fmt.Fprintf(stdout, "denied node %s key %s\n", name, fp)
			}
			return nil
		case "reinstall":
			was, err := pxeinstall.New(st, nil).Reinstall(ctx, name)
			if err != nil {
				return err
			}
			if !was {
				fmt.Fprintf(stdout, "node %s is not installed: nothing to clear\n", name)
				return nil
			}
			fmt.Fprintf(stdout, "node %s: install cleared: its next network boot installs its disk again\n", name)
			return nil
		default:
			return nodeRetire(ctx, site, st, o, name, stdout)
		}
	}
	return fmt.Errorf("unknown subcommand %q: want list, approve, deny, retire or reinstall", sub)
}

func inInventory(site *profiles.Site, name string) bool {
	for _, n := range site.Nodes() {
		if n.Name == name {
			return true
		}
	}
	return false
}

// nodeRow is one line of node list.
type nodeRow struct {
	Node        string    `json:"node"`
	State       string    `json:"state"`
	Policy      string    `json:"policy"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	From        string    `json:"from,omitempty"`
	MAC         string    `json:"mac,omitempty"`
	Since       time.Time `json:"since,omitzero"`
	// Disk and Installed say where and when the node was installed (zero
	// when it is not); Slot and Image what it last said it runs; Pending
	// an upgrade written and waiting for a reboot (Reboot its policy,
	// RebootAt when it is due); Failed the last upgrade that did not
	// come up.
	Disk      string    `json:"disk,omitempty"`
	Installed time.Time `json:"installed,omitzero"`
	Slot      string    `json:"slot,omitempty"`
	Image     string    `json:"image,omitempty"`
	Pending   string    `json:"pending,omitempty"`
	Reboot    string    `json:"reboot,omitempty"`
	RebootAt  string    `json:"reboot_at,omitempty"`
	Failed    string    `json:"failed,omitempty"`
	// Note says more: another key waits, the node is not in the site.
	Note string `json:"note,omitempty"`
}

// nodeList prints every inventory node's state, and the state's nodes the
// inventory no longer has.
func nodeList(ctx context.Context, site *profiles.Site, reg *enrol.Registry, installs *pxeinstall.Store, format string, w io.Writer) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("-o %q: want text or json", format)
	}
	recs, err := reg.List(ctx)
	if err != nil {
		return err
	}
	byName := map[string]*enrol.Record{}
	for _, r := range recs {
		byName[r.Node] = r
	}
	irecs, err := installs.List(ctx)
	if err != nil {
		return err
	}
	installed := map[string]*pxeinstall.Record{}
	for _, r := range irecs {
		installed[r.Node] = r
	}
	var rows []nodeRow
	seen := map[string]bool{}
	add := func(name, policy string, r *enrol.Record, note string) {
		seen[name] = true
		if r == nil {
			rows = append(rows, nodeRow{Node: name, State: enrol.NodeUnknown, Policy: policy, Note: note})
			return
		}
		base := nodeRow{Node: name, State: r.State(), Policy: policy, Note: note}
		switch base.State {
		case enrol.NodeRetired:
			base.Since = r.Retired
			rows = append(rows, base)
			return
		case enrol.NodeApproved:
			row := base
			row.Fingerprint, row.Since = r.Key, r.Approved
			if r.ApprovedBy != "" && r.ApprovedBy != "operator" {
				row.Note = strings.TrimSpace("by " + r.ApprovedBy + " " + note)
			}
			rows = append(rows, row)
		case enrol.NodeUnknown:
			rows = append(rows, base)
			return
		}
		for _, p := range r.Pending {
			row := base
			row.State = enrol.NodePending
			row.Fingerprint, row.From, row.MAC, row.Since = p.Fingerprint, p.From, p.MAC, p.First
			if r.Key != "" {
				row.Note = "another key: refused until approved"
			}
			rows = append(rows, row)
		}
	}
	for _, n := range site.Nodes() {
		policy := nodeconf.EnrolManual
		if rn, err := site.RenderNode(n.Name); err == nil && rn.Enrol != nil && rn.Enrol.Policy != "" {
			policy = rn.Enrol.Policy
		}
		add(n.Name, policy, byName[n.Name], "")
	}
	var gone []string
	for name := range byName {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		add(name, "-", byName[name], "not in the site's inventory")
	}
	for i := range rows {
		if r := installed[rows[i].Node]; r != nil {
			withInstall(&rows[i], r)
		}
	}
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tPOLICY\tFINGERPRINT\tFROM\tSINCE\tDISK\tINSTALLED\tSLOT\tNOTE")
	stamp := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, r := range rows {
		slot := "-"
		if r.Slot != "" {
			slot = r.Slot + ":" + fleet.ShortHash(r.Image)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Node, r.State, r.Policy, dash(r.Fingerprint), dash(r.From), stamp(r.Since),
			dash(r.Disk), stamp(r.Installed), slot, r.Note)
	}
	return tw.Flush()
}

// withInstall adds what serve knows of the node's disk to its row.
func withInstall(row *nodeRow, r *pxeinstall.Record) {
	row.Disk, row.Installed = r.Disk, r.Installed
	if r.Installed.IsZero() {
		row.Disk = ""
	}
	row.Slot, row.Image, row.Pending, row.Reboot, row.RebootAt, row.Failed = r.Slot, r.Running, r.Pending, r.Reboot, r.RebootAt, r.Failed
	var notes []string
	switch {
	case r.Installed.IsZero() && r.Phase == "install-failed":
		notes = append(notes, "install failed: "+r.Error)
	case r.Installed.IsZero() && r.Phase != "":
		notes = append(notes, "install: "+r.Phase)
	}
	if r.Pending != "" {
		at := ""
		if r.RebootAt != "" {
			at = " at " + r.RebootAt
		}
		notes = append(notes, fmt.Sprintf("upgrade to %s written: reboot pending%s (%s)", fleet.ShortHash(r.Pending), at, dash(r.Reboot)))
	}
	if r.Failed != "" {
		notes = append(notes, fmt.Sprintf("upgrade to %s failed", fleet.ShortHash(r.Failed)))
	}
	if row.Note != "" {
		notes = append([]string{row.Note}, notes...)
	}
	row.Note = strings.Join(notes, "; ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// nodeApprove signs name's pending CSR with fingerprint --fingerprint and
// makes it the node's key; the host certificates of a key it replaces
// are revoked.
func nodeApprove(ctx context.Context, site *profiles.Site, st pxestate.Store, o nodeFlags, name string, w io.Writer) error {
	if o.fingerprint == "" {
		return fmt.Errorf("--fingerprint FP is required: the fingerprint node %s printed (bellbuild node list shows the pending ones)", name)
	}
	store, err := openPKI(site, o.private, nil)
	if err != nil {
		return err
	}
	reg := enrol.NewRegistry(st, &siteCA{store: store, nodes: newSiteNodes(site, nil)}, enrol.Options{ParseCSR: pki.ParseCSR, Log: slog.Default()})
	a, err := reg.Approve(ctx, name, o.fingerprint)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "approved node %s: host certificate %s\n", name, a.Serial)
	for _, serial := range a.ReplacedSerials {
		if _, err := store.Revoke(ctx, pki.Selector{Serial: serial}, "superseded"); err != nil && !errors.Is(err, pki.ErrNotFound) {
			return fmt.Errorf("revoking the replaced key's certificate %s: %w", serial, err)
		}
		fmt.Fprintf(w, "revoked %s (the replaced key %s)\n", serial, a.Replaced)
	}
	return nil
}

// nodeRetire revokes every certificate of name (publishing the CRLs),
// then marks it retired in the state: a crash between the two leaves its
// certificates revoked, and serve refuses a revoked certificate.
func nodeRetire(ctx context.Context, site *profiles.Site, st pxestate.Store, o nodeFlags, name string, w io.Writer) error {
	store, err := openPKI(site, o.private, nil)
	if err != nil {
		return err
	}
	serials, err := store.Revoke(ctx, pki.Selector{Node: name}, "cessationOfOperation")
	switch {
	case errors.Is(err, pki.ErrNotFound):
		// Nothing issued (or all expired): the CRLs are published anyway.
		if err := store.PublishCRLs(ctx, pki.Hosts, pki.Services); err != nil {
			return err
		}
	case err != nil:
		return err
	}
	reg := enrol.NewRegistry(st, nil, enrol.Options{})
	before, err := reg.Retire(ctx, name)
	if err != nil {
		return err
	}
	if !before.Retired.IsZero() {
		fmt.Fprintf(w, "node %s was retired already (%s)\n", name, before.Retired.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "retired node %s: %d certificates revoked, CRLs published; its key %s is forgotten\n", name, len(serials), dash(before.Key))
	return nil
}
