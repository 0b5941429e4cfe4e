package pki

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRecordJSON: a log line is what json.Marshal makes of the record,
// for every kind of record and for names JSON escapes.
func TestRecordJSON(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 600, time.FixedZone("X", 3600))
	der := []byte(strings.Repeat("\x30\x82\x01\xff", 200))
	tests := []struct {
		name string
		r    record
	}{
		{"issue", record{Op: "issue", Time: epoch, Serial: "4a1b", CA: Hosts, Slot: "host/n1", Node: "n1", Cert: der}},
		{"service", record{Op: "issue", Time: at, Serial: "7f", CA: Services, Slot: "service/n1/etcd/client", Node: "n1", Service: "etcd", Cert: der[:1]}},
		{"ca", record{Op: "ca", Time: epoch, Serial: "40", CA: Root, Cert: der[:3]}},
		{"revoke", record{Op: "revoke", Time: at, Serial: "41", CA: Users, Reason: "keyCompromise"}},
		{"crl", record{Op: "crl", Time: epoch, CA: Hosts, Number: 12345678901}},
		{"negative number", record{Op: "crl", Time: epoch, CA: Hosts, Number: -1}},
		{"zero time", record{Op: "crl"}},
		{"escaped", record{Op: "revoke", Time: at, Serial: "1", Reason: "a \"quoted\" <b>&</b> back\\slash\ttab\nnl \x01 é \u2028 \xff end"}},
		{"user names", record{Op: "issue", Time: at, Serial: "2", CA: Users, Slot: "user/ann@example.org", Cert: der[:2]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := json.Marshal(tt.r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tt.r.appendLine([]byte("prefix"))
			if err != nil {
				t.Fatal(err)
			}
			if g, w := string(got), "prefix"+string(want)+"\n"; g != w {
				t.Errorf("line\n got %s\nwant %s", g, w)
			}
		})
	}
	// Each character JSON escapes, alone in an otherwise plain name.
	for _, c := range []string{`"`, `\`, "<", ">", "&", "\t", "\x00", "\x1f", "\x7f", "é", "\u2028", "\xff"} {
		t.Run("escape "+strconv.Quote(c), func(t *testing.T) {
			r := record{Op: "issue", Time: at, Serial: "3", Slot: "user/a" + c + "b"}
			want, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.appendLine(nil)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := string(got), string(want)+"\n"; g != w {
				t.Errorf("line\n got %s\nwant %s", g, w)
			}
		})
	}
	t.Run("year out of range", func(t *testing.T) {
		r := record{Op: "crl", Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
		if _, err := json.Marshal(r); err == nil {
			t.Fatal("json.Marshal took year 10000")
		}
		if got, err := r.appendLine(nil); err == nil {
			t.Errorf("appendLine took year 10000: %s", got)
		}
	})
}
