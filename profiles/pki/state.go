package pki

import (
	"crypto/x509"
	"fmt"
)

// entry is an issued certificate as the log knows it; the parsed
// certificate is made on first use.
type entry struct {
	rec  record
	cert *x509.Certificate
}

func (e *entry) parsed() (*x509.Certificate, error) {
	if e.cert == nil {
		c, err := x509.ParseCertificate(e.rec.Cert)
		if err != nil {
			return nil, fmt.Errorf("serial %s in the log: %w", e.rec.Serial, err)
		}
		e.cert = c
	}
	return e.cert, nil
}

// state is what the log says, in memory.
type state struct {
	// serials are every serial the log holds: CAs and leaves.
	serials map[string]*entry
	// leaves are the issued leaf certificates in log order.
	leaves []*entry
	// slots maps a slot to its certificates, in log order.
	slots map[string][]*entry
	// revoked maps a serial to its revocation.
	revoked map[string]record
	// crl is the last published CRL number of each CA.
	crl map[Kind]int64
}

func newState() state {
	return state{serials: map[string]*entry{}, slots: map[string][]*entry{}, revoked: map[string]record{}, crl: map[Kind]int64{}}
}

// apply adds one record of the log.
func (st *state) apply(r record) error {
	switch r.Op {
	case "ca", "issue":
		if r.Serial == "" || len(r.Cert) == 0 {
			return fmt.Errorf("%s record without serial or certificate", r.Op)
		}
		if _, dup := st.serials[r.Serial]; dup {
			return fmt.Errorf("serial %s recorded twice", r.Serial)
		}
		e := &entry{rec: r}
		st.serials[r.Serial] = e
		if r.Op == "issue" {
			st.leaves = append(st.leaves, e)
			st.slots[r.Slot] = append(st.slots[r.Slot], e)
		}
	case "revoke":
		if _, ok := st.revoked[r.Serial]; !ok {
			st.revoked[r.Serial] = r
		}
	case "crl":
		if r.Number > st.crl[r.CA] {
			st.crl[r.CA] = r.Number
		}
	default:
		return fmt.Errorf("unknown record %q", r.Op)
	}
	return nil
}

// latest is the newest certificate of slot, or nil.
func (st *state) latest(slot string) *entry {
	es := st.slots[slot]
	if len(es) == 0 {
		return nil
	}
	return es[len(es)-1]
}
