package state_test

import (
	"sync"
	"testing"

	"github.com/bellbuild/bellbuild/pxe/state"
	"github.com/bellbuild/bellbuild/pxe/state/statetest"
)

// TestDirStore: the tests every Store passes; two clients are two Dirs on
// one directory.
func TestDirStore(t *testing.T) {
	statetest.Run(t, func(t *testing.T) statetest.Store {
		dir := t.Name()
		d, err := state.OpenDir(sharedDir(t, dir))
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

var (
	sharedMu   sync.Mutex
	sharedDirs = map[string]string{}
)

// sharedDir is one directory per test, whoever asks.
func sharedDir(t *testing.T, name string) string {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if d, ok := sharedDirs[name]; ok {
		return d
	}
	d := t.TempDir()
	sharedDirs[name] = d
	return d
}
