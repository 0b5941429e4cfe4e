package firstboot

import (
	"fmt"
	"path"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// reservedPaths are files other modules write whole or edit line by line;
// a files or units item there would fight them on every run.
var reservedPaths = map[string]string{
	"/etc/passwd":  "uamlite",
	"/etc/shadow":  "uamlite",
	"/etc/group":   "uamlite",
	"/etc/gshadow": "uamlite",
	sysctlFile:     "sysctl",
}

// reservedPrefixes are name spaces other modules own.
var reservedPrefixes = map[string]string{
	"/etc/security/limits.d/bellbuild-":      "limits",
	"/etc/sudoers.d/bellbuild-":              "uamlite",
	"/etc/apt/sources.list.d/bellbuild":      "apt",
	"/etc/apparmor.d/bellbuild.":             "apparmor",
	"/etc/systemd/system/bellbuild-ethtool-": "ethtool",
	"/var/lib/bellbuild/":                    "the applier's own state",
	credRoot + "/":                           "credentials",
}

// generatedPaths are the files the mounts module writes for conf.
func generatedPaths(conf *nodeconf.Conf) map[string]string {
	out := map[string]string{}
	for name, m := range conf.Mounts {
		out[path.Join(unitDir, mountUnitName(m))] = "mounts item " + name
	}
	return out
}

// claimedBy says which other module writes p (a files item, or a unit
// file), or "". generated is generatedPaths of the configuration.
func claimedBy(generated map[string]string, p string) string {
	if m, ok := reservedPaths[p]; ok {
		return m
	}
	for pre, m := range reservedPrefixes {
		if strings.HasPrefix(p, pre) {
			return m
		}
	}
	return generated[p]
}

// checkFileClaims reports files items that another module writes.
func checkFileClaims(conf *nodeconf.Conf) []error {
	var errs []error
	generated := generatedPaths(conf)
	for _, p := range sortedKeys(conf.Files) {
		if strings.HasPrefix(p, "/var/lib/bellbuild/") {
			errs = append(errs, fmt.Errorf("%s: /var/lib/bellbuild is the applier's own state", p))
		} else if by := claimedBy(generated, p); by != "" {
			errs = append(errs, fmt.Errorf("%s: written by %s; configure it there", p, by))
		}
		if u, ok := conf.Units[path.Base(p)]; ok && u.Content != "" && path.Dir(p) == unitDir {
			errs = append(errs, fmt.Errorf("%s: also the content of units item %s", p, path.Base(p)))
		}
	}
	return errs
}

// checkUnitClaims reports unit files that another module writes.
func checkUnitClaims(conf *nodeconf.Conf) []error {
	var errs []error
	generated := generatedPaths(conf)
	for _, name := range sortedKeys(conf.Units) {
		if conf.Units[name].Content == "" {
			continue
		}
		if by := claimedBy(generated, path.Join(unitDir, name)); by != "" {
			errs = append(errs, fmt.Errorf("%s: written by %s; configure it there", name, by))
		}
	}
	return errs
}
