package fstree

import (
	"archive/tar"
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/images/compress"
)

// ErrTar reports a tar entry FromTar cannot represent.
var ErrTar = errors.New("unsupported tar entry")

// FromTar reads a tar stream — plain, or compressed with gzip, xz, zstd or
// bzip2 (detected by magic number) — into a tree: paths, modes (setuid
// included), numeric owners, symlinks, hardlinks (as LinkTo entries),
// device nodes, FIFOs and extended attributes (PAX SCHILY.xattr.* and
// LIBARCHIVE.xattr.* records). Nothing is extracted onto the host and no
// privileges are needed: a tar header may declare a device node or another
// owner freely.
//
// Since a stream can be read only once, file bodies are copied to a spool
// file in os.TempDir that is unlinked at once; the tree's contents read
// from it, and the space is freed when the tree is garbage collected. Paths
// are cleaned ("./etc", "/etc" and "etc" are one path; ".." cannot climb
// above the root). A "./" directory entry sets the root's metadata.
func FromTar(r io.Reader) (*Tree, error) {
	t := New()
	if _, err := readTar(r, t, nil, nil); err != nil {
		return nil, err
	}
	return t, nil
}

// OpenTar reads the tarball at path like FromTar. An uncompressed tarball
// is not copied: the tree's contents read from path itself, which must stay
// in place (unchanged) until the tree is written.
func OpenTar(path string) (*Tree, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var magic [6]byte
	n, _ := io.ReadFull(f, magic[:])
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	t := New()
	if compress.Sniff(magic[:n]) == compress.None {
		_, err = readTar(f, t, &direct{path: path, f: f}, nil)
	} else {
		_, err = readTar(f, t, nil, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// direct lets readTar point contents at an uncompressed tarball's own bytes
// instead of spooling them.
type direct struct {
	path string
	f    *os.File
}

// layer is what readTar saw besides entries: OCI whiteouts, kept apart
// when asked for.
type layer struct {
	whiteouts []string // paths to delete from lower layers
	opaque    []string // directories whose lower contents are hidden
}

// readTar adds the entries of the tar stream r to t. With lower non-nil,
// OCI whiteout files are not added but returned, and hardlink targets
// missing from t are looked up in lower.
func readTar(r io.Reader, t *Tree, d *direct, lower *Tree) (*layer, error) {
	var src io.Reader = r
	if d == nil {
		rc, _, err := compress.NewReader(r)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		src = rc
	}
	sp := &spool{}
	defer sp.flush()
	ly := &layer{}
	oci := lower != nil
	tr := tar.NewReader(src)
	last := ""
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if last != "" {
				return nil, fmt.Errorf("tar: after %s: %w", last, err)
			}
			return nil, fmt.Errorf("tar: %w", err)
		}
		p := Clean(hdr.Name)
		last = p
		if oci {
			dir, base := splitPath(p)
			if base == ".wh..wh..opq" {
				ly.opaque = append(ly.opaque, dir)
				continue
			}
			if name, ok := strings.CutPrefix(base, ".wh."); ok {
				ly.whiteouts = append(ly.whiteouts, joinPath(dir, name))
				continue
			}
		}
		e, err := tarEntry(hdr, p)
		if err != nil {
			return nil, err
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
			if hdr.Size == 0 {
				break
			}
			if d != nil && !sparse(hdr) {
				off, err := d.f.Seek(0, io.SeekCurrent)
				if err != nil {
					return nil, err
				}
				e.Data = &section{path: d.path, off: off, size: hdr.Size}
				break
			}
			if e.Data, err = sp.add(tr, hdr.Size); err != nil {
				return nil, fmt.Errorf("tar: %s: %w", p, err)
			}
		case tar.TypeLink:
			target := Clean(hdr.Linkname)
			te := t.Get(target)
			if te == nil && oci {
				te = lower.Get(target)
			}
			if te == nil || te.Path == p {
				return nil, fmt.Errorf("tar: %s: hardlink to missing %s: %w", p, target, ErrTar)
			}
			le := *te
			le.Path = p
			if te.Type == Regular {
				// One inode: the target's content and metadata.
				le.LinkTo = te.Path
			}
			e = le
		}
		if p == "." && e.Type != Dir {
			return nil, fmt.Errorf("tar: root entry of type %s: %w", e.Type, ErrTar)
		}
		t.Add(e)
	}
	if err := sp.flush(); err != nil {
		return nil, err
	}
	return ly, nil
}

// tarEntry converts a header to an entry (without content).
func tarEntry(hdr *tar.Header, p string) (Entry, error) {
	if hdr.Uid < 0 || hdr.Uid > 1<<32-1 || hdr.Gid < 0 || hdr.Gid > 1<<32-1 {
		return Entry{}, fmt.Errorf("tar: %s: owner %d:%d out of range: %w", p, hdr.Uid, hdr.Gid, ErrTar)
	}
	_, mode, _ := FromUnixMode(unixRegular | uint32(hdr.Mode&0o7777))
	e := Entry{
		Path:  p,
		Mode:  mode,
		UID:   uint32(hdr.Uid),
		GID:   uint32(hdr.Gid),
		MTime: hdr.ModTime.Unix(),
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
		e.Type = Regular
		e.Size = hdr.Size
	case tar.TypeDir:
		e.Type = Dir
	case tar.TypeSymlink:
		e.Type = Symlink
		e.Target = hdr.Linkname
	case tar.TypeChar, tar.TypeBlock:
		e.Type = CharDev
		if hdr.Typeflag == tar.TypeBlock {
			e.Type = BlockDev
		}
		if hdr.Devmajor < 0 || hdr.Devmajor > 1<<32-1 || hdr.Devminor < 0 || hdr.Devminor > 1<<32-1 {
			return Entry{}, fmt.Errorf("tar: %s: device %d:%d out of range: %w", p, hdr.Devmajor, hdr.Devminor, ErrTar)
		}
		e.Major, e.Minor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	case tar.TypeFifo:
		e.Type = FIFO
	case tar.TypeLink:
		// Filled in from the target by the caller.
	default:
		return Entry{}, fmt.Errorf("tar: %s: type %q: %w", p, hdr.Typeflag, ErrTar)
	}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			e.setXattr(name, []byte(v))
		} else if enc, ok := strings.CutPrefix(k, "LIBARCHIVE.xattr."); ok {
			name, err1 := url.QueryUnescape(enc)
			val, err2 := base64.StdEncoding.DecodeString(v)
			if err1 != nil || err2 != nil {
				return Entry{}, fmt.Errorf("tar: %s: bad record %s: %w", p, k, ErrTar)
			}
			e.setXattr(name, val)
		}
	}
	return e, nil
}

func (e *Entry) setXattr(name string, v []byte) {
	if e.Xattrs == nil {
		e.Xattrs = map[string][]byte{}
	}
	e.Xattrs[name] = v
}

// sparse reports whether a header's body is stored sparsely, so that its
// bytes in the archive are not the file's bytes.
func sparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ".", p
	}
	return p[:i], p[i+1:]
}

func joinPath(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

// section is Content stored at an offset of a file on the host.
type section struct {
	path      string
	off, size int64
}

// Open implements Content.
func (s *section) Open() (io.ReadCloser, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, s.off, s.size), f}, nil
}

// spool holds file bodies of a stream in one unlinked temporary file.
type spool struct {
	f   *os.File
	w   *bufio.Writer
	off int64
}

func (sp *spool) add(r io.Reader, size int64) (Content, error) {
	if sp.f == nil {
		f, err := os.CreateTemp("", "bellbuild-spool-*")
		if err != nil {
			return nil, err
		}
		// Unlinked at once: the space is freed when the last Content
		// referring to it is collected (the *os.File closes itself).
		if err := os.Remove(f.Name()); err != nil {
			f.Close()
			return nil, err
		}
		sp.f, sp.w = f, bufio.NewWriterSize(f, 1<<20)
	}
	n, err := io.CopyN(sp.w, r, size)
	if err != nil {
		return nil, fmt.Errorf("spooling %d of %d bytes: %w", n, size, err)
	}
	c := &spooled{f: sp.f, off: sp.off, size: size}
	sp.off += size
	return c, nil
}

func (sp *spool) flush() error {
	if sp.w == nil {
		return nil
	}
	return sp.w.Flush()
}

// spooled is Content in a spool file, read with ReadAt (safe to open many
// times concurrently).
type spooled struct {
	f         *os.File
	off, size int64
}

// Open implements Content.
func (s *spooled) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.NewSectionReader(s.f, s.off, s.size)), nil
}

// WriteTar writes t to w as a reproducible tarball: PAX format, entries in
// Walk order, every mtime set to epoch, numeric owners only (no user or
// group names), extended attributes as SCHILY.xattr records, device
// numbers, and hardlinks as link entries to the group's first name. The
// root is written as "./" so that its mode and owner travel too. Sockets
// cannot be stored in tar and are left out. w is not closed.
func WriteTar(w io.Writer, t *Tree, epoch int64) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	links := t.Links()
	mtime := time.Unix(epoch, 0)
	for _, e := range t.Walk() {
		if e.Type == Socket {
			continue
		}
		src := e
		var linkTo string
		if g := links[e.Path]; g != nil {
			src = g.Head
			if first := g.Members[0]; first != e {
				linkTo = first.Path
			}
		}
		hdr := &tar.Header{
			Name:    e.Path,
			Mode:    int64(PermBits(src.Mode)),
			Uid:     int(src.UID),
			Gid:     int(src.GID),
			ModTime: mtime,
			Format:  tar.FormatPAX,
		}
		if len(src.Xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range src.Xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = string(v)
			}
		}
		switch {
		case linkTo != "":
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = linkTo
		case e.Type == Regular:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = src.Size
			if src.Size > 0 && src.Data == nil {
				return fmt.Errorf("tar: %s: %d bytes but no content", e.Path, src.Size)
			}
		case e.Type == Dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
			if e.Path == "." {
				hdr.Name = "./"
			}
		case e.Type == Symlink:
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.Target
		case e.Type == CharDev, e.Type == BlockDev:
			hdr.Typeflag = tar.TypeChar
			if e.Type == BlockDev {
				hdr.Typeflag = tar.TypeBlock
			}
			hdr.Devmajor, hdr.Devminor = int64(e.Major), int64(e.Minor)
		case e.Type == FIFO:
			hdr.Typeflag = tar.TypeFifo
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar: %s: %w", e.Path, err)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			if err := CopyContent(tw, e.Path, src.Data, hdr.Size, nil); err != nil {
				return fmt.Errorf("tar: %w", err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("tar: %w", err)
	}
	return bw.Flush()
}
