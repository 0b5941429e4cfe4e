package secrets

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"golang.org/x/crypto/ssh"
)

// key is one test key pair: its identity file and its recipients.txt line.
type key struct {
	file, pub string
}

// newKey makes an age key pair with GenerateIdentity.
func newKey(t *testing.T) key {
	t.Helper()
	file := filepath.Join(t.TempDir(), "key.txt")
	pub, err := GenerateIdentity(file)
	if err != nil {
		t.Fatal(err)
	}
	return key{file, pub}
}

// newSSHKey makes an ssh-ed25519 key pair: an OpenSSH private key file
// (protected by passphrase if not nil) and its authorized_keys line.
func newSSHKey(t *testing.T, passphrase []byte) key {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if passphrase != nil {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "op@example", passphrase)
	} else {
		block, err = ssh.MarshalPrivateKey(priv, "op@example")
	}
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	spk, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return key{file, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spk))) + " op@example"}
}

// newSite makes a site whose recipients.txt lists keys.
func newSite(t *testing.T, keys ...key) (string, *Store) {
	t.Helper()
	site := t.TempDir()
	if err := os.Mkdir(filepath.Join(site, Dir), 0o755); err != nil {
		t.Fatal(err)
	}
	setRecipients(t, site, keys...)
	s, err := Open(site)
	if err != nil {
		t.Fatal(err)
	}
	return site, s
}

func setRecipients(t *testing.T, site string, keys ...key) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# who may decrypt this site's secrets\n\n")
	for _, k := range keys {
		b.WriteString(k.pub + "\n")
	}
	if err := os.WriteFile(filepath.Join(site, Dir, RecipientsFile), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ageDecrypt decrypts the file with k straight through the age library
// (not through the store): the independent judge of what is on disk.
func ageDecrypt(t *testing.T, file string, k key) ([]byte, error) {
	t.Helper()
	kb, err := os.ReadFile(k.file)
	if err != nil {
		t.Fatal(err)
	}
	var ids []age.Identity
	if bytes.Contains(kb, []byte("-----BEGIN")) {
		id, err := agessh.ParseIdentity(kb)
		if err != nil {
			t.Fatal(err)
		}
		ids = []age.Identity{id}
	} else if ids, err = age.ParseIdentities(bytes.NewReader(kb)); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := age.Decrypt(f, ids...)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// mustDecrypt asserts that k decrypts file to want.
func mustDecrypt(t *testing.T, file string, k key, want string) {
	t.Helper()
	got, err := ageDecrypt(t, file, k)
	if err != nil {
		t.Fatalf("%s with %s: %v", file, k.file, err)
	}
	if string(got) != want {
		t.Fatalf("%s with %s = %q, want %q", file, k.file, got, want)
	}
}

// cannotDecrypt asserts that k does not decrypt file.
func cannotDecrypt(t *testing.T, file string, k key) {
	t.Helper()
	_, err := ageDecrypt(t, file, k)
	var nm *age.NoIdentityMatchError
	if !errors.As(err, &nm) {
		t.Fatalf("%s with %s: err = %v, want no identity match", file, k.file, err)
	}
}

func loadID(t *testing.T, keys ...key) *Identity {
	t.Helper()
	var files []string
	for _, k := range keys {
		files = append(files, k.file)
	}
	id, err := LoadIdentity(files...)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// snapshot is every file under dir (path → sha256 and mode), to show that
// a failed operation changed nothing.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		lines = append(lines, fmt.Sprintf("%s %v %x", rel, st.Mode(), sha256.Sum256(b)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
