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
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/profiles/internal/parallel"
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
		jobs []*job
		idx  []int
		dirs = map[string]bool{}
	)
	seen := map[string]bool{}
	for _, r := range reqs {
		if seen[r.Slot] {
			return nil, fmt.Errorf("%s: asked for twice in one batch", r.Slot)
		}
		seen[r.Slot] = true
	}
	// The slots' keys, read on every core before the lock is taken.
	type kept struct {
		key crypto.Signer
		pem []byte
		err error
	}
	keys := make([]kept, len(reqs))
	err := parallel.Each(ctx, len(reqs), 16, func(_ *struct{}, i int) error {
		if reqs[i].PublicKey == nil && reqs[i].Slot != "" {
			k := &keys[i]
			k.key, k.pem, k.err = readKey(s.keyFile(reqs[i].Slot))
		}
		return nil
	})
	if err != nil {
		return nil, err
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
		j := &job{req: r, ca: ca}
		if r.PublicKey == nil {
			var key crypto.Signer
			if k := keys[i]; !revoked {
				if k.err != nil && !errors.Is(k.err, fs.ErrNotExist) {
					s.mu.Unlock()
					return nil, k.err
				}
				key, j.keyPEM = k.key, k.pem
			}
			if key == nil {
				// A new key: the signing workers make it and write
				// it beside its file. No certificate can fit it.
				j.keyFile = s.keyFile(r.Slot)
				dirs[filepath.Dir(j.keyFile)] = true
				jobs = append(jobs, j)
				idx = append(idx, i)
				continue
			}
			j.req.PublicKey = key.Public()
		}
		if latest != nil && !revoked {
			c, err := latest.parsed()
			if err != nil {
				s.mu.Unlock()
				return nil, err
			}
			if s.fits(c, j.req, ca, now) {
				out[i] = &Issued{Request: j.req, Serial: latest.rec.Serial, NotAfter: c.NotAfter, DER: c.Raw, CertPEM: certPEM(c.Raw)}
				if j.keyPEM != nil {
					out[i].Key = nodeconf.NewSecret("key of "+r.Slot, j.keyPEM)
				}
				continue
			}
		}
		jobs = append(jobs, j)
		idx = append(idx, i)
	}
	s.mu.Unlock()
	if len(jobs) == 0 {
		return out, nil
	}
	for d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	// The keys are on disk before any certificate for them is: the
	// workers write each new one to a temporary file, and it is put in
	// place, durably, before the log records the batch.
	if err := s.sign(ctx, jobs, now); err != nil {
		removeKeyTemps(jobs)
		return nil, err
	}
	if err := placeKeys(jobs); err != nil {
		removeKeyTemps(jobs)
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

// placeKeys puts the new keys of jobs in place (0600): the signing
// workers wrote each to a temporary file beside its own (not fsynced);
// one syncfs makes them durable, then each is renamed and a second
// syncfs makes the names durable — two flushes for any number of keys.
func placeKeys(jobs []*job) error {
	var dir string
	for _, j := range jobs {
		if j.keyFile != "" {
			dir = filepath.Dir(j.keyFile)
			break
		}
	}
	if dir == "" {
		return nil
	}
	if err := syncFS(dir); err != nil {
		return err
	}
	// rename(2) itself, on every core: os.Rename would lstat each target
	// first (to refuse a directory, which rename refuses too).
	err := parallel.Each(context.Background(), len(jobs), 16, func(_ *struct{}, i int) error {
		if f := jobs[i].keyFile; f != "" {
			if err := syscall.Rename(f+".tmp", f); err != nil {
				return fmt.Errorf("key %s: %w", f, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return syncFS(dir)
}

// removeKeyTemps removes what the workers wrote of a batch that failed.
func removeKeyTemps(jobs []*job) {
	for _, j := range jobs {
		if j.keyFile != "" {
			os.Remove(j.keyFile + ".tmp")
		}
	}
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
