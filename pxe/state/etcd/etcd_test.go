package etcd_test

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/pxe/state"
	"github.com/bellbuild/bellbuild/pxe/state/etcd"
	"github.com/bellbuild/bellbuild/pxe/state/etcd/etcdtest"
	"github.com/bellbuild/bellbuild/pxe/state/statetest"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

func TestMain(m *testing.M) {
	etcdtest.Main()
	os.Exit(m.Run())
}

func open(t *testing.T, c *etcdtest.Cluster, tc *tls.Config, prefix string) *etcd.Store {
	t.Helper()
	s, err := etcd.Open(context.Background(), etcd.Config{Endpoints: c.Endpoints(), TLS: tc, Prefix: prefix, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestStore: a real three-member cluster on loopback, with TLS and client
// certificates, passes the tests every Store passes; each subtest has a
// prefix of its own (an empty store).
func TestStore(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd cluster: skipped under -short")
	}
	certs, tc := etcdtest.NewTLS(t, "127.0.0.1")
	c := etcdtest.Start(t, etcdtest.Options{TLS: certs})
	statetest.Run(t, func(t *testing.T) statetest.Store {
		return open(t, c, tc, "/test/"+t.Name()+"/")
	})
}

// TestStoreDebianEtcd: the same tests against a three-member cluster of
// the etcd server a site installs (Debian's etcd-server, 3.4), with TLS
// and client certificates: the client (v3.7) speaks to it.
func TestStoreDebianEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd cluster: skipped under -short")
	}
	bin := testtool.LookPath(t, "etcd", "etcd-server")
	certs, tc := etcdtest.NewTLS(t, "127.0.0.1")
	c := etcdtest.Start(t, etcdtest.Options{TLS: certs, Binary: bin})
	statetest.Run(t, func(t *testing.T) statetest.Store {
		return open(t, c, tc, "/test/"+t.Name()+"/")
	})
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  bool
	}{
		{"etcd://10.0.0.1:2379,10.0.0.2:2379", []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}, false},
		{"etcd+http://127.0.0.1:2379", []string{"http://127.0.0.1:2379"}, false},
		{"etcd://[::1]:2379", []string{"https://[::1]:2379"}, false},
		{"etcd://host", nil, true},
		{"etcd://", nil, true},
		{"/var/lib/bellbuild", nil, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := etcd.ParseURL(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v", err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("got %q, want %q", got, tc.want)
				}
			}
		})
	}
}

// TestFaults: with one member of three stopped, every update still goes
// through and none is lost; with two stopped (no quorum), an update fails
// at once with ErrUnavailable, and nothing half-done shows once the
// members are back.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd cluster: skipped under -short")
	}
	c := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, c, nil, "")
	ctx := context.Background()
	incr := func() error {
		return s.Update(ctx, "n", func(old []byte) ([]byte, error) {
			n, _ := strconv.Atoi(string(old))
			return []byte(strconv.Itoa(n + 1)), nil
		})
	}
	for range 10 {
		if err := incr(); err != nil {
			t.Fatal(err)
		}
	}
	c.Stop(0)
	for range 10 {
		if err := incr(); err != nil {
			t.Fatalf("one member of three down: %v", err)
		}
	}
	c.Stop(1)
	start := time.Now()
	err := incr()
	if !errors.Is(err, etcd.ErrUnavailable) {
		t.Fatalf("no quorum: err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("no quorum: the update took %v to fail", d)
	}
	if _, err := s.Get(ctx, "n"); !errors.Is(err, etcd.ErrUnavailable) {
		t.Errorf("no quorum: Get err = %v", err)
	}
	c.Restart(0, "")
	c.Restart(1, "")
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := s.Get(ctx, "n")
		if err == nil {
			// The failed update may have been applied or not; never half.
			if string(v) != "20" && string(v) != "21" {
				t.Errorf("after the members came back: n = %q, want 20 (or 21)", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster did not come back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := incr(); err != nil {
		t.Fatal(err)
	}
	var _ state.Store = s
}
