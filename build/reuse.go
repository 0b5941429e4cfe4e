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

	"golang.org/x/sys/unix"
)

// Reusing the previous initramfs.
//
// A conf-only re-bake makes an initramfs whose first bytes — the cached
// stage and applier segments, 100 MB and more — are those of the output it
// replaces; only the small configuration segment at the end differs. On a
// filesystem without reflinks, copying them again and waiting for the disk
// is most of the re-bake, and so is freeing the replaced file's blocks.
// Instead, the initramfs the previous output replaced is kept aside (not
// deleted) in OUT/.PROFILE.reuse/, cut after its cached segments (its
// configuration goes), and the next bake whose cached segments are the
// same takes it over: it appends its configuration segment and fsyncs. The output it replaces
// becomes the next spare. The previous output is never written to, so a
// bake that fails or is interrupted still leaves it whole.
//
// A spare is only trusted while its metadata shows it unchanged since it
// was written: its record (written when it was an output) names its segments, the
// SHA-256 state after them, and the file's identity — device, inode, size,
// mtime and ctime, as make and git's index know a file. Any write to it,
// even one that restores the bytes, changes its ctime; then, or when the
// record is missing or names other segments, the bake copies the segments
// as usual. The cost is disk space: one more stage and applier per
// profile, in a hidden directory that can be deleted at any time.
//
// An initramfs is only cut or extended while nothing else can see it: it
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
	if err := os.Rename(spare, file); err != nil {
		return 0, "", nil, errNoSpare
	}
	os.Remove(filepath.Join(dir, spareRecord))
	if id, err := statID(file); err != nil || id.Dev != rec.File.Dev || id.Ino != rec.File.Ino {
		os.Remove(file)
		return 0, "", nil, errNoSpare
	}
	out, release, err := openAlone(file)
	if err != nil {
		os.Remove(file)
		return 0, "", nil, errNoSpare
	}
	defer out.Close()
	defer release()
	if err := out.Truncate(plen); err != nil {
		return 0, "", nil, err
	}
	if _, err := out.Seek(plen, io.SeekStart); err != nil {
		return 0, "", nil, err
	}
	rest := segs[len(prefix):]
	n, err := copySegments(out, rest)
	if err != nil {
		return 0, "", nil, err
	}
	for _, s := range rest {
		if err := hashSegment(h, s); err != nil {
			return 0, "", nil, err
		}
	}
	total := plen + n
	if err := out.Sync(); err != nil {
		return 0, "", nil, err
	}
	if err := out.Close(); err != nil {
		return 0, "", nil, err
	}
	return total, h.hex(), rec.State, nil
}

// keepSpare runs after OUT/PROFILE was replaced, its previous content now
// in old: the previous initramfs becomes the spare when its record shows
// it untouched since it was written, and the new output's initramfs gets
// its record (prefix and state as concat or reuseSpare found them).
// Failures here cost only a later reuse, never the output: they are
// returned for the log.
func keepSpare(final, old string, prefix []Artifact, state []byte) error {
	dir := reuseDir(final)
	cur := filepath.Join(dir, currentRecord)
	var errs []error
	if old != "" {
		if rec, err := readRecord(cur); err == nil {
			prev := filepath.Join(old, InitramfsFile)
			if id, err := statID(prev); err == nil && id == rec.File {
				errs = append(errs, moveSpare(dir, prev, rec))
			}
		}
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
