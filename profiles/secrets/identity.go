package secrets

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"github.com/bellbuild/bellbuild/images/atomicfile"
	"golang.org/x/crypto/ssh"
)

// IdentityEnv is the environment variable naming an identity file: the
// default of the commands' --identity flag (and of serve's).
const IdentityEnv = "BELLBUILD_AGE_IDENTITY"

// maxIdentityFile bounds an identity file.
const maxIdentityFile = 1 << 20

// Identity is the private keys read from one or more identity files. It
// prints as the files' names, never as a key.
type Identity struct {
	files []string
	ids   []age.Identity
	pubs  []string // the public key of each of ids, as recipients.txt would hold it
}

// LoadIdentity reads identity files. Each is either an age identity file
// (what 'bellbuild secret keygen' or age-keygen writes: AGE-SECRET-KEY-1...
// or AGE-SECRET-KEY-PQ-1... lines; blank lines and # comments ignored) or
// an SSH private key without a passphrase (ed25519 or RSA, PEM). Errors
// name the file and line but never quote a key. A file that others can
// read is loaded with a warning.
func LoadIdentity(files ...string) (*Identity, error) {
	if len(files) == 0 {
		return nil, fmt.Errorf("no identity file given (--identity FILE or $%s): %w", IdentityEnv, ErrNoIdentity)
	}
	id := &Identity{}
	for _, file := range files {
		if err := id.load(file); err != nil {
			return nil, err
		}
	}
	return id, nil
}

func (id *Identity) load(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Mode().Perm()&0o077 != 0 {
		slog.Warn("identity file is readable by others: chmod 600 it", "file", file, "mode", fmt.Sprintf("%04o", st.Mode().Perm()))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxIdentityFile+1))
	if err != nil {
		return fmt.Errorf("identity %s: %w", file, err)
	}
	if len(data) > maxIdentityFile {
		return fmt.Errorf("identity %s: larger than %d bytes: not an identity file", file, maxIdentityFile)
	}
	id.files = append(id.files, file)
	switch {
	case bytes.HasPrefix(data, []byte("age-encryption.org/")) || bytes.Contains(data, []byte("-----BEGIN AGE ENCRYPTED FILE-----")):
		return fmt.Errorf("identity %s: a passphrase-encrypted identity file: not supported (bellbuild runs unattended); use a plain identity file kept 0600", file)
	case bytes.Contains(data, []byte("-----BEGIN")):
		return id.loadSSH(file, data)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	n, found := 0, false
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var (
			k   age.Identity
			pub string
		)
		switch {
		case strings.HasPrefix(line, "AGE-SECRET-KEY-PQ-1"):
			i, err := age.ParseHybridIdentity(line)
			if err != nil {
				return &LineError{file, n, errors.New("not a valid age post-quantum secret key (bad length, character or checksum)")}
			}
			k, pub = i, i.Recipient().String()
		case strings.HasPrefix(line, "AGE-SECRET-KEY-1"):
			i, err := age.ParseX25519Identity(line)
			if err != nil {
				return &LineError{file, n, errors.New("not a valid age secret key (bad length, character or checksum)")}
			}
			k, pub = i, i.Recipient().String()
		default:
			// Never quote the line: it may be a mangled key.
			return &LineError{file, n, errors.New("not an age secret key (want AGE-SECRET-KEY-1..., or an SSH private key file)")}
		}
		id.ids = append(id.ids, k)
		id.pubs = append(id.pubs, pub)
		found = true
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("identity %s: %w", file, err)
	}
	if !found {
		return fmt.Errorf("identity %s: no key in it: %w", file, ErrNoIdentity)
	}
	return nil
}

func (id *Identity) loadSSH(file string, data []byte) error {
	raw, err := ssh.ParseRawPrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return fmt.Errorf("identity %s: a passphrase-protected SSH key: not supported (bellbuild runs unattended); use an age identity ('bellbuild secret keygen') or an unprotected key", file)
	case err != nil:
		return fmt.Errorf("identity %s: not an SSH private key bellbuild can read: %v", file, err)
	}
	signer, err := ssh.NewSignerFromKey(raw)
	if err != nil {
		return fmt.Errorf("identity %s: %v", file, err)
	}
	k, err := agessh.ParseIdentity(data)
	if err != nil {
		return fmt.Errorf("identity %s: %v (age takes ssh-ed25519 and ssh-rsa keys)", file, err)
	}
	id.ids = append(id.ids, k)
	id.pubs = append(id.pubs, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))))
	return nil
}

// Recipients are the public keys of the identity's keys, as they would
// appear in recipients.txt.
func (id *Identity) Recipients() []string { return append([]string(nil), id.pubs...) }

// String names the identity's files.
func (id *Identity) String() string {
	if id == nil {
		return "no identity"
	}
	return "identity " + strings.Join(id.files, ", ")
}

// Format prints String for every verb, so that no key is ever formatted.
func (id *Identity) Format(f fmt.State, verb rune) { fmt.Fprint(f, id.String()) }

// GenerateIdentity makes a new age X25519 key pair, writes the private key
// to file as an age identity file (mode 0600, written whole or not at all;
// an existing file is never overwritten) and returns the public key, the
// line to add to recipients.txt.
func GenerateIdentity(file string) (recipient string, err error) {
	k, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	pub := k.Recipient().String()
	content := "# bellbuild secret keygen: an age identity (X25519). Keep this file private.\n" +
		"# public key: " + pub + "\n" + k.String() + "\n"
	if err := writeNew(file, []byte(content), 0o600); err != nil {
		return "", fmt.Errorf("keygen: %w", err)
	}
	return pub, nil
}

// writeNew writes a file that must not exist yet: a temp file in the same
// directory, fsync, then a hard link to the name (which fails if the name
// exists, even if it appeared meanwhile), and a directory fsync.
func writeNew(file string, data []byte, perm fs.FileMode) error {
	if _, err := os.Lstat(file); err == nil {
		return fmt.Errorf("%s already exists: not overwriting it", file)
	}
	dir := filepath.Dir(file)
	tmp, err := writeTemp(dir, filepath.Base(file), data, perm)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, file); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists: not overwriting it", file)
		}
		return err
	}
	return atomicfile.SyncDir(dir)
}
