// Package etcdtest runs real etcd clusters for tests: members of the etcd
// server the Go module ships (go.etcd.io/etcd/server/v3/embed), started
// and stopped by the test, in this process on loopback, or each in a
// process of its own (Member, for a member inside a network namespace:
// the test binary runs again as that member, see Main). Nothing is left
// behind: data directories are the test's, processes are killed at its
// end.
//
// Only tests import it (cmd/bellbuild/deps_test.go).
package etcdtest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// TLS names the PEM files of a cluster's TLS: every member's certificate
// (for its client and peer URLs; it must name the member's host) and the
// CA that clients' certificates must chain to (ClientCertAuth).
type TLS struct {
	CertFile, KeyFile, TrustedCAFile string
}

// MemberConfig is one member of a cluster.
type MemberConfig struct {
	Name string
	// Dir is its data directory.
	Dir string
	// Host is the address it listens on; ClientPort and PeerPort its
	// ports.
	Host                 string
	ClientPort, PeerPort int
	// Cluster is every member's NAME=PEERURL, comma separated.
	Cluster string
	// State is "new" or "existing" (a restart).
	State string
	TLS   *TLS
}

func (m MemberConfig) scheme() string {
	if m.TLS != nil {
		return "https"
	}
	return "http"
}

// ClientURL is where clients reach the member.
func (m MemberConfig) ClientURL() string {
	return m.scheme() + "://" + net.JoinHostPort(m.Host, strconv.Itoa(m.ClientPort))
}

// PeerURL is where the other members reach it.
func (m MemberConfig) PeerURL() string {
	return m.scheme() + "://" + net.JoinHostPort(m.Host, strconv.Itoa(m.PeerPort))
}

func (m MemberConfig) embed() (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.Dir
	cu, err := url.Parse(m.ClientURL())
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(m.PeerURL())
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = m.Cluster
	cfg.InitialClusterToken = "bellbuild-test"
	cfg.ClusterState = m.State
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Elections within a second of a member's loss.
	cfg.TickMs, cfg.ElectionMs = 50, 500
	if m.TLS != nil {
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = m.TLS.CertFile, m.TLS.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = m.TLS.TrustedCAFile, true
		cfg.PeerTLSInfo = cfg.ClientTLSInfo
	}
	return cfg, nil
}

// Options configure a Cluster.
type Options struct {
	// Members is the cluster's size (default 3).
	Members int
	// Host is the address members listen on (default 127.0.0.1).
	Host string
	// Ports are the members' client and peer ports, in pairs (default:
	// free ports of Host, found by listening on port 0).
	Ports []int
	TLS   *TLS
	// Netns, when set, runs each member as a process of its own in that
	// network namespace (ip netns exec); the test binary's TestMain must
	// call Main.
	Netns string
	// Binary, when set, is an etcd server program (Debian's etcd-server:
	// /usr/bin/etcd) that each member runs as instead of the embedded
	// server: a check of the client against the etcd a site installs.
	Binary string
}

// Cluster is a running test cluster.
type Cluster struct {
	t       testing.TB
	members []*member
	binary  string
}

type member struct {
	cfg MemberConfig
	mu  sync.Mutex
	e   *embed.Etcd // in this process
	cmd *exec.Cmd   // or in a process of its own
	// waited, when set, is closed once cmd's Wait returned (an etcd
	// program's member, whose Wait a goroutine calls).
	waited chan struct{}
}

// Start starts a cluster and waits until it has a leader; it is stopped
// when the test ends.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Members == 0 {
		o.Members = 3
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if len(o.Ports) == 0 {
		o.Ports = freePorts(t, o.Host, 2*o.Members)
	}
	c := &Cluster{t: t, binary: o.Binary}
	var peers []string
	base := t.TempDir()
	for i := range o.Members {
		m := MemberConfig{
			Name: fmt.Sprintf("m%d", i), Dir: filepath.Join(base, fmt.Sprintf("m%d", i)),
			Host: o.Host, ClientPort: o.Ports[2*i], PeerPort: o.Ports[2*i+1], State: "new", TLS: o.TLS,
		}
		peers = append(peers, m.Name+"="+m.PeerURL())
		c.members = append(c.members, &member{cfg: m})
	}
	for _, m := range c.members {
		m.cfg.Cluster = strings.Join(peers, ",")
	}
	t.Cleanup(c.stopAll)
	var wg sync.WaitGroup
	errs := make([]error, len(c.members))
	for i, m := range c.members {
		wg.Go(func() { errs[i] = m.start(o.Netns, o.Binary) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.cfg.ClientURL()
	}
	return out
}

// URL is the cluster as serve's --state names it: etcd://H:P,... (TLS)
// or etcd+http://H:P,...
func (c *Cluster) URL() string {
	var hps []string
	for _, m := range c.members {
		hps = append(hps, net.JoinHostPort(m.cfg.Host, strconv.Itoa(m.cfg.ClientPort)))
	}
	scheme := "etcd://"
	if c.members[0].cfg.TLS == nil {
		scheme = "etcd+http://"
	}
	return scheme + strings.Join(hps, ",")
}

// Stop stops member i (its data stays, for Restart).
func (c *Cluster) Stop(i int) { c.members[i].stop() }

// Restart starts member i again, as a member of the existing cluster.
func (c *Cluster) Restart(i int, netns string) {
	c.t.Helper()
	m := c.members[i]
	m.cfg.State = "existing"
	if err := m.start(netns, c.binary); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Cluster) stopAll() {
	for _, m := range c.members {
		m.stop()
	}
}

func (m *member) start(netns, binary string) error {
	if binary != "" {
		return m.startBinary(netns, binary)
	}
	if netns == "" {
		cfg, err := m.cfg.embed()
		if err != nil {
			return err
		}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			return fmt.Errorf("etcd member %s: %w", m.cfg.Name, err)
		}
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			e.Close()
			return fmt.Errorf("etcd member %s: %w", m.cfg.Name, err)
		case <-time.After(60 * time.Second):
			e.Close()
			return fmt.Errorf("etcd member %s: not ready after 60 s", m.cfg.Name)
		}
		m.mu.Lock()
		m.e = e
		m.mu.Unlock()
		return nil
	}
	data, err := json.Marshal(m.cfg)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", "netns", "exec", netns, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), memberEnv+"="+string(data))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	m.mu.Lock()
	m.cmd = cmd
	m.mu.Unlock()
	// The member says "ready" once it serves.
	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		n, err := out.Read(buf)
		if err == nil && strings.HasPrefix(string(buf[:n]), "ready") {
			ready <- nil
		} else {
			ready <- fmt.Errorf("etcd member %s: %q %v", m.cfg.Name, buf[:n], err)
		}
		for {
			if _, err := out.Read(buf); err != nil {
				return
			}
		}
	}()
	select {
	case err := <-ready:
		return err
	case <-time.After(60 * time.Second):
		return fmt.Errorf("etcd member %s: not ready after 60 s", m.cfg.Name)
	}
}

func (m *member) stop() {
	m.mu.Lock()
	e, cmd, waited := m.e, m.cmd, m.waited
	m.e, m.cmd, m.waited = nil, nil, nil
	m.mu.Unlock()
	if e != nil {
		e.Close()
	}
	switch {
	case cmd != nil && waited != nil:
		cmd.Process.Kill()
		<-waited
	case cmd != nil:
		cmd.Process.Kill()
		cmd.Wait()
	}
}

const memberEnv = "BELLBUILD_ETCDTEST_MEMBER"

// Main runs this process as an etcd member when a Cluster with Netns
// started it, and never returns then; otherwise it returns at once. Call
// it first in TestMain.
func Main() {
	data := os.Getenv(memberEnv)
	if data == "" {
		return
	}
	var m MemberConfig
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		fmt.Fprintln(os.Stderr, "etcdtest:", err)
		os.Exit(2)
	}
	cfg, err := m.embed()
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdtest:", err)
		os.Exit(2)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdtest:", err)
		os.Exit(2)
	}
	<-e.Server.ReadyNotify()
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcdtest:", err)
	}
	e.Close()
	os.Exit(0)
}

// freePorts finds n free TCP ports of host.
func freePorts(t testing.TB, host string, n int) []int {
	t.Helper()
	var ls []net.Listener
	var out []int
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

// startBinary runs the member as the etcd program binary (in netns when
// set) and waits until it serves clients (its log says so once it has
// joined the cluster).
func (m *member) startBinary(netns, binary string) error {
	c := m.cfg
	args := []string{"--name", c.Name, "--data-dir", c.Dir,
		"--listen-client-urls", c.ClientURL(), "--advertise-client-urls", c.ClientURL(),
		"--listen-peer-urls", c.PeerURL(), "--initial-advertise-peer-urls", c.PeerURL(),
		"--initial-cluster", c.Cluster, "--initial-cluster-state", c.State, "--initial-cluster-token", "bellbuild-test",
		"--heartbeat-interval", "50", "--election-timeout", "500"}
	if c.TLS != nil {
		args = append(args, "--cert-file", c.TLS.CertFile, "--key-file", c.TLS.KeyFile, "--trusted-ca-file", c.TLS.TrustedCAFile,
			"--client-cert-auth", "--peer-cert-file", c.TLS.CertFile, "--peer-key-file", c.TLS.KeyFile,
			"--peer-trusted-ca-file", c.TLS.TrustedCAFile, "--peer-client-cert-auth")
	}
	cmd := exec.Command(binary, args...)
	if netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", netns, binary}, args...)...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	log := &lineWaiter{want: "ready to serve client requests", ready: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("etcd member %s: %w", c.Name, err)
	}
	waited := make(chan struct{})
	var werr error
	go func() { werr = cmd.Wait(); close(waited) }()
	m.mu.Lock()
	m.cmd, m.waited = cmd, waited
	m.mu.Unlock()
	select {
	case <-log.ready:
		return nil
	case <-waited:
		return fmt.Errorf("etcd member %s exited: %v\n%s", c.Name, werr, log.String())
	case <-time.After(60 * time.Second):
		return fmt.Errorf("etcd member %s: not ready after 60 s\n%s", c.Name, log.String())
	}
}

// lineWaiter keeps a process's output and closes ready once want shows.
type lineWaiter struct {
	mu    sync.Mutex
	buf   []byte
	want  string
	ready chan struct{}
	seen  bool
}

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) < 1<<20 {
		w.buf = append(w.buf, p...)
	}
	if !w.seen && strings.Contains(string(w.buf), w.want) {
		w.seen = true
		close(w.ready)
	}
	return len(p), nil
}

func (w *lineWaiter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}
