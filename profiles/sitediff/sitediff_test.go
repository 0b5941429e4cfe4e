package sitediff

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// TestDiffNodeSecrets compares hand-made renders: a secret's value (a
// nodeconf.Secret, a password hash, a debconf password) is said to change
// and shown as <secret NAME>, never its value; a reference `<secret
// NAME>` changes when the store's secret does; named lists are keyed by
// name, so an item inserted does not shift the others.
func TestDiffNodeSecrets(t *testing.T) {
	node := func(key, hash, answer, ref, version string, pkgs ...string) *nodeconf.Node {
		n := &nodeconf.Node{Node: "n1", Profile: "p"}
		n.Conf.X509 = &nodeconf.X509{Host: &nodeconf.IssuedCert{Cert: "cert", Key: nodeconf.NewSecret("host key", []byte(key))}}
		n.Conf.Uamlite = &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "ops", UserCryptPasswd: hash}}}
		n.Conf.Apt = &nodeconf.Apt{}
		for _, p := range pkgs {
			n.Conf.Apt.Packages = append(n.Conf.Apt.Packages, nodeconf.Package{Name: p})
		}
		n.Conf.Apt.Packages = append(n.Conf.Apt.Packages, nodeconf.Package{Name: "slapd", Version: version,
			Debconf: []nodeconf.Debconf{{Question: "slapd/password1", QuestionType: "password", Answer: answer}}})
		n.Conf.Files = map[string]nodeconf.File{"/etc/token": {Content: ref}}
		return n
	}
	old := node("KEYONE", "$6$s$HASHONE", "ANSWERONE", "<secret token>", "1", "a")
	cur := node("KEYTWO", "$6$s$HASHTWO", "ANSWERTWO", "<secret token>", "2", "b", "a")
	str := func(s string) *string { return &s }
	want := []Change{
		{Path: `conf.uamlite.users["ops"].user_crypt_passwd`, Old: str("<secret password hash>"), New: str("<secret password hash>"), Secret: true},
		{Path: `conf.apt.packages["slapd"].version`, Old: str(`"1"`), New: str(`"2"`)},
		{Path: `conf.apt.packages["slapd"].debconf["slapd/password1"].answer`, Old: str("<secret debconf password>"), New: str("<secret debconf password>"), Secret: true},
		{Path: `conf.files["/etc/token"].content`, Old: str("<secret token>"), New: str("<secret token>"), Secret: true},
		{Path: `conf.x509.host.key`, Old: str("<secret host key>"), New: str("<secret host key>"), Secret: true},
		{Path: `conf.apt.packages["b"].name`, New: str(`"b"`)},
	}
	got := diffNode(old, cur, func(name string) bool { return name == "token" })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	// Without the store's change, only the parts that differ are
	// walked (jointWalk): the same changes, but the reference's.
	wantPruned := append(append([]Change{}, want[:3]...), want[4:]...)
	if diff := cmp.Diff(wantPruned, diffNode(old, cur, nil)); diff != "" {
		t.Errorf("changes, the store unchanged (-want +got):\n%s", diff)
	}
	var text strings.Builder
	r := &Report{Nodes: []NodeChange{{Node: "n1", Status: Changed, Profile: "p", Changes: got}}}
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"KEYONE", "KEYTWO", "HASHONE", "HASHTWO", "ANSWERONE", "ANSWERTWO"} {
		if strings.Contains(text.String(), secret) {
			t.Errorf("%s printed:\n%s", secret, text.String())
		}
	}
	if !strings.Contains(text.String(), `  conf.x509.host.key: changed (<secret host key>, not shown)`) {
		t.Errorf("text:\n%s", text.String())
	}
	// The reference alone, its secret unchanged in the store: nothing.
	same := node("KEYONE", "$6$s$HASHONE", "ANSWERONE", "<secret token>", "1", "a")
	if got := diffNode(old, same, func(string) bool { return false }); len(got) != 0 {
		t.Errorf("same node: %+v", got)
	}
	if got := diffNode(old, same, func(name string) bool { return name == "token" }); len(got) != 1 || got[0].Path != `conf.files["/etc/token"].content` {
		t.Errorf("same node, token changed in the store: %+v", got)
	}
}
