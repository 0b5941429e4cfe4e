package host

import (
	"io/fs"
	"strconv"
	"syscall"
	"time"
)

// A file a run read whole and found as wanted is recorded with its
// identity (Record.Seen), as git's index records a file's stat data: the
// next run that finds the same identity, and still wants the same
// content, trusts the file without reading it. Any change of the file's
// content, mode or owner changes its ctime, which nobody can set back
// (touch -d restores the mtime, not the ctime); a file replaced, deleted
// or linked elsewhere changes its inode or type. Where in doubt (a field
// differs, no identity recorded) the run reads and compares the file, and
// records its identity again.

// racyWindow is how long before a run a file's ctime must lie for its
// identity to be recorded. A change made in the same tick of the file
// system's clock as the last one keeps the ctime (git's "racy" files):
// a file changed less than racyWindow before the stat is read again on
// the next run rather than trusted. Kernel timestamps come from a coarse
// clock (a tick of 1–10 ms), well inside the window.
const racyWindow = 100 * time.Millisecond

// coarseWindow replaces racyWindow on a file system that keeps whole
// seconds (a ctime with no nanoseconds): the change may have come up to
// a second after the time it shows.
const coarseWindow = 2 * time.Second

// identity is what changes with any change of the regular file fi:
// device, inode, size, mtime, ctime, mode, owner and group. It is "" for
// anything but a regular file.
func identity(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return ""
	}
	b := make([]byte, 0, 112)
	for i, n := range []int64{int64(st.Dev), int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano(), int64(st.Mode), int64(st.Uid), int64(st.Gid)} {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(b, n, 10)
	}
	return string(b)
}

// settled reports whether fi's ctime lies far enough before start (a
// time taken before fi was stat'ed) that a later change cannot share it.
func settled(fi fs.FileInfo, start time.Time) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	ctime := time.Unix(st.Ctim.Unix())
	window := racyWindow
	if ctime.Nanosecond() == 0 {
		window = coarseWindow
	}
	return ctime.Add(window).Before(start)
}

// fileSeen is the identity of fi holding content of hash (hex): its
// identity and the hash's first 16 digits, or "".
func fileSeen(fi fs.FileInfo, hash string) string {
	id := identity(fi)
	if id == "" || len(hash) < 16 {
		return ""
	}
	return id + " " + hash[:16]
}

// settledSeen is fileSeen(fi, hash) when fi is settled, else "".
func settledSeen(fi fs.FileInfo, hash string, start time.Time) string {
	if !settled(fi, start) {
		return ""
	}
	return fileSeen(fi, hash)
}
