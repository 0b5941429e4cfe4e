// Command xattrs prints the extended attributes of each path argument, one
// line per attribute ("XATTR path name=hex"), without following symlinks.
// TestKernelMount runs it inside the VM, where busybox has no getfattr.
package main

import (
	"bytes"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"
)

func main() {
	for _, p := range os.Args[1:] {
		buf := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			fmt.Printf("XATTR %s error %v\n", p, err)
			continue
		}
		var names []string
		for _, name := range bytes.Split(buf[:n], []byte{0}) {
			if len(name) > 0 {
				names = append(names, string(name))
			}
		}
		sort.Strings(names)
		for _, name := range names {
			val := make([]byte, 64<<10)
			m, err := unix.Lgetxattr(p, name, val)
			if err != nil {
				fmt.Printf("XATTR %s %s error %v\n", p, name, err)
				continue
			}
			fmt.Printf("XATTR %s %s=%x\n", p, name, val[:m])
		}
	}
}
