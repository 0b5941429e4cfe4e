package pki

import (
	"bytes"
	"crypto/rand"
	"encoding/pem"
	"testing"
)

// TestPEMBlock: pemBlock writes what pem.EncodeToMemory writes, for
// every length around its line breaks.
func TestPEMBlock(t *testing.T) {
	data := make([]byte, 300)
	rand.Read(data)
	for _, typ := range []string{"CERTIFICATE", "PRIVATE KEY", ""} {
		for n := range len(data) + 1 {
			want := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: data[:n]})
			if got := pemBlock(typ, data[:n]); !bytes.Equal(got, want) {
				t.Fatalf("%q of %d bytes:\n got %q\nwant %q", typ, n, got, want)
			}
			if got := pemBlock(typ, data[:n]); len(got) != cap(got) {
				t.Fatalf("%q of %d bytes: %d bytes in a buffer of %d", typ, n, len(got), cap(got))
			}
		}
	}
}
