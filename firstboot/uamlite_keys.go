package firstboot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
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

// ensureKeys writes ~/.ssh/authorized_keys, unless the keys are Unmanaged.
// With no keys, the file bellbuild wrote is removed; a file it found is
// kept but emptied (its original stays in the backup for a revert).
func (u *uam) ensureKeys(usr nodeconf.User) {
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
		return
	}
	if rec, owned := u.h.Ledger.Get("uamlite", key); len(usr.UserSSHKeys) == 0 && owned && !rec.HadOriginal {
		// No keys, and the file is bellbuild's own: it goes, as in
		// Divingbell. A file that was there before stays, emptied.
		u.releaseKeys(name)
		return
	}
	uid, gid, home, ok := u.ids(name)
	if !ok {
		u.fail("%s: no usable passwd entry for the SSH keys", name)
		return
	}
	data := keysHeader
	for _, k := range usr.UserSSHKeys {
		data += k + "\n"
	}
	if err := u.writeKeys(name, home, uid, gid, []byte(data), len(usr.UserSSHKeys) == 0); err != nil {
		u.fail("%s: %w", name, err)
	}
}

func (u *uam) writeKeys(name, home string, uid, gid int, data []byte, onlyIfThere bool) error {
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
		return nil
	}
	if err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	defer hr.Close()
	dirMeta := host.Meta{Mode: 0o700, UID: uid, GID: gid}
	fi, err := hr.Lstat(".ssh")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if onlyIfThere && !owned {
			return nil
		}
		u.change(path.Join(home, ".ssh"), "create", dirMeta.String())
		if u.h.Plan {
			u.change(file, "create", "")
			return nil
		}
		if err := hr.Mkdir(".ssh", 0o700); err != nil {
			return err
		}
		if err := hr.Lchown(".ssh", uid, gid); err != nil {
			return err
		}
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symlink: not following it", path.Join(home, ".ssh"))
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", path.Join(home, ".ssh"))
	default:
		if m := keysMeta(fi); m != dirMeta {
			u.change(path.Join(home, ".ssh"), "update", m.String()+" -> "+dirMeta.String())
			if !u.h.Plan {
				if err := hr.Lchown(".ssh", uid, gid); err != nil {
					return err
				}
				// Still a directory (Lchown did not follow): chmod is safe
				// inside the home root even if it were swapped since.
				if err := hr.Chmod(".ssh", 0o700); err != nil {
					return err
				}
			}
		}
	}
	sr, err := hr.OpenRoot(".ssh")
	if err != nil {
		return err
	}
	defer sr.Close()
	cur, exists, curMeta, err := readKeysFile(sr)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if onlyIfThere && !exists && !owned {
		return nil
	}
	want := host.Hash(data)
	if owned && exists && host.Hash(cur) != rec.Hash && host.Hash(cur) != want && host.Hash(cur) != rec.Prev {
		return fmt.Errorf("%s: %w", file, host.ErrConflict)
	}
	fileMeta := host.Meta{Mode: 0o600, UID: uid, GID: gid}
	if exists && host.Hash(cur) == want && curMeta == fileMeta && owned && rec.Hash == want {
		return nil
	}
	action := "create"
	if exists {
		action = "update"
	}
	u.change(file, action, "")
	if u.h.Plan {
		return nil
	}
	if !owned {
		rec = host.Record{}
		if exists {
			if err := u.h.WriteFile(path.Join(keysBackupDir, keysBackupName(name)), cur, 0o600, 0, 0); err != nil {
				return err
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
	if err := u.h.SaveLedger(); err != nil {
		return err
	}
	return writeInDir(sr, "authorized_keys", data, fileMeta)
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
	tmp := "." + name + ".bellbuild-tmp"
	if err := r.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chown(m.UID, m.GID)
	}
	if werr == nil {
		werr = f.Chmod(m.Mode)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = r.Rename(tmp, name)
	}
	if werr != nil {
		r.Remove(tmp)
		return werr
	}
	d, err := r.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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
		err = writeInDir(sr, "authorized_keys", orig, m)
	} else {
		err = sr.Remove("authorized_keys")
	}
	if err != nil {
		u.fail("%s: revert %s: %w", name, file, err)
		return
	}
	forget()
}
