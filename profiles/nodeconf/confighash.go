package nodeconf

import "fmt"

// ConfigHash names what a node's configuration asks for, the same
// whichever copy of it is hashed: the one the site renders for `status`,
// the public one a machine booted with, or the whole one an enrolled
// machine fetched. It is the Checksum of a copy with every secret value
// withheld and the issued PKI material (Conf.X509: CAs, CRLs,
// certificates, keys, which enrolment fills in on the machine) left out.
func ConfigHash(n *Node) (string, error) {
	data, err := Marshal(n, JSON)
	if err != nil {
		return "", err
	}
	c, _, err := Decode(data)
	if err != nil {
		return "", err
	}
	if err := c.Withhold(); err != nil {
		return "", fmt.Errorf("config hash: %w", err)
	}
	c.Conf.X509 = nil
	return Checksum(c)
}
