package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
)

// Summary describes t as one line per entry, in Walk order, for comparing
// trees that went through different formats (a tree written as cpio and
// unpacked by GNU cpio, re-read with FromDir, must summarise the same):
//
//	bin/su file 4755 0:0 size=71 sha256=… links=bin/su,usr/bin/su xattr=user.a:6869
//	dev/null chardev 0666 0:0 dev=1,3
//	sbin symlink 0777 0:0 -> usr/sbin
//
// Modification times are left out (they are the Reproducible transform's
// business). Symlink permissions, which Linux ignores, are shown as 0777.
// Contents are read and hashed, so this is for tests and checks.
func (t *Tree) Summary() ([]string, error) {
	links := t.Links()
	var out []string
	for _, e := range t.Walk() {
		var b strings.Builder
		perm := PermBits(e.Mode)
		if e.Type == Symlink {
			perm = 0o777
		}
		src := e
		if g := links[e.Path]; g != nil {
			src = g.Head
			perm = PermBits(src.Mode)
		}
		fmt.Fprintf(&b, "%s %s %04o %d:%d", e.Path, e.Type, perm, src.UID, src.GID)
		switch e.Type {
		case Regular:
			sum := sha256.New()
			if err := CopyContent(sum, e.Path, src.Data, src.Size, nil); err != nil {
				return nil, err
			}
			fmt.Fprintf(&b, " size=%d sha256=%s", src.Size, hex.EncodeToString(sum.Sum(nil))[:16])
			if g := links[e.Path]; g != nil {
				var names []string
				for _, m := range g.Members {
					names = append(names, m.Path)
				}
				fmt.Fprintf(&b, " links=%s", strings.Join(names, ","))
			}
		case Symlink:
			fmt.Fprintf(&b, " -> %s", e.Target)
		case CharDev, BlockDev:
			fmt.Fprintf(&b, " dev=%d,%d", e.Major, e.Minor)
		}
		if len(src.Xattrs) > 0 {
			var xs []string
			for k, v := range src.Xattrs {
				xs = append(xs, k+":"+hex.EncodeToString(v))
			}
			sort.Strings(xs)
			fmt.Fprintf(&b, " xattr=%s", strings.Join(xs, ","))
		}
		out = append(out, b.String())
	}
	return out, nil
}
