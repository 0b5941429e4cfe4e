package nodeconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// richNode uses every kind of value a document holds: nested maps, named
// lists, nil and non-nil pointers, false booleans, multi-line text with
// trailing spaces, numbers that look like strings, and characters JSON
// escapes.
func richNode() *Node {
	no, yes := false, true
	return &Node{
		Node: "n1", Profile: "worker", Profiles: []string{"base", "worker"},
		MACs:   []string{"52:54:00:00:00:01"},
		Labels: map[string]string{"rack": "r1", "ip": "192.0.2.10"},
		Conf: Conf{
			Sysctl:  map[string]string{"vm.swappiness": "10", "kernel.printk": "4 4 1 7"},
			Limits:  map[string]Limit{"nofile": {Domain: "*", Type: "soft", Item: "nofile", Value: "65536"}},
			Perm:    &Perm{Paths: []PermPath{{Path: "/srv/*", Owner: "root", Group: "root", Permissions: "0640"}}},
			Ethtool: map[string]map[string]string{"ens3": {"tso": "off"}, "ens4": {}},
			Uamlite: &Uamlite{Users: []User{
				{UserName: "ops", UserCryptPasswd: "$6$salt$hash", UserSudo: true, UserSSHKeys: []string{"ssh-ed25519 AAAA ops@example.org"}},
				{UserName: "monitor", UserSSHKeys: []string{UnmanagedKeys}},
			}},
			Apt:   &Apt{Repositories: []Repository{{URL: "http://deb.debian.org/debian", Distributions: []string{"bookworm"}}}},
			Files: map[string]File{"/etc/motd": {Content: "line one  \n\tline <two> & \"three\"\n", Mode: "0644"}, "/etc/empty": {}},
			Units: map[string]Unit{"a.service": {Content: "[Service]\n", Enabled: &no}, "b.service": {Enabled: &yes}},
			Exec:  map[string]Exec{"001.sh": {Data: "#!/bin/sh\necho 0644\n", Timeout: 9007199254740993, Env: map[string]string{"A": "1"}}},
		},
	}
}

func richBundle() *Bundle {
	n := richNode()
	return &Bundle{Profile: "worker", Default: Node{Profile: "worker"}, Nodes: []Node{*n}}
}

// TestEncodeGolden pins the encoding: the value, then its checksum, the
// same bytes every time.
func TestEncodeGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		enc  func(f Format) ([]byte, error)
		f    Format
	}{
		{"node.json", func(f Format) ([]byte, error) { return Marshal(richNode(), f) }, JSON},
		{"node.yaml", func(f Format) ([]byte, error) { return Marshal(richNode(), f) }, YAML},
		{"bundle.json", func(f Format) ([]byte, error) { return Marshal(richBundle(), f) }, JSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.enc(tc.f)
			if err != nil {
				t.Fatal(err)
			}
			again, _ := tc.enc(tc.f)
			if !bytes.Equal(got, again) {
				t.Fatal("two encodings of one value differ")
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("%s (-golden +got):\n%s", tc.name, diff)
			}
			lines := strings.Split(strings.TrimSpace(string(got)), "\n")
			last := lines[len(lines)-1]
			if tc.f == JSON {
				last = lines[len(lines)-2]
			}
			if !strings.Contains(last, "checksum") || !strings.Contains(last, "sha256:") {
				t.Errorf("the checksum is not the last key: %q", last)
			}
		})
	}
}

// TestDecodeRoundTrip: what Encode writes, Decode reads back as the same
// value, in both formats, and converted from one to the other.
func TestDecodeRoundTrip(t *testing.T) {
	for _, f := range []Format{JSON, YAML} {
		t.Run(string(f), func(t *testing.T) {
			data, err := Marshal(richNode(), f)
			if err != nil {
				t.Fatal(err)
			}
			n, b, err := Decode(data)
			if err != nil || b != nil {
				t.Fatalf("Decode: %v (bundle %v)", err, b)
			}
			// YAML writes a nil list as [], read back as an empty one.
			if diff := cmp.Diff(richNode(), n, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("node (-encoded +decoded):\n%s", diff)
			}
			data, err = Marshal(richBundle(), f)
			if err != nil {
				t.Fatal(err)
			}
			n, b, err = Decode(data)
			if err != nil || n != nil {
				t.Fatalf("Decode bundle: %v (node %v)", err, n)
			}
			if diff := cmp.Diff(richBundle(), b, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("bundle (-encoded +decoded):\n%s", diff)
			}
		})
	}
	// A nil list is written as null in JSON and [] in YAML: both verify,
	// and so does a document re-indented or converted.
	n := &Node{Node: "n", Profile: "p"}
	y, _ := Marshal(n, YAML)
	if !strings.Contains(string(y), "profiles: []\n") {
		t.Fatalf("YAML of a nil list:\n%s", y)
	}
	j, _ := Marshal(n, JSON)
	// The rich node's YAML converted to JSON by a generic tool.
	var generic any
	full, _ := Marshal(richNode(), YAML)
	if err := yaml.Unmarshal(full, &generic); err != nil {
		t.Fatal(err)
	}
	converted, err := json.Marshal(generic)
	if err != nil {
		t.Fatal(err)
	}
	for _, data := range [][]byte{y, j, bytes.ReplaceAll(j, []byte("\n  "), []byte(" ")), converted} {
		if _, _, err := Decode(data); err != nil {
			t.Errorf("%v:\n%s", err, data)
		}
	}
}

// TestDecodeRefuses: every way a document can be incomplete or foreign
// is an error that says so.
func TestDecodeRefuses(t *testing.T) {
	full, err := Marshal(richNode(), YAML)
	if err != nil {
		t.Fatal(err)
	}
	body, _, _ := bytes.Cut(full, []byte("checksum: "))
	for _, tc := range []struct {
		name string
		data string
		is   error
		msg  string
	}{
		{"empty", "", ErrEmpty, "empty: nothing to apply"},
		{"comments only", "# nothing\n", ErrEmpty, "empty"},
		{"empty map", "{}\n", ErrEmpty, "empty"},
		{"cut before the checksum", string(body), ErrNoChecksum, "node: no checksum: the file is cut short, or was not written by bellbuild; write rendered configurations with `bellbuild render"},
		{"one line", "node: n1\n", ErrNoChecksum, "no checksum"},
		{"cut in the checksum", string(full[:len(full)-10]), ErrChecksum, "node: checksum mismatch: the content is not what was written"},
		{"a value changed", strings.Replace(string(full), "vm.swappiness: \"10\"", "vm.swappiness: \"11\"", 1), ErrChecksum, "checksum mismatch"},
		{"a bundle cut short", "profile: p\ndefault:\n  node: \"\"\n", ErrNoChecksum, "bundle: no checksum"},
		{"values file", "conf:\n  sysctl:\n    vm.swappiness: 1\n", ErrNotRendered, "neither a rendered node nor a bundle"},
		{"values file with labels", "labels:\n  a: b\nconf: {}\n", ErrNotRendered, "neither"},
		{"unknown field", "node: n1\nprofile: p\nconf:\n  sysctls: {}\n", nil, "node: yaml: unmarshal errors:\n  line 4: field sysctls not found in type nodeconf.Conf"},
		{"second document", string(full) + "---\nnode: n2\n", nil, "a second YAML document"},
		{"not a map", "node\n", nil, "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, b, err := Decode([]byte(tc.data))
			if err == nil {
				t.Fatalf("accepted: node %+v bundle %+v", n, b)
			}
			if n != nil || b != nil {
				t.Errorf("a result with the error %v", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want one wrapping %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q, want it to contain %q", err, tc.msg)
			}
		})
	}
}

// TestDecodeEveryCut: a document cut at any byte is refused, in both
// formats.
func TestDecodeEveryCut(t *testing.T) {
	for _, f := range []Format{JSON, YAML} {
		data, err := Marshal(richNode(), f)
		if err != nil {
			t.Fatal(err)
		}
		// The last newline (and, in JSON, the closing brace's line break)
		// carries nothing; everything before the checksum's end does.
		end := bytes.LastIndex(data, []byte("sha256:")) + len("sha256:") + 64
		for i := range end {
			if n, b, err := Decode(data[:i]); err == nil {
				t.Fatalf("%s cut after %d of %d bytes accepted: %+v %+v\n%s", f, i, len(data), n, b, data[:i])
			}
		}
	}
}
