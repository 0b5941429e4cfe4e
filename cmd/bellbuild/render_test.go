package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// runCmd runs bellbuild with args as main would; the commands write to
// os.Stdout and os.Stderr, which point at files for the duration.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	dir := t.TempDir()
	out, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	errOut, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	saved := [2]*os.File{os.Stdout, os.Stderr}
	os.Stdout, os.Stderr = out, errOut
	code = run(args, out, errOut)
	os.Stdout, os.Stderr = saved[0], saved[1]
	for _, f := range []*os.File{out, errOut} {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	o, _ := os.ReadFile(out.Name())
	e, _ := os.ReadFile(errOut.Name())
	return code, string(o), string(e)
}

func TestValidateCommand(t *testing.T) {
	bad := "../../profiles/testdata/bad/exec-interval-combo"
	golden, err := os.ReadFile(filepath.Join(bad, "errors.golden"))
	if err != nil {
		t.Fatal(err)
	}
	var wantBad strings.Builder
	for _, line := range strings.SplitAfter(strings.TrimSpace(string(golden)), "\n") {
		wantBad.WriteString(filepath.Join(bad, line))
	}
	wantBad.WriteString("\n")
	tests := []struct {
		name       string
		args       []string
		code       int
		out, err   string
		errContain string
	}{
		{name: "embedded site", args: []string{"validate"}, out: "ok: 4 profiles, 2 nodes\n"},
		{name: "fleet example", args: []string{"validate", "-C", "../../examples/fleet"}, out: "ok: 6 profiles, 10 nodes\n",
			// Its inline secrets are warned about, with the command that moves each.
			errContain: "base.yaml:44:26: conf.uamlite.users[0].user_crypt_passwd: warning: a password hash written inline: accepted, and kept out of every public configuration; move it into the store: bellbuild secret set -C ../../examples/fleet ops-password (the value on standard input), then write !secret ops-password here\n"},
		{name: "Divingbell values", args: []string{"validate", "--values", "../../profiles/testdata/divingbell/values.yaml"}, out: "ok: 1 profiles, 0 nodes\n"},
		{name: "bad site: every error, one per line", args: []string{"validate", "-C", bad}, code: 1, err: wantBad.String()},
		{name: "not a site", args: []string{"validate", "-C", t.TempDir()}, code: 1, errContain: "not a site: no profiles directory"},
		{name: "fixed address inside site.yaml's pool", args: []string{"validate", "-C", "../../profiles/testdata/bad/ip-inside-pool"}, code: 1,
			errContain: `nodes[0].labels.ip: node "pooled": 192.0.2.150 is inside the dynamic pool 192.0.2.100-192.0.2.199`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tt.code, errOut)
			}
			if out != tt.out {
				t.Errorf("stdout %q, want %q", out, tt.out)
			}
			if tt.errContain != "" {
				if !strings.Contains(errOut, tt.errContain) {
					t.Errorf("stderr %q, want it to contain %q", errOut, tt.errContain)
				}
			} else if diff := cmp.Diff(tt.err, errOut); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRenderCommand(t *testing.T) {
	decode := func(t *testing.T, out string) nodeconf.Node {
		t.Helper()
		n, _, err := nodeconf.Decode([]byte(out))
		if err != nil || n == nil {
			t.Fatalf("render output is not a nodeconf.Node that verifies: %v\n%s", err, out)
		}
		return *n
	}
	t.Run("node as json", func(t *testing.T) {
		code, out, errOut := runCmd(t, "render", "--node", "demo-2", "-o", "json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		n := decode(t, out)
		if n.Node != "demo-2" || n.Profile != "demo" || !cmp.Equal(n.Profiles, []string{"minimal", "demo-base", "demo"}) ||
			!cmp.Equal(n.MACs, []string{"52:54:00:00:00:02"}) || n.Labels["role"] != "db" || n.Conf.Sysctl["vm.swappiness"] != "60" {
			t.Errorf("render --node demo-2 = %+v", n)
		}
	})
	t.Run("profile with label and host as yaml", func(t *testing.T) {
		code, out, errOut := runCmd(t, "render", "--profile", "demo", "--label", "role=db", "--host", "other")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{"node: other\n", "profile: demo\n", "    vm.swappiness: \"60\"\n", "    kernel.domainname: demo.bellbuild\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		// The checksum is the last line, and the output verifies.
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if last := lines[len(lines)-1]; !strings.HasPrefix(last, "checksum: sha256:") {
			t.Errorf("last line %q, want the checksum", last)
		}
		if n := decode(t, out); n.Node != "other" {
			t.Errorf("node %q", n.Node)
		}
		if _, again, _ := runCmd(t, "render", "--profile", "demo", "--label", "role=db", "--host", "other"); again != out {
			t.Errorf("two renders differ:\n%s\n%s", out, again)
		}
	})
	t.Run("Divingbell values file for a host", func(t *testing.T) {
		code, out, errOut := runCmd(t, "render", "--values", "../../profiles/testdata/divingbell/values.yaml", "--host", "superhost2", "-o", "json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		n := decode(t, out)
		want := map[string]string{"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1", "fs.file-max": "23456"}
		if diff := cmp.Diff(want, n.Conf.Sysctl); diff != "" || n.Conf.Limits["nofile"].Value != "202" {
			t.Errorf("sysctl (-want +got):\n%s\nlimits %v", diff, n.Conf.Limits)
		}
	})
	t.Run("explain", func(t *testing.T) {
		code, out, errOut := runCmd(t, "render", "--node", "demo-2", "--explain")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var found bool
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[0] == `conf.sysctl["vm.swappiness"]` {
				found = true
				if f[1] != `"60"` || f[2] != "embedded:profiles/demo.yaml:22:24" {
					t.Errorf("explain line %q, want value \"60\" from embedded:profiles/demo.yaml:22:24", line)
				}
			}
			if strings.Contains(line, "user_crypt_passwd") && !strings.Contains(line, "<secret ") {
				t.Errorf("explain shows a password hash: %q", line)
			}
		}
		if !found {
			t.Errorf("no swappiness line in:\n%s", out)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{"both node and profile", []string{"render", "--node", "demo-1", "--profile", "demo"}, "give exactly one of --node and --profile"},
		{"unknown node", []string{"render", "--node", "nope"}, `node "nope": not found`},
		{"bad format", []string{"render", "--node", "demo-1", "-o", "toml"}, `-o "toml": want yaml or json`},
		{"label on a node", []string{"render", "--node", "demo-1", "--label", "a=b"}, "--label and --host go with --profile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCmd(t, tc.args...)
			if code != 1 || !strings.Contains(errOut, tc.err) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, errOut, tc.err)
			}
		})
	}
}
