package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrOCI reports an OCI image layout FromOCI cannot use.
var ErrOCI = errors.New("bad OCI image layout")

// OCI media types FromOCI follows (Docker's equivalents are accepted too).
const (
	mediaIndex          = "application/vnd.oci.image.index.v1+json"
	mediaManifest       = "application/vnd.oci.image.manifest.v1+json"
	mediaDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
)

type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform,omitempty"`
}

type ociIndex struct {
	MediaType string          `json:"mediaType"`
	Manifests []ociDescriptor `json:"manifests"`
	Layers    []ociDescriptor `json:"layers"` // set when the blob is a manifest
}

// FromOCI reads the image in the OCI image layout directory dir (as written
// by `skopeo copy ... oci:DIR`, `docker buildx --output type=oci` or
// `podman save --format oci-dir`): index.json, then the linux/amd64 manifest
// (or the only one), then its layers applied in order. Whiteouts are
// honoured: a ".wh.NAME" file deletes NAME from the layers below, and a
// ".wh..wh..opq" file empties its directory of everything below. Layers may
// be plain, gzip or zstd tar; each blob's sha256 digest is checked. Layer
// contents go to spool files as for FromTar; nothing is extracted.
func FromOCI(dir string) (*Tree, error) { return FromOCIArch(dir, "amd64") }

// FromOCIArch is FromOCI choosing the index's linux/ARCH manifest (ARCH as
// OCI names it: amd64, arm64), or its only one.
func FromOCIArch(dir, arch string) (*Tree, error) {
	manifest, err := ociManifest(dir, arch)
	if err != nil {
		return nil, fmt.Errorf("oci %s: %w", dir, err)
	}
	t := New()
	for i, l := range manifest.Layers {
		if err := ociLayer(dir, l, t); err != nil {
			return nil, fmt.Errorf("oci %s: layer %d (%s): %w", dir, i+1, l.Digest, err)
		}
	}
	return t, nil
}

// ociManifest follows index.json (and nested indexes) to one image manifest.
func ociManifest(dir, arch string) (*ociIndex, error) {
	var idx ociIndex
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("index.json: %w: %v", ErrOCI, err)
	}
	for depth := 0; depth < 8; depth++ {
		d, err := pickManifest(idx.Manifests, arch)
		if err != nil {
			return nil, err
		}
		b, err := readBlob(dir, d)
		if err != nil {
			return nil, err
		}
		idx = ociIndex{}
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("%s: %w: %v", d.Digest, ErrOCI, err)
		}
		mt := d.MediaType
		if mt == "" {
			mt = idx.MediaType
		}
		switch mt {
		case mediaIndex, mediaDockerList:
			continue
		case mediaManifest, mediaDockerManifest, "":
			if idx.Manifests != nil && idx.Layers == nil {
				continue // an index without a media type
			}
			return &idx, nil
		default:
			return nil, fmt.Errorf("%s: media type %q: %w", d.Digest, mt, ErrOCI)
		}
	}
	return nil, fmt.Errorf("indexes nested too deep: %w", ErrOCI)
}

// pickManifest chooses the linux/ARCH entry of an index, or its only one.
func pickManifest(ds []ociDescriptor, arch string) (ociDescriptor, error) {
	var match []ociDescriptor
	for _, d := range ds {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == arch {
			match = append(match, d)
		}
	}
	switch {
	case len(match) == 1:
		return match[0], nil
	case len(ds) == 1:
		return ds[0], nil
	case len(ds) == 0:
		return ociDescriptor{}, fmt.Errorf("index lists no manifest: %w", ErrOCI)
	}
	return ociDescriptor{}, fmt.Errorf("index lists %d manifests, %d for linux/%s: %w", len(ds), len(match), arch, ErrOCI)
}

// blobPath is where the layout keeps the blob named by digest.
func blobPath(dir, digest string) (string, error) {
	alg, hexd, ok := strings.Cut(digest, ":")
	if !ok || alg != "sha256" || len(hexd) != 64 {
		return "", fmt.Errorf("digest %q: %w", digest, ErrOCI)
	}
	if _, err := hex.DecodeString(hexd); err != nil {
		return "", fmt.Errorf("digest %q: %w", digest, ErrOCI)
	}
	return filepath.Join(dir, "blobs", alg, hexd), nil
}

// readBlob reads a small blob (a manifest or index) and checks its digest.
func readBlob(dir string, d ociDescriptor) ([]byte, error) {
	p, err := blobPath(dir, d.Digest)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	if "sha256:"+hex.EncodeToString(sum[:]) != d.Digest {
		return nil, fmt.Errorf("blob %s: content does not match its digest: %w", d.Digest, ErrOCI)
	}
	return b, nil
}

// ociLayer applies one layer blob to t.
func ociLayer(dir string, d ociDescriptor, t *Tree) error {
	p, err := blobPath(dir, d.Digest)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := &hashReader{r: f, h: sha256.New()}
	upper := New()
	ly, err := readTar(h, upper, nil, t)
	if err != nil {
		return err
	}
	// The digest covers the whole blob, also what follows the tar's end.
	if _, err := io.Copy(io.Discard, h); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.h.Sum(nil)); got != d.Digest {
		return fmt.Errorf("content does not match its digest (%s): %w", got, ErrOCI)
	}
	for _, o := range ly.opaque {
		for _, c := range t.Children(o) {
			t.Remove(c.Path)
		}
	}
	for _, w := range ly.whiteouts {
		t.Remove(w)
	}
	t.Merge(upper)
	return nil
}

type hashReader struct {
	r io.Reader
	h hash.Hash
}

func (hr *hashReader) Read(b []byte) (int, error) {
	n, err := hr.r.Read(b)
	hr.h.Write(b[:n])
	return n, err
}
