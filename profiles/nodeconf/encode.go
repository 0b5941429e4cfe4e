package nodeconf

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"go.yaml.in/yaml/v3"
)

// A rendered node or bundle is written by Encode and read back by Decode,
// whatever writes or reads it (`bellbuild render`, the bundle an image
// carries, a config volume's node.json, the files `serve` hands out, a
// ConfigMap): one encoding, one integrity check.
//
// The document's last top-level key is its checksum:
//
//	checksum: sha256:HEX
//
// HEX is the SHA-256 of the document's canonical JSON (see Checksum), so a
// file cut short anywhere — a YAML file cut at a line is still valid YAML —
// lacks the key or fails the check, and Decode refuses it. The checksum
// covers the values, not the bytes: the same document indented otherwise,
// or converted between JSON and YAML, still verifies.

// Format is the encoding of a rendered document.
type Format string

// The formats Encode writes. Decode reads both (JSON is read as YAML).
const (
	JSON Format = "json"
	YAML Format = "yaml"
)

// ChecksumKey is the top-level key that carries a document's checksum.
const ChecksumKey = "checksum"

var (
	// ErrNoChecksum means a document has no checksum: it was cut short
	// before its last key, or it was not written by bellbuild.
	ErrNoChecksum = errors.New("no checksum")
	// ErrChecksum means a document's checksum does not match its content:
	// it was cut short or changed after it was written.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrEmpty means a document holds nothing at all.
	ErrEmpty = errors.New("empty")
	// ErrNotRendered means a document has none of the top-level keys of a
	// rendered node or bundle: it may be a Divingbell values file, which
	// needs the site model.
	ErrNotRendered = errors.New("neither a rendered node nor a bundle")
)

// howToWrite ends the errors of a document that does not verify.
const howToWrite = "write rendered configurations with `bellbuild render -o json|yaml` (or `bellbuild config write`); " +
	"a configuration written by hand is a Divingbell values file or a site"

// renderedKeys are the top-level keys that make a document a rendered node
// or bundle. (labels and conf are not among them: a Divingbell values file
// may have both.)
var renderedKeys = []string{ChecksumKey, "node", "profile", "profiles", "macs", "default", "nodes"}

// nodeDoc and bundleDoc are the documents as written: the value, then its
// checksum.
type nodeDoc struct {
	Node     `yaml:",inline"`
	Checksum string `json:"checksum" yaml:"checksum"`
}

type bundleDoc struct {
	Bundle   `yaml:",inline"`
	Checksum string `json:"checksum" yaml:"checksum"`
}

// Encode writes d as a document of format f with its checksum last. JSON
// is indented by two spaces, YAML by two; both end with a newline. The
// same value always gives the same bytes.
func Encode[D Node | Bundle](w io.Writer, d *D, f Format) error {
	sum, err := Checksum(d)
	if err != nil {
		return err
	}
	var doc any
	switch v := any(d).(type) {
	case *Node:
		doc = nodeDoc{*v, sum}
	case *Bundle:
		doc = bundleDoc{*v, sum}
	}
	switch f {
	case JSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	case YAML:
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(doc); err != nil {
			return err
		}
		return enc.Close()
	}
	return fmt.Errorf("format %q: want %s or %s", f, JSON, YAML)
}

// Marshal is Encode into a byte slice.
func Marshal[D Node | Bundle](d *D, f Format) ([]byte, error) {
	var b bytes.Buffer
	if err := Encode(&b, d, f); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Checksum returns the checksum Encode writes for d, "sha256:HEX": the
// SHA-256 of d's canonical JSON, which is encoding/json's compact form of
// d with every object member whose value is null, [] or {} left out, at
// any depth (so that a nil and an empty list or map, which the formats do
// not keep apart, sum alike), object keys sorted.
func Checksum[D Node | Bundle](d *D) (string, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return "", err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // integers stay exact
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", err
	}
	c, err := json.Marshal(prune(v))
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(c)
	return "sha256:" + hex.EncodeToString(h[:]), nil
}

// prune leaves out the object members of v whose value is null or an empty
// list or object (after pruning), at any depth.
func prune(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			e = prune(e)
			if isEmpty(e) {
				delete(x, k)
			} else {
				x[k] = e
			}
		}
	case []any:
		for i := range x {
			x[i] = prune(x[i])
		}
	}
	return v
}

func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}

// Decode reads a document written by Encode, JSON or YAML: a node, or a
// bundle when it has a default or nodes key. Exactly one of the results is
// non-nil. Unknown fields and duplicate keys are errors (a typo must not
// silently disable a setting), and so is a second document in the data.
// The checksum is checked last: a document without one (cut short, or
// written by hand) wraps ErrNoChecksum, one that does not match wraps
// ErrChecksum. A document with none of a rendered document's keys wraps
// ErrNotRendered; one with no key at all wraps ErrEmpty.
func Decode(data []byte) (*Node, *Bundle, error) {
	// 1. What it is, from its top-level keys.
	var top map[string]yaml.Node
	if err := decodeOne(data, &top, false); err != nil {
		return nil, nil, err
	}
	if len(top) == 0 {
		return nil, nil, fmt.Errorf("%w: nothing to apply (a file cut short?)", ErrEmpty)
	}
	rendered := false
	for _, k := range renderedKeys {
		if _, ok := top[k]; ok {
			rendered = true
		}
	}
	if !rendered {
		return nil, nil, ErrNotRendered
	}
	_, hasDefault := top["default"]
	_, hasNodes := top["nodes"]

	// 2. Decode strictly, then verify.
	if hasDefault || hasNodes {
		var d bundleDoc
		if err := decodeOne(data, &d, true); err != nil {
			return nil, nil, fmt.Errorf("bundle: %w", err)
		}
		if err := verify(&d.Bundle, d.Checksum); err != nil {
			return nil, nil, fmt.Errorf("bundle: %w", err)
		}
		return nil, &d.Bundle, nil
	}
	var d nodeDoc
	if err := decodeOne(data, &d, true); err != nil {
		return nil, nil, fmt.Errorf("node: %w", err)
	}
	if err := verify(&d.Node, d.Checksum); err != nil {
		return nil, nil, fmt.Errorf("node: %w", err)
	}
	return &d.Node, nil, nil
}

// decodeOne decodes the one YAML document of data into v; no document at
// all leaves v as it is.
func decodeOne(data []byte, v any, strict bool) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(strict)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		if err != nil {
			return err
		}
		return fmt.Errorf("line %d: a second YAML document: a rendered configuration is one document", more.Line)
	}
	return nil
}

// verify checks a decoded document's checksum.
func verify[D Node | Bundle](d *D, got string) error {
	if got == "" {
		return fmt.Errorf("%w: the file is cut short, or was not written by bellbuild; %s", ErrNoChecksum, howToWrite)
	}
	want, err := Checksum(d)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: the content is not what was written (cut short or changed since); %s", ErrChecksum, howToWrite)
	}
	return nil
}
