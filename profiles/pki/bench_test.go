package pki

import (
	"context"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// BenchmarkSite5000 issues, for each node of a 5,000-node site, its host
// certificate and two service credentials (etcd: client and server, both
// modes; kubelet: client and server): 25,000 ECDSA P-256 signatures per
// iteration, into a fresh PKI. "issue" makes the keys and hands them
// back (Issue); "ensure" also keeps them in the private directory
// (Ensure); "certify" starts from the 5,000 rendered nodes and fills
// their conf.x509 (Certify: what a bake, serve and config write do). It
// reports signatures/s and the process's CPU time per iteration
// (cpu-s/op: every core, the garbage collector included), so that a run
// on a shared machine can be compared by its CPU as well as its wall.
func BenchmarkSite5000(b *testing.B) {
	const nodes = 5000
	var (
		reqs     []Request
		rendered []nodeconf.Node
	)
	for i := range nodes {
		h := Host{Name: fmt.Sprintf("node%04d", i), Domain: "example.org",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})}}
		rendered = append(rendered, nodeconf.Node{Node: h.Name, Domain: h.Domain, IPs: []string{h.IPs[0].String()},
			Conf: nodeconf.Conf{Credentials: []nodeconf.Credential{{Name: "etcd", ClientCertMode: "both", ServerCertMode: "both"}, {Name: "kubelet"}}}})
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
	for _, mode := range []string{"issue", "ensure", "certify"} {
		b.Run(mode, func(b *testing.B) {
			var spent, cpu time.Duration
			for range b.N {
				b.StopTimer()
				s := newSite(b, func(o *Options) { o.Now = time.Now })
				ns := make([]*nodeconf.Node, len(rendered))
				for i := range rendered {
					n := rendered[i]
					ns[i] = &n
				}
				b.StartTimer()
				start, cpu0 := time.Now(), cpuTime(b)
				var err error
				switch mode {
				case "issue":
					_, err = s.Issue(context.Background(), reqs...)
				case "ensure":
					_, err = s.Ensure(context.Background(), reqs...)
				default:
					err = s.Certify(context.Background(), ns, false)
				}
				if err != nil {
					b.Fatal(err)
				}
				spent += time.Since(start)
				cpu += cpuTime(b) - cpu0
			}
			b.ReportMetric(float64(len(reqs)*b.N)/spent.Seconds(), "signatures/s")
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

// cpuTime is the CPU (user and system) this process has used so far.
func cpuTime(b *testing.B) time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		b.Fatal(err)
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}
