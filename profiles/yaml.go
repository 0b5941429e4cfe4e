package profiles

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

var (
	yamlLineRE   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchorRE = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
)

// parseYAML parses a site file, which holds one YAML document, into a
// value tree (nil when it is not YAML, which is reported). Every message
// has a line number, and none quotes the file.
func parseYAML(data []byte, file string, errs *ErrorList) *value {
	if !checkText(data, file, errs) {
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		yamlError(err, data, file, errs)
		return nil
	}
	if doc.Kind == 0 {
		return &value{kind: kNull, pos: Pos{File: file, Line: 1, Col: 1}}
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		yamlError(err, data, file, errs)
		return nil
	default:
		errs.Add(Pos{File: file, Line: next.Line, Col: next.Column}, "",
			"a second YAML document: a site file holds one (remove this ---, or move what follows into a file of its own)")
	}
	return fromYAML(&doc, file, errs)
}

// yamlError reports a parser error at its line. The parser leaves the
// line out when it is the first (its marks count from 0 and 0 means
// "none"), and names no place for an unknown alias: find it.
func yamlError(err error, data []byte, file string, errs *ErrorList) {
	pos, msg := Pos{File: file}, err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		fmt.Sscan(m[1], &pos.Line)
		msg = m[2]
	} else if m := yamlAnchorRE.FindStringSubmatch(msg); m != nil {
		pos = aliasPos(data, m[1], file)
		msg = fmt.Sprintf("alias *%s names no anchor (&%s) before it", m[1], m[1])
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
		if strings.HasPrefix(msg, "exceeded max depth") {
			pos.Line = 1
		}
	}
	errs.Add(pos, "", "YAML syntax: %s", msg)
}

// aliasPos finds the first "*name" alias in data (the file alone when it
// cannot).
func aliasPos(data []byte, name, file string) Pos {
	re := regexp.MustCompile(`(^|[\s\[{,:-])\*` + regexp.QuoteMeta(name) + `($|[\s\]},])`)
	loc := re.FindIndex(data)
	if loc == nil {
		return Pos{File: file}
	}
	at := loc[0]
	if data[at] != '*' {
		at++
	}
	line := 1 + bytes.Count(data[:at], []byte{'\n'})
	col := 1 + utf8.RuneCount(data[bytes.LastIndexByte(data[:at], '\n')+1:at])
	return Pos{File: file, Line: line, Col: col}
}

// checkText reports the first character of data that the YAML parser
// refuses (invalid UTF-8, UTF-16, a control character) with its line and
// column, which the parser does not give.
func checkText(data []byte, file string, errs *ErrorList) bool {
	if bytes.HasPrefix(data, []byte{0xff, 0xfe}) || bytes.HasPrefix(data, []byte{0xfe, 0xff}) {
		errs.Add(Pos{File: file, Line: 1, Col: 1}, "", "UTF-16 text (a UTF-16 byte order mark): site files are UTF-8")
		return false
	}
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		pos := Pos{File: file, Line: line, Col: col}
		switch {
		case r == utf8.RuneError && size == 1:
			errs.Add(pos, "", "invalid UTF-8 (byte 0x%02x): site files are UTF-8 text", data[i])
			return false
		case !yamlChar(r):
			errs.Add(pos, "", "control character %U: not allowed in YAML", r)
			return false
		}
		i += size
		// A line ends at LF, CR (CRLF counts once), NEL, LS or PS, as
		// for the parser.
		switch {
		case r == '\r' && i < len(data) && data[i] == '\n':
			col++
		case r == '\n' || r == '\r' || r == 0x85 || r == 0x2028 || r == 0x2029:
			line, col = line+1, 1
		default:
			col++
		}
	}
	return true
}

// yamlChar reports whether YAML allows r in a file (YAML 1.1, 5.1).
func yamlChar(r rune) bool {
	switch {
	case r == '\t', r == '\n', r == '\r', r >= 0x20 && r <= 0x7e, r == 0x85,
		r >= 0xa0 && r <= 0xd7ff, r >= 0xe000 && r <= 0xfffd, r >= 0x10000 && r <= 0x10ffff:
		return true
	}
	return false
}
