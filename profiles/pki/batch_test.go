package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// TestEnsureBatch: a batch large enough for every signing worker and for
// several chunks of the log (1,500 certificates, hosts and services) is
// stored whole: after reopening, the log holds each certificate as
// Ensure returned it, each verifies against the site's chain with its
// names and usage, each key file (0600, no temporary left) holds the
// key of its certificate, and a second Ensure reuses every certificate.
func TestEnsureBatch(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	var reqs []Request
	for i := range 300 {
		h := Host{Name: fmt.Sprintf("node%03d", i), Domain: "example.org",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), netip.MustParseAddr(fmt.Sprintf("fd00::%x", i))}}
		reqs = append(reqs, hostReq(t, h))
		for _, c := range []nodeconf.Credential{{Name: "etcd", ClientCertMode: "both", ServerCertMode: "both"}, {Name: "kubelet"}} {
			rs, err := ServiceRequests(h, c)
			if err != nil {
				t.Fatal(err)
			}
			reqs = append(reqs, rs...)
		}
	}
	out, err := s.Ensure(ctx, reqs...)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(s.privDir, logFile)); err != nil || fi.Size() < 1<<20+64<<10 {
		t.Fatalf("log of %v bytes (%v): the batch should take more than one chunk", fi.Size(), err)
	}
	st := s.reopen(t)
	for i, is := range out {
		r := reqs[i]
		e := st.st.latest(r.Slot)
		if e == nil || e.rec.Serial != is.Serial || !bytes.Equal(e.rec.Cert, mustCert(t, is).Raw) {
			t.Fatalf("%s: the log does not hold the certificate Ensure returned (serial %s)", r.Slot, is.Serial)
		}
		c, err := x509.ParseCertificate(e.rec.Cert)
		if err != nil {
			t.Fatalf("%s: %v", r.Slot, err)
		}
		for _, u := range c.ExtKeyUsage {
			if err := verify(t, s, c, u); err != nil {
				t.Errorf("%s: %v", r.Slot, err)
			}
		}
		var ips []netip.Addr
		for _, ip := range c.IPAddresses {
			a, _ := netip.AddrFromSlice(ip)
			ips = append(ips, a.Unmap())
		}
		if c.Subject.CommonName != r.CommonName || !slices.Equal(c.DNSNames, r.DNSNames) || !slices.Equal(ips, r.IPs) || modeOf(c) != r.Mode {
			t.Errorf("%s: CN %q, DNS %q, IPs %v, mode %s; want %q, %q, %v, %s", r.Slot, c.Subject.CommonName, c.DNSNames, ips, modeOf(c), r.CommonName, r.DNSNames, r.IPs, r.Mode)
		}
		if pub, ok := is.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(c.PublicKey) {
			t.Errorf("%s: Issued.PublicKey is a %T, not the certificate's", r.Slot, is.PublicKey)
		}
		kf := st.keyFile(r.Slot)
		k, data, err := readKey(kf)
		if err != nil {
			t.Fatalf("%s: %v", r.Slot, err)
		}
		if !samePublic(k.Public(), c.PublicKey) || !bytes.Equal(data, is.Key.Reveal()) {
			t.Errorf("%s: %s is not the key of the certificate, or not the key Ensure returned", r.Slot, kf)
		}
	}
	for _, dir := range []string{"host", "service"} {
		tmp, _ := filepath.Glob(filepath.Join(s.privDir, "keys", dir, "*.tmp"))
		if len(tmp) > 0 {
			t.Errorf("temporary key files left: %q", tmp)
		}
	}
	again, err := st.Ensure(ctx, reqs...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range again {
		if again[i].Serial != out[i].Serial {
			t.Fatalf("%s: second Ensure issued %s, the first %s", reqs[i].Slot, again[i].Serial, out[i].Serial)
		}
	}
}
