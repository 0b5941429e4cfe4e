package boot

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func TestParseNetSpec(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "52:54:00:00:00:01,192.0.2.100,255.255.255.0,192.0.2.1", want: "52:54:00:00:00:01 192.0.2.100 ffffff00 192.0.2.1"},
		{in: "52:54:00:00:00:01,192.0.2.100,255.255.255.0,", want: "52:54:00:00:00:01 192.0.2.100 ffffff00 <nil>"},
		{in: "52:54:00:00:00:01,192.0.2.100,255.255.255.0", err: "want MAC,IP,NETMASK,GATEWAY"},
		{in: "${mac},${ip},${netmask},${gateway}", err: "bad MAC"},
		{in: "52:54:00:00:00:01,fd00::1,255.255.255.0,", err: "bad IPv4 address"},
		{in: "52:54:00:00:00:01,192.0.2.100,255.0.255.0,", err: "bad netmask"},
		{in: "52:54:00:00:00:01,192.0.2.100,255.255.255.0,gw", err: "bad gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := ParseNetSpec(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.MAC.String() + " " + s.IP.String() + " " + s.Mask.String() + " " + s.Gateway.String(); got != tt.want {
				t.Errorf("= %s, want %s", got, tt.want)
			}
		})
	}
}

const netUpEnv = "BELLBUILD_NETUP_CHILD"

// TestNetUp brings a veth up inside a network namespace the test made, as
// the init does with bellbuild.net=, and reads back its address and the
// default route with ip(8).
func TestNetUp(t *testing.T) {
	if spec := os.Getenv(netUpEnv); spec != "" {
		s, err := ParseNetSpec(spec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NetUp(s, time.Second); err != nil {
			t.Fatal(err)
		}
		return
	}
	testtool.Root(t, "network namespaces")
	ipBin := testtool.LookPath(t, "ip", "iproute2")
	var b [3]byte
	rand.Read(b[:])
	ns := "bbnet-" + hex.EncodeToString(b[:])
	ip := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ipBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command(ipBin, "netns", "del", ns).Run() })
	ip("-n", ns, "link", "add", "v0", "address", "52:54:00:aa:bb:01", "type", "veth", "peer", "name", "v1")
	ip("-n", ns, "link", "set", "v1", "up")
	cmd := exec.Command(ipBin, "netns", "exec", ns, os.Args[0], "-test.run=^TestNetUp$")
	cmd.Env = append(os.Environ(), netUpEnv+"=52:54:00:aa:bb:01,198.51.100.7,255.255.255.0,198.51.100.1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("NetUp in the namespace: %v\n%s", err, out)
	}
	if addr := ip("-n", ns, "-4", "addr", "show", "v0"); !strings.Contains(addr, "inet 198.51.100.7/24") || !strings.Contains(addr, "UP") {
		t.Errorf("v0:\n%s", addr)
	}
	if r := ip("-n", ns, "-4", "route"); !strings.Contains(r, "default via 198.51.100.1 dev v0") {
		t.Errorf("routes:\n%s", r)
	}
}
