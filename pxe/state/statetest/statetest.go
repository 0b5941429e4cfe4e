// Package statetest holds the tests every state.Store must pass, for the
// tests of each implementation (the directory, etcd). Only tests import
// it.
package statetest

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/pxe/state"
)

// Store is what the tests use: a state.Store that watches.
type Store interface {
	state.Store
	state.Watcher
}

// Run runs the tests on the stores open returns: each call a new client
// of one empty store (two calls: two serve instances sharing it).
func Run(t *testing.T, open func(t *testing.T) Store) {
	ctx := context.Background()
	t.Run("get update list delete", func(t *testing.T) {
		d := open(t)
		set := func(key, val string) {
			t.Helper()
			if err := d.Update(ctx, key, func([]byte) ([]byte, error) { return []byte(val), nil }); err != nil {
				t.Fatal(err)
			}
		}
		if v, err := d.Get(ctx, "enrol/nodes/a"); v != nil || err != nil {
			t.Errorf("Get of nothing: %q %v", v, err)
		}
		set("enrol/nodes/b", "2")
		set("enrol/nodes/a", "1")
		set("enrol/other", "x")
		set("leases", "y")
		got, err := d.List(ctx, "enrol/nodes/")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"enrol/nodes/a", "enrol/nodes/b"}, got); diff != "" {
			t.Errorf("List (-want +got):\n%s", diff)
		}
		all, err := d.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"enrol/nodes/a", "enrol/nodes/b", "enrol/other", "leases"}, all); diff != "" {
			t.Errorf("List of everything (-want +got):\n%s", diff)
		}
		if got, _ := d.List(ctx, "enrol"); len(got) != 3 {
			t.Errorf("List(enrol) = %v", got)
		}
		if got, _ := d.List(ctx, "nothing/here"); len(got) != 0 {
			t.Errorf("List of nothing: %v", got)
		}
		if v, _ := d.Get(ctx, "enrol/nodes/a"); string(v) != "1" {
			t.Errorf("Get = %q", v)
		}
		if err := d.Update(ctx, "leases", func([]byte) ([]byte, error) { return nil, state.ErrUnchanged }); err != nil {
			t.Fatal(err)
		}
		boom := errors.New("boom")
		if err := d.Update(ctx, "leases", func([]byte) ([]byte, error) { return []byte("z"), boom }); !errors.Is(err, boom) {
			t.Fatalf("err = %v", err)
		}
		if v, _ := d.Get(ctx, "leases"); string(v) != "y" {
			t.Errorf("value %q after a failed update", v)
		}
		if err := d.Update(ctx, "enrol/other", func([]byte) ([]byte, error) { return nil, nil }); err != nil {
			t.Fatal(err)
		}
		if v, err := d.Get(ctx, "enrol/other"); v != nil || err != nil {
			t.Errorf("after delete: %q %v", v, err)
		}
		for _, k := range []string{"", "/abs", "a/../b", "a//b", "A", "a/.hidden", "x.lock", "a/b/", strings.Repeat("a", 600)} {
			if _, err := d.Get(ctx, k); !errors.Is(err, state.ErrBadKey) {
				t.Errorf("Get(%q): %v", k, err)
			}
			if err := d.Update(ctx, k, func([]byte) ([]byte, error) { return []byte("x"), nil }); !errors.Is(err, state.ErrBadKey) {
				t.Errorf("Update(%q): %v", k, err)
			}
		}
	})
	t.Run("two clients lose no update", func(t *testing.T) {
		a, b := open(t), open(t)
		var wg sync.WaitGroup
		for i := range 8 {
			d := a
			if i%2 == 1 {
				d = b
			}
			wg.Go(func() {
				for range 25 {
					err := d.Update(ctx, "a/b", func(old []byte) ([]byte, error) {
						n, _ := strconv.Atoi(string(old))
						return []byte(strconv.Itoa(n + 1)), nil
					})
					if err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		for _, d := range []Store{a, b} {
			if v, _ := d.Get(ctx, "a/b"); string(v) != "200" {
				t.Errorf("after 200 increments: %q", v)
			}
		}
	})
	t.Run("a stale guess is never trusted", func(t *testing.T) {
		a, b := open(t), open(t)
		put := func(d Store, v string) {
			if err := d.Update(ctx, "k", func([]byte) ([]byte, error) { return []byte(v), nil }); err != nil {
				t.Fatal(err)
			}
		}
		put(a, "1")
		if v, _ := a.Get(ctx, "k"); string(v) != "1" {
			t.Fatalf("Get = %q", v)
		}
		put(b, "2")
		// a last saw "1": its f must not decide on that.
		var seen []string
		err := a.Update(ctx, "k", func(old []byte) ([]byte, error) {
			seen = append(seen, string(old))
			return nil, state.ErrUnchanged
		})
		if err != nil {
			t.Fatal(err)
		}
		if seen[len(seen)-1] != "2" {
			t.Errorf("f last saw %q, want the current value 2 (all: %q)", seen[len(seen)-1], seen)
		}
	})
	t.Run("watch sees the other client's writes", func(t *testing.T) {
		a, b := open(t), open(t)
		if err := a.Update(ctx, "w/one", func([]byte) ([]byte, error) { return []byte("1"), nil }); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var mu sync.Mutex
		got := map[string]string{}
		err := b.Watch(wctx, "w/", func(k string, v []byte) {
			mu.Lock()
			defer mu.Unlock()
			if v == nil {
				got[k] = "<deleted>"
			} else {
				got[k] = string(v)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		if got["w/one"] != "1" {
			t.Errorf("Watch did not give the present key first: %v", got)
		}
		mu.Unlock()
		a.Update(ctx, "w/two", func([]byte) ([]byte, error) { return []byte("2"), nil })
		a.Update(ctx, "w/one", func([]byte) ([]byte, error) { return nil, nil })
		a.Update(ctx, "x/other", func([]byte) ([]byte, error) { return []byte("no"), nil })
		want := map[string]string{"w/one": "<deleted>", "w/two": "2"}
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			diff := cmp.Diff(want, got)
			mu.Unlock()
			if diff == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("watched (-want +got):\n%s", diff)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
