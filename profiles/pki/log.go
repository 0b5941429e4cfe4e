package pki

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"
)

// record is one line of the log.
type record struct {
	// Op is what happened: "ca" (a CA certificate made), "issue" (a leaf
	// certificate), "revoke" or "crl" (a CRL published).
	Op   string    `json:"op"`
	Time time.Time `json:"time"`
	// Serial is the certificate's serial number, lower-case hex.
	Serial string `json:"serial,omitempty"`
	// CA is the issuing CA (issue), the CA made (ca) or the CRL's CA (crl).
	CA Kind `json:"ca,omitempty"`
	// Slot says what a leaf is for (host/NODE, service/NODE/NAME/client,
	// user/NAME); the latest certificate of a slot supersedes the others.
	Slot    string `json:"slot,omitempty"`
	Node    string `json:"node,omitempty"`
	Service string `json:"service,omitempty"`
	// Cert is the certificate (DER; base64 in the JSON).
	Cert []byte `json:"cert,omitempty"`
	// Reason is a revocation's reason.
	Reason string `json:"reason,omitempty"`
	// Number is a CRL's number.
	Number int64 `json:"number,omitempty"`
}

// serialLog is PRIVATE/pki/log.jsonl: one JSON record per line, appended
// under an flock of PRIVATE/pki/lock and fsynced before the append
// returns. A line without its newline at the end is the tail of a writer
// killed mid-write: readers ignore it and the next writer (under the lock)
// cuts it off.
type serialLog struct {
	path, lockPath string
	// size is how many bytes of complete lines this process has read.
	size int64
	// line counts the complete lines read, for error messages.
	line int
}

// errTorn marks a log whose last line is incomplete.
var errTorn = errors.New("incomplete last line")

// readFrom reads the complete lines from l.size on, calling fn for each
// record, and advances l.size past them. It reports errTorn when bytes
// without a final newline follow.
func (l *serialLog) readFrom(f *os.File, fn func(record) error) error {
	if _, err := f.Seek(l.size, io.SeekStart); err != nil {
		return err
	}
	br := bufio.NewReaderSize(f, 1<<16)
	for {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			if len(line) > 0 {
				return errTorn
			}
			return nil
		}
		if err != nil {
			return err
		}
		l.line++
		var r record
		if err := json.Unmarshal(bytes.TrimSuffix(line, []byte("\n")), &r); err != nil {
			return fmt.Errorf("%s line %d: %w (the log is damaged: restore it from a backup)", l.path, l.line, err)
		}
		if err := fn(r); err != nil {
			return fmt.Errorf("%s line %d: %w", l.path, l.line, err)
		}
		l.size += int64(len(line))
	}
}

// refresh reads the complete lines appended since the last read (no
// lock: a torn tail, or a line being written, waits for the next call).
func (l *serialLog) refresh(fn func(record) error) error { return l.load(fn) }

// load reads the log from where this process stopped (all of it the first
// time; no lock: a torn tail is ignored).
func (l *serialLog) load(fn func(record) error) error {
	f, err := os.Open(l.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := l.readFrom(f, fn); err != nil && !errors.Is(err, errTorn) {
		return err
	}
	return nil
}

// commit takes the log's lock, reads what other processes appended since
// (fn), lets check refuse the records in the light of it, then appends
// recs and fsyncs once. Only then are the records applied (fn).
func (l *serialLog) commit(recs []record, fn func(record) error, check func() error) error {
	lk, err := os.OpenFile(l.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("log lock: %w", err)
	}
	defer lk.Close()
	if err := syscall.Flock(int(lk.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("log lock: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	err = l.readFrom(f, fn)
	if errors.Is(err, errTorn) {
		// A writer died mid-line while holding the lock: its record was
		// never acknowledged. Cut it off.
		if err := f.Truncate(l.size); err != nil {
			return fmt.Errorf("%s: cutting an incomplete last line: %w", l.path, err)
		}
	} else if err != nil {
		return err
	}
	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}
	// The lines go out a chunk at a time from one reused buffer: a
	// batch of 25,000 certificates makes 28 MB of them. The commit is
	// acknowledged by the one fsync after the last chunk, as if written
	// at once.
	const chunk = 1 << 20
	buf := make([]byte, 0, chunk+4<<10)
	at := l.size
	for i := range recs {
		if buf, err = recs[i].appendLine(buf); err == nil && (len(buf) >= chunk || i == len(recs)-1) {
			_, err = f.WriteAt(buf, at)
			at += int64(len(buf))
			buf = buf[:0]
		}
		if err != nil {
			break
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		// Nothing of this commit was acknowledged: take it back (if
		// that fails too, a reader takes what is complete of it for
		// serials that were used, which is safe).
		f.Truncate(l.size)
		return fmt.Errorf("%s: %w", l.path, err)
	}
	l.size = at
	l.line += len(recs)
	for _, r := range recs {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// appendLine appends r's line of the log to b: what json.Marshal makes of
// r, and a newline. It writes the JSON itself, not by reflection: an
// issue of 25,000 certificates appends 25,000 lines under the log's
// lock. (TestRecordJSON holds it to json.Marshal.)
func (r *record) appendLine(b []byte) ([]byte, error) {
	b = append(b, `{"op":`...)
	b = appendJSONString(b, r.Op)
	b = append(b, `,"time":"`...)
	b, err := r.Time.AppendText(b)
	if err != nil {
		return nil, fmt.Errorf("log record time: %w", err)
	}
	b = append(b, '"')
	for _, f := range []struct{ name, v string }{{"serial", r.Serial}, {"ca", string(r.CA)}, {"slot", r.Slot}, {"node", r.Node}, {"service", r.Service}} {
		if f.v != "" {
			b = append(b, `,"`...)
			b = append(b, f.name...)
			b = append(b, `":`...)
			b = appendJSONString(b, f.v)
		}
	}
	if len(r.Cert) > 0 {
		b = append(b, `,"cert":"`...)
		b = base64.StdEncoding.AppendEncode(b, r.Cert)
		b = append(b, '"')
	}
	if r.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendJSONString(b, r.Reason)
	}
	if r.Number != 0 {
		b = append(b, `,"number":`...)
		b = strconv.AppendInt(b, r.Number, 10)
	}
	return append(b, '}', '\n'), nil
}

// appendJSONString appends s as encoding/json quotes it: as it is when
// every byte is printable ASCII that JSON (with its HTML escaping)
// leaves alone, which serials, slots, node and service names are;
// through json.Marshal otherwise.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
