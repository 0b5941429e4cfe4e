package sitediff

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// maxShown is how much of a value the text report shows (the JSON report
// has it whole).
const maxShown = 120

// WriteText writes r for people: one block per node, one line per image
// to bake again, per service that moves and per secret, then a count.
//
//	node etcd-1 (etcd): changed
//	  conf.sysctl["vm.swappiness"]: "1" → "5"
//	  conf.uamlite.users["ops"].user_crypt_passwd: changed (<secret password hash>, not shown)
//	node worker-9 (k8s-worker): added
//	re-bake k8s-worker: stage.debootstrap.mirror "…" → "…"; bundle: worker-1, worker-9
//	service etcd: -etcd-1 +etcd-2
//	secret db-password: changed
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Empty() {
		b.WriteString("nothing changes\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	var added, removed int
	for _, n := range r.Nodes {
		fmt.Fprintf(&b, "node %s (%s): %s\n", n.Node, n.Profile, n.Status)
		for _, c := range n.Changes {
			fmt.Fprintf(&b, "  %s: %s\n", c.Path, c.text())
		}
		switch n.Status {
		case Added:
			added++
		case Removed:
			removed++
		}
	}
	for _, rb := range r.Rebake {
		var parts []string
		for _, c := range rb.Reasons {
			parts = append(parts, c.Path+" "+c.text())
		}
		if len(rb.Bundle) > 0 {
			parts = append(parts, "bundle: "+strings.Join(rb.Bundle, ", "))
		}
		switch rb.Status {
		case Added:
			parts = append(parts, "a new image")
		case Removed:
			parts = append(parts, "no longer made")
		}
		fmt.Fprintf(&b, "re-bake %s: %s\n", rb.Profile, strings.Join(parts, "; "))
	}
	instances := 0
	for _, m := range r.Services {
		var parts []string
		for _, h := range m.Removed {
			parts = append(parts, "-"+h)
		}
		for _, h := range m.Added {
			parts = append(parts, "+"+h)
		}
		note := ""
		switch {
		case m.New:
			note = " (new service)"
		case m.Gone:
			note = " (service removed)"
		}
		fmt.Fprintf(&b, "service %s: %s%s\n", m.Service, strings.Join(parts, " "), note)
		instances += max(len(m.Removed), len(m.Added))
	}
	for _, s := range r.Secrets {
		fmt.Fprintf(&b, "secret %s: %s\n", s.Name, s.Status)
	}
	fmt.Fprintf(&b, "%d nodes change (%d added, %d removed), %d images to bake again, %d services move (%d instances), %d secrets change\n",
		len(r.Nodes), added, removed, len(r.Rebake), len(r.Services), instances, len(r.Secrets))
	_, err := io.WriteString(w, b.String())
	return err
}

// text is "OLD → NEW" ("(none)" for a side without the value); a secret
// is only said to change.
func (c Change) text() string {
	if c.Secret {
		name := c.New
		if name == nil {
			name = c.Old
		}
		switch {
		case c.Old == nil:
			return "added (" + *name + ", not shown)"
		case c.New == nil:
			return "removed (" + *name + ")"
		}
		return "changed (" + *name + ", not shown)"
	}
	return shown(c.Old) + " → " + shown(c.New)
}

func shown(s *string) string {
	if s == nil {
		return "(none)"
	}
	if len(*s) > maxShown {
		cut := maxShown
		for cut > 0 && !utf8.RuneStart((*s)[cut]) {
			cut--
		}
		return (*s)[:cut] + "…"
	}
	return *s
}
