// Package parallel runs the iterations of a loop on every core: the one
// worker loop the site's renderer, its PKI and its diff share.
package parallel

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
)

// Each calls f for each i in [0, n) on up to GOMAXPROCS goroutines, at
// most one for every per calls (per < 1 counts as 1: a goroutine costs
// more than a tiny call), each with a W of its own and taking the next i
// in turn. The first error stops them all and is returned; so is ctx's.
// A caller that wants every iteration's error keeps them itself and has f
// return nil.
func Each[W any](ctx context.Context, n, per int, f func(w *W, i int) error) error {
	per = max(per, 1)
	workers := max(1, min(runtime.GOMAXPROCS(0), (n+per-1)/per))
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		errMu sync.Mutex
		first error
	)
	for range workers {
		wg.Go(func() {
			var w W
			for i := int(next.Add(1)) - 1; i < n && ctx.Err() == nil; i = int(next.Add(1)) - 1 {
				if err := f(&w, i); err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
					next.Store(int64(n)) // the others stop too
					return
				}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return first
}
