package firstboot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// A node's secret values never appear in what a run says: its changes
// (a plan, the report), its errors and its log lines show each value that
// the configuration marks secret (nodeconf.Node.Secrets) as its reference,
// `<secret NAME>`, whichever module wrote the line. (A module that knows a
// value is secret says less still: files of a private mode, passwords,
// debconf passwords.)

// redactor replaces a node's secret values in text.
type redactor struct {
	vals []secretText // longest first
}

type secretText struct{ value, shown string }

// minSubstring is the shortest value redacted inside longer text; a
// shorter one (a secret "1") is redacted only where it is the whole text.
const minSubstring = 6

// newRedactor collects the secret values node holds.
func newRedactor(node *nodeconf.Node) *redactor {
	r := &redactor{}
	for _, ref := range node.Secrets {
		if ref.Withheld {
			continue
		}
		if v, err := node.Field(ref.Path); err == nil && strings.TrimSpace(v) != "" {
			r.vals = append(r.vals, secretText{v, ref.String()})
			if t := strings.TrimSpace(v); t != v {
				r.vals = append(r.vals, secretText{t, ref.String()})
			}
		}
	}
	sort.SliceStable(r.vals, func(i, j int) bool { return len(r.vals[i].value) > len(r.vals[j].value) })
	return r
}

// text returns s with every secret value replaced by its reference.
func (r *redactor) text(s string) string {
	for _, v := range r.vals {
		switch {
		case s == v.value:
			return v.shown
		case len(v.value) >= minSubstring:
			s = strings.ReplaceAll(s, v.value, v.shown)
		}
	}
	return s
}

func (r *redactor) change(c host.Change) host.Change {
	c.Item, c.From, c.To = r.text(c.Item), r.text(c.From), r.text(c.To)
	return c
}

// handler wraps a log handler so that no record it passes on holds a
// secret value.
func (r *redactor) handler(h slog.Handler) slog.Handler {
	if len(r.vals) == 0 {
		return h
	}
	return redactHandler{h, r}
}

type redactHandler struct {
	h slog.Handler
	r *redactor
}

func (rh redactHandler) Enabled(ctx context.Context, l slog.Level) bool { return rh.h.Enabled(ctx, l) }

func (rh redactHandler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, rh.r.text(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(rh.r.attr(a))
		return true
	})
	return rh.h.Handle(ctx, out)
}

func (rh redactHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(as))
	for i, a := range as {
		out[i] = rh.r.attr(a)
	}
	return redactHandler{rh.h.WithAttrs(out), rh.r}
}

func (rh redactHandler) WithGroup(name string) slog.Handler {
	return redactHandler{rh.h.WithGroup(name), rh.r}
}

func (r *redactor) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, r.text(v.String()))
	case slog.KindGroup:
		g := v.Group()
		out := make([]any, len(g))
		for i, ga := range g {
			out[i] = r.attr(ga)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
		s := fmt.Sprint(v.Any())
		if t := r.text(s); t != s {
			return slog.String(a.Key, t)
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

// report redacts a run's report in place.
func (r *redactor) report(rep *Report) {
	if len(r.vals) == 0 {
		return
	}
	for i, c := range rep.Changes {
		rep.Changes[i] = r.change(c)
	}
	for _, l := range [][]string{rep.Errors, rep.Pending, rep.Deferred} {
		for i := range l {
			l[i] = r.text(l[i])
		}
	}
}

// err redacts an error's text (keeping the error when there is nothing
// to redact, so that errors.Is still sees what it wraps).
func (r *redactor) err(err error) error {
	if err == nil {
		return nil
	}
	if t := r.text(err.Error()); t != err.Error() {
		return errors.New(t)
	}
	return err
}
