package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/pki"
)

func init() {
	register(&command{
		name:    "pki",
		summary: "the site's certificate authority: init, status, issue, revoke, renew, extend",
		usage:   "init|status|issue user NAME|revoke SERIAL|renew|extend  -C SITE [--env ENV] [flags]",
		help: `pki manages the site's X.509 PKI: an offline root CA that only signs
three sub-CAs — hosts, services and users — which issue every node's host
certificate, the services' client and server certificates and the
operators' certificates.

  SITE/pki/          CA certificates and CRLs (commit them with the site)
  PRIVATE/pki/       the sub-CA keys (0600) and the log of every serial
                     issued or revoked (append-only, fsynced); PRIVATE is
                     --private, else $BELLBUILD_PRIVATE, else SITE/private
                     (0700; keep it out of git)
  ROOT-OUT/root.key  the root key: written once by init, then take it
                     offline; only 'pki extend --root' reads it again

  init --root-out DIR       make the root and the three sub-CAs (refused
                            over an existing PKI; --force keeps the old one
                            aside as *.old-TIMESTAMP, never deletes it)
  status                    every CA and certificate: state, not-after,
                            serial, subject, names
  issue user NAME           a client certificate for an operator, written to
                            -o DIR as NAME.pem and NAME.key (0600); with
                            --csr FILE the key stays yours and only NAME.pem
                            is written
  revoke SERIAL | --node N | --service S  [--reason R]
                            revoke, and publish the CRLs (reasons:
                            unspecified, key-compromise, superseded,
                            affiliation-changed, cessation-of-operation,
                            privilege-withdrawn)
  renew                     re-issue what is in its renewal window (the last
                            third of its life), same key; republish CRLs due
  extend --root DIR         re-sign the sub-CAs (--ca hosts,services,users,
                            root) with a new validity and the same key: the
                            certificates they issued stay valid

The settings come from SITE/site.yaml (domain, and pki: algorithm,
validity {root, sub_ca, leaf}, renew_before, name_constraints, subnets);
a flag given overrides its setting. Keys are ECDSA P-256 unless
--algorithm ed25519 or rsa-3072. Validity: root 20y, sub-CAs 10y, leaves
1y (--root-validity, --ca-validity, --validity; 20y, 90d or a Go
duration). --name-constraints (init) limits the hosts and services CAs to
--domain, localhost, each --subnet (default: site.yaml's network) and
loopback; their certificates then leave short host names out.

Examples:
  bellbuild pki init -C site --root-out /media/usb/site-root
  bellbuild pki issue user alice -C site -o ~/.config/site
  bellbuild pki revoke --node rack1-07 --reason cessation-of-operation -C site
  bellbuild pki extend -C site --root /media/usb/site-root`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o pkiFlags
			o.register(fs)
			return func(ctx context.Context, args []string) error {
				if err := o.parse(fs, args); err != nil {
					return err
				}
				return runPKI(ctx, o, os.Stdout)
			}
		},
	})
}

func (o *pkiFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.site, "C", "", "site `DIR`")
	registerEnv(fs, &o.env)
	fs.StringVar(&o.private, "private", "", "private `DIR` (default $BELLBUILD_PRIVATE, else SITE/private)")
	fs.StringVar(&o.rootOut, "root-out", "", "init: `DIR` for the root key (then take it offline)")
	fs.StringVar(&o.root, "root", "", "extend: `DIR` holding the root key")
	fs.BoolVar(&o.force, "force", false, "init: keep an existing PKI aside and make a new one")
	fs.StringVar(&o.algorithm, "algorithm", "", "key `ALG`: ecdsa-p256 (default), ed25519, rsa-3072")
	fs.StringVar(&o.rootValidity, "root-validity", "", "init: root CA validity (default 20y)")
	fs.StringVar(&o.caValidity, "ca-validity", "", "init, extend: sub-CA validity (default 10y)")
	fs.StringVar(&o.validity, "validity", "", "issue, renew: leaf validity (default 1y)")
	fs.BoolVar(&o.nameConstraints, "name-constraints", false, "init: constrain the hosts and services CAs to --domain, --subnet, localhost and loopback")
	fs.StringVar(&o.domain, "domain", "", "init: the site's DNS `DOMAIN` (for --name-constraints)")
	fs.Var(&o.subnets, "subnet", "init: a site `CIDR` (repeatable; for --name-constraints)")
	fs.StringVar(&o.node, "node", "", "revoke: every certificate of node `N`")
	fs.StringVar(&o.service, "service", "", "revoke: every certificate of credential `S`, on every node")
	fs.StringVar(&o.reason, "reason", "", "revoke: `REASON` (default unspecified)")
	fs.StringVar(&o.out, "o", ".", "issue: output `DIR`")
	fs.StringVar(&o.csr, "csr", "", "issue: sign this CSR `FILE` instead of making a key")
	fs.StringVar(&o.cas, "ca", "", "extend: the CAs to re-sign, comma separated (default hosts,services,users)")
}

// parse reads the subcommand and its arguments; flags may come before or
// after them.
func (o *pkiFlags) parse(fs *flag.FlagSet, args []string) error {
	if len(args) == 0 {
		return errors.New("missing subcommand: init, status, issue, revoke, renew or extend (see 'bellbuild help pki')")
	}
	o.sub = args[0]
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return exitError{2}
		}
		if fs.NArg() == 0 {
			o.set = map[string]bool{}
			fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
			return nil
		}
		o.args = append(o.args, fs.Arg(0))
		rest = fs.Args()[1:]
	}
}

type pkiFlags struct {
	site, env, private, rootOut, root    string
	force                                bool
	algorithm                            string
	rootValidity, caValidity, validity   string
	nameConstraints                      bool
	domain                               string
	subnets                              prefixFlag
	node, service, reason, out, csr, cas string
	sub                                  string
	args                                 []string
	// set are the flags given (they override site.yaml).
	set map[string]bool
}

// prefixFlag is a repeatable CIDR flag.
type prefixFlag []netip.Prefix

func (p *prefixFlag) String() string {
	s := make([]string, len(*p))
	for i, x := range *p {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func (p *prefixFlag) Set(v string) error {
	x, err := netip.ParsePrefix(v)
	if err != nil {
		return fmt.Errorf("%q is not a CIDR subnet like 10.0.0.0/24", v)
	}
	*p = append(*p, x)
	return nil
}

// options turns site.yaml's settings and the flags into pki.Options:
// a flag given overrides its setting; the private directory is
// --private, else $BELLBUILD_PRIVATE, else SITE/private.
func (o pkiFlags) options() (pki.Options, error) {
	if o.site == "" {
		return pki.Options{}, errors.New("-C SITE is required: the PKI lives in the site's directory")
	}
	var po pki.Options
	if fi, err := os.Stat(o.site); err == nil && fi.IsDir() {
		if po, err = profiles.PKIOptions(o.site, chooseEnv(o.site, o.env)); err != nil {
			return po, err
		}
	}
	po.Site, po.Private = o.site, privateDir(o.private, o.site)
	if o.set["domain"] {
		po.Domain = o.domain
	}
	if o.set["subnet"] {
		po.Subnets = o.subnets
	}
	if o.set["name-constraints"] {
		po.NameConstraints = o.nameConstraints
	}
	var err error
	if o.set["algorithm"] {
		if po.Algorithm, err = pki.ParseAlgorithm(o.algorithm); err != nil {
			return po, err
		}
	}
	for _, d := range []struct {
		flag, val string
		to        *time.Duration
	}{{"--root-validity", o.rootValidity, &po.Validity.Root}, {"--ca-validity", o.caValidity, &po.Validity.SubCA}, {"--validity", o.validity, &po.Validity.Leaf}} {
		if d.val == "" {
			continue
		}
		if *d.to, err = pki.ParseDuration(d.val); err != nil {
			return po, fmt.Errorf("%s: %w", d.flag, err)
		}
	}
	po.Log = slog.Default()
	return po, nil
}

func runPKI(ctx context.Context, o pkiFlags, stdout io.Writer) error {
	// 1. The flags.
	po, err := o.options()
	if err != nil {
		return err
	}
	want := map[string]int{"init": 0, "status": 0, "issue": 2, "revoke": -1, "renew": 0, "extend": 0}
	n, ok := want[o.sub]
	if !ok {
		return fmt.Errorf("unknown subcommand %q: want init, status, issue, revoke, renew or extend", o.sub)
	}
	if n >= 0 && len(o.args) != n {
		return fmt.Errorf("pki %s: want %d arguments, got %q", o.sub, n, o.args)
	}
	// 2. One call.
	switch o.sub {
	case "init":
		if o.rootOut == "" {
			return errors.New("pki init: --root-out DIR is required (the root key goes there, and then offline)")
		}
		_, err := pki.Init(ctx, po, o.rootOut, o.force)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "PKI made in %s; root key in %s: take it offline now\n", pki.PublicDir(po), filepath.Join(o.rootOut, pki.RootKeyFile))
		if top, err := pki.ExposedInGit(po.Private); err == nil && top != "" {
			slog.Warn("the private directory is inside a git work tree that does not ignore it: add it to .gitignore", "private", po.Private, "work_tree", top)
		}
		return nil
	}
	s, err := pki.Open(po)
	if err != nil {
		return err
	}
	defer s.Close()
	switch o.sub {
	case "status":
		entries, err := s.Status()
		if err != nil {
			return err
		}
		return printStatus(stdout, entries)
	case "issue":
		if o.args[0] != "user" {
			return fmt.Errorf("pki issue: %q: only users get certificates by hand (issue user NAME); hosts and services get theirs with their configuration", o.args[0])
		}
		return issueUser(ctx, s, o, stdout)
	case "revoke":
		sel := pki.Selector{Node: o.node, Service: o.service}
		if len(o.args) > 1 {
			return fmt.Errorf("pki revoke: one serial at a time, got %q", o.args)
		}
		if len(o.args) == 1 {
			sel.Serial = o.args[0]
		}
		serials, err := s.Revoke(ctx, sel, o.reason)
		if err != nil {
			return err
		}
		if len(serials) == 0 {
			fmt.Fprintln(stdout, "nothing to revoke: already revoked")
		}
		for _, sr := range serials {
			fmt.Fprintf(stdout, "revoked %s\n", sr)
		}
		return nil
	case "renew":
		res, err := s.Renew(ctx)
		if err != nil {
			return err
		}
		for _, is := range res.Certs {
			fmt.Fprintf(stdout, "renewed %s %s until %s\n", is.Slot, is.Serial, is.NotAfter.UTC().Format(time.DateOnly))
		}
		for _, k := range res.CRLs {
			fmt.Fprintf(stdout, "CRL of %s republished\n", k)
		}
		if len(res.Certs) == 0 && len(res.CRLs) == 0 {
			fmt.Fprintln(stdout, "nothing to renew")
		}
		return nil
	case "extend":
		if o.root == "" {
			return errors.New("pki extend: --root DIR (the directory holding root.key) is required")
		}
		var kinds []pki.Kind
		if o.cas != "" {
			for _, c := range strings.Split(o.cas, ",") {
				k, err := pki.ParseKind(strings.TrimSpace(c))
				if err != nil {
					return fmt.Errorf("--ca: %w", err)
				}
				kinds = append(kinds, k)
			}
		}
		certs, err := s.Extend(ctx, o.root, kinds...)
		if err != nil {
			return err
		}
		for _, c := range certs {
			fmt.Fprintf(stdout, "extended %s until %s\n", c.Subject.CommonName, c.NotAfter.UTC().Format(time.DateOnly))
		}
		return nil
	}
	return nil
}

// issueUser writes NAME.pem (and, without --csr, NAME.key) into -o DIR;
// existing files are never overwritten.
func issueUser(ctx context.Context, s *pki.Store, o pkiFlags, stdout io.Writer) error {
	name := o.args[1]
	req, err := pki.UserRequest(name)
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(o.out, name+".pem"), filepath.Join(o.out, name+".key")
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil && (p == certPath || o.csr == "") {
			return fmt.Errorf("%s exists: choose another -o DIR or move it away", p)
		}
	}
	var is *pki.Issued
	if o.csr != "" {
		data, err := os.ReadFile(o.csr)
		if err != nil {
			return err
		}
		csr, err := pki.ParseCSR(data)
		if err != nil {
			return fmt.Errorf("%s: %w", o.csr, err)
		}
		if is, err = s.SignCSR(ctx, req, csr); err != nil {
			return err
		}
	} else {
		out, err := s.Issue(ctx, req)
		if err != nil {
			return err
		}
		is = out[0]
		if err := writeNew(keyPath, is.Key.Reveal(), 0o600); err != nil {
			return err
		}
	}
	if err := writeNew(certPath, is.CertPEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "issued %s for user %s until %s: %s\n", is.Serial, name, is.NotAfter.UTC().Format(time.DateOnly), certPath)
	return nil
}

// writeNew creates p with data (never over an existing file), fsynced.
func writeNew(p string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
	}
	return err
}

func printStatus(w io.Writer, entries []pki.Entry) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CA\tSTATE\tNOT AFTER\tSERIAL\tSUBJECT\tNAMES")
	for _, e := range entries {
		state := string(e.State)
		if e.Reason != "" {
			state += " (" + e.Reason + ")"
		}
		ca := string(e.CA)
		if e.IsCA {
			ca += " CA"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ca, state, e.NotAfter.UTC().Format(time.DateOnly), e.Serial, e.Subject, strings.Join(e.SANs, ","))
	}
	return tw.Flush()
}
