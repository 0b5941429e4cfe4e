// Package state is what `bellbuild serve` keeps between requests and
// across restarts — leases, enrolment, reports — behind one small
// interface (Store) so that it can live in a local directory (Dir, the
// default) or in etcd, shared by several serve instances (package
// pxe/state/etcd: Update is a transaction that compares the key's
// revision, List a ranged get of keys only).
//
// A key is a slash-separated path of lower-case names ("enrol/nodes/web-1");
// a value is opaque bytes. Every Update is durable before it returns: a
// process killed at any point leaves each key as it was before the
// Update or as the Update left it, never half of either.
package state

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Store keeps keys and values.
type Store interface {
	// Get returns key's value, or nil when it has none.
	Get(ctx context.Context, key string) ([]byte, error)
	// Update replaces key's value with what f makes of the current one
	// (nil when there is none), atomically with respect to every other
	// Update of key, in this process and in others, and durably before
	// it returns. f may be called more than once (a store that detects
	// a conflict calls it again with the newer value), so it must not
	// have effects of its own. f returning ErrUnchanged writes nothing;
	// f returning nil deletes the key; any other error of f is returned
	// and nothing is written.
	Update(ctx context.Context, key string, f func(old []byte) ([]byte, error)) error
	// List returns the keys under prefix (a key, or a key ending in
	// "/"; "" is every key), sorted.
	List(ctx context.Context, prefix string) ([]string, error)
}

// Watcher is a Store that says when keys change, whoever changed them:
// another process, another serve instance. Consumers that cache what they
// read (the leases, the fleet view) ask for it beside Store.
type Watcher interface {
	// Watch calls f with every key under prefix and its value, then,
	// until ctx is done, again for each key that changes (value nil: the
	// key was deleted). It returns once the keys present were given to f;
	// later calls come from another goroutine, one at a time. A change
	// may be told more than once, never lost.
	Watch(ctx context.Context, prefix string, f func(key string, value []byte)) error
}

// ErrUnchanged, returned by an Update's function, writes nothing.
var ErrUnchanged = errors.New("unchanged")

// ErrBadKey is a key that is not a clean path of lower-case names.
var ErrBadKey = errors.New("bad state key")

// keyRE is one element of a key.
var keyRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

// CheckKey refuses keys that are not slash-separated lower-case names of
// letters, digits, '.', '_' and '-' (no "..", no empty element).
func CheckKey(key string) error {
	if key == "" || len(key) > 512 {
		return fmt.Errorf("%w %q", ErrBadKey, key)
	}
	for _, el := range strings.Split(key, "/") {
		if !keyRE.MatchString(el) || el == ".." || strings.HasSuffix(el, ".lock") || strings.HasPrefix(el, ".") {
			return fmt.Errorf("%w %q: want slash-separated lower-case names", ErrBadKey, key)
		}
	}
	return nil
}
