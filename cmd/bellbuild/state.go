package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/pki"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
	"github.com/bellbuild/bellbuild/pxe/state/etcd"
)

// etcdFlags are the TLS files of an etcd cluster's clients (default: a
// client certificate for serve from the site PKI's hosts CA, and the
// site's CA bundle to check the members with).
type etcdFlags struct {
	ca, cert, key string
}

// register adds --etcd-ca, --etcd-cert and --etcd-key to fs.
func (ef *etcdFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&ef.ca, "etcd-ca", "", "with --state etcd://: the CA `FILE` of the members' certificates (default: the site's CA bundle)")
	fs.StringVar(&ef.cert, "etcd-cert", "", "with --state etcd://: the client certificate `FILE` (default: serve's, from the site PKI's hosts CA)")
	fs.StringVar(&ef.key, "etcd-key", "", "with --state etcd://: its key `FILE`")
}

// sharedState is a state store serve's instances may share: a state
// directory or an etcd cluster.
type sharedState interface {
	pxestate.Store
	pxestate.Watcher
}

// openState opens --state: etcd://HOST:PORT,... (etcd+http:// without
// TLS, for tests) or a directory (STATE/ENV with environments). An
// environment's keys in etcd live under /bellbuild/ENV/. close releases
// it.
func openState(ctx context.Context, spec string, site *profiles.Site, private string, ef etcdFlags) (st sharedState, close func(), err error) {
	if !etcd.IsURL(spec) && !isEtcdHTTP(spec) {
		d, err := pxestate.OpenDir(envDir(spec, site))
		if err != nil {
			return nil, nil, err
		}
		return d, func() {}, nil
	}
	eps, err := etcd.ParseURL(spec)
	if err != nil {
		return nil, nil, err
	}
	cfg := etcd.Config{Endpoints: eps}
	if site != nil && site.Environment() != "" {
		cfg.Prefix = etcd.DefaultPrefix + site.Environment() + "/"
	}
	if etcd.IsURL(spec) {
		if cfg.TLS, err = etcdTLS(ctx, site, private, ef); err != nil {
			return nil, nil, err
		}
	}
	s, err := etcd.Open(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return s, func() { s.Close() }, nil
}

func isEtcdHTTP(s string) bool { return len(s) > 12 && s[:12] == "etcd+http://" }

// etcdTLS is the client TLS of --state etcd://: --etcd-ca, --etcd-cert
// and --etcd-key, else the site's CA bundle and a client certificate for
// serve from its hosts CA (slot serve/etcd).
func etcdTLS(ctx context.Context, site *profiles.Site, private string, ef etcdFlags) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ef.cert != "" || ef.key != "" || ef.ca != "" {
		if ef.cert == "" || ef.key == "" || ef.ca == "" {
			return nil, errors.New("--etcd-ca, --etcd-cert and --etcd-key go together")
		}
		pair, err := tls.LoadX509KeyPair(ef.cert, ef.key)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}
		data, err := os.ReadFile(ef.ca)
		if err != nil {
			return nil, fmt.Errorf("--etcd-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("--etcd-ca %s: no certificate", ef.ca)
		}
		tc.Certificates, tc.RootCAs = []tls.Certificate{pair}, pool
		return tc, nil
	}
	if site == nil {
		return nil, errors.New("--state etcd:// needs -C SITE (its PKI) or --etcd-ca, --etcd-cert and --etcd-key")
	}
	store, err := openPKI(site, private, nil)
	if err != nil {
		return nil, fmt.Errorf("--state etcd://: %w", err)
	}
	out, err := store.Ensure(ctx, pki.Request{CA: pki.Hosts, Slot: "serve/etcd", CommonName: "bellbuild serve", Mode: nodeconf.CertModeClient})
	if err != nil {
		return nil, fmt.Errorf("serve's etcd client certificate: %w", err)
	}
	chain := append(append([]byte(nil), out[0].CertPEM...), store.CA(pki.Hosts).PEM...)
	pair, err := tls.X509KeyPair(chain, out[0].Key.Reveal())
	if err != nil {
		return nil, fmt.Errorf("serve's etcd client certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(store.Bundle())
	tc.Certificates, tc.RootCAs = []tls.Certificate{pair}, pool
	return tc, nil
}
