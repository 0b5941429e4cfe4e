package leases

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// ReadLog returns the acknowledged leases of the lease file at path
// (none when it does not exist), sorted by address. It takes the file's
// lock: a serve using it must be stopped.
func ReadLog(path string) ([]Lease, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	s, err := Open(path, Options{})
	if err != nil {
		return nil, err
	}
	out := s.Leases()
	return out, s.Close()
}

// WriteLog writes leases as a new lease file at path (its compacted form):
// temporary file, fsync, rename. A file already there is refused.
func WriteLog(path string, ls []Lease) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("leases: %s exists already", path)
	}
	ls = append([]Lease(nil), ls...)
	sort.Slice(ls, func(i, j int) bool { return ls[i].IP.Less(ls[j].IP) })
	var b bytes.Buffer
	b.WriteString("# bellbuild leases v1\n")
	for _, l := range ls {
		b.WriteString(record('L', l.IP, l.MAC.String(), l.Expiry))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("leases: writing %s: %w", path, err)
	}
	return nil
}

// ReadShared returns the acknowledged leases a shared store holds,
// sorted by address.
func ReadShared(ctx context.Context, st Shared) ([]Lease, error) {
	keys, err := st.List(ctx, KeyPrefix)
	if err != nil {
		return nil, err
	}
	var out []Lease
	for _, k := range keys {
		ip, err := netip.ParseAddr(strings.TrimPrefix(k, KeyPrefix))
		if err != nil || !ip.Is4() {
			continue
		}
		v, err := st.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		if v == nil {
			continue
		}
		b, err := parseShared(ip, v)
		if err != nil {
			return nil, err
		}
		if b.state == leased {
			out = append(out, b.lease())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}

// WriteShared puts leases into a shared store, each by a transaction
// that refuses an address bound to another MAC there.
func WriteShared(ctx context.Context, st Shared, ls []Lease) error {
	for _, l := range ls {
		b := binding{ip: l.IP, mac: l.MAC.String(), state: leased, expiry: l.Expiry}
		err := st.Update(ctx, sharedKey(l.IP), func(old []byte) ([]byte, error) {
			if old != nil {
				if cur, err := parseShared(l.IP, old); err == nil && cur.mac != b.mac && cur.mac != "" {
					return nil, fmt.Errorf("%s: %w (%s there, %s copied)", l.IP, ErrInUse, cur.mac, b.mac)
				}
			}
			return sharedValue(b), nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
