package build

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Reusing bytes already on disk.
//
// A conf-only re-bake makes an initramfs whose first bytes — the cached
// stage and applier segments, 100 MB and more — are already on disk
// twice: in the cache, and at the start of the output it replaces; only
// the small configuration segment at the end differs. On a filesystem
// without reflinks, copying them again and waiting for the disk is most
// of the re-bake, and so is freeing the replaced file's blocks. So a
// re-bake moves files instead of copying them, in one of two ways.
//
// Taking the cached stage over. A bake that gets the cache lock
// exclusively (no other bake can read a segment meanwhile), and whose
// replaced output is recorded as starting with the cached stage segment,
// moves the segment's file out of the cache, appends the applier and
// configuration segments and fsyncs. After the swap, the initramfs it
// replaced, cut to the stage's length, goes into the cache in its place:
// the same bytes under the same name (and mtime), so the segment's info
// stays true. If that file cannot be cut (below), the stage's bytes are
// copied back from the new output instead; if the bake fails, the
// segment goes back as it was. A crash in between costs a cache miss,
// never a wrong segment: a cached segment whose size is not its info's is
// a miss.
//
// The spare. A bake that cannot take the stage over (another bake is using
// the cache, or it is on another filesystem than OUT) copies the segments,
// and keeps the initramfs it replaces, cut after its cached segments (its
// configuration goes), as OUT/.PROFILE.reuse/spare.cpio.zst. The next bake
// whose cached segments are the same takes it over before trying the
// cache: it appends its configuration segment and fsyncs, and the output
// it replaces becomes the next spare. A bake that takes the stage over
// deletes a spare it could not use. The cost is disk space: one more stage
// and applier for such a profile, in a hidden directory that can be
// deleted at any time.
//
// Either way the output at OUT/PROFILE is never written to, so a bake
// that fails or is interrupted still leaves it whole. An initramfs is
// only trusted while its metadata shows it unchanged since it was
// written: its record (written when it was an output) names its
// segments, the SHA-256 state after them, and the file's identity —
// device, inode, size, mtime and ctime, as make and git's index know a
// file. Any write to it, even one that restores the bytes, changes its
// ctime. And it is only cut or extended while nothing else can see it: it
// must have no other link (an operator's `cp -l` into a TFTP root) and no
// other open descriptor (`bellbuild serve` still sending it to a machine
// that began to boot before the swap), which a write lease (F_SETLEASE)
// proves. Otherwise it is deleted as before, and its readers keep their
// bytes.
const reuseDirSuffix = ".reuse"

// reuseRecord describes an initramfs this package wrote.
type reuseRecord struct {
	// File is the identity of the initramfs file (see fileID).
	File fileID `json:"file"`
	// Prefix is its leading segments: the cached ones a later bake may
	// share (name, size, sha256).
	Prefix []Artifact `json:"prefix"`
	// State is the marshalled SHA-256 state after Prefix.
	State []byte `json:"state"`
}

// fileID identifies a file's content without reading it.
type fileID struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
	CTime int64  `json:"ctime_ns"`
}

func statID(file string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Lstat(file, &st); err != nil {
		return fileID{}, &os.PathError{Op: "lstat", Path: file, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fileID{}, fmt.Errorf("%s: not a regular file", file)
	}
	return fileID{
		Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
		MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano(),
	}, nil
}

// reuseDir is where the records and the spare initramfs of OUT/PROFILE
// are kept.
func reuseDir(final string) string {
	return filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+reuseDirSuffix)
}

const (
	currentRecord = "current.json"   // the record of OUT/PROFILE's initramfs
	spareFile     = "spare.cpio.zst" // the initramfs OUT/PROFILE replaced
	spareRecord   = "spare.json"     // its record
)

func readRecord(file string) (reuseRecord, error) {
	var r reuseRecord
	b, err := os.ReadFile(file)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", file, err)
	}
	return r, nil
}

// writeRecord replaces file with r. Records need not survive a crash: a
// lost or stale one only means no reuse.
func writeRecord(file string, r reuseRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// prefixOf is the segments of an initramfs a later bake may share: the
// cached ones it starts with.
func prefixOf(segs []*segment) []Artifact {
	var out []Artifact
	for _, s := range segs {
		if s.key == "" {
			break
		}
		out = append(out, Artifact{Name: s.name, Size: s.Size, SHA256: s.SHA256})
	}
	return out
}

// errNotAlone means a file has other links or other open descriptors.
var errNotAlone = errors.New("linked or open elsewhere")

// openAlone opens file for writing when this is the only link to it and
// the only open descriptor, and holds a write lease on it until release
// (a process that opens it meanwhile waits for release; the kernel breaks
// the lease after /proc/sys/fs/lease-break-time otherwise). It returns
// errNotAlone when the file is shared, or the filesystem has no leases.
func openAlone(file string) (f *os.File, release func(), err error) {
	f, err = os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Nlink != 1 {
		f.Close()
		return nil, nil, errNotAlone
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %v", errNotAlone, err)
	}
	return f, func() { unix.FcntlInt(f.Fd(), unix.F_SETLEASE, unix.F_UNLCK) }, nil
}

// errNoSpare means there is no spare initramfs this bake can take over.
var errNoSpare = errors.New("no reusable initramfs")

// takeFile moves src to file (which must not exist) and opens it for
// writing when it is the file want says (checked after the move, which
// made it this bake's) and nothing else links it or has it open (see
// openAlone). Otherwise it returns errNoSpare, and the file goes back to
// src when back is set, else is removed.
func takeFile(src, file string, want func(fileID) bool, back bool) (*os.File, func(), error) {
	if err := os.Rename(src, file); err != nil {
		return nil, nil, errNoSpare
	}
	refuse := func() (*os.File, func(), error) {
		if !back || os.Rename(file, src) != nil {
			os.Remove(file)
		}
		return nil, nil, errNoSpare
	}
	if id, err := statID(file); err != nil || !want(id) {
		return refuse()
	}
	f, release, err := openAlone(file)
	if err != nil {
		return refuse()
	}
	return f, release, nil
}

// appendSegments cuts f to plen bytes, appends segs and fsyncs f, which
// becomes an initramfs: its mode is artifactMode whatever it was (a spare
// made by an older bellbuild, a cached segment). It returns f's size.
func appendSegments(f *os.File, plen int64, segs []*segment) (int64, error) {
	if err := f.Chmod(artifactMode); err != nil {
		return 0, err
	}
	if err := f.Truncate(plen); err != nil {
		return 0, err
	}
	if _, err := f.Seek(plen, io.SeekStart); err != nil {
		return 0, err
	}
	n, err := copySegments(f, segs)
	if err != nil {
		return 0, err
	}
	return plen + n, f.Sync()
}

// reuseSpare makes file (which must not exist) the initramfs of segs by
// taking over the spare initramfs of final when it starts with the same
// cached segments: it is moved to file, cut after them, and the other
// segments are appended and fsynced. It returns the size, the sha256 and
// the hash state after the shared segments, or errNoSpare (with nothing
// done) when there is no such spare.
func reuseSpare(final, file string, segs []*segment) (int64, string, []byte, error) {
	prefix := prefixOf(segs)
	if len(prefix) == 0 {
		return 0, "", nil, errNoSpare
	}
	dir := reuseDir(final)
	spare := filepath.Join(dir, spareFile)
	rec, err := readRecord(filepath.Join(dir, spareRecord))
	if err != nil || !slices.Equal(rec.Prefix, prefix) {
		return 0, "", nil, errNoSpare
	}
	var plen int64
	for _, a := range prefix {
		plen += a.Size
	}
	if id, err := statID(spare); err != nil || id != rec.File || id.Size < plen {
		return 0, "", nil, errNoSpare
	}
	h := newSHA256()
	if err := h.Hash.(encoding.BinaryUnmarshaler).UnmarshalBinary(rec.State); err != nil {
		return 0, "", nil, errNoSpare
	}
	// Moving it is atomic: a concurrent bake of the same profile gets
	// ENOENT. That the file moved is the recorded one is checked again
	// after (device and inode; the move changed its ctime).
	out, release, err := takeFile(spare, file, func(id fileID) bool {
		return id.Dev == rec.File.Dev && id.Ino == rec.File.Ino
	}, false)
	os.Remove(filepath.Join(dir, spareRecord))
	if err != nil {
		return 0, "", nil, err
	}
	defer out.Close()
	defer release()
	rest := segs[len(prefix):]
	size, err := appendSegments(out, plen, rest)
	if err != nil {
		return 0, "", nil, err
	}
	for _, s := range rest {
		if err := hashSegment(h, s); err != nil {
			return 0, "", nil, err
		}
	}
	if err := out.Close(); err != nil {
		return 0, "", nil, err
	}
	return size, h.hex(), rec.State, nil
}

// mayTakeStage says whether the initramfs of final is recorded as
// starting with the stage segment cached under key in cacheDir: then a
// bake holding the cache exclusively may take that segment over
// (takeStage) and give it back from the replaced initramfs (giveBack).
func mayTakeStage(final, cacheDir, key string) bool {
	if key == "" {
		return false
	}
	rec, err := readRecord(filepath.Join(reuseDir(final), currentRecord))
	if err != nil || len(rec.Prefix) == 0 {
		return false
	}
	if id, err := statID(filepath.Join(final, InitramfsFile)); err != nil || id != rec.File {
		return false
	}
	file := cachedSegmentFile(cacheDir, key)
	info, err := readInfo(file)
	if err != nil || rec.Prefix[0].Size != info.Size || rec.Prefix[0].SHA256 != info.SHA256 {
		return false
	}
	// Files move between the cache and OUT only on one filesystem.
	id, err := statID(file)
	return err == nil && id.Dev == rec.File.Dev
}

// takeStage makes file (which must not exist) the initramfs of segs by
// taking over the cached file of the stage segment, segs[0], and
// appending the others; the caller holds the cache exclusively, and gives
// the segment back after the swap (giveBack) or when the bake fails
// (putBack). It returns the size, the sha256 and the hash state after the
// cached segments, or errNoSpare with the cache as it was. On another
// error the segment is back in the cache too.
func takeStage(file string, segs []*segment) (int64, string, []byte, error) {
	s := segs[0]
	h := newSHA256()
	if s.key == "" || h.Hash.(encoding.BinaryUnmarshaler).UnmarshalBinary(s.State) != nil {
		return 0, "", nil, errNoSpare
	}
	out, release, err := takeFile(s.file, file, func(id fileID) bool {
		s.mtime = time.Unix(0, id.MTime)
		return id.Size == s.Size
	}, true)
	if err != nil {
		return 0, "", nil, err
	}
	hashDone := hashSegmentsAsync(h.Hash, segs)
	size, err := appendSegments(out, s.Size, segs[1:])
	r := <-hashDone
	if err == nil {
		err = r.err
	}
	if err != nil {
		// Cut off what was appended while the lease still holds.
		out.Truncate(s.Size)
	}
	release()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, "", nil, errors.Join(err, putBack(file, s))
	}
	return size, h.hex(), r.state, nil
}

// putBack returns the stage segment s, taken over into file by a bake
// that failed, to the cache.
func putBack(file string, s *segment) error {
	if err := os.Truncate(file, s.Size); err != nil {
		return errors.Join(err, os.Remove(file))
	}
	return s.restore(file)
}

// restore moves file, which holds the stage segment s, into the cache
// with the cached file's mtime.
func (s *segment) restore(file string) error {
	if err := os.Chtimes(file, time.Time{}, s.mtime); err != nil {
		return err
	}
	return os.Rename(file, s.file)
}

// giveBack returns the stage segment s, taken over by this bake, to the
// cache: prev, the initramfs the bake replaced, cut to the segment's
// length, when its record rec (known: the file is unchanged since it was
// written) says it starts with s and nothing else shares it; else a copy
// of the first bytes of cur, the new initramfs.
func giveBack(s *segment, prev string, rec reuseRecord, known bool, cur string) error {
	if known && len(rec.Prefix) > 0 && rec.Prefix[0] == (Artifact{Name: s.name, Size: s.Size, SHA256: s.SHA256}) {
		if f, release, err := openAlone(prev); err == nil {
			err = f.Truncate(s.Size)
			release()
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = s.restore(prev)
			}
			if err == nil {
				return nil
			}
		}
	}
	return copyPrefix(cur, s)
}

// copyPrefix writes the stage segment s to the cache from the first bytes
// of the initramfs file, which starts with it.
func copyPrefix(file string, s *segment) error {
	in, err := os.Open(file)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(s.file), "."+filepath.Base(s.file)+".tmp-*")
	if err != nil {
		return err
	}
	// io.CopyN from a file to a file is copy_file_range.
	_, err = io.CopyN(tmp, in, s.Size)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.restore(tmp.Name())
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("cache: restoring the %s segment: %w", s.name, err)
	}
	return nil
}

// keepSpare runs after OUT/PROFILE was replaced, its previous content now
// in old: when the bake took the cached stage segment over (taken), the
// cache gets it back (giveBack); otherwise the previous initramfs becomes
// the spare when its record shows it untouched since it was written. The
// new output's initramfs gets its record (prefix and state as concat,
// reuseSpare or takeStage found them). Failures here cost only a later
// reuse or a cache miss, never the output: they are returned for the log.
func keepSpare(final, old string, prefix []Artifact, state []byte, taken *segment) error {
	dir := reuseDir(final)
	cur := filepath.Join(dir, currentRecord)
	var errs []error
	var prev string
	var rec reuseRecord
	known := false
	if old != "" {
		prev = filepath.Join(old, InitramfsFile)
		if r, err := readRecord(cur); err == nil {
			if id, err := statID(prev); err == nil && id == r.File {
				rec, known = r, true
			}
		}
	}
	switch {
	case taken != nil:
		errs = append(errs, giveBack(taken, prev, rec, known, filepath.Join(final, InitramfsFile)))
		// A spare this bake did not take has other segments: it would
		// only take space.
		errs = append(errs, removeIfExists(filepath.Join(dir, spareRecord)), removeIfExists(filepath.Join(dir, spareFile)))
	case known:
		errs = append(errs, moveSpare(dir, prev, rec))
	}
	if len(prefix) == 0 || len(state) == 0 {
		errs = append(errs, removeIfExists(cur))
		return errors.Join(errs...)
	}
	id, err := statID(filepath.Join(final, InitramfsFile))
	if err != nil {
		errs = append(errs, removeIfExists(cur), err)
		return errors.Join(errs...)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, writeRecord(cur, reuseRecord{File: id, Prefix: prefix, State: state}))
	return errors.Join(errs...)
}

// moveSpare moves the initramfs prev, described by rec, to be the spare,
// cut after its shared segments: the configuration it ended with (node
// names, keys, passwords' hashes) does not outlive its output.
func moveSpare(dir, prev string, rec reuseRecord) error {
	spare := filepath.Join(dir, spareFile)
	// Drop the old record first: a record must never name another file.
	if err := removeIfExists(filepath.Join(dir, spareRecord)); err != nil {
		return err
	}
	if err := os.Rename(prev, spare); err != nil {
		return err
	}
	f, release, err := openAlone(spare)
	if err != nil {
		// Someone still reads it (or links it): leave it to them.
		return errors.Join(os.Remove(spare), ignoreNotAlone(err))
	}
	var plen int64
	for _, a := range rec.Prefix {
		plen += a.Size
	}
	err = f.Truncate(plen)
	release()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	id, err := statID(spare)
	if err != nil {
		return err
	}
	rec.File = id
	return writeRecord(filepath.Join(dir, spareRecord), rec)
}

// ignoreNotAlone is err unless it only says the file is shared.
func ignoreNotAlone(err error) error {
	if errors.Is(err, errNotAlone) {
		return nil
	}
	return err
}

func removeIfExists(file string) error {
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
