// Package etcd is the state.Store of serve instances that share their
// state (leases, enrolment, reports) through an etcd cluster, with the
// official client (go.etcd.io/etcd/client/v3).
//
// A key K of package state is the etcd key PREFIX+K (default prefix
// "/bellbuild/"), its value the same bytes. Get is a linearizable read;
// Update a transaction that writes only if the key's modification
// revision is still the one f's input had (or the key is still absent),
// else reads the key again and calls f again; List a ranged read of keys
// only; Watch a ranged read, then an etcd watch from the revision after
// it. Every request asks for a leader (clientv3.WithRequireLeader): a
// cluster that lost its quorum fails at once, with ErrUnavailable, rather
// than after a timeout.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bellbuild/bellbuild/pxe/state"
)

// Scheme starts a --state that names an etcd cluster:
// etcd://HOST:PORT[,HOST:PORT...].
const Scheme = "etcd://"

// DefaultPrefix is where bellbuild's keys live in etcd.
const DefaultPrefix = "/bellbuild/"

// ErrUnavailable wraps an error of the cluster itself (no leader, no
// quorum, no member reachable in time), as opposed to one of the caller.
var ErrUnavailable = errors.New("etcd unavailable")

// IsURL reports whether s names an etcd cluster (etcd://...).
func IsURL(s string) bool { return strings.HasPrefix(s, Scheme) }

// ParseURL returns the endpoints of etcd://HOST:PORT[,HOST:PORT...] as
// https URLs (TLS: the site PKI's certificates), or, with
// etcd+http://, as plain http URLs (tests, a cluster on loopback).
func ParseURL(s string) ([]string, error) {
	scheme := "https://"
	rest, ok := strings.CutPrefix(s, Scheme)
	if !ok {
		if rest, ok = strings.CutPrefix(s, "etcd+http://"); !ok {
			return nil, fmt.Errorf("state %q: want %sHOST:PORT[,HOST:PORT...]", s, Scheme)
		}
		scheme = "http://"
	}
	var out []string
	for _, hp := range strings.Split(strings.TrimSuffix(rest, "/"), ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("state %q: endpoint %q: want HOST:PORT", s, hp)
		}
		out = append(out, scheme+net.JoinHostPort(host, port))
	}
	return out, nil
}

// Config configures Open.
type Config struct {
	// Endpoints are the members' client URLs (ParseURL).
	Endpoints []string
	// TLS is the client's TLS: the CA that signed the members'
	// certificates and the client certificate they ask for (nil: plain
	// connections, for http endpoints).
	TLS *tls.Config
	// Prefix is prepended to every key (default DefaultPrefix).
	Prefix string
	// Timeout bounds each request (default 5 s); DialTimeout the first
	// connection (default 5 s).
	Timeout, DialTimeout time.Duration
	// Log receives what the store has to say (default slog.Default()).
	Log *slog.Logger
}

// Store is a state.Store and a state.Watcher on an etcd cluster.
type Store struct {
	cli *clientv3.Client
	cfg Config

	// revs remembers, per key, the modification revision and value last
	// read or written here, so that an Update usually costs one
	// transaction, not a read and then a transaction.
	mu   sync.Mutex
	revs map[string]known
}

type known struct {
	rev int64 // 0: absent
	val []byte
}

// maxKnown bounds revs: beyond it, it is emptied (it is only a guess).
const maxKnown = 1 << 16

// Open connects to the cluster and checks that it answers (a ranged read
// of nothing under the prefix).
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.DialTimeout,
		Logger:      zap.NewNop(),
		// Keep-alives find a dead member in seconds, so requests move to
		// the others.
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Context:              context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	s := &Store{cli: cli, cfg: cfg, revs: map[string]known{}}
	cctx, cancel := s.reqCtx(ctx)
	defer cancel()
	if _, err := cli.Get(cctx, cfg.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), s.wrap(err))
	}
	return s, nil
}

// Close closes the connections.
func (s *Store) Close() error { return s.cli.Close() }

// Client is the etcd client (tests).
func (s *Store) Client() *clientv3.Client { return s.cli }

// String names the cluster (never a credential).
func (s *Store) String() string { return Scheme + strings.Join(s.cfg.Endpoints, ",") }

func (s *Store) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	return clientv3.WithRequireLeader(ctx), cancel
}

// wrap marks an error that is the cluster's (not the caller's context)
// with ErrUnavailable.
func (s *Store) wrap(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func (s *Store) key(k string) (string, error) {
	if err := state.CheckKey(k); err != nil {
		return "", err
	}
	return s.cfg.Prefix + k, nil
}

func (s *Store) remember(k string, kn known) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.revs) >= maxKnown {
		clear(s.revs)
	}
	s.revs[k] = kn
}

func (s *Store) guess(k string) (known, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kn, ok := s.revs[k]
	return kn, ok
}

// Get implements state.Store: a linearizable read.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	cctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(cctx, k)
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", key, s.wrap(err))
	}
	if len(resp.Kvs) == 0 {
		s.remember(key, known{})
		return nil, nil
	}
	kv := resp.Kvs[0]
	s.remember(key, known{kv.ModRevision, kv.Value})
	return kv.Value, nil
}

// conflictBudget bounds how long one Update keeps retrying against
// other writers of its key (a count would give up early on a slow
// cluster, where each transaction takes a disk's fsync).
const conflictBudget = 30 * time.Second

// Update implements state.Store: f's result is written by a transaction
// that compares the key's modification revision with the one f was
// given. f is first given what this Store last saw of the key (when it
// has seen it): if that was current, one transaction does it all; if not,
// the transaction fails, returns the current value, and f is called
// again with it. A result of f other than a write (ErrUnchanged, an
// error) is trusted only once the key is known to be unchanged since f's
// input (a transaction that compares and writes nothing).
func (s *Store) Update(ctx context.Context, key string, f func(old []byte) ([]byte, error)) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	cur, ok := s.guess(key)
	fresh := false
	if !ok {
		if _, err := s.Get(ctx, key); err != nil {
			return err
		}
		cur, _ = s.guess(key)
		fresh = true
	}
	giveUp := time.Now().Add(conflictBudget)
	for try := 0; try < 2 || time.Now().Before(giveUp); try++ {
		if try > 1 {
			// Contended: wait a little, at random and longer each time
			// (up to 50 ms), so that the writers racing for the key do
			// not collide again in lock-step.
			d := time.Duration(rand.Int64N(int64(min(try, 50)) * int64(time.Millisecond)))
			select {
			case <-ctx.Done():
				return fmt.Errorf("state %s: %w", key, ctx.Err())
			case <-time.After(d):
			}
		}
		var old []byte
		if cur.rev != 0 {
			old = cur.val
		}
		val, ferr := f(old)
		cmp := clientv3.Compare(clientv3.ModRevision(k), "=", cur.rev)
		if cur.rev == 0 {
			cmp = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
		}
		var then []clientv3.Op
		switch {
		case ferr != nil:
			if fresh {
				if errors.Is(ferr, state.ErrUnchanged) {
					return nil
				}
				return ferr
			}
			// Only compare: was f's input current?
		case val == nil:
			then = []clientv3.Op{clientv3.OpDelete(k)}
		default:
			then = []clientv3.Op{clientv3.OpPut(k, string(val))}
		}
		cctx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Txn(cctx).If(cmp).Then(then...).Else(clientv3.OpGet(k)).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("state %s: %w", key, s.wrap(err))
		}
		if resp.Succeeded {
			switch {
			case ferr != nil:
				if errors.Is(ferr, state.ErrUnchanged) {
					return nil
				}
				return ferr
			case val == nil:
				s.remember(key, known{})
			default:
				s.remember(key, known{resp.Header.Revision, val})
			}
			return nil
		}
		// Someone else wrote the key: f again, with what is there now.
		cur = known{}
		if rr := resp.Responses[0].GetResponseRange(); rr != nil && len(rr.Kvs) > 0 {
			cur = known{rr.Kvs[0].ModRevision, rr.Kvs[0].Value}
		}
		s.remember(key, cur)
		fresh = true
	}
	return fmt.Errorf("state %s: still conflicting with other writers after %s", key, conflictBudget)
}

// List implements state.Store: a ranged read of keys only.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	base := strings.TrimSuffix(prefix, "/")
	if base != "" {
		if err := state.CheckKey(base); err != nil {
			return nil, err
		}
	}
	cctx, cancel := s.reqCtx(ctx)
	defer cancel()
	var out []string
	add := func(kvs [][]byte) {
		for _, raw := range kvs {
			k := strings.TrimPrefix(string(raw), s.cfg.Prefix)
			if base == "" || k == base || strings.HasPrefix(k, base+"/") {
				out = append(out, k)
			}
		}
	}
	if base != "" {
		resp, err := s.cli.Get(cctx, s.cfg.Prefix+base, clientv3.WithKeysOnly())
		if err != nil {
			return nil, fmt.Errorf("state: %w", s.wrap(err))
		}
		add(keysOf(resp))
	}
	from := s.cfg.Prefix
	if base != "" {
		from += base + "/"
	}
	resp, err := s.cli.Get(cctx, from, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("state: %w", s.wrap(err))
	}
	add(keysOf(resp))
	sort.Strings(out)
	return out, nil
}

func keysOf(resp *clientv3.GetResponse) [][]byte {
	out := make([][]byte, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = kv.Key
	}
	return out
}

// Watch implements state.Watcher: a ranged read of prefix, then a watch
// from the revision after it; a watch that fails (its revision compacted
// away) starts again with a read.
func (s *Store) Watch(ctx context.Context, prefix string, f func(key string, value []byte)) error {
	from := s.cfg.Prefix + prefix
	seen := map[string]bool{}
	tell := func(k string, v []byte) {
		if v == nil {
			delete(seen, k)
		} else {
			seen[k] = true
		}
		f(k, v)
	}
	// relist reads every key again, and tells the ones gone meanwhile.
	relist := func() (int64, error) {
		now := map[string]bool{}
		rev, err := s.list(ctx, from, func(k string, v []byte) {
			now[k] = true
			tell(k, v)
		})
		if err != nil {
			return 0, err
		}
		for k := range seen {
			if !now[k] {
				s.remember(k, known{})
				tell(k, nil)
			}
		}
		return rev, nil
	}
	rev, err := relist()
	if err != nil {
		return err
	}
	go func() {
		for ctx.Err() == nil {
			wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), from, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
			for wr := range wch {
				if err := wr.Err(); err != nil {
					s.cfg.Log.Warn("etcd: watch interrupted; reading again", "prefix", prefix, "err", err)
					break
				}
				for _, ev := range wr.Events {
					k := strings.TrimPrefix(string(ev.Kv.Key), s.cfg.Prefix)
					if state.CheckKey(k) != nil {
						continue
					}
					if ev.Type == clientv3.EventTypeDelete {
						s.remember(k, known{})
						tell(k, nil)
					} else {
						s.remember(k, known{ev.Kv.ModRevision, ev.Kv.Value})
						tell(k, ev.Kv.Value)
					}
					rev = ev.Kv.ModRevision
				}
				if wr.Header.Revision > rev && len(wr.Events) == 0 {
					rev = wr.Header.Revision
				}
			}
			// The watch ended: ctx is done, or it failed (no leader,
			// compaction). Read everything again, after a pause.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if r, err := relist(); err == nil {
				rev = r
			}
		}
	}()
	return nil
}

// list gives f every key under from and returns the revision read at.
func (s *Store) list(ctx context.Context, from string, f func(string, []byte)) (int64, error) {
	cctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(cctx, from, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("state: %w", s.wrap(err))
	}
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), s.cfg.Prefix)
		if state.CheckKey(k) != nil {
			continue
		}
		s.remember(k, known{kv.ModRevision, kv.Value})
		f(k, kv.Value)
	}
	return resp.Header.Revision, nil
}
