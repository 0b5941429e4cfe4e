package profiles

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Pos is a place in a site file. Line and Col count from 1; a zero Line
// means "the whole file".
type Pos struct {
	File string
	Line int
	Col  int
}

// String formats p as FILE:LINE:COL (FILE:LINE without a column, FILE
// alone without a line).
func (p Pos) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Col == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// ref names the place other in a message about a problem at at: "line N"
// within the same file, else the whole position (for a flag, Pos{File:
// "--pool"}, its name).
func ref(at, other Pos) string {
	if other.File == at.File && other.Line > 0 {
		return fmt.Sprintf("line %d", other.Line)
	}
	return other.String()
}

func comparePos(a, b Pos) int {
	return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
}

// Severity says what a problem does: an error stops the command, a
// warning is printed and does not (Ignition's report entries have a
// kind).
type Severity uint8

// Severities.
const (
	SevError Severity = iota
	SevWarning
)

// Error is one problem in a site: where it is, which field (a path such as
// `conf.uamlite.users[0].user_name`, empty for the file or document itself),
// what is wrong, and whether it is an error or only a warning.
type Error struct {
	Pos      Pos
	Path     string
	Msg      string
	Severity Severity
}

// Error formats e as FILE:LINE:COL: PATH: MESSAGE, a warning as
// FILE:LINE:COL: PATH: warning: MESSAGE.
func (e *Error) Error() string {
	msg := e.Msg
	if e.Severity == SevWarning {
		msg = "warning: " + msg
	}
	if e.Path == "" {
		return e.Pos.String() + ": " + msg
	}
	return e.Pos.String() + ": " + e.Path + ": " + msg
}

// ErrorList is every problem found in a site, like go/scanner's ErrorList.
// Load and the Render methods return one (as an error) when anything is
// wrong; range over it to print one problem per line.
type ErrorList []*Error

// Add appends an error at pos.
func (l *ErrorList) Add(pos Pos, path, format string, args ...any) {
	*l = append(*l, &Error{Pos: pos, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Warn appends a warning at pos.
func (l *ErrorList) Warn(pos Pos, path, format string, args ...any) {
	*l = append(*l, &Error{Pos: pos, Path: path, Msg: fmt.Sprintf(format, args...), Severity: SevWarning})
}

// Errors returns the errors of l, without its warnings.
func (l ErrorList) Errors() ErrorList {
	var out ErrorList
	for _, e := range l {
		if e.Severity == SevError {
			out = append(out, e)
		}
	}
	return out
}

// Warnings returns the warnings of l.
func (l ErrorList) Warnings() ErrorList {
	var out ErrorList
	for _, e := range l {
		if e.Severity == SevWarning {
			out = append(out, e)
		}
	}
	return out
}

// Sort orders l by file, line, column, path and message, and drops exact
// duplicates (the same problem reached through several nodes).
func (l *ErrorList) Sort() {
	slices.SortFunc(*l, func(a, b *Error) int {
		return cmp.Or(comparePos(a.Pos, b.Pos), cmp.Compare(a.Path, b.Path), cmp.Compare(a.Msg, b.Msg))
	})
	*l = slices.CompactFunc(*l, func(a, b *Error) bool { return *a == *b })
}

// Error joins every problem, one per line.
func (l ErrorList) Error() string {
	switch len(l) {
	case 0:
		return "no errors"
	case 1:
		return l[0].Error()
	}
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Err returns l sorted as an error, or nil when l is empty.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	l.Sort()
	return l
}
