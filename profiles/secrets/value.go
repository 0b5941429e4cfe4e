package secrets

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
)

// Value is a secret's plaintext with its name. Every way Go formats or
// encodes a value — fmt's verbs (%v, %+v, %#v, %s, %q, %x, ...), String,
// GoString, encoding/json, encoding.TextMarshaler (and so YAML) and
// log/slog — prints "<secret NAME>"; only Reveal gives the bytes, and it is
// called only where the value is written to its destination.
//
// The bytes are held by a closure: a Value in an unexported field of
// another struct, which fmt prints by reflection without calling its
// methods (even with a verb that does not fit), shows a function's address
// and not the bytes. The zero Value has no name and no bytes.
type Value struct {
	name  string
	bytes func() []byte
}

// NewValue returns the secret name holding a copy of b: for a value read
// from the store, or one written inline in a site that is to be treated as
// a secret.
func NewValue(name string, b []byte) Value {
	b = append([]byte(nil), b...)
	return Value{name: name, bytes: func() []byte { return b }}
}

// Name is the secret's name ("" for the zero Value).
func (v Value) Name() string { return v.name }

// Reveal returns a copy of the plaintext. Call it only where the value is
// written to its destination (a node's file, a TLS response), never to
// build a message.
func (v Value) Reveal() []byte {
	if v.bytes == nil {
		return nil
	}
	return append([]byte(nil), v.bytes()...)
}

// Len is the plaintext's length in bytes.
func (v Value) Len() int {
	if v.bytes == nil {
		return 0
	}
	return len(v.bytes())
}

// String returns "<secret NAME>".
func (v Value) String() string {
	if v.Name() == "" {
		return "<secret>"
	}
	return "<secret " + v.Name() + ">"
}

// GoString returns "<secret NAME>", for %#v.
func (v Value) GoString() string { return v.String() }

// Format prints "<secret NAME>" for every verb; %q quotes it.
func (v Value) Format(f fmt.State, verb rune) {
	s := v.String()
	if verb == 'q' {
		s = strconv.Quote(s)
	}
	fmt.Fprint(f, s)
}

// MarshalJSON encodes the JSON string "<secret NAME>".
func (v Value) MarshalJSON() ([]byte, error) { return json.Marshal(v.String()) }

// MarshalText returns "<secret NAME>".
func (v Value) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// LogValue makes log/slog print "<secret NAME>".
func (v Value) LogValue() slog.Value { return slog.StringValue(v.String()) }
