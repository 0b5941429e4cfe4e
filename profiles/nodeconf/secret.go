package nodeconf

import (
	"fmt"
	"log/slog"
)

// Secret is a value that must never be shown: a private key, later any
// secret of the site. Formatting it (fmt's %v, %+v, %#v, %s, %q, %x, ...,
// String, log/slog) prints only `<secret NAME>`. Its text form
// (MarshalText, which encoding/json and YAML use) is the value itself, so
// that a node's configuration written for that node carries it; the code
// that writes such a file is the only place a Secret is revealed. (A JSON
// log handler marshals what it is given with encoding/json: the types
// here that hold a Secret are slog.LogValuers, but never log a whole Conf
// through one.)
type Secret struct {
	name  string
	value []byte
}

// NewSecret returns a Secret holding value, shown as `<secret name>`.
func NewSecret(name string, value []byte) Secret {
	return Secret{name: name, value: append([]byte(nil), value...)}
}

// Named returns s shown as `<secret name>` (a Secret decoded from JSON or
// YAML has no name until it is given one).
func (s Secret) Named(name string) Secret { s.name = name; return s }

// Name is what the Secret is shown as.
func (s Secret) Name() string { return s.name }

// Reveal returns the value. Call it only to write the value where it
// belongs (a 0400 file), never to print it.
func (s Secret) Reveal() []byte { return s.value }

// IsZero reports whether s holds nothing (encoding/json's omitzero and
// YAML's omitempty ask this).
func (s Secret) IsZero() bool { return len(s.value) == 0 }

// String returns `<secret NAME>` (or `<secret>` without a name).
func (s Secret) String() string {
	if s.name == "" {
		return "<secret>"
	}
	return "<secret " + s.name + ">"
}

// GoString is String, for %#v.
func (s Secret) GoString() string { return s.String() }

// Format prints String for every verb, so that %x or %q cannot reveal the
// value either.
func (s Secret) Format(f fmt.State, _ rune) { fmt.Fprint(f, s.String()) }

// LogValue is String, for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText returns the value (see the type's comment).
func (s Secret) MarshalText() ([]byte, error) { return s.value, nil }

// UnmarshalText sets the value, keeping the name.
func (s *Secret) UnmarshalText(b []byte) error {
	s.value = append([]byte(nil), b...)
	return nil
}

// LogValue shows the certificate's size and the key as a Secret.
func (c IssuedCert) LogValue() slog.Value {
	return slog.GroupValue(slog.Int("cert_bytes", len(c.Cert)), slog.String("key", c.Key.String()))
}

// LogValue names the issued credentials, without their material.
func (x X509) LogValue() slog.Value {
	return slog.GroupValue(slog.Bool("host", x.Host != nil), slog.Any("credentials", sortedKeys(x.Credentials)))
}
