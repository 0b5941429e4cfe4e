package nodeconf

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
)

// Secret is a value that must never be shown: a private key, a value of
// the site's secret store (profiles/secrets returns its values as
// Secrets), a password hash. Every way Go formats or encodes a Secret —
// fmt's verbs (%v, %+v, %#v, %s, %q, %x, ...), String, GoString,
// encoding/json, encoding.TextMarshaler (and so YAML) and log/slog —
// prints `<secret NAME>`; only Reveal gives the bytes, and it is called
// only where the value is written to its destination (a node's 0400
// file, the one node's configuration document).
//
// The bytes are held by a closure: a Secret in an unexported field of
// another struct, which fmt prints by reflection without calling its
// methods, shows a function's address and not the bytes.
//
// The types of this package that carry a Secret into a node's own
// configuration document (IssuedCert) encode its value themselves; a
// document that must not carry one (a public configuration) leaves it
// out (Node.Withhold). The zero Secret has no name and no bytes.
type Secret struct {
	name  string
	bytes func() []byte
}

// NewSecret returns a Secret holding a copy of value, shown as
// `<secret name>`.
func NewSecret(name string, value []byte) Secret {
	b := append([]byte(nil), value...)
	return Secret{name: name, bytes: func() []byte { return b }}
}

// Named returns s shown as `<secret name>` (a Secret decoded from a
// document has no name until it is given one).
func (s Secret) Named(name string) Secret { s.name = name; return s }

// Name is what the Secret is shown as ("" for the zero Secret).
func (s Secret) Name() string { return s.name }

// Reveal returns a copy of the value. Call it only to write the value
// where it belongs (a node's file, its own configuration), never to build
// a message.
func (s Secret) Reveal() []byte {
	if s.bytes == nil {
		return nil
	}
	return append([]byte(nil), s.bytes()...)
}

// Len is the value's length in bytes.
func (s Secret) Len() int {
	if s.bytes == nil {
		return 0
	}
	return len(s.bytes())
}

// IsZero reports whether s holds nothing (encoding/json's omitzero and
// YAML's omitempty ask this).
func (s Secret) IsZero() bool { return s.Len() == 0 }

// String returns `<secret NAME>` (or `<secret>` without a name).
func (s Secret) String() string {
	if s.name == "" {
		return "<secret>"
	}
	return "<secret " + s.name + ">"
}

// GoString is String, for %#v.
func (s Secret) GoString() string { return s.String() }

// Format prints String for every verb, so that %x or %d cannot reveal the
// value either; %q quotes it.
func (s Secret) Format(f fmt.State, verb rune) {
	out := s.String()
	if verb == 'q' {
		out = strconv.Quote(out)
	}
	fmt.Fprint(f, out)
}

// LogValue is String, for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON encodes the JSON string `<secret NAME>`.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText returns `<secret NAME>` (YAML uses it).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText sets the value, keeping the name: how a node's own
// document (see IssuedCert) gives the applier its keys back.
func (s *Secret) UnmarshalText(b []byte) error {
	*s = NewSecret(s.name, b)
	return nil
}

// issuedCertDoc is an IssuedCert as its document holds it: the key's value
// itself, written only into the configuration of the node it belongs to
// (the issuing code leaves the key out of every other).
type issuedCertDoc struct {
	Cert string `json:"cert" yaml:"cert"`
	Key  string `json:"key,omitempty" yaml:"key,omitempty"`
}

// MarshalJSON writes the certificate and, when c has one, its key's value
// (see issuedCertDoc).
func (c IssuedCert) MarshalJSON() ([]byte, error) {
	return json.Marshal(issuedCertDoc{Cert: c.Cert, Key: string(c.Key.Reveal())})
}

// MarshalYAML is MarshalJSON for YAML.
func (c IssuedCert) MarshalYAML() (any, error) {
	return issuedCertDoc{Cert: c.Cert, Key: string(c.Key.Reveal())}, nil
}

// LogValue shows the certificate's size and the key as a Secret.
func (c IssuedCert) LogValue() slog.Value {
	return slog.GroupValue(slog.Int("cert_bytes", len(c.Cert)), slog.String("key", c.Key.String()))
}

// LogValue names the issued credentials, without their material.
func (x X509) LogValue() slog.Value {
	return slog.GroupValue(slog.Bool("host", x.Host != nil), slog.Any("credentials", sortedKeys(x.Credentials)))
}
