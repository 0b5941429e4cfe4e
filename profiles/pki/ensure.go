package pki

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// keyFile is where Ensure keeps the key of slot: PRIVATE/pki/keys/KIND/REST.key
// with the slot's other parts joined by "+" (no node or credential name
// holds one).
func (s *Store) keyFile(slot string) string {
	kind, rest, _ := strings.Cut(slot, "/")
	return filepath.Join(s.privDir, "keys", kind, strings.ReplaceAll(rest, "/", "+")+".key")
}

// Ensure returns, for each request, its slot's newest certificate when it
// still fits — same CA, common name, names, usage and key, not revoked,
// not yet in its renewal window — and otherwise issues a new one (one
// batch, as Issue). A request without a public key uses the slot's key
// kept in PRIVATE/pki/keys (made on first use, and anew after the slot's
// certificate was revoked): the same node gets the same key and
// certificate every time until renewal, and Issued.Key holds the key.
func (s *Store) Ensure(ctx context.Context, reqs ...Request) ([]*Issued, error) {
	now := s.opts.Now()
	out := make([]*Issued, len(reqs))
	var (
		jobs    []*job
		idx     []int
		newKeys = map[string][]byte{}
	)
	seen := map[string]bool{}
	for _, r := range reqs {
		if seen[r.Slot] {
			return nil, fmt.Errorf("%s: asked for twice in one batch", r.Slot)
		}
		seen[r.Slot] = true
	}
	s.mu.Lock()
	for i, r := range reqs {
		ca, err := s.usable(r.CA, now)
		if err == nil {
			r, err = s.allowed(r, ca)
		}
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		latest := s.st.latest(r.Slot)
		revoked := false
		if latest != nil {
			_, revoked = s.st.revoked[latest.rec.Serial]
		}
		var key crypto.Signer
		var kpem []byte
		if r.PublicKey == nil {
			if !revoked {
				key, kpem, err = readKey(s.keyFile(r.Slot))
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					s.mu.Unlock()
					return nil, err
				}
			}
			if key == nil {
				if key, err = newKey(s.opts.Algorithm); err == nil {
					kpem, err = keyPEM(key)
				}
				if err != nil {
					s.mu.Unlock()
					return nil, err
				}
				newKeys[s.keyFile(r.Slot)] = kpem
			}
			r.PublicKey = key.Public()
		}
		if latest != nil && !revoked {
			c, err := latest.parsed()
			if err != nil {
				s.mu.Unlock()
				return nil, err
			}
			if s.fits(c, r, ca, now) {
				out[i] = &Issued{Request: r, Serial: latest.rec.Serial, Cert: c, CertPEM: certPEM(c.Raw)}
				if kpem != nil {
					out[i].Key = nodeconf.NewSecret("key of "+r.Slot, kpem)
				}
				continue
			}
		}
		jobs = append(jobs, &job{req: r, ca: ca, keyPEM: kpem})
		idx = append(idx, i)
	}
	s.mu.Unlock()
	if len(jobs) == 0 {
		return out, nil
	}
	// The keys are on disk before any certificate for them is.
	if err := writeKeys(newKeys); err != nil {
		return nil, err
	}
	if err := s.sign(ctx, jobs, now); err != nil {
		return nil, err
	}
	if err := s.record(jobs, now); err != nil {
		return nil, err
	}
	for n, j := range jobs {
		out[idx[n]] = j.out
	}
	return out, nil
}

// fits reports whether certificate c answers r at now.
func (s *Store) fits(c *x509.Certificate, r Request, ca *CA, now time.Time) bool {
	if !slices.Equal(c.AuthorityKeyId, ca.Cert.SubjectKeyId) || c.Subject.CommonName != r.CommonName || modeOf(c) != r.Mode {
		return false
	}
	if !samePublic(r.PublicKey, c.PublicKey) || !now.Before(s.renewAt(c)) {
		return false
	}
	if !sameSet(c.DNSNames, r.DNSNames) {
		return false
	}
	ips := make([]netip.Addr, len(c.IPAddresses))
	for i, ip := range c.IPAddresses {
		a, _ := netip.AddrFromSlice(ip)
		ips[i] = a.Unmap()
	}
	want := make([]netip.Addr, len(r.IPs))
	for i, a := range r.IPs {
		want[i] = a.Unmap()
	}
	return sameSet(ips, want)
}

func sameSet[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// renewAt is when c is due for renewal: RenewBefore, or a third of its
// lifetime, before its end.
func (s *Store) renewAt(c *x509.Certificate) time.Time {
	w := s.opts.RenewBefore
	if w == 0 {
		w = c.NotAfter.Sub(c.NotBefore) / 3
	}
	return c.NotAfter.Add(-w)
}

// writeKeys puts new key files in place (0600): every temporary file is
// written, one syncfs makes them durable, then each is renamed and a
// second syncfs makes the names durable — two flushes for any number of
// keys.
func writeKeys(keys map[string][]byte) error {
	if len(keys) == 0 {
		return nil
	}
	var dir string
	for p, data := range keys {
		dir = filepath.Dir(p)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := writeTemp(p, data, 0o600, false); err != nil {
			return err
		}
	}
	if err := syncFS(dir); err != nil {
		return err
	}
	for p := range keys {
		if err := os.Rename(p+".tmp", p); err != nil {
			return fmt.Errorf("key %s: %w", p, err)
		}
	}
	return syncFS(dir)
}

// syncFS flushes the file system that holds dir.
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}
