package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/pki"
	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
	"github.com/bellbuild/bellbuild/pxe/node"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
)

// This file adapts the site and its PKI to the enrolment endpoint
// (package pxe/enrol), for serve, run and the node commands.

// errNoPKI means the site has no PKI (no SITE/pki/root.pem): nothing can
// enrol.
var errNoPKI = errors.New("the site has no PKI")

// openPKI opens the PKI of site (its environment's, unless the site
// shares one) with its private directory (now: its clock; nil is
// time.Now).
func openPKI(site *profiles.Site, private string, now func() time.Time) (*pki.Store, error) {
	opts := site.PKIOptions()
	if opts.Site == "" {
		return nil, fmt.Errorf("%w (the embedded demo site has none): give -C SITE", errNoPKI)
	}
	if _, err := os.Stat(filepath.Join(pki.PublicDir(opts), string(pki.Root)+".pem")); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: make one with bellbuild pki init -C %s --root-out DIR", errNoPKI, opts.Site)
	}
	opts.Private, opts.Now, opts.Log = privateDir(private, opts.Site), now, slog.Default()
	return pki.Open(opts)
}

// siteCA is the site's PKI as the enrolment endpoint's CA: host
// certificates from the hosts sub-CA, service certificates from the
// services sub-CA, with the names the site gives each node (a CSR's own
// names are refused before they get here).
type siteCA struct {
	store *pki.Store
	nodes *siteNodes
}

func (c *siteCA) SignHost(ctx context.Context, name string, csr *x509.CertificateRequest) (enrol.Cert, error) {
	n, err := c.nodes.node(name)
	if err != nil {
		return enrol.Cert{}, err
	}
	h, err := pki.NodeHost(n)
	if err != nil {
		return enrol.Cert{}, fmt.Errorf("%w: %v", enrol.ErrRefused, err)
	}
	req, err := pki.HostRequest(h)
	if err != nil {
		return enrol.Cert{}, fmt.Errorf("%w: %v", enrol.ErrRefused, err)
	}
	return c.sign(ctx, req, csr, pki.Hosts)
}

func (c *siteCA) SignService(ctx context.Context, name, credential, side string, csr *x509.CertificateRequest) (enrol.Cert, error) {
	n, err := c.nodes.node(name)
	if err != nil {
		return enrol.Cert{}, err
	}
	i := slices.IndexFunc(n.Conf.Credentials, func(cr nodeconf.Credential) bool { return cr.Name == credential })
	if i < 0 {
		return enrol.Cert{}, fmt.Errorf("%w: node %s has no credential %q", enrol.ErrRefused, name, credential)
	}
	h, err := pki.NodeHost(n)
	if err != nil {
		return enrol.Cert{}, fmt.Errorf("%w: %v", enrol.ErrRefused, err)
	}
	reqs, err := pki.ServiceRequests(h, n.Conf.Credentials[i])
	if err != nil {
		return enrol.Cert{}, fmt.Errorf("%w: %v", enrol.ErrRefused, err)
	}
	for _, r := range reqs {
		if filepath.Base(r.Slot) == side {
			return c.sign(ctx, r, csr, pki.Services)
		}
	}
	return enrol.Cert{}, fmt.Errorf("%w: credential %s of node %s has no %s certificate", enrol.ErrRefused, credential, name, side)
}

// sign issues r for csr's key; the certificate comes with its CA's.
func (c *siteCA) sign(ctx context.Context, r pki.Request, csr *x509.CertificateRequest, k pki.Kind) (enrol.Cert, error) {
	cp := *csr
	cp.Subject.CommonName = "" // CN=NODE at most, checked: the site names it
	is, err := c.store.SignCSR(ctx, r, &cp)
	if err != nil {
		var pe *fs.PathError
		if errors.Is(err, pki.ErrExpired) || errors.As(err, &pe) || ctx.Err() != nil {
			return enrol.Cert{}, err
		}
		return enrol.Cert{}, fmt.Errorf("%w: %v", enrol.ErrRefused, err)
	}
	return enrol.Cert{Serial: is.Serial, PEM: append(append([]byte(nil), is.CertPEM...), c.store.CA(k).PEM...)}, nil
}

func (c *siteCA) CRL(context.Context) ([]byte, error) { return c.store.CRLs() }

// siteNodes renders the inventory's nodes, each once: the enrolment
// endpoint's configurations (enrol.Configs) and what the CA names.
type siteNodes struct {
	site *profiles.Site
	// configs resolves a node's secrets for NodeConfig (nil: the public
	// configuration, its secrets pending on the node).
	configs *nodeConfigs
	mu      sync.Mutex
	done    map[string]*nodeconf.Node
	data    map[string][]byte
}

func newSiteNodes(site *profiles.Site, configs *nodeConfigs) *siteNodes {
	return &siteNodes{site: site, configs: configs, done: map[string]*nodeconf.Node{}, data: map[string][]byte{}}
}

func (s *siteNodes) node(name string) (*nodeconf.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.done[name]; ok {
		return n, nil
	}
	if !slices.ContainsFunc(s.site.Nodes(), func(i profiles.NodeInfo) bool { return i.Name == name }) {
		return nil, fmt.Errorf("node %s: %w", name, node.ErrUnknown)
	}
	n, err := s.site.RenderNode(name)
	if err != nil {
		return nil, err
	}
	s.done[name] = n
	return n, nil
}

// NodeConfig implements enrol.Configs: an approved node's configuration,
// over mutual TLS. With serve's identity it is the node's own, its
// secret values resolved (and only here do they leave the site);
// without, the public one.
func (s *siteNodes) NodeConfig(ctx context.Context, name string) ([]byte, error) {
	if s.configs != nil {
		if _, err := s.node(name); err != nil { // an inventory node
			return nil, err
		}
		return s.configs.NodeConfig(ctx, name)
	}
	n, err := s.node(name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.data[name]; ok {
		return d, nil
	}
	d, err := nodeconf.Marshal(n, nodeconf.JSON)
	if err != nil {
		return nil, err
	}
	s.data[name] = d
	return d, nil
}

// machineEnrol is a rendered node's policy as pxe's node.Enrol.
func machineEnrol(e *nodeconf.Enrol) node.Enrol {
	if e == nil {
		return node.Enrol{}
	}
	return node.Enrol{Policy: e.Policy, Pinned: e.Pinned}
}

// enrolEndpoint is what serve and run need to open the endpoint.
type enrolEndpoint struct {
	cfg  enrol.Config
	tls  *tls.Config
	root string // the root CA's fingerprint
}

// newEnrolEndpoint opens the site's PKI and the state under stateDir and
// issues (or reuses) serve's own certificate for ip from the hosts
// sub-CA (slot serve/IP; its key stays in PRIVATE/pki/keys).
func newEnrolEndpoint(ctx context.Context, site *profiles.Site, siteDir, private, stateDir string, ip netip.Addr, configs *nodeConfigs, o enrol.Options) (*enrolEndpoint, error) {
	store, err := openPKI(site, private, o.Now)
	if err != nil {
		return nil, err
	}
	cert, err := serveCert(ctx, store, ip)
	if err != nil {
		return nil, err
	}
	st, err := pxestate.OpenDir(stateDir)
	if err != nil {
		return nil, err
	}
	nodes := newSiteNodes(site, configs)
	ca := &siteCA{store: store, nodes: nodes}
	if o.ParseCSR == nil {
		o.ParseCSR = pki.ParseCSR
	}
	reg := enrol.NewRegistry(st, ca, o)
	hosts := store.CA(pki.Hosts).Cert
	return &enrolEndpoint{
		cfg:  enrol.Config{Registry: reg, CA: ca, Configs: nodes, Bundle: store.Bundle(), Now: o.Now, Log: o.Log},
		tls:  enrol.TLSConfig(cert, hosts, o.Now),
		root: wire.CertFingerprint(store.CA(pki.Root).Cert.Raw),
	}, nil
}

// serveCert is serve's TLS certificate for ip, with the hosts CA's and
// the root's: a node that has only the root's fingerprint (from its
// command line) checks the chain against it.
func serveCert(ctx context.Context, store *pki.Store, ip netip.Addr) (tls.Certificate, error) {
	out, err := store.Ensure(ctx, pki.Request{CA: pki.Hosts, Slot: "serve/" + ip.String(),
		CommonName: "bellbuild serve " + ip.String(), IPs: []netip.Addr{ip}, Mode: nodeconf.CertModeServer})
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("serve's certificate: %w", err)
	}
	chain := append(append(append([]byte(nil), out[0].CertPEM...), store.CA(pki.Hosts).PEM...), store.CA(pki.Root).PEM...)
	cert, err := tls.X509KeyPair(chain, out[0].Key.Reveal())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("serve's certificate: %w", err)
	}
	return cert, nil
}
