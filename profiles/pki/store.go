package pki

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bellbuild/bellbuild/images/atomicfile"
)

// CA is one certificate authority of the site.
type CA struct {
	Kind Kind
	// Cert is the CA's current certificate; PEM is its encoding.
	Cert *x509.Certificate
	PEM  []byte
	// key signs; nil for the root, whose key stays offline.
	key crypto.Signer
}

// Store is an open PKI: its CAs, the sub-CA keys and the log. Its methods
// are safe for concurrent use, also by several processes (the log is
// appended under a file lock).
type Store struct {
	opts    Options
	pubDir  string // SITE/pki
	privDir string // PRIVATE/pki

	mu  sync.Mutex
	cas map[Kind]*CA
	log *serialLog
	st  state
}

// Paths of a PKI's files.
func (s *Store) certPath(k Kind) string { return filepath.Join(s.pubDir, string(k)+".pem") }
func (s *Store) crlPath(k Kind) string  { return filepath.Join(s.pubDir, string(k)+".crl.pem") }
func (s *Store) keyPath(k Kind) string  { return filepath.Join(s.privDir, string(k)+".key") }

// RootKeyFile is the root key's file name in the root-out directory.
const RootKeyFile = "root.key"

func dirsOf(o Options) (pub, priv string) {
	return PublicDir(o), filepath.Join(o.Private, "pki", o.Env)
}

// PublicDir is where the PKI of o keeps its certificates and CRLs:
// SITE/pki, or SITE/pki/ENV for an environment's own.
func PublicDir(o Options) string { return filepath.Join(o.Site, "pki", o.Env) }

// Init makes a site's PKI:
//  1. check that there is none (unless force) and that rootOut lies
//     outside the site and the private directory;
//  2. make the root CA and the hosts, services and users sub-CAs
//     (pathlen 0; hosts and services name-constrained when asked);
//  3. with force, move an existing PKI aside (renamed with a time stamp,
//     never deleted);
//  4. write the root key and certificate to rootOut, the sub-CA keys and
//     the log to PRIVATE/pki, the certificates and empty CRLs to SITE/pki,
//     each directory complete before it is renamed into place.
func Init(ctx context.Context, o Options, rootOut string, force bool) (*Store, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	pub, priv := dirsOf(o)
	// 1. Check.
	if rootOut == "" {
		return nil, errors.New("init: no root-out directory (the root key goes there, and then offline)")
	}
	for _, d := range []struct{ dir, what string }{{o.Site, "the site"}, {o.Private, "the private directory"}} {
		if inside(rootOut, d.dir) {
			return nil, fmt.Errorf("init: --root-out %s is inside %s (%s): the root key must go elsewhere, and then offline", rootOut, d.what, d.dir)
		}
	}
	if fi, err := os.Stat(o.Site); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("init: site directory %s: not a directory (%v)", o.Site, err)
	}
	var found []string
	for _, p := range []string{pub, priv, filepath.Join(rootOut, RootKeyFile)} {
		if _, err := os.Lstat(p); err == nil {
			found = append(found, p)
		}
	}
	if len(found) > 0 && !force {
		return nil, fmt.Errorf("init: %w (%s); --force keeps it aside and makes a new one", ErrExists, strings.Join(found, ", "))
	}
	if _, err := os.Stat(o.Private); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(o.Private, 0o700); err != nil {
			return nil, fmt.Errorf("private directory: %w", err)
		}
	}
	if err := checkPrivateDir(o.Private); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// 2. Make the CAs.
	now := o.Now()
	var log []record
	keys := map[Kind]crypto.Signer{}
	certs := map[Kind][]byte{}
	for _, k := range Kinds {
		if keys[k], err = newKey(o.Algorithm); err != nil {
			return nil, err
		}
	}
	root, err := caTemplate(o, Root, now, nil)
	if err != nil {
		return nil, err
	}
	if certs[Root], err = x509.CreateCertificate(rand.Reader, root, root, keys[Root].Public(), keys[Root]); err != nil {
		return nil, fmt.Errorf("root CA: %w", err)
	}
	rootCert, _ := x509.ParseCertificate(certs[Root])
	log = append(log, record{Op: "ca", Time: now, Serial: serialHex(rootCert.SerialNumber), CA: Root, Cert: certs[Root]})
	for _, k := range SubCAs {
		t, err := caTemplate(o, k, now, rootCert)
		if err != nil {
			return nil, err
		}
		if certs[k], err = x509.CreateCertificate(rand.Reader, t, rootCert, keys[k].Public(), keys[Root]); err != nil {
			return nil, fmt.Errorf("%s CA: %w", k, err)
		}
		log = append(log, record{Op: "ca", Time: now, Serial: serialHex(t.SerialNumber), CA: k, Cert: certs[k]})
	}
	crls := map[Kind][]byte{}
	for _, k := range Kinds {
		c, _ := x509.ParseCertificate(certs[k])
		next := now.Add(o.CRLValidity)
		if k == Root {
			next = rootCRLNext(o, now)
		}
		if crls[k], err = makeCRL(c, keys[k], 1, nil, now, next); err != nil {
			return nil, err
		}
		log = append(log, record{Op: "crl", Time: now, CA: k, Number: 1})
	}

	// 3. Keep an existing PKI aside.
	if len(found) > 0 {
		stamp := now.UTC().Format("20060102T150405Z")
		for _, p := range []string{pub, priv, filepath.Join(rootOut, RootKeyFile), filepath.Join(rootOut, "root.pem")} {
			if _, err := os.Lstat(p); err != nil {
				continue
			}
			to, err := aside(p, stamp)
			if err != nil {
				return nil, err
			}
			o.Log.Warn("pki init --force: kept the old PKI aside", "from", p, "to", to)
		}
	}

	// 4. Write: the root key first, so that nothing can exist that it
	// did not sign.
	if err := os.MkdirAll(rootOut, 0o700); err != nil {
		return nil, fmt.Errorf("root-out: %w", err)
	}
	rootKey, err := keyPEM(keys[Root])
	if err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(rootOut, RootKeyFile), rootKey, 0o600); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(rootOut, "root.pem"), certPEM(certs[Root]), 0o644); err != nil {
		return nil, err
	}
	privFiles := map[string][]byte{}
	for _, k := range SubCAs {
		if privFiles[string(k)+".key"], err = keyPEM(keys[k]); err != nil {
			return nil, err
		}
	}
	var logData []byte
	for i := range log {
		if logData, err = log[i].appendLine(logData); err != nil {
			return nil, err
		}
	}
	privFiles[logFile] = logData
	// An environment's hierarchy lies one level down: PRIVATE/pki/ENV.
	if err := os.MkdirAll(filepath.Dir(priv), 0o700); err != nil {
		return nil, err
	}
	if err := writeDir(priv, privFiles, 0o700, 0o600); err != nil {
		return nil, err
	}
	pubFiles := map[string][]byte{}
	for _, k := range Kinds {
		pubFiles[string(k)+".pem"] = certPEM(certs[k])
		pubFiles[string(k)+".crl.pem"] = crls[k]
	}
	if err := os.MkdirAll(filepath.Dir(pub), 0o755); err != nil {
		return nil, err
	}
	if err := writeDir(pub, pubFiles, 0o755, 0o644); err != nil {
		return nil, err
	}
	o.Log.Info("pki: made the root CA and the hosts, services and users CAs", "algorithm", o.Algorithm, "root_out", rootOut, "public", pub, "private", priv)
	return Open(o)
}

const logFile = "log.jsonl"

// inside reports whether p is dir or lies under it.
func inside(p, dir string) bool {
	ap, err1 := filepath.Abs(p)
	ad, err2 := filepath.Abs(dir)
	if err1 != nil || err2 != nil {
		return false
	}
	r, err := filepath.Rel(ad, ap)
	return err == nil && (r == "." || !strings.HasPrefix(r, ".."+string(filepath.Separator)) && r != "..")
}

// aside renames p to p.old-STAMP (or p.old-STAMP-N when taken).
func aside(p, stamp string) (string, error) {
	for i := 1; ; i++ {
		to := p + ".old-" + stamp
		if i > 1 {
			to = fmt.Sprintf("%s-%d", to, i)
		}
		if _, err := os.Lstat(to); err == nil {
			continue
		}
		if err := os.Rename(p, to); err != nil {
			return "", fmt.Errorf("keeping %s aside: %w", p, err)
		}
		return to, atomicfile.SyncDir(filepath.Dir(p))
	}
}

// writeDir makes dir with files in it: all of it is written to a
// temporary directory beside it, fsynced, then renamed into place.
func writeDir(dir string, files map[string][]byte, dirMode, fileMode fs.FileMode) error {
	tmp := dir + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(tmp, dirMode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, dirMode); err != nil {
		return err
	}
	for name, data := range files {
		if err := writeFile(filepath.Join(tmp, name), data, fileMode); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dir))
}

func certPEM(der []byte) []byte { return pemBlock("CERTIFICATE", der) }

// pemBlock is pem.EncodeToMemory of a block of type typ without headers,
// made in one allocation of its exact size: pem's encoder grows a
// buffer and allocates a base64 encoder for every certificate and key of
// a batch. (TestPEMBlock holds it to pem.EncodeToMemory.)
func pemBlock(typ string, der []byte) []byte {
	const perLine = 48 // bytes of DER in a line of 64 base64 characters
	lines := (len(der) + perLine - 1) / perLine
	n := 2*len(typ) + len("-----BEGIN -----\n-----END -----\n") + base64.StdEncoding.EncodedLen(len(der)) + lines
	b := make([]byte, 0, n)
	b = append(b, "-----BEGIN "...)
	b = append(b, typ...)
	b = append(b, "-----\n"...)
	for len(der) > 0 {
		k := min(len(der), perLine)
		b = base64.StdEncoding.AppendEncode(b, der[:k])
		b = append(b, '\n')
		der = der[k:]
	}
	b = append(b, "-----END "...)
	b = append(b, typ...)
	return append(b, "-----\n"...)
}

// newSerial is a random positive 128-bit serial number (RFC 5280 allows
// 20 octets), its first octet never zero so that every serial has the
// same length.
func newSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	b[0] = b[0]&0x7f | 0x40
	return new(big.Int).SetBytes(b), nil
}

func serialHex(n *big.Int) string { return n.Text(16) }

// ParseSerial reads a serial number as status prints it (hex, any case,
// colons allowed) and returns it in that form.
func ParseSerial(s string) (string, error) {
	n, ok := new(big.Int).SetString(strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(s), "0x"), ":", ""), 16)
	if !ok || n.Sign() <= 0 {
		return "", fmt.Errorf("serial %q: not a hexadecimal serial number", s)
	}
	return serialHex(n), nil
}

// caTemplate is the certificate of CA k (root: self-signed; sub-CAs:
// pathlen 0, and for hosts and services the name constraints when asked).
func caTemplate(o Options, k Kind, now time.Time, root *x509.Certificate) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{o.Name}, CommonName: o.Name + " " + string(k) + " CA"},
		NotBefore:             now.Add(-backdate),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if k == Root {
		t.NotAfter = now.Add(o.Validity.Root)
		t.MaxPathLen = 1
		return t, nil
	}
	t.NotAfter = clampEnd(now.Add(o.Validity.SubCA), root)
	t.MaxPathLen, t.MaxPathLenZero = 0, true
	if o.NameConstraints && (k == Hosts || k == Services) {
		t.PermittedDNSDomainsCritical = true
		t.PermittedDNSDomains = []string{o.Domain, "localhost"}
		nets := append([]netip.Prefix(nil), o.Subnets...)
		nets = append(nets, netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
		for _, p := range nets {
			p = p.Masked()
			t.PermittedIPRanges = append(t.PermittedIPRanges, &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
		}
	}
	return t, nil
}

// rootCRLNext is the next-update of the root's CRL: the root key is
// offline, so its (empty) CRL is re-signed only by init and extend and
// stays current as long as a sub-CA does.
func rootCRLNext(o Options, now time.Time) time.Time { return now.Add(o.Validity.SubCA) }

// clampEnd keeps a certificate's end within its issuer's.
func clampEnd(end time.Time, issuer *x509.Certificate) time.Time {
	if issuer != nil && end.After(issuer.NotAfter) {
		return issuer.NotAfter
	}
	return end
}

// Open opens a site's PKI:
//  1. the private directory must exist and be closed to others;
//  2. the CA certificates are read from SITE/pki, the sub-CAs checked
//     against the root and against their keys (PRIVATE/pki/KIND.key, 0600);
//  3. the log is read.
//
// An expired CA does not stop Open (Status shows it); issuing from it
// does, with the command that extends it.
func Open(o Options) (*Store, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	pub, priv := dirsOf(o)
	// 1. The private directory.
	if err := checkPrivateDir(o.Private); err != nil {
		return nil, err
	}
	s := &Store{opts: o, pubDir: pub, privDir: priv, cas: map[Kind]*CA{}, st: newState()}
	// 2. The CAs.
	if _, err := os.Stat(s.certPath(Root)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: make one with bellbuild pki init -C %s --root-out DIR", ErrNoPKI, pub, o.Site)
	}
	if fi, err := os.Stat(priv); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%s: the sub-CA keys and the log are not there (%v): is --private (or $BELLBUILD_PRIVATE) the directory pki init used?", priv, err)
	}
	for _, k := range Kinds {
		ca := &CA{Kind: k}
		if ca.Cert, ca.PEM, err = readCert(s.certPath(k)); err != nil {
			return nil, err
		}
		if !ca.Cert.IsCA {
			return nil, fmt.Errorf("%s: not a CA certificate", s.certPath(k))
		}
		if k != Root {
			if err := ca.Cert.CheckSignatureFrom(s.cas[Root].Cert); err != nil {
				return nil, fmt.Errorf("%s: not signed by the site's root CA (%s): %w", s.certPath(k), s.certPath(Root), err)
			}
			if ca.key, _, err = readKey(s.keyPath(k)); err != nil {
				return nil, err
			}
			if !samePublic(ca.key.Public(), ca.Cert.PublicKey) {
				return nil, fmt.Errorf("%s: %w %s (another site's certificate, or a --private that belongs to another site?)", s.certPath(k), ErrKeyMismatch, s.keyPath(k))
			}
		}
		s.cas[k] = ca
	}
	// 3. The log.
	s.log = &serialLog{path: filepath.Join(priv, logFile), lockPath: filepath.Join(priv, "lock")}
	if err := s.log.load(s.st.apply); err != nil {
		return nil, fmt.Errorf("pki log: %w", err)
	}
	return s, nil
}

func readCert(p string) (*x509.Certificate, []byte, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%s: not a PEM certificate", p)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	return c, certPEM(b.Bytes), nil
}

// CA returns the CA of kind k (nil for an unknown kind).
func (s *Store) CA(k Kind) *CA {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cas[k]
}

// Bundle is the PEM of every CA certificate, the root first: what a peer
// needs to verify any certificate of the site (ca.pem).
func (s *Store) Bundle() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []byte
	for _, k := range Kinds {
		out = append(out, s.cas[k].PEM...)
	}
	return out
}

// CRLs is the PEM of every CA's current CRL, the root's first (crl.pem).
func (s *Store) CRLs() ([]byte, error) {
	var out []byte
	for _, k := range Kinds {
		data, err := os.ReadFile(s.crlPath(k))
		if err != nil {
			return nil, fmt.Errorf("CRL: %w", err)
		}
		out = append(out, data...)
	}
	return out, nil
}

// usable returns the CA of kind k for signing at now, or an error that
// says how to extend it.
func (s *Store) usable(k Kind, now time.Time) (*CA, error) {
	ca := s.cas[k]
	if ca == nil || ca.key == nil {
		return nil, fmt.Errorf("%q is not a CA that issues certificates (hosts, services, users)", k)
	}
	root := s.cas[Root]
	for _, c := range []*CA{root, ca} {
		if now.After(c.Cert.NotAfter) {
			return nil, fmt.Errorf("the %s CA %w on %s: re-sign it with: bellbuild pki extend -C %s --root ROOT-DIR --ca %s", c.Kind, ErrExpired, c.Cert.NotAfter.UTC().Format(time.DateOnly), s.opts.Site, c.Kind)
		}
		if now.Before(c.Cert.NotBefore) {
			return nil, fmt.Errorf("the %s CA is not valid before %s (is the clock right?)", c.Kind, c.Cert.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	return ca, nil
}

// Close releases the store (it holds no open files between calls).
func (s *Store) Close() error { return nil }
