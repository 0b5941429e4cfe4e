// Command inspect prints what the kernel says about files, where busybox
// cannot: TestKernelMount runs it inside the VM.
//
//	inspect xattrs PATH...  one line per attribute: "XATTR path name=hex",
//	                        without following symlinks
//	inspect readdir DIR     "READDIR ino name ..." from getdents64, the
//	                        inode numbers of the directory entries
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: inspect xattrs PATH... | inspect readdir DIR")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "xattrs":
		for _, p := range os.Args[2:] {
			xattrs(p)
		}
	case "readdir":
		readdir(os.Args[2])
	}
}

func xattrs(p string) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		fmt.Printf("XATTR %s error %v\n", p, err)
		return
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

func readdir(dir string) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		fmt.Printf("READDIR %s error %v\n", dir, err)
		return
	}
	defer unix.Close(fd)
	var out []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			fmt.Printf("READDIR %s error %v\n", dir, err)
			return
		}
		if n == 0 {
			break
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for b := buf[:n]; len(b) > 0; {
			reclen := binary.LittleEndian.Uint16(b[16:])
			name, _, _ := bytes.Cut(b[19:reclen], []byte{0})
			if s := string(name); s != "." && s != ".." {
				out = append(out, fmt.Sprintf("%d %s", binary.LittleEndian.Uint64(b), s))
			}
			b = b[reclen:]
		}
	}
	fmt.Println("READDIR " + strings.Join(out, " "))
}
