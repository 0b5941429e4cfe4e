package parallel

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// TestEach: every index is done once, each worker keeps its own
// state, an error stops the batch and is the one returned, and a
// cancelled context is reported.
func TestEach(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name      string
		n, per    int
		failAt    int // -1: none
		cancel    bool
		wantErr   error
		wantCalls int // -1: any
	}{
		{"all", 10000, 16, -1, false, nil, 10000},
		{"error", 10000, 16, 5000, false, boom, -1},
		{"error stops (one worker for 16)", 16, 16, 3, false, boom, 4},
		{"cancelled", 10000, 16, -1, true, context.Canceled, 0},
		{"per below 1 counts as 1", 3, 0, -1, false, nil, 3},
		{"nothing to do", 0, 1, -1, false, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				cancel()
			}
			done := make([]atomic.Int32, tt.n)
			var calls atomic.Int64
			err := Each(ctx, tt.n, tt.per, func(w *[]int, i int) error {
				*w = append(*w, i) // a worker's own state: no race between workers
				calls.Add(1)
				done[i].Add(1)
				if i == tt.failAt {
					return boom
				}
				return nil
			})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			for i := range done {
				if c := done[i].Load(); c > 1 || (tt.wantErr == nil && c != 1) {
					t.Fatalf("index %d done %d times", i, c)
				}
			}
			if tt.wantCalls >= 0 && calls.Load() != int64(tt.wantCalls) {
				t.Errorf("%d calls, want %d", calls.Load(), tt.wantCalls)
			}
		})
	}
}
