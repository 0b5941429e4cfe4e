package profiles

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/secrets"
)

// Secrets in a site. Any text value of a conf (a profile's, its
// overrides', a node's in nodes.yaml, a service's in services.yaml) may
// be `!secret NAME`: a reference to SITE/secrets/NAME.age, kept as a
// reference with its position. Load checks that the store has NAME. A
// render lists every secret value of the node (nodeconf.Node.Secrets):
// the references, and the fields that are secret whatever their form
// (nodeconf.Conf.InlineSecrets), which validate warns about. RenderNode
// and RenderProfile give the public configuration (no secret value);
// RenderNodeSecrets and RenderProfileSecrets resolve the references
// through a secrets.Resolver.

const (
	// tagSecret is the YAML tag of a reference, as parsed.
	tagSecret = "!secret"
	// tagSecretRef marks a reference parseConf found in a conf, where
	// references belong; one left tagSecret is in a wrong place.
	tagSecretRef = "!secret (conf)"
)

// secretUse is one secret value of a render: where it is in the node,
// the store's name ("" for a value written inline) and the place in the
// site that wrote it.
type secretUse struct {
	path string
	name string
	pos  Pos
}

// ref records the reference v at the current path, when collecting.
func (p *fpath) ref(v *value) {
	if p.refs != nil {
		p.refs = append(p.refs, secretUse{path: p.String(), name: v.text, pos: v.pos})
	}
}

// secretRef converts a `!secret NAME` scalar, checking the name. A name
// made with an environment's variables (${VAR}) is checked once they are
// substituted (checkSecretNames).
func secretRef(n *yaml.Node, pos Pos, errs *ErrorList) *value {
	if strings.Contains(n.Value, "${") {
		return &value{kind: kScalar, pos: pos, tag: tagSecret, text: n.Value}
	}
	if err := secrets.ValidName(n.Value); err != nil {
		errs.Add(pos, "", "!secret %v", err)
		return &value{kind: kNull, pos: pos, tag: reported}
	}
	return &value{kind: kScalar, pos: pos, tag: tagSecret, text: n.Value}
}

// checkSecretNames checks the names of the references under v that
// were left to check after substitution (secretRef).
func checkSecretNames(v *value, errs *ErrorList) {
	switch v.kind {
	case kScalar:
		if v.tag == tagSecret && (strings.Contains(v.text, "${") || v.subst != "") {
			if err := secrets.ValidName(v.text); err != nil {
				errs.Add(v.pos, "", "!secret %v", err)
				v.kind, v.tag, v.text = kNull, reported, ""
			}
		}
	case kMap:
		for _, e := range v.ents {
			checkSecretNames(e.val, errs)
		}
	case kList:
		for _, it := range v.items {
			checkSecretNames(it, errs)
		}
	}
}

// markRefs accepts the references in a conf fragment.
func markRefs(v *value) {
	switch v.kind {
	case kScalar:
		if v.tag == tagSecret {
			v.tag = tagSecretRef
		}
	case kMap:
		for _, e := range v.ents {
			markRefs(e.val)
		}
	case kList:
		for _, it := range v.items {
			markRefs(it)
		}
	}
}

// checkRefs reports, in one site file's tree, each reference outside a
// conf and each to a secret the store does not have, and notes the names
// referred to.
func (s *Site) checkRefs(v *value, path string, errs *ErrorList) {
	switch v.kind {
	case kScalar:
		switch v.tag {
		case tagSecret:
			errs.Add(v.pos, path, "!secret %s: a secret can only be a value of a conf (a profile's conf or an override's, a node's conf, a service's conf)", v.text)
		case tagSecretRef:
			if s.refNames == nil {
				s.refNames = map[string]bool{}
			}
			s.refNames[v.text] = true
			switch {
			case s.store == nil:
				errs.Add(v.pos, path, "!secret %s: the embedded site has no secret store", v.text)
			case !s.store.Has(v.text):
				errs.Add(v.pos, path, "!secret %s: no such secret in %s (%s, with the value on standard input, stores it)",
					v.text, s.store.Dir(), s.setCommand(v.text))
			}
		}
	case kMap:
		for _, e := range v.ents {
			s.checkRefs(e.val, joinKey(path, e.key), errs)
		}
	case kList:
		for i, it := range v.items {
			s.checkRefs(it, path+nodeconf.Index(i), errs)
		}
	}
}

// setCommand is the command that stores secret name in the site's store.
func (s *Site) setCommand(name string) string {
	return "bellbuild secret set -C " + s.storeArg + " " + name
}

// SecretNames returns the name of every secret the site refers to
// (`!secret NAME`), sorted: what serving its nodes' resolved
// configurations needs an identity to decrypt.
func (s *Site) SecretNames() []string {
	out := make([]string, 0, len(s.refNames))
	for n := range s.refNames {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Resolver returns the site's secret store as a Resolver that decrypts
// with id (nil: references are checked, values stay withheld). The
// embedded site has no store: its Resolver has nothing.
func (s *Site) Resolver(id *secrets.Identity) secrets.Resolver {
	if s.store == nil {
		return noStore{}
	}
	return s.store.Resolver(id)
}

type noStore struct{}

func (noStore) Lookup(name string) (nodeconf.Secret, error) {
	return nodeconf.Secret{}, fmt.Errorf("%s: the embedded site has no secret store: %w", name, secrets.ErrNotFound)
}
func (noStore) Has(string) bool { return false }

// inlineUses completes a render's references with the values that are
// secret whatever their form, at the line that wrote each.
func inlineUses(conf *nodeconf.Conf, refs []secretUse, tree *value, keys keyFinder) []secretUse {
	out := slices.Clone(refs)
	for _, p := range conf.InlineSecrets() {
		if slices.ContainsFunc(refs, func(u secretUse) bool { return u.path == p }) {
			continue
		}
		u := secretUse{path: p}
		if tree != nil {
			u.pos = keys.lookup(tree, strings.TrimPrefix(p, "conf."))
		}
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out
}

// inlineWarnings warns, for each value written inline that is a secret
// whatever its form, with the command that moves it into the store: once
// per place (warned holds the places warned about already).
func (s *Site) inlineWarnings(conf *nodeconf.Conf, uses []secretUse, warned *sync.Map) ErrorList {
	var out ErrorList
	if s.embedded || s.storeArg == "" {
		return nil
	}
	for _, u := range uses {
		if u.name != "" || u.pos.File == "" {
			continue
		}
		if _, done := warned.LoadOrStore(u.pos, true); done {
			continue
		}
		name := suggestName(conf, u.path)
		out.Warn(u.pos, u.path, "%s written inline: accepted, and kept out of every public configuration; move it into the store: %s (the value on standard input), then write !secret %s here",
			inlineWhat(conf, u.path), s.setCommand(name), name)
	}
	return out
}

// inlineWhat says why an inline value is a secret.
func inlineWhat(conf *nodeconf.Conf, path string) string {
	switch {
	case strings.HasSuffix(path, ".user_crypt_passwd"):
		return "a password hash"
	case strings.Contains(path, ".debconf["):
		return "a debconf password"
	case strings.HasPrefix(path, "conf.files["):
		if v, err := (&nodeconf.Node{Conf: *conf}).Field(path); err == nil && nodeconf.HoldsPrivateKey(v) {
			return "a private key"
		}
		for p, f := range conf.Files {
			if "conf.files"+nodeconf.Key(p)+".content" == path {
				if f.Secret {
					return "a secret file (secret: true)"
				}
				return fmt.Sprintf("a file others cannot read (mode %s)", f.Mode)
			}
		}
	}
	return "a private key"
}

var notNameChar = regexp.MustCompile(`[^a-z0-9._-]+`)

// suggestName proposes a store name for an inline secret: USER-password,
// PACKAGE-QUESTION, the file's path, else the field's path.
func suggestName(conf *nodeconf.Conf, path string) string {
	name := path
	n := &nodeconf.Node{Conf: *conf}
	switch {
	case strings.HasSuffix(path, ".user_crypt_passwd"):
		if u, err := n.Field(strings.TrimSuffix(path, ".user_crypt_passwd") + ".user_name"); err == nil {
			name = u + "-password"
		}
	case strings.Contains(path, ".debconf["):
		if q, err := n.Field(strings.TrimSuffix(path, ".answer") + ".question"); err == nil {
			name = q
		}
	case strings.HasPrefix(path, "conf.files["):
		if q, err := strconv.QuotedPrefix(strings.TrimPrefix(path, "conf.files[")); err == nil {
			name, _ = strconv.Unquote(q)
		}
	default:
		name = strings.TrimPrefix(path, "conf.")
	}
	name = notNameChar.ReplaceAllString(strings.ToLower(name), "-")
	name = strings.TrimLeft(name, "._-")
	if len(name) > 128 {
		name = name[:128]
	}
	if secrets.ValidName(name) != nil {
		return "secret"
	}
	return name
}

// placeholder is what a reference's field holds until it is resolved or
// withheld: a value the applier's rules check like any text, except its
// own form (dropRefErrors).
func placeholder(v *value) string { return "<secret " + v.text + ">" }

// dropRefErrors leaves out the validation errors at the references of
// uses, whose fields hold placeholders: their values are checked when
// resolved.
func dropRefErrors(errs []error, uses []secretUse) []error {
	return slices.DeleteFunc(errs, func(err error) bool {
		var fe *nodeconf.FieldError
		return errors.As(err, &fe) && slices.ContainsFunc(uses, func(u secretUse) bool {
			return u.name != "" && u.path == "conf."+fe.Path
		})
	})
}

// public makes a rendered node the public configuration (no secret value).
func public(n *nodeconf.Node) (*nodeconf.Node, error) {
	if err := n.Withhold(); err != nil {
		return nil, err
	}
	return n, nil
}

// resolveSecrets gives r's node the values of its references through res. A
// value res has no identity for stays withheld; any other failure is an
// error at the reference. The resolved values are then checked with the
// applier's rules, each problem at its reference, the value never shown.
func (s *Site) resolveSecrets(r *rendered, res secrets.Resolver) (*nodeconf.Node, error) {
	var errs ErrorList
	n := r.node
	shown := map[string]string{} // a value → how it is shown
	var resolved []secretUse
	for i, ref := range n.Secrets {
		if ref.Name == "" || !ref.Withheld || res == nil {
			continue
		}
		u := r.secrets[i]
		v, err := res.Lookup(ref.Name)
		switch {
		case errors.Is(err, secrets.ErrNoIdentity):
			continue // pending
		case err != nil:
			errs.Add(u.pos, ref.Path, "secret %s: %v", ref.Name, err)
			continue
		}
		if err := n.SetField(ref.Path, string(v.Reveal())); err != nil {
			return nil, err
		}
		n.Secrets[i].Withheld = false
		shown[string(v.Reveal())] = ref.String()
		resolved = append(resolved, u)
	}
	if len(resolved) > 0 {
		for _, err := range n.Conf.Validate() {
			var fe *nodeconf.FieldError
			if !errors.As(err, &fe) {
				continue
			}
			at := slices.IndexFunc(resolved, func(u secretUse) bool { return u.path == "conf."+fe.Path })
			if at < 0 {
				continue // not the values': checked when rendered
			}
			errs.Add(resolved[at].pos, resolved[at].path, "%s", redact(fe.Msg, shown))
		}
	}
	if len(errs) > 0 {
		return nil, errs.Err()
	}
	return n, nil
}

// redact replaces every value of shown in msg, as it is or quoted, by how
// it is shown.
func redact(msg string, shown map[string]string) string {
	vals := make([]string, 0, len(shown))
	for v := range shown {
		vals = append(vals, v)
	}
	// The longest first: a value inside another is not cut in two.
	sort.Slice(vals, func(i, j int) bool { return len(vals[i]) > len(vals[j]) })
	for _, v := range vals {
		if v == "" {
			continue
		}
		q := strconv.Quote(v)
		msg = strings.ReplaceAll(msg, q[1:len(q)-1], shown[v])
		msg = strings.ReplaceAll(msg, v, shown[v])
	}
	return msg
}

// RenderNodeSecrets is RenderNode with the node's secret values in place:
// its references resolved through res, its inline secret values kept. A
// nil res resolves nothing; a reference res has no identity for (secrets.ErrNoIdentity) stays
// withheld, as in a public configuration (n.Withheld() says so); a
// secret res cannot decrypt, or a value the applier would refuse, is an
// ErrorList naming the line that referred to it. What it returns is the
// one node's own configuration: never write it where others can read it.
func (s *Site) RenderNodeSecrets(name string, res secrets.Resolver) (*nodeconf.Node, error) {
	r, err := s.renderNode(name)
	if err != nil {
		return nil, err
	}
	return s.resolveSecrets(r, res)
}

// RenderProfileSecrets is RenderProfile with the secret values in place
// (see RenderNodeSecrets).
func (s *Site) RenderProfileSecrets(profile string, labels map[string]string, hostname string, res secrets.Resolver) (*nodeconf.Node, error) {
	r, err := s.render(profile, labels, hostname, nil, nil)
	if err != nil {
		return nil, err
	}
	r.node.Node = hostname
	return s.resolveSecrets(r, res)
}
