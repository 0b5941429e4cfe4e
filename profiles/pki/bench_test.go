package pki

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// BenchmarkSite5000 issues, for each node of a 5,000-node site, its host
// certificate and two service credentials (etcd: client and server, both
// modes; kubelet: client and server): 25,000 ECDSA P-256 signatures per
// iteration, into a fresh PKI. "issue" makes the keys and hands them
// back (Issue); "ensure" also keeps them in the private directory
// (Ensure, what a config volume write uses). It reports signatures/s.
func BenchmarkSite5000(b *testing.B) {
	const nodes = 5000
	var reqs []Request
	for i := range nodes {
		h := Host{Name: fmt.Sprintf("node%04d", i), Domain: "example.org",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})}}
		r, err := HostRequest(h)
		if err != nil {
			b.Fatal(err)
		}
		reqs = append(reqs, r)
		for _, c := range []nodeconf.Credential{{Name: "etcd", ClientCertMode: "both", ServerCertMode: "both"}, {Name: "kubelet"}} {
			rs, err := ServiceRequests(h, c)
			if err != nil {
				b.Fatal(err)
			}
			reqs = append(reqs, rs...)
		}
	}
	for _, mode := range []string{"issue", "ensure"} {
		b.Run(mode, func(b *testing.B) {
			var spent time.Duration
			for range b.N {
				b.StopTimer()
				s := newSite(b, func(o *Options) { o.Now = time.Now })
				b.StartTimer()
				start := time.Now()
				var err error
				if mode == "issue" {
					_, err = s.Issue(context.Background(), reqs...)
				} else {
					_, err = s.Ensure(context.Background(), reqs...)
				}
				if err != nil {
					b.Fatal(err)
				}
				spent += time.Since(start)
			}
			b.ReportMetric(float64(len(reqs)*b.N)/spent.Seconds(), "signatures/s")
		})
	}
}
