package build

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// progress reports the bake's steps: on a terminal, one live line
// ("[3/7] stage segment  45.2 MiB → 12.1 MiB  120 MiB/s") rewritten in
// place; otherwise one log line per finished step.
type progress struct {
	term  io.Writer // nil: not a terminal
	log   *slog.Logger
	total int

	mu       sync.Mutex
	n        int
	step     string
	start    time.Time
	in, out  int64
	lastDraw time.Time
}

func newProgress(term io.Writer, log *slog.Logger, total int) *progress {
	return &progress{term: term, log: log, total: total}
}

// begin starts step name (ending the previous one).
func (p *progress) begin(name string) {
	p.end("")
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	p.step, p.start, p.in, p.out = name, time.Now(), 0, 0
	p.draw(true)
}

// bytes updates the current step's counters: in bytes read (uncompressed),
// out bytes written.
func (p *progress) bytes(in, out int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.in, p.out = in, out
	p.draw(false)
}

// end finishes the current step, with a note ("cached", ...).
func (p *progress) end(note string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.step == "" {
		return
	}
	d := time.Since(p.start)
	if p.term != nil {
		p.draw(true)
		if note != "" {
			note += ", "
		}
		fmt.Fprintf(p.term, "  (%s%s)\n", note, d.Round(time.Millisecond))
	} else {
		attrs := []any{"step", fmt.Sprintf("%d/%d", p.n, p.total), "took", d.Round(time.Millisecond)}
		if p.in > 0 {
			attrs = append(attrs, "in", p.in, "out", p.out, "MiB/s", fmt.Sprintf("%.1f", rate(p.in, d)))
		}
		if note != "" {
			attrs = append(attrs, "note", note)
		}
		p.log.Info("bake: "+p.step, attrs...)
	}
	p.step = ""
}

// draw rewrites the live line (at most 10 times a second unless forced).
func (p *progress) draw(force bool) {
	if p.term == nil {
		return
	}
	now := time.Now()
	if !force && now.Sub(p.lastDraw) < 100*time.Millisecond {
		return
	}
	p.lastDraw = now
	line := fmt.Sprintf("[%d/%d] %s", p.n, p.total, p.step)
	if p.in > 0 {
		line += fmt.Sprintf("  %s → %s  %.1f MiB/s", mib(p.in), mib(p.out), rate(p.in, now.Sub(p.start)))
	}
	fmt.Fprintf(p.term, "\r\033[K%s", line)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / (1 << 20) / d.Seconds()
}
