package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pkiRun runs `bellbuild pki ARGS` as main's run does (flags, then one
// call, an error on stderr) and returns the exit code and output.
func pkiRun(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	fs := flag.NewFlagSet("bellbuild pki", flag.ContinueOnError)
	fs.SetOutput(&stderr)
	var o pkiFlags
	o.register(fs)
	err := o.parse(fs, args)
	if err == nil {
		err = runPKI(context.Background(), o, &stdout)
	}
	code := 0
	if err != nil {
		code = 1
		fmt.Fprintf(&stderr, "bellbuild pki: %v\n", err)
	}
	return code, stdout.String(), stderr.String()
}

// TestPKICommands drives every pki subcommand on one site, and checks the
// files and the output each leaves.
func TestPKICommands(t *testing.T) {
	dir := t.TempDir()
	site, rootOut, out := filepath.Join(dir, "site"), filepath.Join(dir, "root"), filepath.Join(dir, "alice")
	os.Mkdir(out, 0o700)
	os.Mkdir(site, 0o755)
	var serial string
	steps := []struct {
		name  string
		args  []string
		code  int
		want  string // in stdout (code 0) or stderr
		check func(t *testing.T, stdout string)
	}{
		{"init", []string{"init", "-C", site, "--root-out", rootOut}, 0, "take it offline now", func(t *testing.T, _ string) {
			for _, p := range []string{filepath.Join(rootOut, "root.key"), filepath.Join(site, "pki/services.pem"), filepath.Join(site, "private/pki/services.key")} {
				if _, err := os.Stat(p); err != nil {
					t.Error(err)
				}
			}
		}},
		{"init in no site", []string{"init", "-C", filepath.Join(dir, "nosite"), "--root-out", rootOut}, 1, "nosite: not a directory", nil},
		{"init again", []string{"init", "-C", site, "--root-out", rootOut}, 1, "a PKI already exists", nil},
		{"init without root-out", []string{"init", "-C", site}, 1, "--root-out DIR is required", nil},
		{"issue user", []string{"issue", "user", "alice", "-C", site, "-o", out}, 0, "for user alice until", func(t *testing.T, stdout string) {
			serial = strings.Fields(stdout)[1]
			fi, err := os.Stat(filepath.Join(out, "alice.key"))
			if err != nil || fi.Mode() != 0o600 {
				t.Errorf("alice.key: %v %v", fi.Mode(), err)
			}
			data, _ := os.ReadFile(filepath.Join(out, "alice.pem"))
			b, _ := pem.Decode(data)
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil || c.Subject.CommonName != "alice" || c.SerialNumber.Text(16) != serial {
				t.Errorf("alice.pem: %v", err)
			}
		}},
		{"issue user again", []string{"issue", "user", "alice", "-C", site, "-o", out}, 1, "alice.pem exists", nil},
		{"issue host", []string{"issue", "host", "n1", "-C", site}, 1, "only users get certificates by hand", nil},
		{"status", []string{"status", "-C", site}, 0, "users CA", func(t *testing.T, stdout string) {
			if !strings.Contains(stdout, "valid") || !strings.Contains(stdout, serial) {
				t.Errorf("status does not list %s as valid:\n%s", serial, stdout)
			}
		}},
		{"revoke", nil, 0, "revoked ", func(t *testing.T, _ string) {
			data, _ := os.ReadFile(filepath.Join(site, "pki/users.crl.pem"))
			b, _ := pem.Decode(data)
			crl, err := x509.ParseRevocationList(b.Bytes)
			if err != nil || len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Text(16) != serial {
				t.Errorf("users CRL: %v %v", err, crl)
			}
		}},
		{"status after revoke", []string{"status", "-C", site}, 0, "revoked (keyCompromise)", nil},
		{"revoke unknown node", []string{"revoke", "--node", "n9", "-C", site}, 1, "no such certificate: node n9", nil},
		{"revoke nothing", []string{"revoke", "-C", site}, 1, "exactly one of a serial, a node or a service", nil},
		{"renew", []string{"renew", "-C", site}, 0, "nothing to renew", nil},
		{"extend without root", []string{"extend", "-C", site}, 1, "--root DIR", nil},
		{"extend", []string{"extend", "-C", site, "--root", rootOut, "--ca", "services"}, 0, "extended " + filepath.Base(site) + " services CA until", nil},
		{"no site", []string{"status"}, 1, "-C SITE is required", nil},
		{"unknown subcommand", []string{"sign", "-C", site}, 1, `unknown subcommand "sign"`, nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			args := st.args
			if st.name == "revoke" {
				args = []string{"revoke", serial, "--reason", "key-compromise", "-C", site}
			}
			code, stdout, stderr := pkiRun(t, args...)
			got := stdout
			if code != 0 {
				got = stderr
			}
			if code != st.code || !strings.Contains(got, st.want) {
				t.Fatalf("exit %d, want %d and %q in\nstdout:\n%s\nstderr:\n%s", code, st.code, st.want, stdout, stderr)
			}
			if st.check != nil {
				st.check(t, stdout)
			}
		})
	}
}

// TestPKIPrivateDir: the private directory comes from --private, then
// $BELLBUILD_PRIVATE; one that others can read is refused.
func TestPKIPrivateDir(t *testing.T) {
	dir := t.TempDir()
	site, priv := filepath.Join(dir, "site"), filepath.Join(dir, "priv")
	os.Mkdir(site, 0o755)
	t.Setenv("BELLBUILD_PRIVATE", priv)
	if code, _, stderr := pkiRun(t, "init", "-C", site, "--root-out", filepath.Join(dir, "root")); code != 0 {
		t.Fatalf("init: %s", stderr)
	}
	if _, err := os.Stat(filepath.Join(priv, "pki", "hosts.key")); err != nil {
		t.Fatalf("$BELLBUILD_PRIVATE not used: %v", err)
	}
	if code, _, stderr := pkiRun(t, "status", "-C", site, "--private", filepath.Join(site, "private")); code != 1 || !strings.Contains(stderr, "does not exist") {
		t.Errorf("--private elsewhere: %d %s", code, stderr)
	}
	os.Chmod(priv, 0o755)
	if code, _, stderr := pkiRun(t, "status", "-C", site); code != 1 || !strings.Contains(stderr, "readable by others (mode 0755)") || !strings.Contains(stderr, "chmod 700 "+priv) {
		t.Errorf("a world-readable private directory: %d %s", code, stderr)
	}
}

func TestPKIHelp(t *testing.T) {
	var stdout bytes.Buffer
	if code := run([]string{"help", "pki"}, &stdout, &bytes.Buffer{}); code != 0 {
		t.Fatalf("help pki: %d", code)
	}
	for _, want := range []string{"init --root-out DIR", "issue user NAME", "revoke SERIAL | --node N | --service S", "extend --root DIR", "$BELLBUILD_PRIVATE", "-name-constraints"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help pki does not mention %q", want)
		}
	}
}
