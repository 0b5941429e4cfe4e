package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	tests := []struct {
		name string
		data string
		perm os.FileMode
	}{
		{"new file", "one\n", 0o600},
		{"replaced, mode changed", "two\n", 0o644},
		{"emptied", "", 0o400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Write(p, []byte(tt.data), tt.perm); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil || string(got) != tt.data {
				t.Fatalf("content %q, %v; want %q", got, err, tt.data)
			}
			fi, _ := os.Stat(p)
			if fi.Mode().Perm() != tt.perm {
				t.Errorf("mode %v, want %v", fi.Mode().Perm(), tt.perm)
			}
			assertOnly(t, dir, "f")
		})
	}
}

// A failing fill leaves the old file and no temporary file.
func TestWriteFromFailure(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := Write(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := WriteFrom(p, 0o644, func(f *os.File) error {
		f.WriteString("half of the new")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "old" {
		t.Errorf("content %q after a failed write, want old", got)
	}
	assertOnly(t, dir, "f")
}

// A directory that is not there fails without creating anything.
func TestWriteNoDir(t *testing.T) {
	dir := t.TempDir()
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
	assertOnly(t, dir)
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if len(got) != len(names) {
		t.Fatalf("directory holds %q, want %q", got, names)
	}
	for i := range got {
		if got[i] != names[i] {
			t.Fatalf("directory holds %q, want %q", got, names)
		}
	}
}

// What a killed WriteHeld left is written over by the next one: nothing
// stays behind.
func TestWriteHeldOverLeftover(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "n")
	if err := os.WriteFile(filepath.Join(dir, ".n.tmp"), []byte("half of a killed write"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteHeld(p, []byte("whole"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "whole" {
		t.Fatalf("content %q, %v", got, err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	assertOnly(t, dir, "n")
}
