// Package secrets is a site's secret store: SITE/secrets/NAME.age, each
// file one value encrypted with age (filippo.io/age) to every public key in
// SITE/secrets/recipients.txt — the serving host's key and the operators'.
//
// The ciphertext is safe to commit with the site; only an identity (a
// private key file) named by --identity or $BELLBUILD_AGE_IDENTITY can read
// a value. A decrypted value is a nodeconf.Secret, which prints as
// "<secret NAME>" everywhere; no error or log line of this package holds a
// value.
//
// Every write takes the store's lock, goes to a temp file in the same
// directory, is fsynced and renamed over its name: a value is replaced
// whole or not at all. Rekey re-encrypts every value to the current
// recipients, all of them or none.
package secrets

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/bellbuild/bellbuild/images/atomicfile"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

const (
	// Dir is the store's directory in a site.
	Dir = "secrets"
	// RecipientsFile lists, in Dir, the public keys every value is encrypted to.
	RecipientsFile = "recipients.txt"
	// Ext ends every secret's file name: NAME.age.
	Ext = ".age"
	// MaxValueSize bounds a value (1 MiB): secrets are keys, tokens and
	// passwords, not data.
	MaxValueSize = 1 << 20
	// maxFileSize bounds a ciphertext file: the value, age's 16 bytes per
	// 64 KiB chunk, and a header of up to 1 MiB of recipient stanzas.
	maxFileSize = 2 * MaxValueSize
	// ageIntro starts every age file.
	ageIntro = "age-encryption.org/v1\n"
)

// The errors below are wrapped (errors.Is) by every error of their kind;
// each such error also names the file.
var (
	ErrBadName       = errors.New("invalid secret name")
	ErrNotFound      = errors.New("no such secret")
	ErrEmpty         = errors.New("empty value")
	ErrTooLarge      = errors.New("value too large")
	ErrNoRecipients  = errors.New("no recipients")
	ErrBadRecipient  = errors.New("bad recipient")
	ErrNoIdentity    = errors.New("no identity")
	ErrWrongIdentity = errors.New("identity cannot decrypt")
	ErrCorrupt       = errors.New("corrupt secret file")
)

// Resolver gives a site's `!secret NAME` references their values: what the
// site model (validate needs Has, render and config need Lookup) and serve
// use. A Store's Resolver implements it.
type Resolver interface {
	// Lookup decrypts the secret name: an error wrapping ErrNotFound,
	// ErrWrongIdentity, ErrNoIdentity or ErrCorrupt otherwise.
	Lookup(name string) (nodeconf.Secret, error)
	// Has says whether the store holds name (without decrypting it).
	Has(name string) bool
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

// ValidName checks that name can be a secret's name: 1 to 128 characters
// of a-z 0-9 . _ -, starting with a letter or digit (a safe file name).
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%q: want 1 to 128 of a-z 0-9 . _ -, starting with a letter or digit: %w", name, ErrBadName)
	}
	return nil
}

// ReadValue reads a value from r: at most MaxValueSize bytes (an error
// wrapping ErrTooLarge beyond), nothing stripped.
func ReadValue(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxValueSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxValueSize {
		return nil, fmt.Errorf("more than %d bytes (1 MiB): %w", MaxValueSize, ErrTooLarge)
	}
	return b, nil
}

// Store is the secret store of one site.
type Store struct {
	dir string
}

// Open returns the store of the site in directory site (SITE/secrets/,
// which need not exist until a value is set).
func Open(site string) (*Store, error) {
	st, err := os.Stat(site)
	if err != nil {
		return nil, fmt.Errorf("site: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("site %s: not a directory", site)
	}
	return &Store{dir: filepath.Join(site, Dir)}, nil
}

// Dir is the store's directory, SITE/secrets.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(name string) string { return filepath.Join(s.dir, name+Ext) }

// Recipients parses SITE/secrets/recipients.txt (see ParseRecipients).
func (s *Store) Recipients() ([]Recipient, error) {
	file := filepath.Join(s.dir, RecipientsFile)
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist (want one public key a line: age1..., or an SSH public key; 'bellbuild secret keygen' makes a key pair): %w", file, ErrNoRecipients)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseRecipients(file, f)
}

// Set encrypts value to every recipient and stores it as name, replacing
// any value it had. The file's mode is 0644: it is ciphertext, meant to be
// committed with the site (where git keeps no stricter mode anyway) and
// read by whoever serves it; the identity file is what stays private.
func (s *Store) Set(name string, value []byte) error {
	if err := ValidName(name); err != nil {
		return err
	}
	switch {
	case len(value) == 0:
		return fmt.Errorf("secret %s: %w (nothing to store)", name, ErrEmpty)
	case len(value) > MaxValueSize:
		return fmt.Errorf("secret %s: %d bytes, more than %d (1 MiB): %w", name, len(value), MaxValueSize, ErrTooLarge)
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	recs, err := s.Recipients()
	if err != nil {
		return err
	}
	ct, err := encrypt(value, recs)
	if err != nil {
		return fmt.Errorf("secret %s: %w", name, err)
	}
	if err := writeFile(s.path(name), ct, 0o644); err != nil {
		return fmt.Errorf("secret %s: %w", name, err)
	}
	slog.Debug("secret stored", "file", s.path(name), "recipients", len(recs))
	return nil
}

func encrypt(value []byte, recs []Recipient) ([]byte, error) {
	rs := make([]age.Recipient, len(recs))
	for i, r := range recs {
		rs[i] = r.r
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, rs...)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(value); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Get decrypts the secret name with id.
func (s *Store) Get(name string, id *Identity) (nodeconf.Secret, error) {
	if err := ValidName(name); err != nil {
		return nodeconf.Secret{}, err
	}
	file := s.path(name)
	ct, err := readCiphertext(file)
	if err != nil {
		return nodeconf.Secret{}, err
	}
	if id == nil {
		return nodeconf.Secret{}, fmt.Errorf("%s: decrypting needs an identity (--identity FILE or $%s): %w", file, IdentityEnv, ErrNoIdentity)
	}
	b, err := s.decrypt(file, ct, id)
	if err != nil {
		return nodeconf.Secret{}, err
	}
	return nodeconf.NewSecret(name, b), nil
}

// Has says whether the store holds a secret name.
func (s *Store) Has(name string) bool {
	if ValidName(name) != nil {
		return false
	}
	st, err := os.Stat(s.path(name))
	return err == nil && st.Mode().IsRegular()
}

func readCiphertext(file string) ([]byte, error) {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist ('bellbuild secret ls' lists the secrets): %w", file, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ct, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(ct) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than any secret's file (%d bytes): %w", file, maxFileSize, ErrCorrupt)
	}
	return ct, nil
}

// decrypt decrypts one file's content; its errors say why, never what.
func (s *Store) decrypt(file string, ct []byte, id *Identity) ([]byte, error) {
	// age's header errors quote the line they stopped at, which in a file
	// that is not what it should be may be a value: say what, not where.
	if !bytes.HasPrefix(ct, []byte(ageIntro)) {
		return nil, fmt.Errorf("%s: not an age file (it does not start with %q; 'bellbuild secret set' writes one): %w", file, strings.TrimSpace(ageIntro), ErrCorrupt)
	}
	if _, err := age.ExtractHeader(bytes.NewReader(ct)); err != nil {
		return nil, fmt.Errorf("%s: its age header is malformed (cut short or edited): %w", file, ErrCorrupt)
	}
	rec := &stanzaRecorder{}
	r, err := age.Decrypt(bytes.NewReader(ct), append(append([]age.Identity(nil), id.ids...), rec)...)
	var nomatch *age.NoIdentityMatchError
	switch {
	case errors.As(err, &nomatch):
		return nil, fmt.Errorf("%s: %s cannot decrypt it: %s: %w", file, id, s.describe(rec.stanzas, id), ErrWrongIdentity)
	case err != nil:
		return nil, fmt.Errorf("%s: cannot be decrypted: %v: %w", file, err, ErrCorrupt)
	}
	b, err := io.ReadAll(io.LimitReader(r, MaxValueSize+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: damaged ciphertext: %v: %w", file, err, ErrCorrupt)
	case len(b) > MaxValueSize:
		return nil, fmt.Errorf("%s: holds more than %d bytes: %w", file, MaxValueSize, ErrTooLarge)
	}
	return b, nil
}

// stanzaRecorder is the last identity tried: it notes the file's recipient
// stanzas, to say whom the file was encrypted to, and matches nothing.
type stanzaRecorder struct{ stanzas []*age.Stanza }

func (r *stanzaRecorder) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	r.stanzas = stanzas
	return nil, age.ErrIncorrectIdentity
}

// describe says whom a file is encrypted to, as far as its header tells:
// age keys are anonymous (only their number shows), SSH keys carry a key
// ID that recipients.txt's keys are matched against. It adds whether the
// identity's own key is in recipients.txt (then the file predates it: a
// rekey is due).
func (s *Store) describe(stanzas []*age.Stanza, id *Identity) string {
	recs, _ := s.Recipients()
	rel := filepath.Join(Dir, RecipientsFile)
	var parts []string
	anon := map[string]int{}
	for _, st := range stanzas {
		switch st.Type {
		case "ssh-ed25519", "ssh-rsa":
			who := "a key not in " + rel
			for _, r := range recs {
				if r.tag != "" && len(st.Args) > 0 && r.tag == st.Args[0] {
					who = fmt.Sprintf("%s:%d", rel, r.Line)
					break
				}
			}
			tag := ""
			if len(st.Args) > 0 {
				tag = " " + st.Args[0]
			}
			parts = append(parts, fmt.Sprintf("%s%s (%s)", st.Type, tag, who))
		default:
			anon[st.Type]++
		}
	}
	var types []string
	for t := range anon {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		parts = append(parts, fmt.Sprintf("%d %s key(s) (anonymous: age does not record which)", anon[t], t))
	}
	msg := fmt.Sprintf("it is encrypted to %d recipient(s): %s", len(stanzas), strings.Join(parts, ", "))
	msg += fmt.Sprintf("; the identity's public key(s): %s", strings.Join(id.pubs, ", "))
	for _, pub := range id.pubs {
		for _, r := range recs {
			if r.Key == pub {
				msg += fmt.Sprintf("; %s:%d lists %s, so the file was encrypted before it was added: rekey with an identity that can decrypt it", rel, r.Line, short(pub))
			}
		}
	}
	return msg
}

// short abbreviates a public key for a message.
func short(key string) string {
	if len(key) > 24 {
		return key[:20] + "..."
	}
	return key
}

// Entry is one secret as List shows it: never its value.
type Entry struct {
	Name    string
	Size    int64     // of the encrypted file
	ModTime time.Time // of the encrypted file
}

// List returns the store's secrets sorted by name (none if SITE/secrets
// does not exist). A *.age file whose name is not a valid secret name is
// an error naming it.
func (s *Store) List() ([]Entry, error) {
	des, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var (
		out  []Entry
		errs []error
	)
	for _, de := range des {
		n := de.Name()
		if strings.HasPrefix(n, ".") || !strings.HasSuffix(n, Ext) {
			continue
		}
		file := filepath.Join(s.dir, n)
		name := strings.TrimSuffix(n, Ext)
		if err := ValidName(name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w (rename it)", file, err))
			continue
		}
		st, err := os.Stat(file)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !st.Mode().IsRegular() {
			errs = append(errs, fmt.Errorf("%s: not a regular file", file))
			continue
		}
		out = append(out, Entry{Name: name, Size: st.Size(), ModTime: st.ModTime()})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes the secret name.
func (s *Store) Remove(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	file := s.path(name)
	if _, err := os.Lstat(file); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s does not exist: %w", file, ErrNotFound)
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.Remove(file); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s does not exist: %w", file, ErrNotFound)
	} else if err != nil {
		return err
	}
	return atomicfile.SyncDir(s.dir)
}

// Rekey re-encrypts every secret to the current recipients.txt, after a
// key was added or removed, and returns the names it rekeyed. id must
// decrypt every file.
//
// All or nothing: it decrypts every file and writes every new file (temp
// files, fsynced) before it renames the first over its name; a file that
// cannot be decrypted or written, or a bad recipients.txt, is an error and
// changes nothing. When a rename fails, the files already renamed are put
// back as they were. A crash during the renames (or a failed put-back)
// leaves each file whole, encrypted either to the previous recipients or
// to the new ones; temp files left behind are removed by the next write.
// Rerunning Rekey then finishes the job, given an identity that decrypts
// both kinds: when removing a key, rekey with a key that stays.
func (s *Store) Rekey(id *Identity) ([]string, error) {
	if id == nil {
		return nil, fmt.Errorf("rekey needs an identity (--identity FILE or $%s): %w", IdentityEnv, ErrNoIdentity)
	}
	// 1. Lock, read the recipients and the list.
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	recs, err := s.Recipients()
	if err != nil {
		return nil, fmt.Errorf("rekey changed nothing: %w", err)
	}
	entries, err := s.List()
	if err != nil {
		return nil, fmt.Errorf("rekey changed nothing: %w", err)
	}

	// 2. Decrypt every file; report every one that fails.
	items := make([]*rekeyItem, 0, len(entries))
	var errs []error
	for _, e := range entries {
		it := &rekeyItem{name: e.Name, file: s.path(e.Name)}
		if it.old, err = readCiphertext(it.file); err == nil {
			it.plain, err = s.decrypt(it.file, it.old, id)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		items = append(items, it)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("rekey changed nothing: %w", errors.Join(errs...))
	}

	// 3. Encrypt each to the new recipients into a temp file.
	removeTemps := func() {
		for _, it := range items {
			if it.tmp != "" {
				os.Remove(it.tmp)
			}
		}
	}
	for _, it := range items {
		ct, err := encrypt(it.plain, recs)
		if err == nil {
			it.tmp, err = writeTemp(s.dir, it.name+Ext, ct, 0o644)
		}
		if err != nil {
			removeTemps()
			return nil, fmt.Errorf("rekey changed nothing: %s: %w", it.file, err)
		}
	}

	// 4. Rename each over its name; on a failure, put the renamed back.
	for i, it := range items {
		if err := rename(it.tmp, it.file); err != nil {
			removeTemps()
			return nil, s.rollback(items[:i], fmt.Errorf("%s: %w", it.file, err))
		}
		it.tmp = ""
	}
	if err := atomicfile.SyncDir(s.dir); err != nil {
		return nil, err
	}
	names := make([]string, len(items))
	for i, it := range items {
		names[i] = it.name
	}
	slog.Debug("secrets rekeyed", "dir", s.dir, "secrets", len(names), "recipients", len(recs))
	return names, nil
}

// rekeyItem is one file of a rekey.
type rekeyItem struct {
	name, file string
	tmp        string // its new ciphertext, until renamed
	old, plain []byte
}

// rollback writes back the previous ciphertext of the files a failed rekey
// already renamed; its error says what each file holds now.
func (s *Store) rollback(done []*rekeyItem, cause error) error {
	var restored, stuck []string
	for _, it := range done {
		if err := writeFile(it.file, it.old, 0o644); err != nil {
			stuck = append(stuck, it.name)
			continue
		}
		restored = append(restored, it.name)
	}
	if len(stuck) == 0 {
		return fmt.Errorf("rekey failed and changed nothing (%d file(s) put back as they were): %w", len(restored), cause)
	}
	return fmt.Errorf("rekey interrupted: %s encrypted to the new recipients, every other file to the previous ones (each file is whole); "+
		"rerun rekey with an identity that decrypts both: %w", strings.Join(stuck, ", "), cause)
}

// Resolver returns the Resolver of the store that decrypts with id. With
// a nil id, Has still answers and Lookup fails with ErrNoIdentity (after
// ErrNotFound): enough to validate a site's references.
func (s *Store) Resolver(id *Identity) Resolver { return keyring{s, id} }

type keyring struct {
	s  *Store
	id *Identity
}

func (k keyring) Lookup(name string) (nodeconf.Secret, error) { return k.s.Get(name, k.id) }
func (k keyring) Has(name string) bool                        { return k.s.Has(name) }
