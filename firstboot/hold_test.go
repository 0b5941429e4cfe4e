package firstboot

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// heldNode is a node with three secret values — a 0600 file's content, a
// user's password hash, a sysctl value — resolved, or withheld as in a
// public configuration; motd and swappiness are public.
func heldNode(t *testing.T, dbpw, hash, domain, motd string, withheld bool) *nodeconf.Node {
	t.Helper()
	n := &nodeconf.Node{Node: "n1", Profile: "p", Conf: nodeconf.Conf{
		Files: map[string]nodeconf.File{
			"/etc/db.pw": {Content: dbpw, Mode: "0600"},
			"/etc/motd":  {Content: motd},
		},
		Uamlite: &nodeconf.Uamlite{Users: []nodeconf.User{
			{UserName: "admin", UserCryptPasswd: hash, UserSudo: true},
			{UserName: "carol", UserSudo: true, UserSSHKeys: []string{aliceKey}},
		}},
		Sysctl: map[string]string{"kernel.domainname": domain, "vm.swappiness": "1" + motd[:1]},
	}, Secrets: []nodeconf.SecretRef{
		{Path: `conf.files["/etc/db.pw"].content`, Name: "db-password"},
		{Path: "conf.uamlite.users[0].user_crypt_passwd", Name: "admin-password"},
		{Path: `conf.sysctl["kernel.domainname"]`, Name: "domain"},
	}}
	if withheld {
		if err := n.Withhold(); err != nil {
			t.Fatal(err)
		}
	}
	// The applier reads what a document holds.
	data, err := nodeconf.Marshal(n, nodeconf.JSON)
	if err != nil {
		t.Fatal(err)
	}
	back, _, err := nodeconf.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	return back
}

// TestHeldSecrets applies, on a real root, a public configuration whose
// secret file, user password and sysctl value are withheld: everything
// else is applied and those three are pending, neither created nor — once
// an earlier run applied them — changed or reverted. The resolved
// configuration then converges them, and a rerun changes nothing.
func TestHeldSecrets(t *testing.T) {
	const (
		oldPW, newPW   = "OLD-DB-SECRET\n", "NEW-DB-SECRET\n"
		oldHash        = "$6$old$OLDHASH0123456789abcdef"
		newHash        = "$6$new$NEWHASH0123456789abcdef"
		oldDom, newDom = "old.example", "new.example"
	)
	root := t.TempDir()
	uamBuild(t, root, debianAccounts)
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if os.IsNotExist(err) {
			return "<absent>"
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	shadowPW := func(user string) string {
		for _, l := range strings.Split(read("/etc/shadow"), "\n") {
			if f := strings.Split(l, ":"); f[0] == user && len(f) > 7 {
				return f[1] + " expire=" + f[7] // a retired user is expired
			}
		}
		return "<no user>"
	}
	sysctlLine := func(key string) string {
		for _, l := range strings.Split(read("/etc/sysctl.d/60-bellbuild.conf"), "\n") {
			if k, v, ok := strings.Cut(l, " = "); ok && k == key {
				return v
			}
		}
		return "<absent>"
	}
	pending := []string{
		"sysctl: kernel.domainname (waits for <secret domain>)",
		"uamlite: admin (waits for <secret admin-password>)",
		"files: /etc/db.pw (waits for <secret db-password>)",
	}
	type state struct{ DBPW, Admin, Domain, Motd, Swappiness, Carol string }
	current := func() state {
		return state{read("/etc/db.pw"), shadowPW("admin"), sysctlLine("kernel.domainname"), read("/etc/motd"), sysctlLine("vm.swappiness"), shadowPW("carol")}
	}
	steps := []struct {
		name        string
		node        *nodeconf.Node
		want        state
		pending     []string
		changesNone bool
	}{
		{"public, fresh root", heldNode(t, oldPW, oldHash, oldDom, "v1\n", true),
			state{"<absent>", "<no user>", "<absent>", "v1\n", "1v", "* expire="}, pending, false},
		{"resolved", heldNode(t, oldPW, oldHash, oldDom, "v1\n", false),
			state{oldPW, oldHash + " expire=", oldDom, "v1\n", "1v", "* expire="}, nil, false},
		{"public v2: held items stay as they are", heldNode(t, newPW, newHash, newDom, "w2\n", true),
			state{oldPW, oldHash + " expire=", oldDom, "w2\n", "1w", "* expire="}, pending, false},
		{"public v2 again", heldNode(t, newPW, newHash, newDom, "w2\n", true),
			state{oldPW, oldHash + " expire=", oldDom, "w2\n", "1w", "* expire="}, pending, true},
		{"resolved v2 converges", heldNode(t, newPW, newHash, newDom, "w2\n", false),
			state{newPW, newHash + " expire=", newDom, "w2\n", "1w", "* expire="}, nil, false},
		{"resolved v2 again", heldNode(t, newPW, newHash, newDom, "w2\n", false),
			state{newPW, newHash + " expire=", newDom, "w2\n", "1w", "* expire="}, nil, true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			rep, err := Apply(context.Background(), Options{RootDir: root, Now: func() time.Time { return uamNow }}, st.node)
			if err != nil || len(rep.Errors) > 0 {
				t.Fatalf("Apply: %v %v", err, rep.Errors)
			}
			if diff := cmp.Diff(st.want, current()); diff != "" {
				t.Errorf("root (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(st.pending, rep.Pending); diff != "" {
				t.Errorf("pending (-want +got):\n%s", diff)
			}
			if got := len(rep.Changes); (got == 0) != st.changesNone {
				t.Errorf("%d changes: %v", got, rep.Changes)
			}
			if st.pending != nil && !strings.Contains(rep.Summary(), " pending=3") {
				t.Errorf("summary %q", rep.Summary())
			}
			// The ledger still owns what a held item applied before.
			ledger := read("/var/lib/bellbuild/ledger.json")
			for _, k := range []string{`"/etc/db.pw"`, `"user/admin"`, `"kernel.domainname"`} {
				if owned := strings.Contains(ledger, k); owned != (st.want.DBPW != "<absent>") {
					t.Errorf("ledger owns %s: %v", k, owned)
				}
			}
			for _, v := range []string{"NEW-DB", "NEWHASH", newDom} {
				if st.pending != nil && slices.ContainsFunc(rep.Pending, func(p string) bool { return strings.Contains(p, v) }) {
					t.Errorf("the report shows %s", v)
				}
			}
		})
	}
}

// TestHeldOwner: a file owned by a user held for a secret waits with it
// (pending, not an error that would stop the run), and comes once the
// user does.
func TestHeldOwner(t *testing.T) {
	root := t.TempDir()
	uamBuild(t, root, debianAccounts)
	node := func(withheld bool) *nodeconf.Node {
		n := &nodeconf.Node{Node: "n1", Profile: "p", Conf: nodeconf.Conf{
			Files:   map[string]nodeconf.File{"/etc/admin.conf": {Content: "x\n", Owner: "admin"}, "/etc/motd": {Content: "hi\n"}},
			Uamlite: &nodeconf.Uamlite{Users: []nodeconf.User{{UserName: "admin", UserCryptPasswd: "$6$s$HASH"}}},
		}, Secrets: []nodeconf.SecretRef{{Path: "conf.uamlite.users[0].user_crypt_passwd", Name: "admin-password"}}}
		if withheld {
			n.Withhold()
		}
		return n
	}
	rep, err := Apply(context.Background(), Options{RootDir: root, Now: func() time.Time { return uamNow }}, node(true))
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("Apply: %v %v", err, rep.Errors)
	}
	want := []string{"files: /etc/admin.conf", "uamlite: admin (waits for <secret admin-password>)"}
	if diff := cmp.Diff(want, rep.Pending); diff != "" {
		t.Errorf("pending (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/admin.conf")); !os.IsNotExist(err) {
		t.Errorf("the held user's file was written: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(b) != "hi\n" {
		t.Errorf("motd = %q", b)
	}
	rep, err = Apply(context.Background(), Options{RootDir: root, Now: func() time.Time { return uamNow }}, node(false))
	if err != nil || len(rep.Errors) > 0 || len(rep.Pending) > 0 {
		t.Fatalf("Apply resolved: %v %v %v", err, rep.Errors, rep.Pending)
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/admin.conf")); err != nil || fi.Sys().(*syscall.Stat_t).Uid < 1000 {
		t.Errorf("admin.conf once the user is there: %v", err)
	}
}

// TestSecretsNotShown: a resolved configuration's secret values — a
// sysctl value, a unit's content (mode 0644: a plan would show a small
// file's change), a limit — appear in no change of a plan or a run, no
// report, no log line and no error: each shows as its reference.
func TestSecretsNotShown(t *testing.T) {
	const (
		sysctlValue = "SYSCTL-SECRET-1a2b"
		unitValue   = "[Service]\nEnvironment=TOKEN=UNIT-SECRET-3c4d\n"
		limitValue  = "LIMIT SECRET-5e6f" // white space: refused, quoted by validation
	)
	root := t.TempDir()
	buildRoot(t, root, rootTree{
		"/etc/systemd/system/web.service": fileEntry("0644", "0:0", "[Service]\nold\n"),
		"/etc/sysctl.d/60-bellbuild.conf": fileEntry("0644", "0:0", "# by hand\n"),
	})
	node := &nodeconf.Node{Node: "n1", Profile: "p", Conf: nodeconf.Conf{
		Sysctl: map[string]string{"kernel.token": sysctlValue},
		Units:  map[string]nodeconf.Unit{"web.service": {Content: unitValue}},
	}, Secrets: []nodeconf.SecretRef{
		{Path: `conf.sysctl["kernel.token"]`, Name: "token"},
		{Path: `conf.units["web.service"].content`, Name: "unit-token"},
	}}
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	check := func(what, out string) {
		t.Helper()
		for _, v := range []string{"SYSCTL-SECRET", "UNIT-SECRET", "SECRET-5e6f"} {
			if strings.Contains(out, v) {
				t.Errorf("%s shows %s:\n%s", what, v, out)
			}
		}
	}
	for _, plan := range []bool{true, false} {
		rep, err := Apply(context.Background(), Options{RootDir: root, Plan: plan, Log: log}, node)
		if err != nil || len(rep.Errors) > 0 {
			t.Fatalf("Apply: %v %v", err, rep.Errors)
		}
		text := PlanText(rep)
		check("the plan", text)
		if plan && (!strings.Contains(text, `kernel.token = <secret token>`) || !strings.Contains(text, `-> "<secret unit-token>"`)) {
			t.Errorf("the plan does not show the references:\n%s", text)
		}
	}
	b, _ := os.ReadFile(filepath.Join(root, "var/lib/bellbuild/last-run.json"))
	check("last-run.json", string(b))
	check("the log", logs.String())
	if b, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system/web.service")); string(b) != unitValue {
		t.Errorf("the unit holds %q", b)
	}

	node.Conf.Limits = map[string]nodeconf.Limit{"web": {Domain: "*", Type: "soft", Item: "nofile", Value: limitValue}}
	node.Secrets = append(node.Secrets, nodeconf.SecretRef{Path: "conf.limits.web.value", Name: "limit"})
	rep, err := Apply(context.Background(), Options{RootDir: root, Log: log}, node)
	if err == nil || !strings.Contains(err.Error(), `"<secret limit>" contains white space`) {
		t.Errorf("a refused value: %v", err)
	}
	check("the error", err.Error())
	check("the report's errors", strings.Join(rep.Errors, "\n"))
}
