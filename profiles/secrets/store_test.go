package secrets

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRoundTripEveryRecipient(t *testing.T) {
	a, b, c := newKey(t), newKey(t), newSSHKey(t, nil)
	site, s := newSite(t, a, b, c)
	if err := s.Set("db-password", []byte("hunter2\n")); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(site, "secrets", "db-password.age")
	ct, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(ct, []byte("age-encryption.org/v1\n")) || bytes.Contains(ct, []byte("hunter2")) {
		t.Fatalf("%s is not age ciphertext:\n%s", file, ct)
	}
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o644 {
		t.Errorf("%s mode %v, want 0644", file, st.Mode())
	}
	for i, k := range []key{a, b, c} {
		t.Run([]string{"age-a", "age-b", "ssh-c"}[i], func(t *testing.T) {
			mustDecrypt(t, file, k, "hunter2\n") // age itself, from the file
			v, err := s.Get("db-password", loadID(t, k))
			if err != nil {
				t.Fatal(err)
			}
			if got := string(v.Reveal()); got != "hunter2\n" || v.Name() != "db-password" {
				t.Errorf("Get = %q (%s), want %q", got, v.Name(), "hunter2\n")
			}
		})
	}
	// A key that is not a recipient: the error says whom the file is for,
	// as far as age tells (SSH keys leave an ID, age keys do not).
	_, err = s.Get("db-password", loadID(t, newKey(t)))
	if want := "it is encrypted to 3 recipient(s): ssh-ed25519 "; !errors.Is(err, ErrWrongIdentity) || !strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), "(secrets/recipients.txt:5), 2 X25519 key(s)") {
		t.Errorf("Get with a stranger's key: %v\nwant %q and the SSH key's line", err, want)
	}
	// Set again replaces the value.
	if err := s.Set("db-password", []byte("correct horse")); err != nil {
		t.Fatal(err)
	}
	mustDecrypt(t, file, b, "correct horse")
	if left, _ := filepath.Glob(filepath.Join(site, "secrets", ".*")); len(left) > 0 {
		t.Errorf("temp files left: %v", left)
	}
}

func TestResolver(t *testing.T) {
	a, b := newKey(t), newKey(t)
	_, s := newSite(t, a)
	if err := s.Set("token", []byte("t0k3n")); err != nil {
		t.Fatal(err)
	}
	var r Resolver = s.Resolver(loadID(t, a))
	if !r.Has("token") || r.Has("nope") || r.Has("../token") {
		t.Errorf("Has(token, nope, ../token) = %v %v %v, want true false false", r.Has("token"), r.Has("nope"), r.Has("../token"))
	}
	v, err := r.Lookup("token")
	if err != nil || string(v.Reveal()) != "t0k3n" {
		t.Errorf("Lookup(token) = %q, %v", v.Reveal(), err)
	}
	for _, tt := range []struct {
		name string
		r    Resolver
		key  string
		want error
	}{
		{"missing", r, "nope", ErrNotFound},
		{"bad name", r, "Nope", ErrBadName},
		{"wrong identity", s.Resolver(loadID(t, b)), "token", ErrWrongIdentity},
		{"no identity", s.Resolver(nil), "token", ErrNoIdentity},
		{"no identity, missing", s.Resolver(nil), "nope", ErrNotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.r.Lookup(tt.key); !errors.Is(err, tt.want) {
				t.Errorf("Lookup(%s) = %v, want %v", tt.key, err, tt.want)
			}
		})
	}
}

func TestRekeyAddRecipient(t *testing.T) {
	a, b := newKey(t), newKey(t)
	site, s := newSite(t, a)
	for _, n := range []string{"one", "two"} {
		if err := s.Set(n, []byte("value of "+n)); err != nil {
			t.Fatal(err)
		}
	}
	setRecipients(t, site, a, b)
	// Before the rekey, b is listed but cannot decrypt: the error says so.
	_, err := s.Get("one", loadID(t, b))
	if !errors.Is(err, ErrWrongIdentity) || !strings.Contains(err.Error(), "encrypted before it was added") {
		t.Fatalf("Get before rekey: %v", err)
	}
	names, err := s.Rekey(loadID(t, a))
	if err != nil || strings.Join(names, ",") != "one,two" {
		t.Fatalf("Rekey = %v, %v", names, err)
	}
	for _, n := range []string{"one", "two"} {
		file := filepath.Join(site, "secrets", n+".age")
		mustDecrypt(t, file, a, "value of "+n)
		mustDecrypt(t, file, b, "value of "+n)
	}
}

func TestRekeyRemoveRecipient(t *testing.T) {
	a, b, c := newKey(t), newKey(t), newSSHKey(t, nil)
	site, s := newSite(t, a, b, c)
	if err := s.Set("one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(site, "secrets", "one.age")
	mustDecrypt(t, file, c, "1")
	setRecipients(t, site, a)
	if _, err := s.Rekey(loadID(t, b)); err != nil { // b decrypts the old file
		t.Fatal(err)
	}
	mustDecrypt(t, file, a, "1")
	cannotDecrypt(t, file, b)
	cannotDecrypt(t, file, c)
	_, err := s.Get("one", loadID(t, c))
	if !errors.Is(err, ErrWrongIdentity) {
		t.Fatalf("Get with a removed key: %v", err)
	}
	if want := "1 X25519 key(s)"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

// TestRekeyAllOrNothing: every failure before the renames, and a failed
// rename, leave every byte as it was.
func TestRekeyAllOrNothing(t *testing.T) {
	a, b, stranger := newKey(t), newKey(t), newKey(t)
	names := []string{"a1", "b2", "c3", "d4"}
	setup := func(t *testing.T) (string, *Store) {
		site, s := newSite(t, a)
		for _, n := range names {
			if err := s.Set(n, []byte("v-"+n)); err != nil {
				t.Fatal(err)
			}
		}
		setRecipients(t, site, a, b)
		return site, s
	}
	tests := []struct {
		name    string
		prepare func(t *testing.T, site string, s *Store)
		id      []key
		want    error
		inErr   string
	}{
		{"wrong identity", nil, []key{stranger}, ErrWrongIdentity, "a1.age"},
		{"one file corrupt", func(t *testing.T, site string, s *Store) {
			corrupt(t, filepath.Join(site, "secrets", "c3.age"), -5)
		}, []key{a}, ErrCorrupt, "c3.age"},
		{"one file for someone else", func(t *testing.T, site string, s *Store) {
			setRecipients(t, site, stranger)
			if err := s.Set("b2", []byte("other")); err != nil {
				t.Fatal(err)
			}
			setRecipients(t, site, a, b)
		}, []key{a}, ErrWrongIdentity, "b2.age"},
		{"empty recipients", func(t *testing.T, site string, s *Store) {
			os.WriteFile(filepath.Join(site, "secrets", RecipientsFile), []byte("# nobody\n"), 0o644)
		}, []key{a}, ErrNoRecipients, "recipients.txt"},
		{"bad recipient", func(t *testing.T, site string, s *Store) {
			os.WriteFile(filepath.Join(site, "secrets", RecipientsFile), []byte(a.pub+"\nage1nope\n"), 0o644)
		}, []key{a}, ErrBadRecipient, "recipients.txt:2"},
		{"rename fails", func(t *testing.T, site string, s *Store) {
			failRename(t, "c3.age", 1)
		}, []key{a}, os.ErrPermission, "c3.age"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			site, s := setup(t)
			if tt.prepare != nil {
				tt.prepare(t, site, s)
			}
			before := snapshot(t, site)
			_, err := s.Rekey(loadID(t, tt.id...))
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.inErr) || !strings.Contains(err.Error(), "changed nothing") {
				t.Fatalf("Rekey: %v\nwant %v naming %s and saying it changed nothing", err, tt.want, tt.inErr)
			}
			if after := snapshot(t, site); after != before {
				t.Errorf("files changed:\nbefore\n%s\nafter\n%s", before, after)
			}
		})
	}
}

// TestRekeyInterrupted: renames that stop half way (and a put-back that
// fails too, as after a crash) leave each file whole for the old or the
// new recipients; a rerun finishes.
func TestRekeyInterrupted(t *testing.T) {
	a, b, c := newKey(t), newKey(t), newKey(t)
	site, s := newSite(t, a, b)
	names := []string{"a1", "b2", "c3", "d4"}
	for _, n := range names {
		if err := s.Set(n, []byte("v-"+n)); err != nil {
			t.Fatal(err)
		}
	}
	setRecipients(t, site, a, c)  // b leaves, c comes
	failRename(t, "c3.age", 1000) // c3 and every rename after it fail
	_, err := s.Rekey(loadID(t, a))
	if !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), "rekey interrupted: a1, b2 encrypted to the new recipients") {
		t.Fatalf("Rekey: %v", err)
	}
	for _, n := range names {
		file := filepath.Join(site, "secrets", n+".age")
		mustDecrypt(t, file, a, "v-"+n)
		_, errB := ageDecrypt(t, file, b)
		_, errC := ageDecrypt(t, file, c)
		if (errB == nil) == (errC == nil) {
			t.Errorf("%s: old key decrypts: %v, new key decrypts: %v; want exactly one", n, errB == nil, errC == nil)
		}
	}
	// A crashed writer's temp file goes with the next write.
	stale := filepath.Join(site, "secrets", ".d4.age.tmp-123")
	os.WriteFile(stale, []byte("half"), 0o644)

	rename = os.Rename
	if _, err := s.Rekey(loadID(t, a)); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		file := filepath.Join(site, "secrets", n+".age")
		mustDecrypt(t, file, c, "v-"+n)
		cannotDecrypt(t, file, b)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temp file still there: %v", err)
	}
}

// failRename makes the next n renames onto a file named base, and every
// rename after the first such, fail with EPERM.
func failRename(t *testing.T, base string, n int) {
	t.Helper()
	failing := false
	rename = func(old, new string) error {
		if filepath.Base(new) == base && n > 0 {
			failing = true
		}
		if failing && n > 0 {
			n--
			return &os.LinkError{Op: "rename", Old: old, New: new, Err: os.ErrPermission}
		}
		return os.Rename(old, new)
	}
	t.Cleanup(func() { rename = os.Rename })
}

// corrupt flips a byte of file at off (from the end if negative).
func corrupt(t *testing.T, file string, off int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += len(b)
	}
	b[off] ^= 0x40
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestList(t *testing.T) {
	a := newKey(t)
	site, s := newSite(t, a)
	if got, err := s.List(); err != nil || len(got) != 0 {
		t.Fatalf("List of an empty store = %v, %v", got, err)
	}
	for _, n := range []string{"zeta", "alpha", "m.n_o-p"} {
		if err := s.Set(n, []byte(strings.Repeat("x", len(n)))); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(site, "secrets", "README"), []byte("not a secret"), 0o644)
	os.WriteFile(filepath.Join(site, "secrets", ".alpha.age.tmp-1"), []byte("temp"), 0o644)
	got, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range got {
		names = append(names, e.Name)
		st, _ := os.Stat(filepath.Join(site, "secrets", e.Name+".age"))
		if e.Size != st.Size() || !e.ModTime.Equal(st.ModTime()) || time.Since(e.ModTime) > time.Hour {
			t.Errorf("%s: size %d mtime %v, file has %d %v", e.Name, e.Size, e.ModTime, st.Size(), st.ModTime())
		}
	}
	if strings.Join(names, " ") != "alpha m.n_o-p zeta" {
		t.Errorf("List names = %v", names)
	}

	// A store without the directory is empty; a badly named file is an error.
	if got, err := (&Store{dir: filepath.Join(t.TempDir(), "secrets")}).List(); err != nil || got != nil {
		t.Errorf("List without a directory = %v, %v", got, err)
	}
	os.WriteFile(filepath.Join(site, "secrets", "Bad Name.age"), nil, 0o644)
	if _, err := s.List(); !errors.Is(err, ErrBadName) || !strings.Contains(err.Error(), "Bad Name.age") {
		t.Errorf("List with a bad name: %v", err)
	}
}

func TestRemove(t *testing.T) {
	a := newKey(t)
	site, s := newSite(t, a)
	if err := s.Set("gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(site, "secrets", "gone.age")); !os.IsNotExist(err) {
		t.Errorf("gone.age still there: %v", err)
	}
	if err := s.Remove("gone"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "gone.age") {
		t.Errorf("Remove of a missing secret: %v", err)
	}
}

func TestNames(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"db", true}, {"0", true}, {"a.b_c-d", true}, {strings.Repeat("a", 128), true},
		{"", false}, {strings.Repeat("a", 129), false}, {"Db", false}, {".hidden", false},
		{"-x", false}, {"a/b", false}, {"..", false}, {"a b", false}, {"é", false}, {"a\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidName(tt.name)
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrBadName)) {
				t.Errorf("ValidName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
		})
	}
}

func TestValueSize(t *testing.T) {
	a := newKey(t)
	site, s := newSite(t, a)
	max := bytes.Repeat([]byte("m"), MaxValueSize)
	if err := s.Set("max", max); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get("max", loadID(t, a)); err != nil || !bytes.Equal(v.Reveal(), max) {
		t.Fatalf("Get(max): %d bytes, %v", v.Len(), err)
	}
	before := snapshot(t, site)
	if err := s.Set("max", append(max, 'x')); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Set of 1 MiB + 1: %v", err)
	}
	if err := s.Set("empty", nil); !errors.Is(err, ErrEmpty) {
		t.Errorf("Set of nothing: %v", err)
	}
	if after := snapshot(t, site); after != before {
		t.Error("a refused Set changed files")
	}
	if b, err := ReadValue(bytes.NewReader(max)); err != nil || len(b) != MaxValueSize {
		t.Errorf("ReadValue(1 MiB) = %d bytes, %v", len(b), err)
	}
	if _, err := ReadValue(bytes.NewReader(append(max, 'x'))); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadValue(1 MiB + 1): %v", err)
	}
}

func TestGenerateIdentity(t *testing.T) {
	file := filepath.Join(t.TempDir(), "host.key")
	pub, err := GenerateIdentity(file)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v, %v; want mode 0600", st.Mode(), err)
	}
	id := loadID(t, key{file: file})
	if got := id.Recipients(); len(got) != 1 || got[0] != pub || !strings.HasPrefix(pub, "age1") {
		t.Errorf("Recipients = %v, keygen said %s", got, pub)
	}
	before, _ := os.ReadFile(file)
	if _, err := GenerateIdentity(file); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second keygen: %v", err)
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Error("second keygen overwrote the identity")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".*")); len(left) > 0 {
		t.Errorf("temp files left: %v", left)
	}
}

func TestLoadIdentity(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	good := newKey(t)
	sshKey := newSSHKey(t, nil)
	if id := loadID(t, good, sshKey); len(id.Recipients()) != 2 || id.Recipients()[1]+" op@example" != sshKey.pub {
		t.Errorf("two files: recipients %v", id.Recipients())
	}
	for _, tt := range []struct {
		name, file, want string
	}{
		{"missing", filepath.Join(dir, "nope"), "identity: open " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"empty", write("empty", "# nothing\n\n"), "identity " + dir + "/empty: no key in it: no identity"},
		{"bad line", write("bad", "# key\nAGE-SECRET-KEY-1QQQQ\n"), dir + "/bad:2: not a valid age secret key (bad length, character or checksum)"},
		{"not a key", write("text", "hello\n"), dir + "/text:1: not an age secret key (want AGE-SECRET-KEY-1..., or an SSH private key file)"},
		{"ssh with passphrase", newSSHKey(t, []byte("pw")).file, "a passphrase-protected SSH key: not supported"},
		{"encrypted identity", write("enc", "age-encryption.org/v1\n-> scrypt x 18\n"), "a passphrase-encrypted identity file: not supported"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadIdentity(tt.file)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadIdentity: %v\nwant %s", err, tt.want)
			}
		})
	}
	if _, err := LoadIdentity(); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("LoadIdentity(): %v", err)
	}
}

// TestLock: a writer waits for the store's lock.
func TestLock(t *testing.T) {
	a := newKey(t)
	site, s := newSite(t, a)
	unlock, err := s.lock()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- s.Set("x", []byte("y")) }()
	select {
	case err := <-done:
		t.Fatalf("Set ran while the store was locked: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := os.Stat(filepath.Join(site, "secrets", "x.age")); !os.IsNotExist(err) {
		t.Fatalf("x.age written under another's lock: %v", err)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mustDecrypt(t, filepath.Join(site, "secrets", "x.age"), a, "y")
}
