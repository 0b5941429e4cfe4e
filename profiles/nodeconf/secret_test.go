package nodeconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestSecretRedacted: every way of printing or encoding a Secret, alone or
// inside other values, shows "<secret NAME>" and never the bytes.
func TestSecretRedacted(t *testing.T) {
	const marker = "S3CR3T-MARKER-value"
	v := NewSecret("db", []byte(marker))
	type exported struct {
		Password Secret
		Name     string
	}
	type unexported struct {
		password Secret
		name     string
	}
	ptr := &v
	in := map[string]any{"db": v}

	var slogText, slogJSON bytes.Buffer
	slog.New(slog.NewTextHandler(&slogText, nil)).Info("msg", "value", v, "ptr", ptr, "group", slog.GroupValue(slog.Any("v", v)))
	slog.New(slog.NewJSONHandler(&slogJSON, nil)).Info("msg", "value", v, "struct", exported{v, "x"})

	jsonOf := func(x any) string {
		b, err := json.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	yamlOf := func(x any) string {
		b, err := yaml.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	text, _ := v.MarshalText()

	tests := []struct {
		name, got, want string
	}{
		{"%v", fmt.Sprintf("%v", v), "<secret db>"},
		{"%+v", fmt.Sprintf("%+v", v), "<secret db>"},
		{"%#v", fmt.Sprintf("%#v", v), "<secret db>"},
		{"%s", fmt.Sprintf("%s", v), "<secret db>"},
		{"%q", fmt.Sprintf("%q", v), `"<secret db>"`},
		{"%x", fmt.Sprintf("%x", v), "<secret db>"},
		{"%d", fmt.Sprintf("%d", v), "<secret db>"},
		{"%10.2v", fmt.Sprintf("%10.2v", v), "<secret db>"},
		{"pointer %v", fmt.Sprintf("%v", ptr), "<secret db>"},
		{"Sprint", fmt.Sprint(v), "<secret db>"},
		{"Sprintln", fmt.Sprintln(v), "<secret db>\n"},
		{"String", v.String(), "<secret db>"},
		{"GoString", v.GoString(), "<secret db>"},
		{"error %v", fmt.Errorf("writing %v: %w", v, errors.New("boom")).Error(), "writing <secret db>: boom"},
		{"struct %+v", fmt.Sprintf("%+v", exported{v, "x"}), "{Password:<secret db> Name:x}"},
		{"struct %#v", fmt.Sprintf("%#v", exported{v, "x"}), "nodeconf.exported{Password:<secret db>, Name:\"x\"}"},
		{"map %v", fmt.Sprintf("%v", in), "map[db:<secret db>]"},
		{"slice %v", fmt.Sprintf("%v", []Secret{v, v}), "[<secret db> <secret db>]"},
		{"json", jsonOf(v), `"\u003csecret db\u003e"`}, // json.Marshal escapes < and >
		{"json struct", jsonOf(exported{v, "x"}), `{"Password":"\u003csecret db\u003e","Name":"x"}`},
		{"json map", jsonOf(in), `{"db":"\u003csecret db\u003e"}`},
		{"text", string(text), "<secret db>"},
		{"yaml", yamlOf(exported{v, "x"}), "password: <secret db>\nname: x\n"},
		{"slog text", slogText.String()[strings.Index(slogText.String(), "msg=msg"):], "msg=msg value=\"<secret db>\" ptr=\"<secret db>\" group.v=\"<secret db>\"\n"},
		{"slog json", slogJSON.String()[strings.Index(slogJSON.String(), `"msg"`):], `"msg":"msg","value":"<secret db>","struct":{"Password":"\u003csecret db\u003e","Name":"x"}}` + "\n"},
		{"zero", fmt.Sprintf("%v %s", Secret{}, jsonOf(Secret{})), `<secret> "\u003csecret\u003e"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got  %s\nwant %s", tt.got, tt.want)
			}
		})
	}
	// Held in an unexported field, fmt prints by reflection without calling
	// Secret's methods: it must still not reach the bytes.
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q"} {
		got := fmt.Sprintf(verb, unexported{v, "x"})
		if strings.Contains(got, marker) || strings.Contains(got, fmt.Sprintf("%x", marker)) ||
			strings.Contains(got, "83 51 67") /* the bytes as decimals */ {
			t.Errorf("%s of a struct with an unexported Secret leaks it: %s", verb, got)
		}
	}
	if string(v.Reveal()) != marker || v.Len() != len(marker) {
		t.Errorf("Reveal = %q, want the value", v.Reveal())
	}
	// Reveal hands out a copy.
	v.Reveal()[0] = 'X'
	if string(v.Reveal()) != marker {
		t.Error("changing Reveal's result changed the value")
	}
}
