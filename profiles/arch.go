package profiles

import "strings"

// Arches are the architectures a profile may be baked for (arch: in a
// profile, inherited like the stage). Names are Debian's (and Go's).
var Arches = []string{"amd64", "arm64"}

// DefaultArch is a profile's architecture when its chain sets none.
const DefaultArch = "amd64"

// archAliases are other names of the architectures, suggested in errors.
var archAliases = map[string]string{"x86_64": "amd64", "x86-64": "amd64", "x64": "amd64", "aarch64": "arm64", "arm": "arm64"}

// parseArch checks an arch value.
func parseArch(v *value, path string, errs *ErrorList) (string, bool) {
	s, ok := scalarString(v, path, errs)
	if !ok {
		return "", false
	}
	for _, a := range Arches {
		if s == a {
			return s, true
		}
	}
	hint := ""
	if a, ok := archAliases[strings.ToLower(s)]; ok {
		hint = ` (did you mean "` + a + `"?)`
	}
	errs.Add(v.pos, path, "unknown architecture %q%s (want %s)", s, hint, strings.Join(Arches, " or "))
	return "", false
}
