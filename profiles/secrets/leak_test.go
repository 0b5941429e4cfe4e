package secrets

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestErrorsNeverHoldAValue stores a value with a unique marker, provokes
// every error path, and searches each error (as %v and %+v), the debug
// log, and the message for the file each must name. No failed operation
// changes a file.
func TestErrorsNeverHoldAValue(t *testing.T) {
	const marker = "LEAKMARKER-7f3a9c"
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(old) })

	a, other := newKey(t), newKey(t)
	site, s := newSite(t, a)
	for _, n := range []string{"db", "api", "tls"} {
		if err := s.Set(n, []byte(marker+"-"+n+"\n")); err != nil {
			t.Fatal(err)
		}
	}
	sec := filepath.Join(site, "secrets")
	rfile := filepath.Join(sec, RecipientsFile)
	idA, idOther := loadID(t, a), loadID(t, other)
	// A mangled key with the marker in it must not be quoted either.
	badID := filepath.Join(t.TempDir(), "bad-identity")
	os.WriteFile(badID, []byte("AGE-SECRET-KEY-1"+marker+"\n"), 0o600)
	notKey := filepath.Join(t.TempDir(), "value-as-identity")
	os.WriteFile(notKey, []byte(marker+"\n"), 0o600)

	tests := []struct {
		name  string
		setup func(t *testing.T) // changes the site before the call (and is undone by t.Cleanup)
		call  func() error
		want  error
		names string // a file the error must name
	}{
		{"get missing", nil, func() error { _, err := s.Get("nope", idA); return err }, ErrNotFound, "nope.age"},
		{"get wrong identity", nil, func() error { _, err := s.Get("db", idOther); return err }, ErrWrongIdentity, "db.age"},
		{"get no identity", nil, func() error { _, err := s.Get("db", nil); return err }, ErrNoIdentity, "db.age"},
		{"get corrupt payload", corrupter(t, sec, "db", -3), func() error { _, err := s.Get("db", idA); return err }, ErrCorrupt, "db.age"},
		{"get corrupt header", corrupter(t, sec, "db", 0), func() error { _, err := s.Get("db", idA); return err }, ErrCorrupt, "db.age"},
		{"get truncated", truncater(t, sec, "db"), func() error { _, err := s.Get("db", idA); return err }, ErrCorrupt, "db.age"},
		{"get not age", replacer(t, filepath.Join(sec, "db.age"), marker), func() error { _, err := s.Get("db", idA); return err }, ErrCorrupt, "db.age"},
		{"get edited header", replacer(t, filepath.Join(sec, "db.age"), "age-encryption.org/v1\n-> "+marker+" \x01\n"), func() error { _, err := s.Get("db", idA); return err }, ErrCorrupt, "db.age"},
		{"get bad name", nil, func() error { _, err := s.Get("../db", idA); return err }, ErrBadName, "../db"},
		{"set bad name", nil, func() error { return s.Set("DB", []byte(marker)) }, ErrBadName, "DB"},
		{"set too large", nil, func() error { return s.Set("db", bytes.Repeat([]byte(marker), MaxValueSize/len(marker)+1)) }, ErrTooLarge, "db"},
		{"set empty", nil, func() error { return s.Set("db", nil) }, ErrEmpty, "db"},
		{"set empty recipients", replacer(t, rfile, "# nobody\n"), func() error { return s.Set("db", []byte(marker+"new")) }, ErrNoRecipients, "recipients.txt"},
		{"set no recipients file", remover(t, rfile), func() error { return s.Set("db", []byte(marker+"new")) }, ErrNoRecipients, "recipients.txt"},
		{"set bad recipient", replacer(t, rfile, a.pub+"\nnot-a-key\n"), func() error { return s.Set("db", []byte(marker+"new")) }, ErrBadRecipient, "recipients.txt:2"},
		{"remove missing", nil, func() error { return s.Remove("nope") }, ErrNotFound, "nope.age"},
		{"rekey wrong identity", nil, func() error { _, err := s.Rekey(idOther); return err }, ErrWrongIdentity, "api.age"},
		{"rekey corrupt", corrupter(t, sec, "tls", -3), func() error { _, err := s.Rekey(idA); return err }, ErrCorrupt, "tls.age"},
		{"rekey rename fails", func(t *testing.T) { failRename(t, "db.age", 1) }, func() error { _, err := s.Rekey(idA); return err }, os.ErrPermission, "db.age"},
		{"identity mangled key", nil, func() error { _, err := LoadIdentity(badID); return err }, nil, "bad-identity:1"},
		{"identity is a value", nil, func() error { _, err := LoadIdentity(notKey); return err }, nil, "value-as-identity:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			mid := snapshot(t, site)
			logs.Reset()
			err := tt.call()
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.names) {
				t.Errorf("error does not name %s: %v", tt.names, err)
			}
			for _, out := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err), logs.String()} {
				if strings.Contains(out, marker) || strings.Contains(out, strings.ToLower(marker)) {
					t.Errorf("output holds the secret value:\n%s", out)
				}
			}
			if after := snapshot(t, site); after != mid {
				t.Errorf("a failed call changed files:\nbefore\n%s\nafter\n%s", mid, after)
			}
		})
	}
	// The site is back as it was: every value still decrypts.
	for _, n := range []string{"db", "api", "tls"} {
		mustDecrypt(t, filepath.Join(sec, n+".age"), a, marker+"-"+n+"\n")
	}
}

// replacer returns a setup that replaces file's content for one subtest.
func replacer(t *testing.T, file, content string) func(t *testing.T) {
	return func(t *testing.T) {
		old, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(file, []byte(content), 0o644)
		t.Cleanup(func() { os.WriteFile(file, old, 0o644) })
	}
}

func remover(t *testing.T, file string) func(t *testing.T) {
	return func(t *testing.T) {
		old, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(file)
		t.Cleanup(func() { os.WriteFile(file, old, 0o644) })
	}
}

func corrupter(t *testing.T, dir, name string, off int) func(t *testing.T) {
	return func(t *testing.T) {
		file := filepath.Join(dir, name+".age")
		old, _ := os.ReadFile(file)
		if off == 0 { // in the header's MAC
			off = bytes.Index(old, []byte("\n--- ")) + 8
		}
		corrupt(t, file, off)
		t.Cleanup(func() { os.WriteFile(file, old, 0o644) })
	}
}

func truncater(t *testing.T, dir, name string) func(t *testing.T) {
	return func(t *testing.T) {
		file := filepath.Join(dir, name+".age")
		old, _ := os.ReadFile(file)
		os.WriteFile(file, old[:len(old)-20], 0o644)
		t.Cleanup(func() { os.WriteFile(file, old, 0o644) })
	}
}
