package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
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

// TestLeafKey: a leaf key made for every algorithm is a PKCS#8 PEM key
// that parseKeyPEM reads back, of the public key returned, and for
// ECDSA P-256 (made with crypto/ecdh) exactly the PKCS#8 that
// x509.MarshalPKCS8PrivateKey makes of the same key in its ecdsa form.
func TestLeafKey(t *testing.T) {
	for _, a := range Algorithms {
		t.Run(string(a), func(t *testing.T) {
			pub, p, err := newLeafKey(a)
			if err != nil {
				t.Fatal(err)
			}
			k, err := parseKeyPEM(p)
			if err != nil {
				t.Fatal(err)
			}
			// The certificate carries pub: compare it as crypto/x509
			// reads it back.
			spki, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			back, err := x509.ParsePKIXPublicKey(spki)
			if err != nil {
				t.Fatal(err)
			}
			if !samePublic(k.Public(), back) {
				t.Errorf("the private key's public key is not the one returned")
			}
			if a != ECDSAP256 {
				return
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok || ek.Curve != elliptic.P256() {
				t.Fatalf("parsed a %T, want an ECDSA P-256 key", k)
			}
			der, err := x509.MarshalPKCS8PrivateKey(ek)
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := pem.Decode(p); b == nil || !bytes.Equal(b.Bytes, der) {
				t.Errorf("PKCS#8 differs from the ecdsa key's:\n got %x\nwant %x", b.Bytes, der)
			}
		})
	}
}
