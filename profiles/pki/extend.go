package pki

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"slices"
)

// Extend re-signs CAs with a new validity and the same key and subject,
// so that every certificate they issued stays valid: kinds are sub-CAs
// (all three when none is named) and may include the root (re-signed by
// itself, first). It needs the root key, read from rootDir (root.key, as
// Init wrote it), and:
//  1. checks the root key against SITE/pki/root.pem;
//  2. signs the new certificates (a sub-CA ends no later than the root);
//  3. records them in the log, then replaces SITE/pki/KIND.pem atomically;
//  4. re-signs the root's CRL.
func (s *Store) Extend(ctx context.Context, rootDir string, kinds ...Kind) ([]*x509.Certificate, error) {
	if len(kinds) == 0 {
		kinds = SubCAs
	}
	for _, k := range kinds {
		if _, err := ParseKind(string(k)); err != nil {
			return nil, err
		}
	}
	// 1. The root key.
	keyPath := filepath.Join(rootDir, RootKeyFile)
	rootKey, _, err := readKey(keyPath)
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	root := s.cas[Root]
	if !samePublic(rootKey.Public(), root.Cert.PublicKey) {
		return nil, fmt.Errorf("%s: %w %s", s.certPath(Root), ErrKeyMismatch, keyPath)
	}
	now := s.opts.Now()
	// 2. Sign, the root first.
	made := map[Kind]*x509.Certificate{}
	var recs []record
	order := slices.Clone(kinds)
	slices.SortFunc(order, func(a, b Kind) int { return slices.Index(Kinds, a) - slices.Index(Kinds, b) })
	order = slices.Compact(order)
	for _, k := range order {
		old := s.cas[k].Cert
		serial, err := newSerial()
		if err != nil {
			return nil, err
		}
		t := &x509.Certificate{
			SerialNumber:                serial,
			Subject:                     old.Subject,
			SubjectKeyId:                old.SubjectKeyId,
			NotBefore:                   now.Add(-backdate),
			KeyUsage:                    old.KeyUsage,
			BasicConstraintsValid:       true,
			IsCA:                        true,
			MaxPathLen:                  old.MaxPathLen,
			MaxPathLenZero:              old.MaxPathLenZero,
			PermittedDNSDomainsCritical: old.PermittedDNSDomainsCritical,
			PermittedDNSDomains:         old.PermittedDNSDomains,
			PermittedIPRanges:           old.PermittedIPRanges,
		}
		parent := root.Cert
		if k == Root {
			t.NotAfter = now.Add(s.opts.Validity.Root)
			parent = t
		} else {
			if nr := made[Root]; nr != nil {
				parent = nr
			}
			t.NotAfter = clampEnd(now.Add(s.opts.Validity.SubCA), parent)
		}
		der, err := x509.CreateCertificate(rand.Reader, t, parent, old.PublicKey, rootKey)
		if err != nil {
			return nil, fmt.Errorf("extend %s CA: %w", k, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		made[k] = c
		recs = append(recs, record{Op: "ca", Time: now, Serial: serialHex(c.SerialNumber), CA: k, Cert: der})
	}
	// 3. Record, then write.
	recs = append(recs, record{Op: "crl", Time: now, CA: Root})
	err = s.log.commit(recs, s.st.apply, func() error {
		for i := range recs {
			if recs[i].Op == "crl" {
				recs[i].Number = s.st.crl[Root] + 1
			}
			if _, dup := s.st.serials[recs[i].Serial]; recs[i].Op == "ca" && dup {
				return fmt.Errorf("serial %s is already in the log (drawn twice): nothing was extended, try again", recs[i].Serial)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, k := range order {
		c := made[k]
		if err := writeFile(s.certPath(k), certPEM(c.Raw), 0o644); err != nil {
			return out, err
		}
		s.cas[k] = &CA{Kind: k, Cert: c, PEM: certPEM(c.Raw), key: s.cas[k].key}
		out = append(out, c)
		s.opts.Log.Info("pki: CA extended", "ca", k, "not_after", c.NotAfter, "serial", serialHex(c.SerialNumber))
	}
	// 4. The root's CRL (the root revokes nothing bellbuild issues, but
	// a CRL for every CA of a chain is what crl_check_all wants).
	data, err := makeCRL(s.cas[Root].Cert, rootKey, s.st.crl[Root], nil, now, rootCRLNext(s.opts, now))
	if err != nil {
		return out, err
	}
	if err := writeFile(s.crlPath(Root), data, 0o644); err != nil {
		return out, err
	}
	return out, ctx.Err()
}
