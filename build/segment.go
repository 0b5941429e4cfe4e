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
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/images/compress"
	"github.com/bellbuild/bellbuild/images/cpio"
	"github.com/bellbuild/bellbuild/images/fstree"
)

// segmentFormat changes whenever the bytes a segment is written as change
// for the same tree (writer or compressor settings): cached segments of an
// older format are then never reused.
const segmentFormat = "bellbuild-segment-v4 cpio-newc zstd-default-w8M-c2 usrmerge-modules size-hinted-frames one-job-per-frame"

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
	// mtime is the cached file's, kept while a bake has taken the file
	// over (reuse.go), so that it goes back as it was.
	mtime time.Time
	// pending, when set, is putting file in place (fsync, rename, info)
	// while the bake goes on: see settle.
	pending *future[struct{}]
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
// (atomically: temp file, fsync when durable, rename), reporting progress.
// A segment that is copied into an initramfs and deleted need not be
// durable: the initramfs is fsynced.
func writeSegment(ctx context.Context, t *fstree.Tree, file string, epoch int64, inode uint32, durable bool, p *progress) (segmentInfo, error) {
	info, commit, err := compressSegment(ctx, t, file, epoch, inode, durable, p, nil)
	if err != nil {
		return info, err
	}
	return info, commit()
}

// compressSegment is writeSegment up to the point where the segment's
// bytes are all in a temporary file beside file; commit then puts it in
// place (fsync when durable, rename), and may run while the caller goes
// on. The compressed bytes also go to also, when it is not nil, as they
// are written (see makeSegment). The temporary file is removed on any
// error.
func compressSegment(ctx context.Context, t *fstree.Tree, file string, epoch int64, inode uint32, durable bool, p *progress, also io.Writer) (info segmentInfo, commit func() error, err error) {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return info, nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	var fw io.Writer = f
	if durable {
		// The disk writes while the compressor works: the fsync in
		// commit then waits for the last chunk only.
		fw = &writeback{f: f}
	}
	ws := []io.Writer{fw, h}
	if also != nil {
		ws = append(ws, also)
	}
	out := &countWriter{w: io.MultiWriter(ws...)}
	zw, err := compress.Zstd(out)
	if err != nil {
		return info, nil, err
	}
	in := &countWriter{w: zw, ctx: ctx, onWrite: func(n int64) { p.bytes(n, out.n.Load()) }}
	if err := cpio.Write(in, t, cpio.Options{MTime: &epoch, FirstInode: inode}); err != nil {
		zw.Close()
		return info, nil, err
	}
	if err := zw.Close(); err != nil {
		return info, nil, err
	}
	p.bytes(in.n.Load(), out.n.Load())
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return info, nil, err
	}
	info = segmentInfo{Size: out.n.Load(), SHA256: hex.EncodeToString(h.Sum(nil)), State: state}
	commit = func() (err error) {
		defer func() {
			if err != nil {
				f.Close()
				os.Remove(f.Name())
			}
		}()
		if durable {
			if err := f.Sync(); err != nil {
				return err
			}
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Rename(f.Name(), file)
	}
	return info, commit, nil
}

// countWriter counts bytes on their way to w and stops on cancellation.
// The count may be read while another goroutine writes (the progress line
// shows both ends of the compressor).
type countWriter struct {
	w       io.Writer
	n       atomic.Int64
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
	c.add(n)
	return n, err
}

func (c *countWriter) add(n int) {
	total := c.n.Add(int64(n))
	if c.onWrite != nil {
		c.onWrite(total)
	}
}

var _ cpio.SizeHinter = (*countWriter)(nil)

// SizeHint passes the archive's length on to w when it takes one
// (compress.ZstdWriter frames the end of its stream by it).
func (c *countWriter) SizeHint(n int64) {
	if h, ok := c.w.(cpio.SizeHinter); ok {
		h.SizeHint(n)
	}
}

// ReadFrom hands r to w's own ReadFrom when it has one (compress.ZstdWriter
// reads file data straight into its blocks), counting what is read.
func (c *countWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.w.(io.ReaderFrom); ok {
		return rf.ReadFrom(&countReader{r: r, c: c})
	}
	return io.Copy(struct{ io.Writer }{c}, r)
}

// countReader counts for a countWriter what its ReadFrom reads, and stops
// on cancellation.
type countReader struct {
	r io.Reader
	c *countWriter
}

func (cr *countReader) Read(b []byte) (int, error) {
	if cr.c.ctx != nil {
		if err := cr.c.ctx.Err(); err != nil {
			return 0, err
		}
	}
	n, err := cr.r.Read(b)
	cr.c.add(n)
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
		case fstree.SourceFile:
			// As for File, with the identity FromDir saw.
			writeStr(h, "file")
			writeStr(h, string(c.File))
			writeInts(h, int64(c.Dev), int64(c.Ino), c.Size, c.MTime, c.CTime)
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
// written to dir (not cached). When a segment is written to the cache and
// also is not nil, the compressed bytes go to the writer also() returns
// too, as they are written (the initramfs the segment starts: see
// baker.segments), and the segment's file is put in place in the cache
// while the caller goes on (see settle).
func makeSegment(ctx context.Context, cacheDir, dir, name, key string, tree func() (*fstree.Tree, error), dirs map[string]dirMeta, epoch int64, inode uint32, p *progress, also func() (io.Writer, error)) (*segment, error) {
	s := &segment{name: name, key: key}
	if key == "" {
		t, err := tree()
		if err != nil {
			return nil, err
		}
		s.file = filepath.Join(dir, name+".cpio.zst")
		info, err := writeSegment(ctx, t, s.file, epoch, inode, false, p)
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
	var second io.Writer
	if also != nil {
		if second, err = also(); err != nil {
			return nil, err
		}
	}
	info, commit, err := compressSegment(ctx, t, s.file, epoch, inode, true, p, second)
	if err != nil {
		return nil, fmt.Errorf("%s segment: %w", name, err)
	}
	info.Dirs = dirs
	s.segmentInfo = info
	put := func() (struct{}, error) {
		if err := commit(); err != nil {
			return struct{}{}, fmt.Errorf("%s segment: %w", name, err)
		}
		if err := writeInfo(s.file, info); err != nil {
			return struct{}{}, fmt.Errorf("cache: %w", err)
		}
		return struct{}{}, nil
	}
	if also != nil {
		s.pending = async(put)
		return s, nil
	}
	if _, err := put(); err != nil {
		return nil, err
	}
	return s, nil
}

// settle waits until s's file is in place, when makeSegment left that to
// another goroutine, and returns what went wrong there.
func (s *segment) settle() error {
	if s.pending == nil {
		return nil
	}
	_, err := s.pending.wait()
	return err
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

// concat writes the segments one after the other to file, fsynced, and
// returns its size, its sha256 and the hash state after the cached
// segments it starts with (see reuseRecord). Three things overlap, since a
// re-bake that cannot reuse the previous initramfs (reuse.go) is mostly
// this copy:
//   - the data goes file to file (copy_file_range: in the kernel, never
//     read into the process), in chunks of writebackChunk, and after each
//     chunk its writeback is started (sync_file_range), so the disk writes
//     while the copy goes on and the final fsync waits for little;
//   - the hash resumes from the first segment's saved state, and the other
//     segments are read and hashed on another goroutine meanwhile;
//   - the caller copies the kernel at the same time.
func concat(file string, segs []*segment) (size int64, sum string, prefixState []byte, err error) {
	out, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, artifactMode)
	if err != nil {
		return 0, "", nil, err
	}
	return finish(out, 0, segs)
}

// finish is concat for out, which holds segs[0] already when first is 1
// (the stage was written into it as it was compressed: see write), else
// nothing: it appends the other segments, fsyncs and closes out.
func finish(out *os.File, first int, segs []*segment) (size int64, sum string, prefixState []byte, err error) {
	defer out.Close()
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(segs[0].State); err != nil {
		return 0, "", nil, fmt.Errorf("%s segment: hash state: %w", segs[0].name, err)
	}
	hashDone := hashSegmentsAsync(h, segs)
	if first == 1 {
		size = segs[0].Size
	}
	n, err := copySegments(out, segs[first:])
	size += n
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if r := <-hashDone; err == nil {
		prefixState, err = r.state, r.err
	}
	if err != nil {
		return 0, "", nil, err
	}
	return size, hex.EncodeToString(h.Sum(nil)), prefixState, nil
}

// writebackChunk is how much concat copies, or a writeback writes,
// before it starts that part's writeback.
const writebackChunk = 8 << 20

// writeback writes to f, and starts the writeback of every writebackChunk
// bytes written (sync_file_range), so that the disk writes while the
// writer goes on and an fsync after waits for little. Writes start where
// f's offset is at the first one.
type writeback struct {
	f       *os.File
	started bool
	start   int64 // f's offset at the first write
	n       int64 // bytes written
	synced  int64 // of which the writeback was started
}

func (w *writeback) Write(b []byte) (int, error) {
	if !w.started {
		off, err := w.f.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0, err
		}
		w.start, w.started = off, true
	}
	n, err := w.f.Write(b)
	w.n += int64(n)
	if w.n-w.synced >= writebackChunk {
		// Only a hint: the fsync after is what makes it durable.
		unix.SyncFileRange(int(w.f.Fd()), w.start+w.synced, w.n-w.synced, unix.SYNC_FILE_RANGE_WRITE)
		w.synced = w.n
	}
	return n, err
}

// copySegments appends the segments' files to out, starting writeback as
// it goes, and returns the bytes written.
func copySegments(out *os.File, segs []*segment) (int64, error) {
	// Where the writes start (a reused initramfs is appended to).
	start, err := out.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, s := range segs {
		in, err := os.Open(s.file)
		if err != nil {
			return total, fmt.Errorf("%s segment: %w", s.name, err)
		}
		var n int64
		for n < s.Size {
			// io.CopyN from a file to a file is copy_file_range.
			m, err := io.CopyN(out, in, min(writebackChunk, s.Size-n))
			n += m
			if m > 0 {
				// Only a hint: the fsync after is what makes it durable.
				unix.SyncFileRange(int(out.Fd()), start+total, m, unix.SYNC_FILE_RANGE_WRITE)
				total += m
			}
			if err != nil {
				in.Close()
				if err == io.EOF {
					err = fmt.Errorf("%s: %d bytes, want %d", s.file, n, s.Size)
				}
				return total, fmt.Errorf("%s segment: %w", s.name, err)
			}
		}
		// The file must end where its info says.
		var one [1]byte
		m, _ := in.Read(one[:])
		in.Close()
		if m > 0 {
			return total, fmt.Errorf("%s segment: %s is longer than %d bytes", s.name, s.file, s.Size)
		}
	}
	return total, nil
}

// hashSegment adds the bytes of s's file to h.
func hashSegment(h hash.Hash, s *segment) error {
	in, err := os.Open(s.file)
	if err != nil {
		return fmt.Errorf("%s segment: %w", s.name, err)
	}
	m, err := io.Copy(h, in)
	in.Close()
	if err == nil && m != s.Size {
		err = fmt.Errorf("%s: %d bytes, want %d", s.file, m, s.Size)
	}
	if err != nil {
		return fmt.Errorf("%s segment: %w", s.name, err)
	}
	return nil
}

// hashed is what hashSegmentsAsync delivers.
type hashed struct {
	state []byte
	err   error
}

// hashSegmentsAsync runs hashSegments(h, segs, len(prefixOf(segs))) on
// another goroutine, so the segments are read and hashed while the caller
// writes them; the result arrives once on the returned channel.
func hashSegmentsAsync(h hash.Hash, segs []*segment) <-chan hashed {
	done := make(chan hashed, 1)
	go func() {
		var r hashed
		r.state, r.err = hashSegments(h, segs, len(prefixOf(segs)))
		done <- r
	}()
	return done
}

// hashSegments adds the bytes of segs[1:] to h, which holds the state
// after segs[0], and returns the state after the first n segments.
func hashSegments(h hash.Hash, segs []*segment, n int) ([]byte, error) {
	var state []byte
	if n == 1 {
		state = segs[0].State
	}
	for i, s := range segs[1:] {
		if err := hashSegment(h, s); err != nil {
			return nil, err
		}
		if i+2 == n {
			var err error
			if state, err = h.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
				return nil, err
			}
		}
	}
	return state, nil
}
