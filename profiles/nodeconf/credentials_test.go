package nodeconf

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

func TestValidateCredentials(t *testing.T) {
	no := false
	good := []Credential{
		{Name: "etcd", ClientCertMode: "both", ServerCertMode: "both", ExtraSAN: []string{"api", "etcd.cluster"}, Owner: "etcd", Group: "etcd"},
		{Name: "kubelet", EnableServer: &no},
	}
	c := Conf{Credentials: good, X509: &X509{CA: "PEM", Credentials: map[string]IssuedCredential{
		"etcd":    {Client: &IssuedCert{Cert: "PEM"}, Server: &IssuedCert{Cert: "PEM", Key: NewSecret("k", []byte("KEY"))}},
		"kubelet": {Client: &IssuedCert{Cert: "PEM"}},
	}}}
	if errs := c.Validate(); len(errs) != 0 {
		t.Fatalf("Validate = %v, want no errors", errs)
	}
	bad := Conf{
		Credentials: []Credential{
			{Name: "../x", ClientCertMode: "peer"},
			{Name: "etcd", ExtraSAN: []string{"not a name", "-x"}, Owner: "Bad User"},
			{Name: "etcd", EnableClient: &no, EnableServer: &no},
			{},
			{Name: "host"},
			{Name: "ca.pem"},
		},
		X509: &X509{Credentials: map[string]IssuedCredential{
			"ghost": {Client: &IssuedCert{Cert: "PEM"}},
			"etcd":  {Client: &IssuedCert{}},
		}, Host: &IssuedCert{}},
	}
	var got []string
	for _, err := range bad.Validate() {
		got = append(got, err.Error())
	}
	want := []string{
		`credentials[0].name: "../x" is not a safe name: lower-case letters, digits, inner - and . (it names a directory and the DNS name NAME.DOMAIN)`,
		`credentials[0].client_cert_mode: "peer" is not one of client, server, both`,
		`credentials[1].extra_san[0]: "not a name" is not a DNS name`,
		`credentials[1].extra_san[1]: "-x" is not a DNS name`,
		`credentials[1].owner: "Bad User" is not a user name`,
		`credentials[2].name: "etcd" is also credentials[1]`,
		`credentials[2]: enables neither a client nor a server certificate`,
		`credentials[3].name: required`,
		`credentials[4].name: "host" is reserved (/etc/credentials/x509/host is the node's own): choose another name`,
		`credentials[5].name: "ca.pem" is reserved (/etc/credentials/x509/ca.pem is the node's own): choose another name`,
		`x509.credentials.etcd.client: issued, but credentials: etcd has enable_client: false`,
		`x509.credentials.etcd.client.cert: required`,
		`x509.credentials.ghost: issued for a credential that is not declared in credentials`,
		`x509.host.cert: required`,
		`x509.ca: required with issued credentials`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

// TestSecretNeverShown: a Secret, alone or inside the types that hold it,
// formats as <secret NAME> with every verb and in slog; a Secret alone
// encodes as <secret NAME> in JSON and YAML, while a node's own document
// (an IssuedCert in a Conf) carries the key's value and reads it back.
func TestSecretNeverShown(t *testing.T) {
	const value = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n"
	s := NewSecret("key of service/n1/etcd/server", []byte(value))
	x := &X509{CA: "CA", Credentials: map[string]IssuedCredential{"etcd": {Server: &IssuedCert{Cert: "C", Key: s}}}}
	conf := Conf{X509: x}
	for _, v := range []any{s, &s, *x.Credentials["etcd"].Server, x, conf} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
			out := fmt.Sprintf(verb, v)
			if strings.Contains(out, "PRIVATE") || strings.Contains(out, "MIGH") || strings.Contains(out, "4d494748") {
				t.Errorf("%s of %T shows the value: %s", verb, v, out)
			}
		}
	}
	if got := fmt.Sprint(s); got != "<secret key of service/n1/etcd/server>" {
		t.Errorf("Sprint = %q", got)
	}
	var logged strings.Builder
	for _, h := range []slog.Handler{slog.NewTextHandler(&logged, nil), slog.NewJSONHandler(&logged, nil)} {
		slog.New(h).Info("x", "key", s, "cert", x.Credentials["etcd"].Server, "certv", *x.Credentials["etcd"].Server, "x509", x)
	}
	if strings.Contains(logged.String(), "MIGH") || !strings.Contains(logged.String(), "<secret key of") {
		t.Errorf("slog shows the value or not the name:\n%s", logged.String())
	}
	for _, enc := range []func(any) ([]byte, error){json.Marshal, yaml.Marshal} {
		data, err := enc(struct{ Key Secret }{s})
		if err != nil || strings.Contains(string(data), "MIGH") || !strings.Contains(string(data), "secret key of") {
			t.Errorf("a Secret alone encodes as %s (%v)", data, err)
		}
	}
	// The node's own configuration carries the value.
	for _, enc := range []struct {
		name      string
		marshal   func(any) ([]byte, error)
		unmarshal func([]byte, any) error
	}{{"json", json.Marshal, json.Unmarshal}, {"yaml", yaml.Marshal, yaml.Unmarshal}} {
		data, err := enc.marshal(conf)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "MIGH") {
			t.Errorf("%s does not carry the key:\n%s", enc.name, data)
		}
		var back Conf
		if err := enc.unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		if got := string(back.X509.Credentials["etcd"].Server.Key.Reveal()); got != value {
			t.Errorf("%s round trip: %q", enc.name, got)
		}
		empty, _ := enc.marshal(IssuedCert{Cert: "C"})
		if strings.Contains(string(empty), "key") {
			t.Errorf("%s of a certificate without key: %s", enc.name, empty)
		}
	}
}
