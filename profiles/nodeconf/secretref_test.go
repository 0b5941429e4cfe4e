package nodeconf

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	testHash = "$6$salt$0123456789abcdefABCDEF"
	testPEM  = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n"
)

// secretNode is a node with every kind of secret value: two from the
// store (a file's content, a user's password) and inline ones.
func secretNode() *Node {
	yes := true
	return &Node{
		Node: "n1", Profile: "p", Profiles: []string{"p"},
		Conf: Conf{
			Sysctl: map[string]string{"vm.swappiness": "10", "kernel.token": "T0KEN"},
			Files: map[string]File{
				"/etc/db.pw":      {Content: "DBPASS", Mode: "0600"},
				"/etc/motd":       {Content: "hello"},
				"/etc/shadow.d/x": {Content: "INLINE-0600", Mode: "0640"},
				"/etc/tls.key":    {Content: testPEM},
				"/etc/flag":       {Content: "FLAG", Secret: true},
			},
			Uamlite: &Uamlite{Users: []User{
				{UserName: "alice", UserCryptPasswd: "STOREHASH"},
				{UserName: "bob", UserCryptPasswd: testHash},
				{UserName: "carol"},
			}},
			Apt: &Apt{Packages: []Package{{Name: "mysql-server", Debconf: []Debconf{
				{Question: "mysql-server/root_password", QuestionType: "password", Answer: "ROOTPW"},
				{Question: "mysql-server/x", QuestionType: "string", Answer: "plain"},
			}}}},
			Units:    map[string]Unit{"a.service": {Content: "[Service]\nEnvironment=TOKEN=U\n", Enabled: &yes}},
			Mounts:   map[string]Mount{"data": {MntTgt: "/srv/data", Device: "//nas/data", Type: "cifs", Options: "password=M"}},
			Exec:     map[string]Exec{"001-x": {Data: "#!/bin/sh\n", Env: map[string]string{"TOKEN": "E"}}},
			Apparmor: &Apparmor{Profiles: map[string]string{"prof": "P"}},
			Perm:     &Perm{Paths: []PermPath{{Path: "/x", Owner: "root", Group: "root", Permissions: "0600"}}},
		},
		Secrets: []SecretRef{
			{Path: `conf.files["/etc/db.pw"].content`, Name: "db-password"},
			{Path: "conf.uamlite.users[0].user_crypt_passwd", Name: "alice-password"},
			{Path: `conf.sysctl["kernel.token"]`, Name: "token"},
		},
	}
}

func TestInlineSecrets(t *testing.T) {
	got := secretNode().Conf.InlineSecrets()
	want := []string{
		"conf.apt.packages[0].debconf[0].answer",
		`conf.files["/etc/db.pw"].content`,
		`conf.files["/etc/flag"].content`,
		`conf.files["/etc/shadow.d/x"].content`,
		`conf.files["/etc/tls.key"].content`,
		"conf.uamlite.users[0].user_crypt_passwd",
		"conf.uamlite.users[1].user_crypt_passwd",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("InlineSecrets (-want +got):\n%s", diff)
	}
}

// TestWithhold: a public node has no secret value anywhere in its
// document, verifies after a round trip, and names each reference; the
// resolved node keeps them.
func TestWithhold(t *testing.T) {
	values := []string{"DBPASS", "STOREHASH", "T0KEN"}
	n := secretNode()
	resolved, err := Marshal(n, YAML)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range values {
		if !strings.Contains(string(resolved), v) {
			t.Errorf("the resolved document lacks %s", v)
		}
	}
	if err := n.Withhold(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []Format{JSON, YAML} {
		data, err := Marshal(n, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range values {
			if strings.Contains(string(data), v) {
				t.Errorf("%s: the public document holds %s:\n%s", f, v, data)
			}
		}
		back, _, err := Decode(data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if diff := cmp.Diff(n.Secrets, back.Secrets); diff != "" || !back.Withheld() {
			t.Errorf("%s: references (-want +got):\n%s", f, diff)
		}
		if back.Conf.Files["/etc/motd"].Content != "hello" || back.Conf.Sysctl["vm.swappiness"] != "10" {
			t.Errorf("%s: a public value was lost", f)
		}
	}
	shown, err := n.Show()
	if err != nil {
		t.Fatal(err)
	}
	if got := shown.Conf.Files["/etc/db.pw"].Content; got != "<secret db-password>" {
		t.Errorf("shown content = %q", got)
	}
	if got := shown.Conf.Uamlite.Users[0].UserCryptPasswd; got != "<secret alice-password>" {
		t.Errorf("shown password = %q", got)
	}
	if n.Conf.Files["/etc/db.pw"].Content != "" {
		t.Error("Show changed the node")
	}
}

func TestFieldPaths(t *testing.T) {
	n := secretNode()
	tests := []struct {
		path, want string
		err        bool
	}{
		{path: `conf.files["/etc/db.pw"].content`, want: "DBPASS"},
		{path: "conf.uamlite.users[1].user_crypt_passwd", want: testHash},
		{path: `conf.sysctl["vm.swappiness"]`, want: "10"},
		{path: `conf.exec["001-x"].env.TOKEN`, want: "E"},
		{path: `conf.apt.packages[0].debconf[1].answer`, want: "plain"},
		{path: `conf.files["/nope"].content`, err: true},
		{path: `conf.uamlite.users[7].user_name`, err: true},
		{path: `conf.uamlite.users[0].user_sudo`, err: true}, // not text
		{path: `conf.files["/etc/db.pw"`, err: true},
		{path: `conf..files`, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := n.Field(tt.path)
			if tt.err {
				if err == nil {
					t.Fatalf("Field = %q, want an error", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Field = %q, %v; want %q", got, err, tt.want)
			}
			if err := n.SetField(tt.path, "new"); err != nil {
				t.Fatal(err)
			}
			if got, _ := n.Field(tt.path); got != "new" {
				t.Errorf("after SetField: %q", got)
			}
		})
	}
	if err := n.SetField(`conf.files["/nope"].content`, "x"); !errors.Is(err, ErrNoField) {
		t.Errorf("SetField of a missing file: %v", err)
	}
}

// TestHeldItems: each withheld value holds its item, named as the ledger
// knows it, and Without leaves exactly those out.
func TestHeldItems(t *testing.T) {
	n := secretNode()
	for _, p := range []string{
		"conf.apt.packages[0].debconf[0].answer", `conf.units["a.service"].content`, `conf.mounts.data.options`,
		`conf.exec["001-x"].env.TOKEN`, `conf.apparmor.profiles.prof`, `conf.perm.paths[0].owner`,
	} {
		n.Secrets = append(n.Secrets, SecretRef{Path: p})
	}
	if err := n.Withhold(); err != nil {
		t.Fatal(err)
	}
	held, err := n.HeldItems()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range held {
		got = append(got, h.Module+" "+h.Item)
	}
	want := []string{
		"files /etc/db.pw", "uamlite alice", "sysctl kernel.token", "apt mysql-server", "units a.service",
		"mounts srv-data.mount", "exec 001-x", "apparmor prof", "perm ",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("held items (-want +got):\n%s", diff)
	}
	c, err := n.Conf.Without(held)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Files["/etc/db.pw"]; ok || len(c.Files) != 4 {
		t.Errorf("files left: %v", sortedKeys(c.Files))
	}
	if len(c.Uamlite.Users) != 2 || c.Uamlite.Users[0].UserName != "bob" || len(n.Conf.Uamlite.Users) != 3 {
		t.Errorf("users left: %+v (the node's: %d)", c.Uamlite.Users, len(n.Conf.Uamlite.Users))
	}
	if c.Perm != nil || len(c.Apt.Packages) != 0 || len(c.Units) != 0 || len(c.Mounts) != 0 || len(c.Exec) != 0 ||
		len(c.Apparmor.Profiles) != 0 || len(c.Sysctl) != 1 {
		t.Errorf("left: %+v", c)
	}
	if n.Conf.Perm == nil || len(n.Conf.Sysctl) != 2 {
		t.Error("Without changed the node's conf")
	}
	bad := &Node{Secrets: []SecretRef{{Path: "facts.x", Withheld: true}}}
	if _, err := bad.HeldItems(); err == nil {
		t.Error("a reference outside conf holds nothing and is not an error")
	}
}
