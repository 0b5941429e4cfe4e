//go:build ignore

// zstd_writer is image.sh's "writer" contender: bellbuild's compressor
// (compress.ZstdWriter: independent frames ending on whole newc entries,
// two at a time, level default ≈ zstd -3, 8 MiB window, checksums) alone
// on a cpio archive already made, as bare `zstd -3 -T2` takes it: what the
// bake's stage segment costs without walking, reading 8,000 files, hashing
// or writing its output twice. It writes FILE.zst and prints its size.
//
//	go build -o zstd-writer .ci/bench/zstd_writer.go
//	zstd-writer root.cpio out.zst
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/bellbuild/bellbuild/images/compress"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: zstd-writer IN.cpio OUT.zst")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "zstd-writer:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	src, err := os.Open(in)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	dst, err := os.Create(out)
	if err != nil {
		return err
	}
	defer dst.Close()
	z, err := compress.NewZstd(dst)
	if err != nil {
		return err
	}
	// As in a bake, cpio.Write gives the size first. The archive goes in
	// through Write, a MiB at a time (one copy, as zstd reads into its
	// buffers): ReadFrom is for one entry's data, as the bake calls it,
	// and copies what follows an entry's end.
	z.SizeHint(st.Size())
	buf := make([]byte, 1<<20)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := z.Write(buf[:n]); werr != nil {
				z.Close()
				return werr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			z.Close()
			return err
		}
	}
	if err := z.Close(); err != nil {
		return err
	}
	n, err := dst.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	fmt.Println(n)
	return dst.Close()
}
