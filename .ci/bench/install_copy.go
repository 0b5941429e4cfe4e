//go:build ignore

// install_copy is install.sh's installer side: the copy the installer
// makes of an image (firstboot/install: the ESP's and root-a's extents of
// disk.raw, from serve's /image/MAC/disk, through fetch.Copy, checked
// against the manifest as they come, O_DIRECT when the target takes it),
// onto a target, fsynced. It prints "BYTES SECONDS DIRECT"; with
// "ranges", it copies nothing and prints those extents, "NAME OFFSET
// SIZE" a line, for the stream to fetch the same bytes.
//
//	go build -o install-copy .ci/bench/install_copy.go
//	install-copy http://SERVER:8080/image/MAC /dev/loopN
//	install-copy ranges http://SERVER:8080/image/MAC
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/fetch"
	"github.com/bellbuild/bellbuild/pxe/install/wire"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: install-copy IMAGE-URL TARGET | install-copy ranges IMAGE-URL")
		os.Exit(2)
	}
	run := copyImage
	if os.Args[1] == "ranges" {
		run = func(_, image string) error { return ranges(image) }
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "install-copy:", err)
		os.Exit(1)
	}
}

// parts are the extents the installer fetches (firstboot/install, step 4).
func parts(image string) ([]fetch.Part, error) {
	resp, err := http.Get(image + "/" + wire.Manifest)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("manifest: %s %v", resp.Status, err)
	}
	var m wire.ImageManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if err := m.Check(); err != nil {
		return nil, err
	}
	var ps []fetch.Part
	for _, name := range []string{wire.PartESP, wire.PartRootA} {
		p := m.Partition(name)
		ps = append(ps, fetch.Part{Name: name, URL: image + "/" + wire.Disk, Offset: p.Offset, Size: p.Used, To: p.Offset, SHA256: p.SHA256})
	}
	return ps, nil
}

func ranges(image string) error {
	ps, err := parts(image)
	for _, p := range ps {
		fmt.Println(p.Name, p.Offset, p.Size)
	}
	return err
}

func copyImage(image, target string) error {
	parts, err := parts(image)
	if err != nil {
		return err
	}
	start := time.Now()
	f, direct, err := fetch.OpenTarget(target, true)
	if err != nil {
		return err
	}
	st, err := fetch.Copy(context.Background(), f, direct, parts, fetch.Options{})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Printf("%d %.3f %v\n", st.Bytes, time.Since(start).Seconds(), direct)
	return nil
}
