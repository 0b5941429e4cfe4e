package secrets

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strconv"
	"strings"
	"testing"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"
)

const (
	ageKey1 = "age1wm0dqmcp4kfheqwnk6u7qlywv6vwu375va0t8ly2mwzt6w8w7pzs98njsu"
	ageKey2 = "age1e4mu7trze4unjenf8wa08nz0ltvc9r5f5e0l6tz35g0gj4zfsdysre6ne7"
	sshKey1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOFguCrCYmRE0Eab/2NHlntC8UhGjuOtl8o1cM7S1vvJ"
)

func TestParseRecipients(t *testing.T) {
	in := "# the serving host\n" + ageKey1 + "\n\n" +
		"  " + ageKey2 + "   # alice\r\n" +
		"# bob's SSH key\n" + sshKey1 + " bob@laptop\n"
	recs, err := ParseRecipients("r.txt", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, strings.Join([]string{strconv.Itoa(r.Line), r.Kind, r.Key, r.Comment}, "|"))
	}
	want := []string{
		"2|X25519|" + ageKey1 + "|",
		"4|X25519|" + ageKey2 + "|# alice",
		"6|ssh-ed25519|" + sshKey1 + "|bob@laptop",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("recipients:\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseRecipientsBad(t *testing.T) {
	pq, err := age.GenerateHybridIdentity()
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	spk, _ := ssh.NewPublicKey(&small.PublicKey)
	smallRSA := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spk)))
	priv, _ := age.GenerateX25519Identity()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	epk, _ := ssh.NewPublicKey(&ec.PublicKey)
	ecKey := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(epk)))

	tests := []struct {
		name, in string
		want     error
		msg      string
	}{
		{"empty", "", ErrNoRecipients,
			"r.txt: no recipients (want one public key a line: age1..., or an SSH public key; 'bellbuild secret keygen' makes a key pair): no recipients"},
		{"only comments", "# nobody yet\n\n", ErrNoRecipients,
			"r.txt: no recipients (want one public key a line: age1..., or an SSH public key; 'bellbuild secret keygen' makes a key pair): no recipients"},
		{"garbage", ageKey1 + "\nhello world\n", ErrBadRecipient,
			"r.txt:2: not a public key: want age1... (age), age1pq1... (age, post-quantum) or an SSH public key (ssh-ed25519 AAAA...): bad recipient"},
		{"private key", "# oops\n" + priv.String() + "\n", ErrBadRecipient,
			"r.txt:2: an age PRIVATE key, not a recipient: remove it (and treat it as exposed if this file was shared); its public key (age1...) belongs here: bad recipient"},
		{"pem", "-----BEGIN OPENSSH PRIVATE KEY-----\n", ErrBadRecipient,
			"r.txt:1: a PEM block (a private key?), not a recipient: remove it; an SSH public key (ssh-ed25519 AAAA...) or an age key (age1...) belongs here: bad recipient"},
		{"malformed age", "age1nope\n", ErrBadRecipient,
			`r.txt:1: malformed recipient "age1nope": separator '1' at invalid position: pos=3, len=8: bad recipient`},
		{"text after age key", ageKey1 + " alice\n", ErrBadRecipient,
			"r.txt:1: text after the key: a comment after an age key starts with #: bad recipient"},
		{"duplicate", ageKey1 + "\n" + sshKey1 + " a\n" + ageKey1 + " # again\n" + sshKey1 + " b\n", ErrBadRecipient,
			"r.txt:3: the same key as line 1: bad recipient\nr.txt:4: the same key as line 2: bad recipient"},
		{"ssh options", `from="10.0.0.1" ` + sshKey1 + "\n", ErrBadRecipient,
			"r.txt:1: an SSH public key with options before it or more after it: want one key alone, as 'ssh-ed25519 AAAA... comment': bad recipient"},
		{"small rsa", smallRSA + "\n", ErrBadRecipient,
			"r.txt:1: ssh-rsa: RSA key size is too small (age wants at least 2048 bits): bad recipient"},
		{"ecdsa", ecKey + "\n", ErrBadRecipient,
			"r.txt:1: an SSH ecdsa-sha2-nistp256 key: age takes only ssh-ed25519 and ssh-rsa keys: bad recipient"},
		{"post-quantum mixed", ageKey1 + "\n" + pq.Recipient().String() + "\n", ErrBadRecipient,
			"r.txt:2: a post-quantum key (age1pq1...) cannot be mixed with classic keys (line 1 is X25519): use only age1pq1 keys, or none: bad recipient"},
		{"every problem", "x\n" + ageKey1 + "\ny\n", ErrBadRecipient,
			"r.txt:1: not a public key: want age1... (age), age1pq1... (age, post-quantum) or an SSH public key (ssh-ed25519 AAAA...): bad recipient\n" +
				"r.txt:3: not a public key: want age1... (age), age1pq1... (age, post-quantum) or an SSH public key (ssh-ed25519 AAAA...): bad recipient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRecipients("r.txt", strings.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err.Error() != tt.msg {
				t.Errorf("message:\n got %s\nwant %s", err, tt.msg)
			}
			var le *LineError
			if tt.want == ErrBadRecipient && !errors.As(err, &le) {
				t.Errorf("no *LineError in %v", err)
			}
			if strings.Contains(err.Error(), "AGE-SECRET-KEY") {
				t.Errorf("the error quotes a private key: %v", err)
			}
		})
	}
	// Post-quantum keys alone are fine.
	pq2, _ := age.GenerateHybridIdentity()
	if _, err := ParseRecipients("r.txt", strings.NewReader(pq.Recipient().String()+"\n"+pq2.Recipient().String()+"\n")); err != nil {
		t.Errorf("two post-quantum keys: %v", err)
	}
}
