package build

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/cpio"
	"github.com/bellbuild/bellbuild/images/fstree"
)

// segmentFormat changes whenever the bytes a segment is written as change
// for the same tree (writer or compressor settings): cached segments of an
// older format are then never reused.
const segmentFormat = "bellbuild-segment-v2 cpio-newc zstd-default-w8M-c2 usrmerge-modules"

// segment is one cpio.zst piece of an initramfs: the kernel unpacks
// concatenated archives one after the other, later entries over earlier
// ones.
type segment struct {
	name string
	// key identifies its content (see treeKey); "" means never cached.
	key string
	// file is the compressed segment on disk.
	file string
	segmentInfo
	// cached is true when file was reused from the cache, not written.
	cached bool
}

// segmentInfo is kept beside a cached segment (FILE.json), so that a cache
// hit does not read the segment back to name it in the manifest or to
// hash the initramfs it starts.
type segmentInfo struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// State is the marshalled SHA-256 state after the segment's bytes:
	// the initramfs's hash resumes from it instead of rereading them.
	State []byte `json:"state"`
	// Dirs is, for a stage segment, the stage's metadata for the
	// directories the upper segments repeat (so that a cache hit need not
	// read the stage).
	Dirs map[string]dirMeta `json:"dirs"`
}

// writeSegment writes t as a newc cpio compressed with zstd to file
// (atomically: temp file, fsync, rename), reporting progress.
func writeSegment(ctx context.Context, t *fstree.Tree, file string, epoch int64, inode uint32, p *progress) (info segmentInfo, err error) {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return info, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	out := &countWriter{w: io.MultiWriter(f, h)}
	zw, err := compress.Zstd(out)
	if err != nil {
		return info, err
	}
	in := &countWriter{w: zw, ctx: ctx, onWrite: func(n int64) { p.bytes(n, out.n) }}
	if err := cpio.Write(in, t, cpio.Options{MTime: &epoch, FirstInode: inode}); err != nil {
		zw.Close()
		return info, err
	}
	if err := zw.Close(); err != nil {
		return info, err
	}
	p.bytes(in.n, out.n)
	if err := f.Sync(); err != nil {
		return info, err
	}
	if err := f.Close(); err != nil {
		return info, err
	}
	if err := os.Rename(f.Name(), file); err != nil {
		return info, err
	}
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return info, err
	}
	return segmentInfo{Size: out.n, SHA256: hex.EncodeToString(h.Sum(nil)), State: state}, nil
}

// countWriter counts bytes on their way to w and stops on cancellation.
type countWriter struct {
	w       io.Writer
	n       int64
	ctx     context.Context
	onWrite func(total int64)
}

func (c *countWriter) Write(b []byte) (int, error) {
	if c.ctx != nil {
		if err := c.ctx.Err(); err != nil {
			return 0, err
		}
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	if c.onWrite != nil {
		c.onWrite(c.n)
	}
	return n, err
}

// treeKey digests everything about t that its cpio segment depends on —
// paths, types, modes, owners, links, device numbers, xattrs — and each
// file's content identity, without reading file contents: a host file is
// known by its device, inode, size, mtime and ctime (as make and git's
// index know it), an in-memory file by its bytes. It returns false when a
// file's content cannot be identified that way (e.g. one read from a
// tarball): the caller keys that tree by its input instead.
func treeKey(t *fstree.Tree, salt ...string) (string, bool) {
	h := sha256.New()
	for _, s := range salt {
		writeStr(h, s)
	}
	for _, e := range t.Walk() {
		writeStr(h, e.Path)
		writeInts(h, int64(e.Type), int64(e.Mode), int64(e.UID), int64(e.GID), e.Size, int64(e.Major), int64(e.Minor))
		writeStr(h, e.Target)
		writeStr(h, e.LinkTo)
		keys := make([]string, 0, len(e.Xattrs))
		for k := range e.Xattrs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			writeStr(h, k)
			writeStr(h, string(e.Xattrs[k]))
		}
		if e.Type != fstree.Regular || e.Data == nil {
			writeStr(h, "-")
			continue
		}
		switch c := e.Data.(type) {
		case fstree.Bytes:
			writeStr(h, "bytes")
			writeStr(h, string(c))
		case fstree.File:
			var st unix.Stat_t
			if err := unix.Stat(string(c), &st); err != nil {
				return "", false
			}
			writeStr(h, "file")
			writeStr(h, string(c))
			writeInts(h, int64(st.Dev), int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano())
		default:
			return "", false
		}
	}
	return hex.EncodeToString(h.Sum(nil)), true
}

func writeStr(h hash.Hash, s string) {
	writeInts(h, int64(len(s)))
	io.WriteString(h, s)
}

func writeInts(h hash.Hash, vs ...int64) {
	var b [8]byte
	for _, v := range vs {
		binary.LittleEndian.PutUint64(b[:], uint64(v))
		h.Write(b[:])
	}
}

// keyOf hashes strings into a cache key.
func keyOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		writeStr(h, p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// treeOf is a tree already in memory, for makeSegment.
func treeOf(t *fstree.Tree) func() (*fstree.Tree, error) {
	return func() (*fstree.Tree, error) { return t, nil }
}

// cachedSegmentFile is where the segment with key is cached.
func cachedSegmentFile(cacheDir, key string) string {
	return filepath.Join(cacheDir, "segments", key+".cpio.zst")
}

// makeSegment returns the segment of the tree tree() returns: from
// cacheDir when one with key exists there (tree is then not called), else
// written there first, with dirs in its info. With key "" the segment is
// written to dir (not cached).
func makeSegment(ctx context.Context, cacheDir, dir, name, key string, tree func() (*fstree.Tree, error), dirs map[string]dirMeta, epoch int64, inode uint32, p *progress) (*segment, error) {
	s := &segment{name: name, key: key}
	if key == "" {
		t, err := tree()
		if err != nil {
			return nil, err
		}
		s.file = filepath.Join(dir, name+".cpio.zst")
		info, err := writeSegment(ctx, t, s.file, epoch, inode, p)
		if err != nil {
			return nil, fmt.Errorf("%s segment: %w", name, err)
		}
		s.segmentInfo = info
		return s, nil
	}
	s.file = cachedSegmentFile(cacheDir, key)
	if err := os.MkdirAll(filepath.Dir(s.file), 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if info, err := readInfo(s.file); err == nil {
		s.segmentInfo, s.cached = info, true
		touchSegment(s.file)
		return s, nil
	}
	t, err := tree()
	if err != nil {
		return nil, err
	}
	info, err := writeSegment(ctx, t, s.file, epoch, inode, p)
	if err != nil {
		return nil, fmt.Errorf("%s segment: %w", name, err)
	}
	info.Dirs = dirs
	s.segmentInfo = info
	if err := writeInfo(s.file, info); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return s, nil
}

// readInfo reads a cached segment's info, and checks that the segment is
// there with that size (a cache entry cut short is a miss).
func readInfo(file string) (segmentInfo, error) {
	var info segmentInfo
	b, err := os.ReadFile(file + ".json")
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("%s.json: %w", file, err)
	}
	st, err := os.Stat(file)
	if err != nil {
		return info, err
	}
	if st.Size() != info.Size || len(info.SHA256) != 64 || len(info.State) == 0 {
		return info, fmt.Errorf("%s: cache entry does not match its info", file)
	}
	return info, nil
}

func writeInfo(file string, info segmentInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".json.tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), file+".json")
}

// concat writes the segments one after the other to file and returns its
// size and sha256. The hash resumes from the first segment's saved state,
// so a large cached stage segment is copied (in the kernel, with
// copy_file_range) but never read into the process.
func concat(file string, segs []*segment) (int64, string, error) {
	out, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, "", err
	}
	defer out.Close()
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(segs[0].State); err != nil {
		return 0, "", fmt.Errorf("%s segment: hash state: %w", segs[0].name, err)
	}
	var total int64
	for i, s := range segs {
		in, err := os.Open(s.file)
		if err != nil {
			return 0, "", err
		}
		var dst io.Writer = out
		if i > 0 {
			dst = io.MultiWriter(out, h)
		}
		// The first segment goes file to file: io.Copy uses
		// copy_file_range, and its hash is the saved state.
		n, err := io.Copy(dst, in)
		in.Close()
		if err == nil && n != s.Size {
			err = fmt.Errorf("%s: %d bytes, want %d", s.file, n, s.Size)
		}
		if err != nil {
			return 0, "", fmt.Errorf("%s segment: %w", s.name, err)
		}
		total += n
	}
	if err := out.Sync(); err != nil {
		return 0, "", err
	}
	if err := out.Close(); err != nil {
		return 0, "", err
	}
	return total, hex.EncodeToString(h.Sum(nil)), nil
}
