package firstboot

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// credentialsModule installs the X.509 credentials the site's PKI issued
// (conf.credentials declares them, conf.x509 holds the material):
//
//	/etc/credentials/x509/ca.pem                       the site's CAs (0644 root)
//	/etc/credentials/x509/crl.pem                      their CRLs (0644 root)
//	/etc/credentials/x509/host/                        0750 root:root
//	    cert.pem                                       0644 root (the host certificate)
//	    private_key.pem                                0400 root
//	/etc/credentials/x509/NAME/                        0750 root:GROUP
//	/etc/credentials/x509/NAME/{client,server}/        0750 root:GROUP
//	    cert.pem                                       0644 root:GROUP
//	    private_key.pem                                0400 OWNER:GROUP
//
// The directories belong to root, so the service can read its files but
// cannot swap them (or plant a link where bellbuild writes). OWNER
// defaults to root and GROUP to the owner's primary group.
//
// A side (client or server) whose private key the configuration does not
// carry is pending: nothing of it is written or removed, the run reports
// it as pending (neither a change nor an error), and a key delivered
// later completes it. Files go through the ledger (key: the path), so a
// renewed certificate replaces the old one in one rename and a
// credential that leaves the configuration takes its files and
// directories (key: "dir:PATH") with it.
type credentialsModule struct{}

func init() { register(credentialsModule{}) }

func (credentialsModule) Name() string { return "credentials" }

const credRoot = nodeconf.CredentialsDir

// credDir is a directory the module manages.
type credDir struct {
	path string
	meta host.Meta
}

// credPlan is what the configuration asks of the root.
type credPlan struct {
	dirs  []credDir
	files []host.FileItem
	// keep are ledger keys of pending sides: left as they are.
	keep map[string]bool
	// pending name what waits for its key.
	pending []string
	// pairs are the certificates installed with their keys.
	pairs []credPair
}

// credPair is a certificate and its key, installed in dir. Its sum
// (of both) is what the record of the directory keeps (Extra "pair")
// once the pair passed checkPair, so that a later run does not parse
// them again to check that they belong together.
type credPair struct {
	dir, sum string
}

func newCredPair(dir string, cert string, key nodeconf.Secret) credPair {
	return credPair{dir, host.Hash([]byte(cert))[:16] + " " + host.Hash(key.Reveal())[:16]}
}

// checked reports whether c is the pair installed in its directory: it
// passed checkPair in the run that installed it.
func (c credPair) checked(h *host.Host) bool {
	rec, ok := h.Ledger.Get("credentials", "dir:"+c.dir)
	return ok && rec.Extra["pair"] == c.sum
}

// credIDs resolves a credential's owner and group; names uamlite creates
// in this run resolve to -1 under check.
func credIDs(h *host.Host, c nodeconf.Credential, later map[string]bool, check bool) (uid, gid int, err error) {
	owner := c.Owner
	if owner == "" {
		owner = "root"
	}
	if check && later[owner] {
		uid = -1
	} else if uid, err = h.LookupUser(owner); err != nil {
		return 0, 0, fmt.Errorf("owner: %w", err)
	}
	switch {
	case c.Group != "" && check && later[c.Group]:
		gid = -1
	case c.Group != "":
		if gid, err = h.LookupGroup(c.Group); err != nil {
			return 0, 0, fmt.Errorf("group: %w", err)
		}
	case check && later[owner]:
		gid = -1
	default:
		if _, nerr := strconv.Atoi(owner); nerr == nil {
			gid = uid
		} else if gid, err = h.PrimaryGroup(owner); err != nil {
			return 0, 0, fmt.Errorf("group: %w", err)
		}
	}
	return uid, gid, nil
}

// plan works out the directories and files conf asks for. With check it
// also parses the material (certificates, keys, CRLs) and reports what
// does not fit; it never changes anything.
func credentialsPlan(h *host.Host, conf *nodeconf.Conf, check bool) (*credPlan, []error) {
	p := &credPlan{keep: map[string]bool{}}
	var errs []error
	x := conf.X509
	if x == nil {
		x = &nodeconf.X509{}
	}
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if x.CA != "" {
		if check && countPEM(x.CA, "CERTIFICATE") == 0 {
			bad("x509.ca: no PEM certificate")
		}
		p.files = append(p.files, host.FileItem{Key: credRoot + "/ca.pem", Spec: host.FileSpec{Path: credRoot + "/ca.pem", Data: []byte(x.CA), Mode: 0o644}})
	} else if len(conf.Credentials) > 0 {
		p.pending = append(p.pending, "ca.pem")
		p.keep[credRoot+"/ca.pem"] = true
	}
	if x.CRL != "" {
		if check && countPEM(x.CRL, "X509 CRL") == 0 {
			bad("x509.crl: no PEM CRL")
		}
		p.files = append(p.files, host.FileItem{Key: credRoot + "/crl.pem", Spec: host.FileSpec{Path: credRoot + "/crl.pem", Data: []byte(x.CRL), Mode: 0o644}})
	} else if len(conf.Credentials) > 0 {
		p.keep[credRoot+"/crl.pem"] = true
	}
	if x.Host != nil {
		p.hostPlan(h, x.Host, check, bad)
	}
	later := uamliteNames(conf)
	creds := append([]nodeconf.Credential(nil), conf.Credentials...)
	sort.Slice(creds, func(i, j int) bool { return creds[i].Name < creds[j].Name })
	// Most credentials share an owner (root): each pair is looked up once.
	type account struct{ owner, group string }
	type accountIDs struct {
		uid, gid int
		err      error
	}
	looked := map[account]accountIDs{}
	for _, c := range creds {
		base := path.Join(credRoot, c.Name)
		ids, ok := looked[account{c.Owner, c.Group}]
		if !ok {
			ids.uid, ids.gid, ids.err = credIDs(h, c, later, check)
			looked[account{c.Owner, c.Group}] = ids
		}
		uid, gid, err := ids.uid, ids.gid, ids.err
		if err != nil {
			bad("%s: %w", c.Name, err)
			continue
		}
		issued := x.Credentials[c.Name]
		baseDone := false
		for _, side := range []struct {
			name    string
			enabled bool
			cert    *nodeconf.IssuedCert
		}{{"client", c.ClientEnabled(), issued.Client}, {"server", c.ServerEnabled(), issued.Server}} {
			if !side.enabled {
				continue
			}
			dir := path.Join(base, side.name)
			certPath, keyPath := path.Join(dir, "cert.pem"), path.Join(dir, "private_key.pem")
			key := nodeconf.Secret{}
			if side.cert != nil {
				key = side.cert.Key
				if key.IsZero() {
					// A renewed certificate for the key in place (pki renew
					// keeps keys) is installed without its key.
					key = installedKey(h, keyPath, side.cert.Cert)
				}
			}
			if key.IsZero() {
				p.pending = append(p.pending, c.Name+"/"+side.name)
				for _, k := range []string{certPath, keyPath, "dir:" + dir, "dir:" + base} {
					p.keep[k] = true
				}
				continue
			}
			pair := newCredPair(dir, side.cert.Cert, key)
			if check && !pair.checked(h) {
				if err := checkPair(side.cert.Cert, key); err != nil {
					bad("x509.credentials.%s.%s: %w", c.Name, side.name, err)
				}
			}
			p.pairs = append(p.pairs, pair)
			if !baseDone {
				p.dirs = append(p.dirs, credDir{base, host.Meta{Mode: 0o750, UID: 0, GID: gid}})
				baseDone = true
			}
			p.dirs = append(p.dirs, credDir{dir, host.Meta{Mode: 0o750, UID: 0, GID: gid}})
			p.files = append(p.files,
				host.FileItem{Key: certPath, Spec: host.FileSpec{Path: certPath, Data: []byte(side.cert.Cert), Mode: 0o644, UID: 0, GID: gid}},
				host.FileItem{Key: keyPath, Spec: host.FileSpec{Path: keyPath, Data: key.Reveal(), Mode: 0o400, UID: uid, GID: gid, Secret: true}})
		}
	}
	if check {
		// What is not bellbuild's yet must be of the right kind. What the
		// ledger holds was when it was last applied; Apply sees what
		// changed since and repairs it (ensureCredDir, host.EnsureFiles),
		// or reports it and leaves what lies under it alone.
		for _, d := range p.dirs {
			if _, owned := h.Ledger.Get("credentials", "dir:"+d.path); owned {
				continue
			}
			if fi, err := h.Lstat(d.path); err == nil && !fi.IsDir() {
				bad("%s: exists and is not a directory (%s)", d.path, fi.Mode().Type())
			}
		}
		for _, f := range p.files {
			if _, owned := h.Ledger.Get("credentials", f.Key); owned {
				continue
			}
			if fi, err := h.Lstat(f.Spec.Path); err == nil && !fi.Mode().IsRegular() {
				bad("%s: exists and is not a regular file (%s)", f.Spec.Path, fi.Mode().Type())
			}
		}
	}
	return p, errs
}

// hostDir is where the host certificate and its key go. (Enrolment
// makes the key there on the node; a key the configuration does not
// carry is left to it.)
const hostDir = credRoot + "/host"

// hostPlan adds the host certificate: root's, like the host's SSH keys.
// Without its key (here or installed for it) it is pending.
func (p *credPlan) hostPlan(h *host.Host, c *nodeconf.IssuedCert, check bool, bad func(string, ...any)) {
	certPath, keyPath := hostDir+"/cert.pem", hostDir+"/private_key.pem"
	key := c.Key
	if key.IsZero() {
		key = installedKey(h, keyPath, c.Cert)
	}
	if key.IsZero() {
		p.pending = append(p.pending, "host")
		for _, k := range []string{certPath, keyPath, "dir:" + hostDir} {
			p.keep[k] = true
		}
		return
	}
	pair := newCredPair(hostDir, c.Cert, key)
	if check && !pair.checked(h) {
		if err := checkPair(c.Cert, key); err != nil {
			bad("x509.host: %w", err)
		}
	}
	p.pairs = append(p.pairs, pair)
	p.dirs = append(p.dirs, credDir{hostDir, host.Meta{Mode: 0o750}})
	p.files = append(p.files,
		host.FileItem{Key: certPath, Spec: host.FileSpec{Path: certPath, Data: []byte(c.Cert), Mode: 0o644}},
		host.FileItem{Key: keyPath, Spec: host.FileSpec{Path: keyPath, Data: key.Reveal(), Mode: 0o400, Secret: true}})
}

func countPEM(data, typ string) int {
	n := 0
	rest := []byte(data)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return n
		}
		if b.Type == typ {
			n++
		}
	}
}

// checkPair parses a certificate and its key and checks that they belong
// together. Errors never quote the key.
func checkPair(certPEM string, key nodeconf.Secret) error {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return err
	}
	pub, err := publicOf(key)
	if err != nil {
		return err
	}
	if !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("the key does not belong to the certificate (CN %s)", cert.Subject.CommonName)
	}
	return nil
}

func parseCertPEM(data string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(data))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("cert: not a PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("cert: %w", err)
	}
	return c, nil
}

// publicOf is the public key of a PKCS#8 PEM private key.
func publicOf(key nodeconf.Secret) (interface{ Equal(crypto.PublicKey) bool }, error) {
	b, _ := pem.Decode(key.Reveal())
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("key: not a PKCS#8 PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, errors.New("key: not a PKCS#8 private key")
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key: cannot sign")
	}
	pub, ok := s.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return nil, errors.New("key: unknown kind")
	}
	return pub, nil
}

// installedKey is the key bellbuild installed at keyPath, when it belongs
// to certPEM; else a zero Secret.
func installedKey(h *host.Host, keyPath, certPEM string) nodeconf.Secret {
	if _, owned := h.Ledger.Get("credentials", keyPath); !owned {
		return nodeconf.Secret{}
	}
	data, err := h.ReadFile(keyPath)
	if err != nil {
		return nodeconf.Secret{}
	}
	key := nodeconf.NewSecret(keyPath, data)
	if checkPair(certPEM, key) != nil {
		return nodeconf.Secret{}
	}
	return key
}

func (credentialsModule) Check(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	_, errs := credentialsPlan(h, conf, true)
	return errs
}

func (credentialsModule) Apply(_ context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	p, errs := credentialsPlan(h, conf, false)
	if len(errs) > 0 {
		return errs
	}
	want := map[string]bool{}
	for k := range p.keep {
		want[k] = true
	}
	// 1. Directories, parents first. Nothing is made or written under
	// one that failed (no longer a directory: a link may lead elsewhere).
	var failed []string
	under := func(p string) bool {
		return slices.ContainsFunc(failed, func(d string) bool { return strings.HasPrefix(p, d+"/") })
	}
	for _, d := range p.dirs {
		want["dir:"+d.path] = true
		if under(d.path) {
			continue
		}
		if err := ensureCredDir(h, d); err != nil {
			errs = append(errs, err)
			failed = append(failed, d.path)
		}
	}
	// 2. Files.
	files := make([]host.FileItem, 0, len(p.files))
	for _, f := range p.files {
		want[f.Key] = true
		if !under(f.Spec.Path) {
			files = append(files, f)
		}
	}
	_, ferrs := h.EnsureFiles("credentials", files)
	errs = append(errs, ferrs...)
	notePairs(h, p.pairs)
	// 3. What left: files first, then directories, deepest first.
	var dirs []string
	for _, k := range h.Ledger.Keys("credentials") {
		if want[k] {
			continue
		}
		if d, ok := strings.CutPrefix(k, "dir:"); ok {
			dirs = append(dirs, d)
			continue
		}
		if _, err := h.ReleaseFile("credentials", k, k); err != nil {
			errs = append(errs, err)
		}
	}
	sort.Slice(dirs, func(i, j int) bool { return dirs[i] > dirs[j] })
	for _, d := range dirs {
		if err := releaseCredDir(h, d); err != nil {
			errs = append(errs, err)
		}
	}
	for _, item := range p.pending {
		errs = append(errs, &pendingError{item: item, why: "no private key yet"})
	}
	return errs
}

// notePairs records each pair in the record of its directory. Every
// pair Apply gets passed checkPair, in this run's checks or in the run
// that recorded it (the checks run first and stop the run on an error).
func notePairs(h *host.Host, pairs []credPair) {
	if h.Plan {
		return
	}
	for _, c := range pairs {
		key := "dir:" + c.dir
		rec, ok := h.Ledger.Get("credentials", key)
		if !ok || rec.Extra["pair"] == c.sum {
			continue
		}
		rec.Extra = maps.Clone(rec.Extra)
		if rec.Extra == nil {
			rec.Extra = map[string]string{}
		}
		rec.Extra["pair"] = c.sum
		h.Ledger.Put("credentials", key, rec)
	}
}

// ensureCredDir makes d.path a directory with d.meta, recording it first
// (with the owner and mode it had, when it was there before).
func ensureCredDir(h *host.Host, d credDir) error {
	key := "dir:" + d.path
	rec, owned := h.Ledger.Get("credentials", key)
	fi, err := h.Lstat(d.path)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", d.path, err)
	}
	if exists && !fi.IsDir() {
		return fmt.Errorf("%s: exists and is not a directory", d.path)
	}
	var cur host.Meta
	if exists {
		cur = host.MetaOf(fi)
		if cur == d.meta && owned && rec.Extra["set"] == d.meta.String() {
			return nil
		}
	}
	if !owned {
		rec = host.Record{}
		if exists {
			rec.HadOriginal, rec.Original = true, cur.String()
		}
	}
	rec.Extra = map[string]string{"set": d.meta.String()}
	if exists && cur == d.meta {
		// Already right: take it over without a change.
		if !h.Plan {
			h.Ledger.Put("credentials", key, rec)
		}
		return nil
	}
	action, from := "create", ""
	if exists {
		action, from = "update", cur.String()
	}
	h.Record(host.Change{Module: "credentials", Item: d.path, Action: action, From: from, To: d.meta.String()})
	if h.Plan {
		return nil
	}
	h.Ledger.Put("credentials", key, rec)
	if err := h.SaveLedger(); err != nil {
		return err
	}
	if !exists {
		rel := strings.TrimPrefix(d.path, "/")
		if err := h.Root().MkdirAll(path.Dir(rel), 0o755); err != nil {
			return fmt.Errorf("%s: %w", d.path, err)
		}
		if err := h.Root().Mkdir(rel, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", d.path, err)
		}
	}
	if err := h.SetMeta(d.path, d.meta); err != nil {
		return fmt.Errorf("%s: %w", d.path, err)
	}
	return nil
}

// releaseCredDir undoes ensureCredDir: a directory bellbuild made is
// removed (when empty: something else in it is a conflict, left alone);
// one that was there gets its owner and mode back.
func releaseCredDir(h *host.Host, p string) error {
	key := "dir:" + p
	rec, _ := h.Ledger.Get("credentials", key)
	fi, err := h.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !fi.IsDir() {
		if !h.Plan {
			h.Ledger.Delete("credentials", key)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if rec.HadOriginal {
		orig, ok := host.ParseMeta(rec.Original)
		if !ok {
			return fmt.Errorf("%s: ledger holds no usable original (%q)", p, rec.Original)
		}
		if cur, err := h.StatMeta(p); err == nil && cur != orig {
			h.Record(host.Change{Module: "credentials", Item: p, Action: "revert", From: cur.String(), To: orig.String()})
			if !h.Plan {
				if err := h.SetMeta(p, orig); err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
			}
		}
	} else {
		if entries, err := fs.ReadDir(h.Root().FS(), strings.TrimPrefix(p, "/")); err == nil && len(entries) > 0 && !h.Plan {
			return fmt.Errorf("%s: %w: holds files bellbuild did not write; not removed", p, host.ErrConflict)
		}
		h.Record(host.Change{Module: "credentials", Item: p, Action: "remove"})
		if !h.Plan {
			if err := h.Remove(p); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	if !h.Plan {
		h.Ledger.Delete("credentials", key)
		return h.SaveLedger()
	}
	return nil
}
