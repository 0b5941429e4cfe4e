package enrol

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Record is what the state keeps of one node (key NodeKey(NAME)), as JSON.
type Record struct {
	Node string `json:"node"`
	// Retired is when `node retire` retired the node (zero: never):
	// then it has no key and is refused everything but the CRL.
	Retired time.Time `json:"retired,omitzero"`
	// Key is the fingerprint of the node's approved key ("": none).
	Key string `json:"key,omitempty"`
	// KeyCSR is the CSR (PEM) the approved key came with, so that a host
	// certificate can be signed again for it.
	KeyCSR string `json:"key_csr,omitempty"`
	// Approved is when and by what the key was approved ("operator",
	// "first-key", "pinned").
	Approved   time.Time `json:"approved,omitzero"`
	ApprovedBy string    `json:"approved_by,omitempty"`
	// Cert is the host certificate last issued for Key (PEM, with its
	// chain), CertSerial its serial.
	Cert       string `json:"cert,omitempty"`
	CertSerial string `json:"cert_serial,omitempty"`
	// Pending are the CSRs that wait for an operator, oldest first.
	Pending []Pending `json:"pending,omitempty"`
	// Denied are fingerprints an operator denied (newest last).
	Denied []string `json:"denied,omitempty"`
	// Refused are the latest keys refused because another is the node's
	// (a spoofed MAC, a reinstalled disk), newest last.
	Refused []Refused `json:"refused,omitempty"`
	// Issued are the certificates issued through enrolment, newest last
	// (the site PKI's log has every one of them too).
	Issued []Issued `json:"issued,omitempty"`
}

// Pending is one CSR waiting for an operator.
type Pending struct {
	Fingerprint string `json:"fingerprint"`
	MAC         string `json:"mac"`
	// From is the address it came from, First and Last when.
	From  string    `json:"from"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	CSR   string    `json:"csr"`
}

// Refused is a key refused for an enrolled node.
type Refused struct {
	Fingerprint string    `json:"fingerprint"`
	From        string    `json:"from"`
	Time        time.Time `json:"time"`
}

// Issued is one certificate issued to the node.
type Issued struct {
	Serial string `json:"serial"`
	// For is "host" or "CREDENTIAL/SIDE".
	For  string    `json:"for"`
	Time time.Time `json:"time"`
}

// Bounds of what a record keeps.
const (
	maxDenied  = 16
	maxRefused = 8
	maxIssued  = 256
)

// States of a node, as `bellbuild node list` shows them.
const (
	NodeUnknown  = "unknown"
	NodePending  = "pending"
	NodeApproved = "approved"
	NodeRetired  = "retired"
)

// State is the node's state: retired, approved (it has a key), pending
// (CSRs wait, no key yet) or unknown.
func (r *Record) State() string {
	switch {
	case r == nil:
		return NodeUnknown
	case !r.Retired.IsZero():
		return NodeRetired
	case r.Key != "":
		return NodeApproved
	case len(r.Pending) > 0:
		return NodePending
	}
	return NodeUnknown
}

// NodeKey is the state key of node's record.
func NodeKey(node string) string { return "enrol/nodes/" + node }

// NodesPrefix is the state prefix of every node's record.
const NodesPrefix = "enrol/nodes/"

func decodeRecord(node string, data []byte) (*Record, error) {
	r := &Record{Node: node}
	if data == nil {
		return r, nil
	}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("enrolment state of node %s: %w", node, err)
	}
	if r.Node != node {
		return nil, fmt.Errorf("enrolment state of node %s names node %q", node, r.Node)
	}
	return r, nil
}

func (r *Record) encode() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }

func (r *Record) pending(fp string) int {
	return slices.IndexFunc(r.Pending, func(p Pending) bool { return p.Fingerprint == fp })
}

func (r *Record) dropPending(fp string) {
	r.Pending = slices.DeleteFunc(r.Pending, func(p Pending) bool { return p.Fingerprint == fp })
}

func (r *Record) addIssued(serial, what string, t time.Time) {
	r.Issued = append(r.Issued, Issued{Serial: serial, For: what, Time: t})
	if n := len(r.Issued) - maxIssued; n > 0 {
		r.Issued = slices.Delete(r.Issued, 0, n)
	}
}

func (r *Record) addRefused(fp, from string, t time.Time) {
	r.Refused = slices.DeleteFunc(r.Refused, func(x Refused) bool { return x.Fingerprint == fp })
	r.Refused = append(r.Refused, Refused{Fingerprint: fp, From: from, Time: t})
	if n := len(r.Refused) - maxRefused; n > 0 {
		r.Refused = slices.Delete(r.Refused, 0, n)
	}
}

func (r *Record) addDenied(fp string) {
	if !slices.Contains(r.Denied, fp) {
		r.Denied = append(r.Denied, fp)
	}
	if n := len(r.Denied) - maxDenied; n > 0 {
		r.Denied = slices.Delete(r.Denied, 0, n)
	}
}
