package pki

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/bellbuild/bellbuild/images/atomicfile"
)

// newKey makes a private key of algorithm a.
func newKey(a Algorithm) (crypto.Signer, error) {
	switch a {
	case ECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("algorithm %q: want one of ecdsa-p256, ed25519, rsa-3072", a)
}

// newLeafKey makes a leaf's key pair of algorithm a and returns its
// public key and the private key as PKCS#8 PEM. Nothing here signs with
// a leaf's key, so a P-256 key is made with crypto/ecdh: its PKCS#8 is
// the very same as the ecdsa key's (TestLeafKey), without the
// conversions between ecdsa's big.Int form and the FIPS module's (and
// the cache that keeps them) in ecdsa.GenerateKey and
// MarshalPKCS8PrivateKey: 18.9 µs of CPU for a key and its PKCS#8,
// against 24.7 µs.
func newLeafKey(a Algorithm) (crypto.PublicKey, []byte, error) {
	if a != ECDSAP256 && a != "" {
		k, err := newKey(a)
		if err != nil {
			return nil, nil, err
		}
		p, err := keyPEM(k)
		return k.Public(), p, err
	}
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return k.PublicKey(), pemBlock("PRIVATE KEY", der), nil
}

// ecdsaPublic is a P-256 key made by newLeafKey as crypto/x509 gives it
// when it parses a certificate: an *ecdsa.PublicKey.
func ecdsaPublic(k *ecdh.PublicKey) (*ecdsa.PublicKey, error) {
	if k.Curve() != ecdh.P256() {
		return nil, fmt.Errorf("a leaf key on an unexpected curve %v", k.Curve())
	}
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.Bytes())
}

// keyPEM encodes k as PKCS#8 PEM.
func keyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pemBlock("PRIVATE KEY", der), nil
}

// parseKeyPEM reads a PKCS#8 PEM private key. Errors never quote the data.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PKCS#8 PEM private key (BEGIN PRIVATE KEY)")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, errors.New("not a PKCS#8 PEM private key: cannot parse it")
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign", k)
	}
	if err := CheckPublicKey(s.Public()); err != nil {
		return nil, err
	}
	return s, nil
}

// CheckPublicKey refuses keys this PKI does not certify: RSA below 2048
// bits or with a small exponent, ECDSA on curves other than P-256, P-384
// and P-521, and any other algorithm but Ed25519.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s (want P-256, P-384 or P-521)", ErrWeakKey, k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("%w: RSA key of %d bits (want at least 2048)", ErrWeakKey, k.N.BitLen())
		}
		if k.E < 65537 {
			return fmt.Errorf("%w: RSA public exponent %d (want at least 65537)", ErrWeakKey, k.E)
		}
		return nil
	}
	return fmt.Errorf("%w: %T keys are not accepted (want ECDSA, Ed25519 or RSA)", ErrWeakKey, pub)
}

// samePublic reports whether a and b are the same public key.
func samePublic(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// sigAlg is the signature algorithm a CA key signs with.
func sigAlg(k crypto.Signer) x509.SignatureAlgorithm {
	switch k.Public().(type) {
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256
	case ed25519.PublicKey:
		return x509.PureEd25519
	case *rsa.PublicKey:
		return x509.SHA256WithRSA
	}
	return x509.UnknownSignatureAlgorithm
}

// keyUsage is what a leaf's key may do: sign, and for RSA also encipher
// (TLS 1.2's RSA key exchange).
func keyUsage(pub crypto.PublicKey) x509.KeyUsage {
	if _, ok := pub.(*rsa.PublicKey); ok {
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	}
	return x509.KeyUsageDigitalSignature
}

// readKey reads a private key file that only its owner may read: a key
// any group or other can read is refused, saying so. It returns the key
// and the file's bytes.
func readKey(p string) (crypto.Signer, []byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: not a regular file", p)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, nil, fmt.Errorf("%s: private key %w (mode %04o); it must be 0600: chmod 600 %s", p, ErrInsecure, perm, p)
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	k, err := parseKeyPEM(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	return k, data, nil
}

// checkPrivateDir refuses a private directory that is missing, not a
// directory, or open to others.
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("private directory %s does not exist (pki init creates it; choose another with --private or $BELLBUILD_PRIVATE)", dir)
	}
	if err != nil {
		return fmt.Errorf("private directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("private directory %s is not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return fmt.Errorf("private directory %s is %w (mode %04o); it must be closed to others: chmod 700 %s", dir, ErrInsecure, perm, dir)
	}
	return nil
}

// writeFile replaces p whole or not at all (package atomicfile), with
// mode: a key is never readable by others, not even while it is written.
func writeFile(p string, data []byte, mode fs.FileMode) error {
	return atomicfile.Write(p, data, mode)
}

// writeTemp writes data to p+".tmp" (mode from the start: a key is never
// readable by others, not even while it is written), fsynced when sync.
func writeTemp(p string, data []byte, mode fs.FileMode, sync bool) error {
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
	if errors.Is(err, fs.ErrExist) {
		// Left by a writer that died: it was never put in place.
		os.Remove(tmp)
		f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
	}
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(mode) // the umask may have narrowed it
	}
	if werr == nil && sync {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", p, werr)
	}
	return nil
}
