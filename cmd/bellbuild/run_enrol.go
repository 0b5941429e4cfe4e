package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/httpboot"
	"github.com/bellbuild/bellbuild/pxe/node"
	"github.com/bellbuild/bellbuild/testvm"
)

// QEMU's user network, as the guest sees it: the host is 10.0.2.2 (its
// loopback), the guest 10.0.2.15/24.
var (
	qemuHost  = netip.MustParseAddr("10.0.2.2")
	qemuGuest = "10.0.2.15"
)

// localEnrolment is `bellbuild run`'s enrolment endpoint: on the host's
// loopback, reached by the guest at 10.0.2.2, with serve's certificate
// for that address, state in a temporary directory (gone when run ends),
// and every inventory node approved by its first key, so that trying an
// image whose nodes enrol keeps working in one command. It returns the
// kernel command line parameters that name it and a function that stops
// it. A site without a PKI gets no endpoint ("" and no error). The
// site's secrets reach the VM when $BELLBUILD_AGE_IDENTITY decrypts them.
func localEnrolment(ctx context.Context, site *profiles.Site, siteDir, private string, mac net.HardwareAddr) (string, func(), error) {
	stateDir, err := os.MkdirTemp("", "bellbuild-run-enrol-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(stateDir) }
	log := slog.New(slog.DiscardHandler)
	// The site's secrets, when $BELLBUILD_AGE_IDENTITY can decrypt them:
	// the VM gets them as an approved node would.
	configs, err := serveConfigs(site, nil, private)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	ep, err := newEnrolEndpoint(ctx, site, siteDir, private, stateDir, qemuHost, configs, enrol.Options{Log: log})
	if errors.Is(err, errNoPKI) {
		cleanup()
		return "", nil, nil
	}
	if err != nil {
		cleanup()
		return "", nil, err
	}
	// Every node of the inventory by its MACs, approved by first key.
	machines := node.Static{}
	for _, n := range site.Nodes() {
		for _, m := range n.MACs {
			machines[m] = &node.Machine{Name: n.Name, Profile: n.Profile, Enrol: node.Enrol{Policy: node.EnrolFirstKey}}
		}
	}
	ep.cfg.Backend = machines
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		cleanup()
		return "", nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		httpboot.ServeTLS(sctx, ln, enrol.New(ep.cfg), httpboot.Limits{}, ep.tls)
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	args := fmt.Sprintf("%s=https://%s:%d %s=%s %s=%s,%s,255.255.255.0,%s",
		wire.ParamURL, qemuHost, port, wire.ParamCA, ep.root, wire.ParamNet, mac, qemuGuest, qemuHost)
	return args, func() { cancel(); <-done; cleanup() }, nil
}

// enrolment starts the local endpoint for the VM's node (--node, or the
// inventory's node of --mac) and adds its parameters to c's command line;
// o.mac becomes the node's MAC when it was not given.
func (o *runFlags) enrolment(ctx context.Context, c *testvm.Config) (func(), error) {
	nothing := func() {}
	site, err := profiles.LoadEnv(o.site, chooseEnv(o.site, o.env))
	if err != nil {
		return nil, printSiteErrors(os.Stderr, err)
	}
	var info profiles.NodeInfo
	found := false
	for _, n := range site.Nodes() {
		if n.Name == o.node {
			info, found = n, true
		}
	}
	if o.node == "" && o.mac != "" {
		if hw, err := net.ParseMAC(o.mac); err == nil {
			info, found = site.NodeByMAC(hw)
		}
	}
	switch {
	case !found:
		fmt.Fprintf(os.Stderr, "bellbuild run: no inventory node chosen (--node or --mac): no enrolment\n")
		return nothing, nil
	case c.Kernel == "":
		fmt.Fprintf(os.Stderr, "bellbuild run: --boot %s carries its own command line: no enrolment\n", o.boot)
		return nothing, nil
	case len(info.MACs) == 0:
		return nothing, nil
	}
	if o.mac == "" {
		o.mac = info.MACs[0]
	}
	hw, err := net.ParseMAC(o.mac)
	if err != nil {
		return nil, fmt.Errorf("--mac %q: %w", o.mac, err)
	}
	args, stop, err := localEnrolment(ctx, site, o.site, o.private, hw)
	if err != nil {
		return nil, err
	}
	if args == "" {
		fmt.Fprintf(os.Stderr, "bellbuild run: the site has no PKI: no enrolment\n")
		return nothing, nil
	}
	c.Cmdline += " " + args
	fmt.Fprintf(os.Stderr, "bellbuild run: node %s enrols with a local endpoint (first key approved): %s\n", info.Name, args)
	return stop, nil
}
