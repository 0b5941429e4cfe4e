package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// secretRun runs `bellbuild secret ARGS...` with stdin, as main would.
func secretRun(t *testing.T, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	oldIn, oldOut := secretIn, secretOut
	secretIn, secretOut = stdin, &out
	defer func() { secretIn, secretOut = oldIn, oldOut }()
	code = run(append([]string{"secret"}, args...), io.Discard, &errb)
	return out.String(), errb.String(), code
}

// mustSecret runs a command that must succeed.
func mustSecret(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, errs, code := secretRun(t, strings.NewReader(stdin), args...)
	if code != 0 {
		t.Fatalf("secret %v: exit %d\n%s", args, code, errs)
	}
	return out
}

// secretSite makes a site with an empty secrets/ and two keys made by
// `secret keygen`, both listed in recipients.txt.
func secretSite(t *testing.T) (site, key1, key2, pub1, pub2 string) {
	t.Helper()
	site, keys := t.TempDir(), t.TempDir()
	os.Mkdir(filepath.Join(site, "secrets"), 0o755)
	key1, key2 = filepath.Join(keys, "alice.key"), filepath.Join(keys, "host.key")
	pub1 = strings.TrimSpace(mustSecret(t, "", "keygen", "-o", key1))
	pub2 = strings.TrimSpace(mustSecret(t, "", "keygen", "-o", key2))
	writeRecipients(t, site, pub1, pub2)
	return
}

func writeRecipients(t *testing.T, site string, pubs ...string) {
	t.Helper()
	content := "# operators and the serving host\n" + strings.Join(pubs, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(site, "secrets", "recipients.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSecretCommands(t *testing.T) {
	site, key1, key2, pub1, _ := secretSite(t)
	if !regexp.MustCompile(`^age1[0-9a-z]{58}$`).MatchString(pub1) {
		t.Fatalf("keygen printed %q, want an age public key", pub1)
	}
	if st, err := os.Stat(key1); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keygen's file: %v %v, want mode 0600", st.Mode(), err)
	}

	// set from stdin keeps the newline echo adds; --trim-newline drops it.
	mustSecret(t, "hunter2\n", "set", "-C", site, "db-password")
	if got := mustSecret(t, "", "get", "-C", site, "db-password", "--identity", key1); got != "hunter2\n" {
		t.Errorf("get = %q, want %q", got, "hunter2\n")
	}
	mustSecret(t, "t0k3n\r\n", "set", "api-token", "-C", site, "--trim-newline") // flags after NAME too
	t.Setenv("BELLBUILD_AGE_IDENTITY", key2)
	if got := mustSecret(t, "", "get", "-C", site, "api-token"); got != "t0k3n" {
		t.Errorf("get with $BELLBUILD_AGE_IDENTITY = %q, want %q", got, "t0k3n")
	}
	from := filepath.Join(t.TempDir(), "cert.pem")
	os.WriteFile(from, []byte("-----BEGIN\x00binary\xff"), 0o600)
	mustSecret(t, "ignored", "set", "-C", site, "tls.key", "--from", from)
	if got := mustSecret(t, "", "get", "-C", site, "tls.key", "--identity", key1); got != "-----BEGIN\x00binary\xff" {
		t.Errorf("get of --from = %q", got)
	}

	ls := mustSecret(t, "", "ls", "-C", site)
	lines := strings.Split(strings.TrimSpace(ls), "\n")
	re := regexp.MustCompile(`^(\S+) +(\d+) +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)
	var names []string
	for _, l := range lines {
		m := re.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("ls line %q", l)
		}
		names = append(names, m[1])
		st, _ := os.Stat(filepath.Join(site, "secrets", m[1]+".age"))
		if m[2] != itoa(st.Size()) {
			t.Errorf("ls says %s is %s bytes, the file has %d", m[1], m[2], st.Size())
		}
	}
	if strings.Join(names, " ") != "api-token db-password tls.key" {
		t.Errorf("ls names %v", names)
	}

	mustSecret(t, "", "rm", "-C", site, "api-token")
	if _, err := os.Stat(filepath.Join(site, "secrets", "api-token.age")); !os.IsNotExist(err) {
		t.Errorf("rm left the file: %v", err)
	}
	_, errs, code := secretRun(t, nil, "get", "-C", site, "api-token")
	if code != 1 || !strings.Contains(errs, "secrets/api-token.age does not exist") {
		t.Errorf("get after rm: exit %d\n%s", code, errs)
	}
}

func TestSecretRekeyCommand(t *testing.T) {
	site, key1, key2, pub1, pub2 := secretSite(t)
	mustSecret(t, "one", "set", "-C", site, "one")
	mustSecret(t, "two", "set", "-C", site, "two")
	key3 := filepath.Join(t.TempDir(), "bob.key")
	pub3 := strings.TrimSpace(mustSecret(t, "", "keygen", "-o", key3))

	// Added: bob cannot read until the rekey.
	writeRecipients(t, site, pub1, pub2, pub3)
	if _, errs, code := secretRun(t, nil, "get", "-C", site, "one", "--identity", key3); code != 1 || !strings.Contains(errs, "encrypted before it was added") {
		t.Errorf("get before rekey: exit %d\n%s", code, errs)
	}
	mustSecret(t, "", "rekey", "-C", site, "--identity", key1)
	for _, n := range []string{"one", "two"} {
		if got := mustSecret(t, "", "get", "-C", site, n, "--identity", key3); got != n {
			t.Errorf("bob's get %s = %q", n, got)
		}
	}

	// Removed: the host key can no longer read anything.
	writeRecipients(t, site, pub1, pub3)
	mustSecret(t, "", "rekey", "-C", site, "--identity", key3)
	for _, n := range []string{"one", "two"} {
		if _, errs, code := secretRun(t, nil, "get", "-C", site, n, "--identity", key2); code != 1 || !strings.Contains(errs, "cannot decrypt it") {
			t.Errorf("removed key's get %s: exit %d\n%s", n, code, errs)
		}
		if got := mustSecret(t, "", "get", "-C", site, n, "--identity", key1); got != n {
			t.Errorf("alice's get %s = %q", n, got)
		}
	}
}

func TestSecretUsage(t *testing.T) {
	site, key1, _, _, _ := secretSite(t)
	const marker = "ARGVALUE-91c2"
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"no subcommand", nil, "missing subcommand"},
		{"unknown subcommand", []string{"show", "-C", site}, `unknown subcommand "show"`},
		{"no -C", []string{"set", "db"}, "give -C SITE"},
		{"no -C for ls", []string{"ls"}, "give -C SITE"},
		{"value as argument", []string{"set", "-C", site, "db", marker}, "never as an argument"},
		{"value as argument after a flag", []string{"set", "db", "-C", site, marker}, "never as an argument"},
		{"get without NAME", []string{"get", "-C", site}, "want exactly one NAME"},
		{"ls with NAME", []string{"ls", "-C", site, "db"}, "takes no arguments"},
		{"keygen without -o", []string{"keygen"}, "want -o FILE"},
		{"keygen with -C", []string{"keygen", "-C", site, "-o", filepath.Join(t.TempDir(), "k")}, "want -o FILE"},
		{"--from with get", []string{"get", "-C", site, "db", "--from", "x"}, "for set only"},
		{"--identity with set", []string{"set", "-C", site, "db", "--identity", key1}, "for get and rekey only"},
		{"-o with ls", []string{"ls", "-C", site, "-o", "x"}, "for keygen only"},
		{"unknown flag", []string{"set", "-C", site, "db", "--value", marker}, "flag provided but not defined: -value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := secretRun(t, strings.NewReader("x"), tt.args...)
			if code != 2 || !strings.Contains(errs, tt.msg) {
				t.Errorf("exit %d, want 2 and %q in\n%s", code, tt.msg, errs)
			}
			if strings.Contains(out+errs, marker) && tt.name != "unknown flag" {
				t.Errorf("the value given as an argument is printed:\n%s", errs)
			}
		})
	}
	if left, _ := os.ReadDir(filepath.Join(site, "secrets")); len(left) != 1 {
		t.Errorf("usage errors wrote files: %v", left)
	}
}

// TestSecretNeverPrinted stores values with a marker, then runs every
// command, those that succeed and every way they fail, with debug logs:
// the marker appears only on get's stdout.
func TestSecretNeverPrinted(t *testing.T) {
	const marker = "CMDLEAK-5d1e0b"
	t.Setenv("BELLBUILD_LOG", "debug")
	t.Setenv("BELLBUILD_AGE_IDENTITY", "")
	site, key1, _, pub1, pub2 := secretSite(t)
	stranger := filepath.Join(t.TempDir(), "stranger.key")
	mustSecret(t, "", "keygen", "-o", stranger)
	big := bytes.Repeat([]byte(marker), 1<<20/len(marker)+1)
	bigFile := filepath.Join(t.TempDir(), "big")
	os.WriteFile(bigFile, big, 0o600)
	valueAsKey := filepath.Join(t.TempDir(), "value.key")
	os.WriteFile(valueAsKey, []byte("AGE-SECRET-KEY-1"+marker+"\n"), 0o600)
	rfile := filepath.Join(site, "secrets", "recipients.txt")
	sec := filepath.Join(site, "secrets")

	var all strings.Builder
	runIt := func(stdin string, args ...string) (string, int) {
		out, errs, code := secretRun(t, strings.NewReader(stdin), args...)
		all.WriteString(errs)
		return out, code
	}
	for _, n := range []string{"db", "api"} {
		if _, code := runIt(marker+"-"+n, "set", "-C", site, n); code != 0 {
			t.Fatalf("set %s: exit %d", n, code)
		}
	}
	out, _ := runIt("", "get", "-C", site, "db", "--identity", key1)
	if out != marker+"-db" {
		t.Fatalf("get = %q", out)
	}
	dbFile := filepath.Join(sec, "db.age")
	good, _ := os.ReadFile(dbFile)
	steps := []struct {
		name   string
		before func()
		stdin  string
		args   []string
		code   int
	}{
		{"ls", nil, "", []string{"ls", "-C", site}, 0},
		{"rekey", nil, "", []string{"rekey", "-C", site, "--identity", key1}, 0},
		{"get missing", nil, "", []string{"get", "-C", site, "nope", "--identity", key1}, 1},
		{"get wrong identity", nil, "", []string{"get", "-C", site, "db", "--identity", stranger}, 1},
		{"get mangled identity", nil, "", []string{"get", "-C", site, "db", "--identity", valueAsKey}, 1},
		{"get no identity", nil, "", []string{"get", "-C", site, "db"}, 1},
		{"get corrupt", func() { os.WriteFile(dbFile, append(good[:len(good)-3:len(good)-3], 0, 1, 2), 0o644) }, "", []string{"get", "-C", site, "db", "--identity", key1}, 1},
		{"get plaintext file", func() { os.WriteFile(dbFile, []byte(marker+"\n"), 0o644) }, "", []string{"get", "-C", site, "db", "--identity", key1}, 1},
		{"rekey corrupt", nil, "", []string{"rekey", "-C", site, "--identity", key1}, 1},
		{"set too large", func() { os.WriteFile(dbFile, good, 0o644) }, string(big), []string{"set", "-C", site, "db"}, 1},
		{"set too large --from", nil, "", []string{"set", "-C", site, "db", "--from", bigFile}, 1},
		{"set as argument", nil, "", []string{"set", "-C", site, "db", marker}, 2},
		{"set bad name", nil, marker, []string{"set", "-C", site, "DB"}, 1},
		{"set empty recipients", func() { os.WriteFile(rfile, []byte("# none\n"), 0o644) }, marker, []string{"set", "-C", site, "db"}, 1},
		{"set bad recipient", func() { os.WriteFile(rfile, []byte(pub1+"\n"+marker+"\n"), 0o644) }, marker, []string{"set", "-C", site, "db"}, 1},
		{"rekey bad recipient", nil, "", []string{"rekey", "-C", site, "--identity", key1}, 1},
		{"rekey wrong identity", func() { writeRecipients(t, site, pub1, pub2) }, "", []string{"rekey", "-C", site, "--identity", stranger}, 1},
		{"rm missing", nil, "", []string{"rm", "-C", site, "nope"}, 1},
		{"keygen over a key", nil, "", []string{"keygen", "-o", key1}, 1},
		{"rm", nil, "", []string{"rm", "-C", site, "api"}, 0},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		out, code := runIt(s.stdin, s.args...)
		if code != s.code {
			t.Errorf("%s: exit %d, want %d", s.name, code, s.code)
		}
		if strings.Contains(out, marker) {
			t.Errorf("%s: stdout holds the value: %q", s.name, out)
		}
	}
	if strings.Contains(all.String(), marker) {
		t.Errorf("stderr holds a value:\n%s", all.String())
	}
	if !strings.Contains(all.String(), "level=DEBUG") {
		t.Errorf("no debug logs: the search above saw less than it should\n%s", all.String())
	}
	// The value is still there, unchanged.
	if got := mustSecret(t, "", "get", "-C", site, "db", "--identity", key1); got != marker+"-db" {
		t.Errorf("db after the errors = %q", got)
	}
}

// TestSecretSetFromTerminal types a value into a pseudo-terminal: it is
// not echoed, the terminal's echo comes back on, and the value (with the
// newline Enter typed) is stored.
func TestSecretSetFromTerminal(t *testing.T) {
	site, key1, _, _, _ := secretSite(t)
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		testtool.Skipf(t, "no pseudo-terminals (/dev/ptmx): %v", err)
	}
	defer ptm.Close()
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile("/dev/pts/"+itoa(int64(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()

	done := make(chan string)
	go func() {
		_, errs, code := secretRun(t, pts, "set", "-C", site, "typed")
		if code != 0 {
			errs += " (exit " + itoa(int64(code)) + ")"
		}
		done <- errs
	}()
	// Type once echo is off.
	deadline := time.Now().Add(10 * time.Second)
	for {
		tio, err := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if tio.Lflag&unix.ECHO == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("echo never turned off")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := ptm.Write([]byte("typed-pw\n\x04")); err != nil {
		t.Fatal(err)
	}
	select {
	case errs := <-done:
		if !strings.Contains(errs, "not echoed") || strings.Contains(errs, "exit") {
			t.Fatalf("set from a terminal: %s", errs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("set did not finish reading the terminal")
	}
	tio, _ := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
	if tio.Lflag&unix.ECHO == 0 {
		t.Error("echo is still off after set")
	}
	// What the terminal showed: everything readable now (non-blocking).
	var echoed []byte
	fd := int(ptm.Fd()) // Fd makes it blocking: take it once
	unix.SetNonblock(fd, true)
	for buf := make([]byte, 512); ; {
		n, err := unix.Read(fd, buf)
		if n <= 0 || err != nil {
			break
		}
		echoed = append(echoed, buf[:n]...)
	}
	if bytes.Contains(echoed, []byte("typed-pw")) {
		t.Errorf("the terminal echoed the value: %q", echoed)
	}
	if got := mustSecret(t, "", "get", "-C", site, "typed", "--identity", key1); got != "typed-pw\n" {
		t.Errorf("stored %q, want %q", got, "typed-pw\n")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
