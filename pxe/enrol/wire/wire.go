// Package wire is the enrolment protocol between `bellbuild serve` (package
// pxe/enrol) and a node's applier (package firstboot/enrol): its paths, its
// JSON messages, its limits and the fingerprint that names a key. It
// imports nothing of bellbuild, so that both sides, which may import
// nothing of each other, speak exactly the same thing.
//
// Every path is under /v1/. Over TLS with serve's certificate alone:
//
//	POST /v1/enrol                        submit a CSR (EnrolRequest) → Status
//	GET  /v1/enrol/NODE/FINGERPRINT       poll that enrolment → Status
//	GET  /v1/crl                          the site's CRLs (PEM), to anyone
//
// Over mutual TLS, with the node's host certificate:
//
//	GET  /v1/nodes/NODE/config            the node's whole configuration
//	POST /v1/nodes/NODE/certificates      sign service CSRs (SignRequest) → SignResponse
//	POST /v1/nodes/NODE/renew             renew the host certificate (RenewRequest) → Status
package wire

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Paths of the protocol.
const (
	PathEnrol = "/v1/enrol"
	PathCRL   = "/v1/crl"
	// PathNodes is the prefix of the mutual-TLS paths: PathNodes+NODE+"/config" and so on.
	PathNodes = "/v1/nodes/"
)

// PollPath is where the enrolment of node's key fp is polled.
func PollPath(node, fp string) string { return PathEnrol + "/" + node + "/" + fp }

// ConfigPath, CertificatesPath and RenewPath are node's mutual-TLS paths.
func ConfigPath(node string) string { return PathNodes + node + "/config" }

// CertificatesPath: see ConfigPath.
func CertificatesPath(node string) string { return PathNodes + node + "/certificates" }

// RenewPath: see ConfigPath.
func RenewPath(node string) string { return PathNodes + node + "/renew" }

// Limits on what a request may carry.
const (
	// MaxBody is the largest request body serve reads.
	MaxBody = 64 << 10
	// MaxSignRequests is the most CSRs one SignRequest may carry.
	MaxSignRequests = 32
	// MaxSignBody is the largest body of a SignRequest.
	MaxSignBody = 512 << 10
)

// States of an enrolment, as Status.State says them.
const (
	// StatePending: an operator has not approved the key yet.
	StatePending = "pending"
	// StateApproved: the key is the node's; Status.Cert is its host
	// certificate.
	StateApproved = "approved"
	// StateRefused: this key gets nothing (another key is the node's,
	// the operator denied it, the node is retired, or the request was
	// bad); Status.Message says why.
	StateRefused = "refused"
)

// EnrolRequest is a node's submission: who it says it is and its key.
type EnrolRequest struct {
	// Node is the node's inventory name; MAC one of its hardware
	// addresses (lower case, colon separated).
	Node string `json:"node"`
	MAC  string `json:"mac"`
	// CSR is a PEM certificate signing request for the node's key. Its
	// subject names at most the node (CN=NODE) and it asks for no
	// subject alternative names: the site decides the certificate's
	// names.
	CSR string `json:"csr"`
}

// Status is serve's answer about one key of one node.
type Status struct {
	Node        string `json:"node"`
	Fingerprint string `json:"fingerprint,omitempty"`
	State       string `json:"state"`
	// Message says what an operator must do (pending) or why (refused).
	Message string `json:"message,omitempty"`
	// Cert is the host certificate and its chain up to the root's
	// child (PEM), once approved.
	Cert string `json:"cert,omitempty"`
	// Poll is the path to ask again (pending).
	Poll string `json:"poll,omitempty"`
}

// SignRequest asks for the certificates of some of the node's credentials.
type SignRequest struct {
	Requests []CertRequest `json:"requests"`
}

// CertRequest is one side of one credential.
type CertRequest struct {
	// Credential is the credential's name (conf.credentials[].name),
	// Side "client" or "server".
	Credential string `json:"credential"`
	Side       string `json:"side"`
	// CSR is a PEM certificate signing request for a key the node made;
	// it asks for no names (the site decides them).
	CSR string `json:"csr"`
}

// SignResponse carries the certificates, in the order asked, with the CA
// bundle and CRLs they go with.
type SignResponse struct {
	Certificates []IssuedCert `json:"certificates"`
	// CA is the site's CA bundle (PEM), CRL its CRLs.
	CA  string `json:"ca"`
	CRL string `json:"crl"`
}

// IssuedCert is one certificate of a SignResponse.
type IssuedCert struct {
	Credential string `json:"credential"`
	Side       string `json:"side"`
	// Cert is the certificate and its chain (PEM).
	Cert string `json:"cert"`
}

// RenewRequest renews the host certificate: a CSR for the key the node
// enrolled with (a new key needs an operator's approval).
type RenewRequest struct {
	CSR string `json:"csr"`
}

// Error is the body of every refusal that is not a Status.
type Error struct {
	Error string `json:"error"`
}

// Sides of a credential.
const (
	SideClient = "client"
	SideServer = "server"
)

// FingerprintPrefix starts every fingerprint.
const FingerprintPrefix = "sha256:"

// Fingerprint names a public key: "sha256:" and the lower-case hex SHA-256
// of its DER SubjectPublicKeyInfo, what
//
//	openssl pkey -pubin -outform der | sha256sum
//
// prints for it (openssl req -pubkey -noout gives a CSR's).
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("fingerprint: %w", err)
	}
	sum := sha256.Sum256(der)
	return FingerprintPrefix + hex.EncodeToString(sum[:]), nil
}

// CertFingerprint is the SHA-256 of a certificate's DER, in the same form
// (what `openssl x509 -fingerprint -sha256` prints, without colons): how
// the kernel command line pins the site's root CA.
func CertFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return FingerprintPrefix + hex.EncodeToString(sum[:])
}

// ErrBadFingerprint is a fingerprint that is not "sha256:" and 64 hex digits.
var ErrBadFingerprint = errors.New(`not a fingerprint: want "sha256:" and 64 hex digits`)

// ParseFingerprint reads a fingerprint as a person may type it: any case,
// with or without "sha256:" and colons. It returns the canonical form.
func ParseFingerprint(s string) (string, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimPrefix(t, FingerprintPrefix)
	t = strings.ReplaceAll(t, ":", "")
	if len(t) != 64 {
		return "", fmt.Errorf("%q: %w", short(s), ErrBadFingerprint)
	}
	if _, err := hex.DecodeString(t); err != nil {
		return "", fmt.Errorf("%q: %w", short(s), ErrBadFingerprint)
	}
	return FingerprintPrefix + t, nil
}

// short cuts what a person typed for an error message.
func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Short is a fingerprint cut for a table: "sha256:" and its first 16 hex
// digits.
func Short(fp string) string {
	if len(fp) > len(FingerprintPrefix)+16 {
		return fp[:len(FingerprintPrefix)+16]
	}
	return fp
}

// Kernel command line parameters serve adds for a node that may enrol, and
// the init reads.
const (
	// ParamURL is the enrolment endpoint: bellbuild.enrol=https://IP:PORT.
	ParamURL = "bellbuild.enrol"
	// ParamCA pins the site's root CA, which serve's certificate must
	// chain to: bellbuild.enrol_ca=sha256:HEX (CertFingerprint).
	ParamCA = "bellbuild.enrol_ca"
	// ParamNet is how the node's boot NIC was configured by iPXE, for the
	// init to bring it up the same way:
	// bellbuild.net=MAC,IP,NETMASK,GATEWAY (the gateway may be empty).
	ParamNet = "bellbuild.net"
	// NetFromIPXE is ParamNet's value in an iPXE script: iPXE fills in
	// the booting NIC's settings.
	NetFromIPXE = "${mac},${ip},${netmask},${gateway}"
)
