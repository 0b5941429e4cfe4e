package firstboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/host"
)

// stale returns the ledger keys of module, under prefix, that want does not
// hold: the items that left the configuration and must be reverted. The
// keys of a held item (host.Holds: it waits for a secret value) are never
// stale.
func stale(h *host.Host, module, prefix string, want map[string]bool) []string {
	var out []string
	for _, k := range h.Ledger.Keys(module) {
		if strings.HasPrefix(k, prefix) && !want[k] && !h.Holds(module, k) {
			out = append(out, k)
		}
	}
	return out
}

// itemKey returns the ledger key of the item an error of a batch
// (host.EnsureFiles, host.EnsureSymlinks) is about, or "".
func itemKey(err error) string {
	var ie *host.ItemError
	if errors.As(err, &ie) {
		return ie.Key
	}
	return ""
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// oneLine reports whether s is safe to put on one line of a config file.
func oneLine(s string) bool { return !strings.ContainsAny(s, "\n\r\x00") }

// absClean reports whether p is an absolute, clean path ("/etc/x", not
// "etc/x" nor "/etc/../x").
func absClean(p string) bool { return strings.HasPrefix(p, "/") && path.Clean(p) == p }

// systemdRunning reports whether systemd is the running init of the live
// host the root belongs to: only then are systemctl calls meaningful. The
// images bellbuild bakes boot busybox init, where this is false and the
// modules use syscalls and binaries directly.
//
// Only the root "/" qualifies: systemctl inside a chroot ignores requests.
func systemdRunning(h *host.Host) bool {
	if !h.Live || h.RootDir != "/" {
		return false
	}
	fi, err := os.Stat(path.Join(h.RootDir, "run/systemd/system"))
	return err == nil && fi.IsDir()
}

// liveCommand runs a tool of the applier's own environment against the
// running kernel (ethtool, apparmor_parser, mount helpers): live effects
// concern the kernel the applier runs on, whatever the target root holds.
func liveCommand(ctx context.Context, name string, args ...string) ([]byte, error) {
	bin, err := lookTool(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + toolPath, "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// toolTimeout bounds one run of ethtool or apparmor_parser: a hung tool
// must not hang the boot.
const toolTimeout = 2 * time.Minute

const toolPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// errToolMissing means a tool a module needs is not installed.
var errToolMissing = errors.New("not installed")

func lookTool(name string) (string, error) {
	for _, dir := range strings.Split(toolPath, ":") {
		p := path.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w (searched %s)", name, errToolMissing, toolPath)
}

// globRoot matches an absolute glob inside the root; results are absolute.
func globRoot(h *host.Host, pattern string) ([]string, error) {
	m, err := fs.Glob(h.Root().FS(), strings.TrimPrefix(pattern, "/"))
	for i := range m {
		m[i] = "/" + m[i]
	}
	return m, err
}

// globQuote escapes the glob metacharacters of a literal name (systemd's
// escaped unit names hold backslashes: var-lib-data\x2d1.mount).
func globQuote(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}
