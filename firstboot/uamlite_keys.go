package firstboot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// A user's home belongs to the user, who may plant symlinks, hard links or
// files under the names bellbuild is about to write. So authorized_keys is
// not written through Host.WriteFile (which follows in-root symlinks and
// reuses a fixed temporary name) but through an os.Root opened at the home,
// then at ~/.ssh: a symlink that leaves the user's own directory fails
// instead of being followed, ownership changes never follow a symlink, and
// the temporary file is created with O_EXCL, so a name planted in advance
// is never opened. ~/.ssh itself must be a real directory.

// keysRecordMeta is the Record.Extra key holding the replaced file's meta.
const keysRecordMeta = "orig_meta"

func keysBackupName(name string) string { return host.Hash([]byte("uamlite\x00keys/"+name)) + ".orig" }

const keysBackupDir = "/var/lib/bellbuild/backup"

// keysWrite is an authorized_keys write whose record is put in the
// ledger, to be made once the ledger is saved.
type keysWrite struct {
	name, home string
	data       []byte
	meta       host.Meta
}

// ensureKeysAll writes every user's authorized_keys: each record (with
// the backup of an original) is put, one ledger save makes them durable,
// then the files are written, their fsyncs (and their directories') made
// many at a time.
func (u *uam) ensureKeysAll(users []nodeconf.User) {
	var todo []*keysWrite
	for _, usr := range users {
		if w := u.ensureKeys(usr); w != nil {
			todo = append(todo, w)
		}
	}
	if len(todo) == 0 {
		return
	}
	if err := u.h.SaveLedger(); err != nil {
		u.fail("authorized_keys: %w", err)
		return
	}
	for chunk := range slices.Chunk(todo, host.SyncParallel) {
		var temps []*keysTemp
		for _, w := range chunk {
			t, err := u.keysTemp(w)
			if err != nil {
				u.fail("%s: %w", w.name, err)
				continue
			}
			temps = append(temps, t)
		}
		files := make([]*os.File, len(temps))
		for i, t := range temps {
			files[i] = t.f
		}
		serrs := host.SyncAll(files)
		var dirs []*os.File
		for i, t := range temps {
			err := serrs[i]
			if err == nil {
				err = commitInDir(t.sr, "authorized_keys", t.f)
			} else {
				t.f.Close()
				t.sr.Remove(host.TempName("authorized_keys"))
			}
			var d *os.File
			if err == nil {
				d, err = t.sr.Open(".")
			}
			if err != nil {
				u.fail("%s: %s: %w", t.w.name, path.Join(t.w.home, ".ssh/authorized_keys"), err)
				continue
			}
			dirs = append(dirs, d)
		}
		for _, err := range host.SyncAll(dirs) {
			if err != nil {
				u.fail("authorized_keys: sync: %w", err)
			}
		}
		for _, d := range dirs {
			d.Close()
		}
		for _, t := range temps {
			t.sr.Close()
			t.hr.Close()
		}
	}
}

// ensureKeys decides ~/.ssh/authorized_keys, unless the keys are
// Unmanaged, and returns the write to make (nil: none). With no keys, the
// file bellbuild wrote is removed; a file it found is kept but emptied
// (its original stays in the backup for a revert).
func (u *uam) ensureKeys(usr nodeconf.User) *keysWrite {
	name := usr.UserName
	key := "keys/" + name
	if !keysManaged(usr) {
		// Unmanaged from now on: the file stays as it is, bellbuild
		// forgets it (and its backup).
		if _, owned := u.h.Ledger.Get("uamlite", key); owned {
			u.change("user "+name, "update", "authorized_keys unmanaged")
			if !u.h.Plan {
				u.h.Ledger.Delete("uamlite", key)
				u.h.Remove(path.Join(keysBackupDir, keysBackupName(name)))
			}
		}
		return nil
	}
	if rec, owned := u.h.Ledger.Get("uamlite", key); len(usr.UserSSHKeys) == 0 && owned && !rec.HadOriginal {
		// No keys, and the file is bellbuild's own: it goes, as in
		// Divingbell. A file that was there before stays, emptied.
		u.releaseKeys(name)
		return nil
	}
	uid, gid, home, ok := u.ids(name)
	if !ok {
		u.fail("%s: no usable passwd entry for the SSH keys", name)
		return nil
	}
	data := keysHeader
	for _, k := range usr.UserSSHKeys {
		data += k + "\n"
	}
	w, err := u.writeKeys(name, home, uid, gid, []byte(data), len(usr.UserSSHKeys) == 0)
	if err != nil {
		u.fail("%s: %w", name, err)
	}
	return w
}

// writeKeys prepares the write of name's authorized_keys: it makes ~/.ssh
// when missing, backs up a file bellbuild did not write, and puts the
// record (not saved). It returns nil when there is nothing to write.
func (u *uam) writeKeys(name, home string, uid, gid int, data []byte, onlyIfThere bool) (*keysWrite, error) {
	key := "keys/" + name
	file := path.Join(home, ".ssh/authorized_keys")
	rec, owned := u.h.Ledger.Get("uamlite", key)
	hr, err := u.h.Root().OpenRoot(strings.TrimPrefix(path.Clean(home), "/"))
	if errors.Is(err, fs.ErrNotExist) && u.h.Plan {
		// A plan runs before the home exists.
		if !onlyIfThere {
			u.change(path.Join(home, ".ssh"), "create", host.Meta{Mode: 0o700, UID: uid, GID: gid}.String())
			u.change(file, "create", "")
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("home %s: %w", home, err)
	}
	defer hr.Close()
	dirMeta := host.Meta{Mode: 0o700, UID: uid, GID: gid}
	fi, err := hr.Lstat(".ssh")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if onlyIfThere && !owned {
			return nil, nil
		}
		u.change(path.Join(home, ".ssh"), "create", dirMeta.String())
		if u.h.Plan {
			u.change(file, "create", "")
			return nil, nil
		}
		if err := hr.Mkdir(".ssh", 0o700); err != nil {
			return nil, err
		}
		if err := hr.Lchown(".ssh", uid, gid); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	case fi.Mode()&fs.ModeSymlink != 0:
		return nil, fmt.Errorf("%s is a symlink: not following it", path.Join(home, ".ssh"))
	case !fi.IsDir():
		return nil, fmt.Errorf("%s is not a directory", path.Join(home, ".ssh"))
	default:
		if m := keysMeta(fi); m != dirMeta {
			u.change(path.Join(home, ".ssh"), "update", m.String()+" -> "+dirMeta.String())
			if !u.h.Plan {
				if err := hr.Lchown(".ssh", uid, gid); err != nil {
					return nil, err
				}
				// Still a directory (Lchown did not follow): chmod is safe
				// inside the home root even if it were swapped since.
				if err := hr.Chmod(".ssh", 0o700); err != nil {
					return nil, err
				}
			}
		}
	}
	sr, err := hr.OpenRoot(".ssh")
	if err != nil {
		return nil, err
	}
	defer sr.Close()
	cur, exists, curMeta, err := readKeysFile(sr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if onlyIfThere && !exists && !owned {
		return nil, nil
	}
	want := host.Hash(data)
	if owned && exists && host.Hash(cur) != rec.Hash && host.Hash(cur) != want && host.Hash(cur) != rec.Prev {
		return nil, fmt.Errorf("%s: %w", file, host.ErrConflict)
	}
	fileMeta := host.Meta{Mode: 0o600, UID: uid, GID: gid}
	if exists && host.Hash(cur) == want && curMeta == fileMeta && owned && rec.Hash == want {
		return nil, nil
	}
	action := "create"
	if exists {
		action = "update"
	}
	u.change(file, action, "")
	if u.h.Plan {
		return nil, nil
	}
	if !owned {
		rec = host.Record{}
		if exists {
			if err := u.h.WriteFile(path.Join(keysBackupDir, keysBackupName(name)), cur, 0o600, 0, 0); err != nil {
				return nil, err
			}
			rec.HadOriginal, rec.Original = true, keysBackupName(name)
			rec.Extra = map[string]string{keysRecordMeta: curMeta.String()}
		}
	}
	rec.Prev = ""
	if exists {
		rec.Prev = host.Hash(cur)
	}
	rec.Hash = want
	u.h.Ledger.Put("uamlite", key, rec)
	return &keysWrite{name: name, home: home, data: data, meta: fileMeta}, nil
}

// keysTemp is a keysWrite's new file, written under its temporary name in
// ~/.ssh, with the roots of the home and of ~/.ssh it was made through.
type keysTemp struct {
	w      *keysWrite
	hr, sr *os.Root
	f      *os.File
}

// keysTemp starts a write writeKeys prepared, once its record is saved:
// ~/.ssh is opened again (and must still be a real directory) and the new
// file written in it under its temporary name.
func (u *uam) keysTemp(w *keysWrite) (*keysTemp, error) {
	hr, err := u.h.Root().OpenRoot(strings.TrimPrefix(path.Clean(w.home), "/"))
	if err != nil {
		return nil, fmt.Errorf("home %s: %w", w.home, err)
	}
	dir := path.Join(w.home, ".ssh")
	fi, err := hr.Lstat(".ssh")
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("%s is no longer a directory: not following it", dir)
	}
	var sr *os.Root
	if err == nil {
		sr, err = hr.OpenRoot(".ssh")
	}
	if err == nil {
		err = u.h.NoteTempDir(dir)
	}
	var f *os.File
	if err == nil {
		if f, err = createInDir(sr, "authorized_keys", w.data, w.meta); err != nil {
			sr.Close()
		}
	}
	if err != nil {
		hr.Close()
		return nil, err
	}
	return &keysTemp{w: w, hr: hr, sr: sr, f: f}, nil
}

// readKeysFile reads authorized_keys in the .ssh root, refusing a symlink.
func readKeysFile(sr *os.Root) ([]byte, bool, host.Meta, error) {
	fi, err := sr.Lstat("authorized_keys")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, host.Meta{}, nil
	}
	if err != nil {
		return nil, false, host.Meta{}, err
	}
	if !fi.Mode().IsRegular() {
		return nil, false, host.Meta{}, errors.New("not a regular file: not touching it")
	}
	f, err := sr.OpenFile("authorized_keys", os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, false, host.Meta{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, host.Meta{}, err
	}
	data := make([]byte, 0, st.Size())
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		data = append(data, buf[:n]...)
		if err != nil {
			break
		}
		if len(data) > 1<<20 {
			return nil, false, host.Meta{}, errors.New("larger than 1 MiB")
		}
	}
	return data, true, keysMeta(st), nil
}

func keysMeta(fi fs.FileInfo) host.Meta {
	m := host.Meta{Mode: fi.Mode().Perm()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		m.UID, m.GID = int(st.Uid), int(st.Gid)
	}
	return m
}

// writeInDir atomically replaces name in r: a fresh temporary file
// (O_EXCL: never one planted there), owner and mode set on the open file,
// fsync, rename, fsync of the directory.
func writeInDir(r *os.Root, name string, data []byte, m host.Meta) error {
	f, err := createInDir(r, name, data, m)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		r.Remove(host.TempName(name))
		return err
	}
	if err := commitInDir(r, name, f); err != nil {
		return err
	}
	d, err := r.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// createInDir writes data to name's temporary name in r, created
// exclusively (never a name planted there) without following links, with
// owner and mode set on the open file.
func createInDir(r *os.Root, name string, data []byte, m host.Meta) (*os.File, error) {
	tmp := host.TempName(name)
	if err := r.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chown(m.UID, m.GID)
	}
	if err == nil {
		err = f.Chmod(m.Mode)
	}
	if err != nil {
		f.Close()
		r.Remove(tmp)
		return nil, err
	}
	return f, nil
}

// commitInDir closes the synced temporary file f and renames it over name.
func commitInDir(r *os.Root, name string, f *os.File) error {
	err := f.Close()
	if err == nil {
		err = r.Rename(host.TempName(name), name)
	}
	if err != nil {
		r.Remove(host.TempName(name))
	}
	return err
}

// releaseKeys gives back a retired user's authorized_keys: the original
// if there was one, else no file. A file someone changed since bellbuild
// wrote it is a conflict and stays.
func (u *uam) releaseKeys(name string) {
	key := "keys/" + name
	rec, owned := u.h.Ledger.Get("uamlite", key)
	if !owned {
		return
	}
	forget := func() {
		if !u.h.Plan {
			u.h.Ledger.Delete("uamlite", key)
			u.h.Remove(path.Join(keysBackupDir, keysBackupName(name)))
		}
	}
	_, _, home, ok := u.ids(name)
	if !ok {
		forget()
		return
	}
	file := path.Join(home, ".ssh/authorized_keys")
	hr, err := u.h.Root().OpenRoot(strings.TrimPrefix(path.Clean(home), "/"))
	if err != nil {
		forget()
		return
	}
	defer hr.Close()
	sr, err := hr.OpenRoot(".ssh")
	if err != nil {
		forget()
		return
	}
	defer sr.Close()
	cur, exists, _, err := readKeysFile(sr)
	if err != nil {
		u.fail("%s: %s: %w", name, file, err)
		return
	}
	var orig []byte
	if rec.HadOriginal {
		if orig, err = u.h.ReadFile(path.Join(keysBackupDir, rec.Original)); err != nil {
			u.fail("%s: revert %s: backup: %w", name, file, err)
			return
		}
	}
	if exists && host.Hash(cur) != rec.Hash && host.Hash(cur) != rec.Prev && !(rec.HadOriginal && string(cur) == string(orig)) {
		u.fail("%s: %s: %w; not reverted", name, file, host.ErrConflict)
		return
	}
	if !exists && !rec.HadOriginal {
		forget()
		return
	}
	u.change(file, "revert", "")
	if u.h.Plan {
		return
	}
	if rec.HadOriginal {
		m, ok := host.ParseMeta(rec.Extra[keysRecordMeta])
		if !ok {
			m = host.Meta{Mode: 0o600}
		}
		if err = u.h.NoteTempDir(path.Join(home, ".ssh")); err == nil {
			err = writeInDir(sr, "authorized_keys", orig, m)
		}
	} else {
		err = sr.Remove("authorized_keys")
	}
	if err != nil {
		u.fail("%s: revert %s: %w", name, file, err)
		return
	}
	forget()
}
