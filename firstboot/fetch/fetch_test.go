package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// flaky serves data with Range support; the first drops requests are cut
// (the connection closed) after cut bytes, and a request with stall set
// waits that long before its first byte.
type flaky struct {
	data    []byte
	mu      sync.Mutex
	drops   int
	cut     int
	stall   time.Duration
	noRange bool
	ranges  []string
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.ranges = append(f.ranges, r.Header.Get("Range"))
	drop := f.drops > 0
	if drop {
		f.drops--
	}
	stall := f.stall
	f.stall = 0
	f.mu.Unlock()
	if f.noRange {
		r.Header.Del("Range")
	}
	if stall > 0 {
		// Headers and some bytes, then nothing for a while.
		rec := httptest.NewRecorder()
		http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(f.data))
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes()[:1000])
		w.(http.Flusher).Flush()
		select {
		case <-time.After(stall):
		case <-r.Context().Done():
			return
		}
		w.Write(rec.Body.Bytes()[1000:])
		return
	}
	if !drop {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.data))
		return
	}
	// Send the headers and cut bytes of the body, then drop the connection.
	rec := httptest.NewRecorder()
	http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(f.data))
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes()[:min(f.cut, rec.Body.Len())])
	w.(http.Flusher).Flush()
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}

func target(t *testing.T, size int64) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestCopy copies two ranges of a served file into a target at other
// offsets: the bytes land where they should, every other byte stays
// zero, and the console shows the progress and the total.
func TestCopy(t *testing.T) {
	data := randomBytes(1, 5<<20+123)
	srv := httptest.NewServer(&flaky{data: data})
	defer srv.Close()
	tgt := target(t, 16<<20)
	a, b := data[4096:4096+3<<20], data[3<<20+8192:]
	var con strings.Builder
	st, err := Copy(context.Background(), tgt, false, []Part{
		{Name: "a", URL: srv.URL, Offset: 4096, Size: int64(len(a)), To: 1 << 20, SHA256: sum(a)},
		{Name: "b", URL: srv.URL, Offset: 3<<20 + 8192, Size: int64(len(b)), To: 8 << 20, SHA256: sum(b)},
	}, Options{Console: &con, Prefix: "test: ", Every: time.Millisecond, BufSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(tgt.Name())
	want := make([]byte, 16<<20)
	copy(want[1<<20:], a)
	copy(want[8<<20:], b)
	if !bytes.Equal(got, want) {
		t.Error("the target does not hold the parts where they go")
	}
	if st.Bytes != int64(len(a)+len(b)) || st.Requests != 2 || st.Resumed != 0 {
		t.Errorf("stats %+v", st)
	}
	if !strings.Contains(con.String(), "test: 100% 5/5 MB") && !strings.Contains(con.String(), " MB/s\n") {
		t.Errorf("console:\n%s", con.String())
	}
	if last := strings.Split(strings.TrimSpace(con.String()), "\n"); !strings.HasPrefix(last[len(last)-1], "test: 5 MB in ") {
		t.Errorf("last line %q", last[len(last)-1])
	}
}

// TestResume: connections cut mid-part, and one that stalls, are resumed
// with a Range request from where the copy stopped; the result is whole.
func TestResume(t *testing.T) {
	data := randomBytes(2, 3<<20)
	f := &flaky{data: data, drops: 3, cut: 700000}
	srv := httptest.NewServer(f)
	defer srv.Close()
	tgt := target(t, 4<<20)
	var con strings.Builder
	st, err := Copy(context.Background(), tgt, false, []Part{{Name: "disk", URL: srv.URL, Size: int64(len(data)), SHA256: sum(data)}},
		Options{Console: &con, BufSize: 256 << 10})
	if err != nil {
		t.Fatalf("%v\n%s", err, con.String())
	}
	got, _ := os.ReadFile(tgt.Name())
	if !bytes.Equal(got[:len(data)], data) {
		t.Fatal("resumed copy differs")
	}
	if st.Resumed != 3 || st.Requests != 4 {
		t.Errorf("stats %+v", st)
	}
	// Each resume asked for the rest, from the last byte received.
	want := []string{"bytes=0-3145727", "bytes=700000-3145727", "bytes=1400000-3145727", "bytes=2100000-3145727"}
	if strings.Join(f.ranges, " ") != strings.Join(want, " ") {
		t.Errorf("ranges %q, want %q", f.ranges, want)
	}
	if n := strings.Count(con.String(), "connection lost"); n != 3 {
		t.Errorf("%d lost connections on the console:\n%s", n, con.String())
	}

	// A stalled connection is dropped after Stall and resumed.
	f2 := &flaky{data: data, stall: 2 * time.Second}
	srv2 := httptest.NewServer(f2)
	defer srv2.Close()
	st, err = Copy(context.Background(), target(t, 4<<20), false, []Part{{Name: "disk", URL: srv2.URL, Size: int64(len(data)), SHA256: sum(data)}},
		Options{Stall: 200 * time.Millisecond})
	if err != nil || st.Resumed == 0 {
		t.Errorf("after a stall: %+v, %v", st, err)
	}
}

// TestNoRange: a server that ignores Range is read from the start again
// and skipped to where the copy was.
func TestNoRange(t *testing.T) {
	data := randomBytes(3, 1<<20)
	srv := httptest.NewServer(&flaky{data: data, drops: 1, cut: 300000, noRange: true})
	defer srv.Close()
	tgt := target(t, 2<<20)
	if _, err := Copy(context.Background(), tgt, false, []Part{{Name: "x", URL: srv.URL, Offset: 4096, Size: 500000, SHA256: sum(data[4096 : 4096+500000])}}, Options{}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(tgt.Name())
	if !bytes.Equal(got[:500000], data[4096:4096+500000]) {
		t.Error("copy differs")
	}
}

// TestHashMismatch: a part whose bytes do not have the manifest's hash
// fails with ErrHash (after it was written: the caller must not use it).
func TestHashMismatch(t *testing.T) {
	data := randomBytes(4, 1<<20)
	srv := httptest.NewServer(&flaky{data: data})
	defer srv.Close()
	_, err := Copy(context.Background(), target(t, 2<<20), false, []Part{{Name: "root", URL: srv.URL, Size: int64(len(data)), SHA256: sum(data[1:])}}, Options{})
	if !errors.Is(err, ErrHash) || !strings.Contains(err.Error(), "fetch: root: sha256 mismatch: got "+sum(data)) {
		t.Errorf("error %v", err)
	}
}

// TestGiveUp: a server that is gone fails the copy after GiveUp.
func TestGiveUp(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	start := time.Now()
	_, err := Copy(context.Background(), target(t, 1<<20), false, []Part{{Name: "x", URL: url, Size: 10, SHA256: sum(make([]byte, 10))}}, Options{GiveUp: time.Second})
	if err == nil || !strings.Contains(err.Error(), "giving up") || time.Since(start) > 10*time.Second {
		t.Errorf("error %v after %s", err, time.Since(start))
	}
}

// TestDirect writes through O_DIRECT where the file system allows it:
// a part's last block is padded with zeros.
func TestDirect(t *testing.T) {
	// t.TempDir is often a tmpfs, which refuses O_DIRECT.
	dir, err := os.MkdirTemp("/var/tmp", "fetch-direct-")
	if err != nil {
		dir = t.TempDir()
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "disk")
	if err := os.WriteFile(p, bytes.Repeat([]byte{0xff}, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, direct, err := OpenTarget(p, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !direct {
		t.Logf("%s does not take O_DIRECT: buffered", dir)
	}
	data := randomBytes(5, 1<<20+100)
	srv := httptest.NewServer(&flaky{data: data})
	defer srv.Close()
	if _, err := Copy(context.Background(), f, direct, []Part{{Name: "x", URL: srv.URL, Size: int64(len(data)), To: 4096, SHA256: sum(data)}}, Options{}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got[4096:4096+len(data)], data) {
		t.Error("data differs")
	}
	if direct && !bytes.Equal(got[4096+len(data):4096+(len(data)+4095)&^4095], make([]byte, (len(data)+4095)&^4095-len(data))) {
		t.Error("the last block is not padded with zeros")
	}
}
