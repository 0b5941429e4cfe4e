package secrets

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"golang.org/x/crypto/ssh"
)

// Recipient is one key of recipients.txt: every secret is encrypted to each.
type Recipient struct {
	Line    int    // 1-based line in recipients.txt
	Kind    string // "X25519", "mlkem768x25519" (post-quantum), "ssh-ed25519" or "ssh-rsa"
	Key     string // the public key: age1..., age1pq1... or "ssh-TYPE BASE64"
	Comment string // what followed the key on its line ("# ..." or an SSH key's comment)

	r   age.Recipient
	tag string // SSH keys: the key ID age writes in the file's header
}

// String is the key and its comment, as written.
func (r Recipient) String() string {
	if r.Comment == "" {
		return r.Key
	}
	return r.Key + " " + r.Comment
}

// LineError is a problem with one line of a file.
type LineError struct {
	File string
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// maxRecipientsFile bounds recipients.txt (thousands of keys).
const maxRecipientsFile = 1 << 20

// ParseRecipients reads a recipients file (file names it in errors): one
// public key a line — an age X25519 key (age1...), an age post-quantum key
// (age1pq1...), or an SSH public key as in authorized_keys (ssh-ed25519,
// ssh-rsa of at least 2048 bits). Blank lines and lines starting with # are
// ignored, and an age key may be followed by "# comment". Every problem is
// reported, each a *LineError wrapping ErrBadRecipient; a file without a
// key is an error wrapping ErrNoRecipients. Post-quantum keys cannot be
// mixed with the others (age refuses to, since the file would not be
// post-quantum safe).
func ParseRecipients(file string, r io.Reader) ([]Recipient, error) {
	lr := &io.LimitedReader{R: r, N: maxRecipientsFile + 1}
	sc := bufio.NewScanner(lr)
	var (
		recs []Recipient
		errs []error
		seen = map[string]int{}
		n    int
	)
	bad := func(line int, format string, args ...any) {
		errs = append(errs, &LineError{file, line, fmt.Errorf(format+": %w", append(args, ErrBadRecipient)...)})
	}
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rec, err := parseRecipient(line)
		if err != nil {
			bad(n, "%v", err)
			continue
		}
		rec.Line = n
		if first, ok := seen[rec.Key]; ok {
			bad(n, "the same key as line %d", first)
			continue
		}
		seen[rec.Key] = n
		recs = append(recs, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, &LineError{file, n + 1, fmt.Errorf("%v: %w", err, ErrBadRecipient)}
	}
	if lr.N == 0 {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", file, maxRecipientsFile, ErrBadRecipient)
	}
	// age will not encrypt to post-quantum and classic keys together.
	var pq, classic []Recipient
	for _, r := range recs {
		if r.Kind == "mlkem768x25519" {
			pq = append(pq, r)
		} else {
			classic = append(classic, r)
		}
	}
	if len(pq) > 0 && len(classic) > 0 {
		for _, r := range pq {
			bad(r.Line, "a post-quantum key (age1pq1...) cannot be mixed with classic keys (line %d is %s): use only age1pq1 keys, or none", classic[0].Line, classic[0].Kind)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("%s: no recipients (want one public key a line: age1..., or an SSH public key; 'bellbuild secret keygen' makes a key pair): %w", file, ErrNoRecipients)
	}
	return recs, nil
}

// parseRecipient parses one line that is neither blank nor a comment. Its
// errors never quote the line unless it is a public key: a private key
// pasted by mistake must not end up in a log.
func parseRecipient(line string) (Recipient, error) {
	switch {
	case strings.HasPrefix(strings.ToUpper(line), "AGE-SECRET-KEY-"):
		return Recipient{}, errors.New("an age PRIVATE key, not a recipient: remove it (and treat it as exposed if this file was shared); its public key (age1...) belongs here")
	case strings.HasPrefix(line, "-----BEGIN"):
		return Recipient{}, errors.New("a PEM block (a private key?), not a recipient: remove it; an SSH public key (ssh-ed25519 AAAA...) or an age key (age1...) belongs here")
	case strings.HasPrefix(line, "age1"):
		key, comment, _ := strings.Cut(line, " ")
		comment = strings.TrimSpace(comment)
		if comment != "" && !strings.HasPrefix(comment, "#") {
			return Recipient{}, errors.New("text after the key: a comment after an age key starts with #")
		}
		if strings.HasPrefix(key, "age1pq1") {
			r, err := age.ParseHybridRecipient(key)
			if err != nil {
				return Recipient{}, err
			}
			return Recipient{Kind: "mlkem768x25519", Key: key, Comment: comment, r: r}, nil
		}
		r, err := age.ParseX25519Recipient(key)
		if err != nil {
			return Recipient{}, err
		}
		return Recipient{Kind: "X25519", Key: key, Comment: comment, r: r}, nil
	}
	pk, comment, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return Recipient{}, errors.New("not a public key: want age1... (age), age1pq1... (age, post-quantum) or an SSH public key (ssh-ed25519 AAAA...)")
	}
	if len(options) > 0 || len(rest) > 0 {
		return Recipient{}, errors.New("an SSH public key with options before it or more after it: want one key alone, as 'ssh-ed25519 AAAA... comment'")
	}
	var r age.Recipient
	switch pk.Type() {
	case "ssh-ed25519":
		r, err = agessh.NewEd25519Recipient(pk)
	case "ssh-rsa":
		if r, err = agessh.NewRSARecipient(pk); err != nil {
			err = fmt.Errorf("ssh-rsa: %v (age wants at least 2048 bits)", err)
		}
	default:
		err = fmt.Errorf("an SSH %s key: age takes only ssh-ed25519 and ssh-rsa keys", pk.Type())
	}
	if err != nil {
		return Recipient{}, err
	}
	h := sha256.Sum256(pk.Marshal())
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
	return Recipient{Kind: pk.Type(), Key: key, Comment: comment, r: r,
		tag: base64.RawStdEncoding.EncodeToString(h[:4])}, nil
}
