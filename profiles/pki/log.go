package pki

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
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
// recs in one write and fsyncs. Only then are the records applied (fn).
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
	var buf bytes.Buffer
	for _, r := range recs {
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		buf.Write(data)
		buf.WriteByte('\n')
	}
	_, err = f.WriteAt(buf.Bytes(), l.size)
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
	l.size += int64(buf.Len())
	l.line += len(recs)
	for _, r := range recs {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}
