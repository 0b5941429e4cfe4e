// Package state is what `bellbuild serve` keeps between requests and
// across restarts, behind one small interface (Store) so that it can live
// in a local directory (Dir, the default) or, later, in a distributed
// store shared by several serve instances (etcd: Update maps to a
// transaction that compares the key's revision, List to a ranged get of
// keys only).
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
	// "/"), sorted.
	List(ctx context.Context, prefix string) ([]string, error)
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
