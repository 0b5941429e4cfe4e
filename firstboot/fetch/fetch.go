// Package fetch copies byte ranges of files served over HTTP into a disk
// (or any file) at given offsets, as they arrive, without keeping a copy:
// each range's SHA-256 is checked as it goes, a dropped connection is
// resumed where it stopped (an HTTP Range request for what is left), and
// progress (percentage and MB/s) is printed at a steady pace. The
// installer copies disk.raw's extents with it, the upgrader a root image.
//
// Reading and writing overlap: one goroutine reads the network and hashes
// into a few aligned buffers, another writes them (O_DIRECT when the target
// allows it, so the page cache holds no second copy).
package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Part is one range to copy: Size bytes of URL from Offset, written to the
// target at To, whose SHA-256 must be SHA256 (hex).
type Part struct {
	Name         string
	URL          string
	Offset, Size int64
	To           int64
	SHA256       string
}

// Options tune a Copier.
type Options struct {
	// Client makes the requests (default: a client with no overall
	// timeout; Stall bounds each read instead).
	Client *http.Client
	// Console gets the progress lines and the retries, prefixed with
	// Prefix ("bellbuild: install: ").
	Console io.Writer
	Prefix  string
	// Every is how often progress is printed (default 3 s).
	Every time.Duration
	// Stall is how long a connection may deliver nothing before it is
	// dropped and resumed (default 30 s).
	Stall time.Duration
	// GiveUp is how long the copy goes on retrying without a byte of
	// progress before it fails (default 10 minutes).
	GiveUp time.Duration
	// BufSize is each buffer's size (default 1 MiB, a multiple of 4096).
	BufSize int
}

// ErrHash is returned (wrapped) when a part does not have its SHA-256:
// what was written must not be used.
var ErrHash = errors.New("sha256 mismatch")

// Stats is what a copy did.
type Stats struct {
	// Bytes copied (each part's Size, summed); Requests made (one per
	// part, and one per resume); Resumed is how many of them resumed.
	Bytes             int64
	Requests, Resumed int
	Took              time.Duration
}

// Target is where the parts go.
type Target interface {
	io.WriterAt
}

// OpenTarget opens a disk (or a file) for writing with O_DIRECT when it
// allows it; direct says whether it does. exclusive adds O_EXCL, which a
// block device refuses when it is mounted.
func OpenTarget(path string, exclusive bool) (f *os.File, direct bool, err error) {
	flags := os.O_RDWR
	if exclusive {
		flags |= os.O_EXCL
	}
	f, err = os.OpenFile(path, flags|unix.O_DIRECT, 0)
	if err == nil {
		return f, true, nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return nil, false, err
	}
	f, err = os.OpenFile(path, flags, 0)
	return f, false, err
}

// Copy copies parts into t, in order. With direct, every write is
// aligned to 4096 bytes at both ends (a part's last block is padded with
// zeros: the target must read as zeros there, as disk.raw does past each
// extent), so parts must start at multiples of 4096.
func Copy(ctx context.Context, t Target, direct bool, parts []Part, o Options) (Stats, error) {
	o.defaults()
	var total int64
	for _, p := range parts {
		total += p.Size
		if direct && p.To%4096 != 0 {
			return Stats{}, fmt.Errorf("fetch: %s: offset %d is not 4096-aligned", p.Name, p.To)
		}
	}
	start := time.Now()
	c := &copier{o: o, t: t, direct: direct, total: total}
	stop := c.progress(start)
	defer stop()
	for _, p := range parts {
		if err := c.part(ctx, p); err != nil {
			return c.stats(start), err
		}
	}
	stop()
	st := c.stats(start)
	c.printf("%d MB in %.1f s, %.1f MB/s", st.Bytes/1e6, st.Took.Seconds(), float64(st.Bytes)/1e6/max(st.Took.Seconds(), 0.001))
	return st, nil
}

func (o *Options) defaults() {
	if o.Client == nil {
		o.Client = &http.Client{Transport: &http.Transport{Proxy: nil, DisableCompression: true, ResponseHeaderTimeout: 30 * time.Second}}
	}
	if o.Console == nil {
		o.Console = io.Discard
	}
	if o.Every <= 0 {
		o.Every = 3 * time.Second
	}
	if o.Stall <= 0 {
		o.Stall = 30 * time.Second
	}
	if o.GiveUp <= 0 {
		o.GiveUp = 10 * time.Minute
	}
	if o.BufSize <= 0 {
		o.BufSize = 1 << 20
	}
	o.BufSize = (o.BufSize + 4095) &^ 4095
}

type copier struct {
	o      Options
	t      Target
	direct bool
	total  int64
	done   atomic.Int64 // bytes written
	reqs   atomic.Int64
	resume atomic.Int64
}

func (c *copier) printf(format string, args ...any) {
	fmt.Fprintf(c.o.Console, c.o.Prefix+format+"\n", args...)
}

func (c *copier) stats(start time.Time) Stats {
	return Stats{Bytes: c.done.Load(), Requests: int(c.reqs.Load()), Resumed: int(c.resume.Load()), Took: time.Since(start)}
}

// progress prints a line every o.Every until the returned function is
// called.
func (c *copier) progress(start time.Time) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tk := time.NewTicker(c.o.Every)
		defer tk.Stop()
		last, lastT := int64(0), start
		for {
			select {
			case <-done:
				return
			case now := <-tk.C:
				n := c.done.Load()
				rate := float64(n-last) / 1e6 / now.Sub(lastT).Seconds()
				pct := 100.0
				if c.total > 0 {
					pct = 100 * float64(n) / float64(c.total)
				}
				c.printf("%.0f%% %d/%d MB %.1f MB/s", pct, n/1e6, c.total/1e6, rate)
				last, lastT = n, now
			}
		}
	}()
	var once bool
	return func() {
		if !once {
			once = true
			close(done)
			<-stopped
		}
	}
}

// chunk is a buffer on its way from the reader to the writer.
type chunk struct {
	buf []byte // aligned; len is what to write (padded with zeros)
	n   int    // data bytes in buf
	at  int64  // target offset
}

// part copies one part: a reader goroutine fills buffers from the network
// (resuming on errors) and hashes them; this goroutine writes them.
func (c *copier) part(ctx context.Context, p Part) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const nbuf = 4
	free := make(chan []byte, nbuf)
	for range nbuf {
		free <- alignedBuf(c.o.BufSize)
	}
	full := make(chan chunk, nbuf)
	readErr := make(chan error, 1)
	go func() {
		defer close(full)
		readErr <- c.read(ctx, p, free, full)
	}()
	var werr error
	for ch := range full {
		if werr == nil {
			n := ch.n
			if c.direct {
				n = (n + 4095) &^ 4095
				clear(ch.buf[ch.n:n])
			}
			if _, err := c.t.WriteAt(ch.buf[:n], ch.at); err != nil {
				werr = fmt.Errorf("fetch: %s: writing at %d: %w", p.Name, ch.at, err)
				cancel()
			} else {
				c.done.Add(int64(ch.n))
			}
		}
		free <- ch.buf
	}
	if err := <-readErr; err != nil {
		return err
	}
	return werr
}

// read fills buffers with the part's bytes, hashing them, resuming after
// an error from where it stopped, and checks the hash at the end.
func (c *copier) read(ctx context.Context, p Part, free chan []byte, full chan<- chunk) error {
	h := sha256.New()
	var got int64 // bytes of the part read (and hashed) so far
	var cur []byte
	curN := 0
	flush := func() {
		if curN > 0 {
			full <- chunk{buf: cur, n: curN, at: p.To + got - int64(curN)}
			cur, curN = nil, 0
		}
	}
	lastProgress := time.Now()
	backoff := 500 * time.Millisecond
	first := true
	for got < p.Size {
		if !first {
			if time.Since(lastProgress) > c.o.GiveUp {
				return fmt.Errorf("fetch: %s: no progress for %s at %d of %d bytes: giving up", p.Name, c.o.GiveUp, got, p.Size)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			c.resume.Add(1)
		}
		first = false
		body, err := c.open(ctx, p, got)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.printf("%s: %v; retrying from %d MB", p.Name, err, got/1e6)
			continue
		}
		for got < p.Size {
			if cur == nil {
				select {
				case cur = <-free:
				case <-ctx.Done():
					body.Close()
					return ctx.Err()
				}
			}
			want := min(int64(len(cur)-curN), p.Size-got)
			n, err := io.ReadFull(body, cur[curN:curN+int(want)])
			if n > 0 {
				h.Write(cur[curN : curN+n])
				curN += n
				got += int64(n)
				lastProgress = time.Now()
				backoff = 500 * time.Millisecond
			}
			if curN == len(cur) || got == p.Size {
				flush()
			}
			if err != nil {
				if got < p.Size {
					if ctx.Err() != nil {
						body.Close()
						return ctx.Err()
					}
					c.printf("%s: connection lost at %d MB (%v); resuming", p.Name, got/1e6, err)
				}
				break
			}
		}
		body.Close()
	}
	flush()
	if sum := hex.EncodeToString(h.Sum(nil)); sum != p.SHA256 {
		return fmt.Errorf("fetch: %s: %w: got %s, the manifest says %s", p.Name, ErrHash, sum, p.SHA256)
	}
	return nil
}

// open requests the part's bytes from got on, and returns a body that
// fails when the connection delivers nothing for o.Stall.
func (c *copier) open(ctx context.Context, p Part, got int64) (io.ReadCloser, error) {
	rctx, cancel := context.WithCancel(ctx)
	from, to := p.Offset+got, p.Offset+p.Size-1
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, p.URL, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	c.reqs.Add(1)
	resp, err := c.o.Client.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		if !strings.HasPrefix(cr, "bytes "+strconv.FormatInt(from, 10)+"-") {
			resp.Body.Close()
			cancel()
			return nil, fmt.Errorf("asked for bytes %d-%d, got %q", from, to, cr)
		}
	case http.StatusOK:
		// No range support: skip to where we are.
		if _, err := io.CopyN(io.Discard, resp.Body, from); err != nil {
			resp.Body.Close()
			cancel()
			return nil, err
		}
	default:
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("%s: %s", p.URL, resp.Status)
	}
	return &watched{r: resp.Body, cancel: cancel, t: time.AfterFunc(c.o.Stall, cancel), stall: c.o.Stall}, nil
}

// watched is a response body whose request is cancelled when a read
// waits longer than stall.
type watched struct {
	r      io.ReadCloser
	cancel context.CancelFunc
	t      *time.Timer
	stall  time.Duration
}

func (w *watched) Read(b []byte) (int, error) {
	w.t.Reset(w.stall)
	return w.r.Read(b)
}

func (w *watched) Close() error {
	w.t.Stop()
	err := w.r.Close()
	w.cancel()
	return err
}

// alignedBuf returns n bytes starting at a 4096-aligned address (O_DIRECT).
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(uintptr(unsafe.Pointer(&b[0])) & 4095)
	if off != 0 {
		off = 4096 - off
	}
	return b[off : off+n : off+n]
}
