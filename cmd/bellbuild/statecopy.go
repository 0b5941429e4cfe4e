package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/bellbuild/bellbuild/pxe/enrol"
	"github.com/bellbuild/bellbuild/pxe/fleet"
	"github.com/bellbuild/bellbuild/pxe/leases"
	pxestate "github.com/bellbuild/bellbuild/pxe/state"
	"github.com/bellbuild/bellbuild/pxe/state/etcd"
)

func init() {
	register(&command{
		name:    "state",
		summary: "serve's state: copy it between a directory and etcd",
		usage:   "copy --from DIR|etcd://... --to DIR|etcd://... [-C SITE] [--etcd-ca F --etcd-cert F --etcd-key F]",
		help: `state copy moves what serve keeps — enrolment records and approvals,
reports, and the leases — from one store to another: a state directory
(serve's --state DIR; STATE/ENV with environments) or an etcd cluster
(--state etcd://HOST:PORT,...), either way. Stop serve first: the lease
file is locked while it runs.

Nothing is lost or overwritten: a key the target holds with another value,
or an address leased there to another MAC, stops the copy with an error
(what was copied before stays; running it again after fixing the cause
goes on). The leases of a directory are its lease file (STATE/leases), in
etcd one key per address.

Exit status: 0 copied, 1 an error.

Examples:
  bellbuild state copy -C site --from /var/lib/bellbuild --to etcd://10.0.0.1:2379,10.0.0.2:2379
  bellbuild state copy -C site --from etcd://10.0.0.1:2379 --to /var/lib/bellbuild.new`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o stateCopyFlags
			o.site.register(fs)
			registerPrivate(fs, &o.private)
			fs.StringVar(&o.from, "from", "", "the store to copy from: `DIR` or etcd://HOST:PORT,...")
			fs.StringVar(&o.to, "to", "", "the store to copy to: `DIR` or etcd://HOST:PORT,...")
			o.etcd.register(fs)
			return func(ctx context.Context, args []string) error {
				args, err := positional(fs, args)
				if err != nil {
					return err
				}
				if len(args) != 1 || args[0] != "copy" {
					return fmt.Errorf("want: state copy --from ... --to ..., got %q", args)
				}
				return runStateCopy(ctx, o, os.Stdout)
			}
		},
	})
}

type stateCopyFlags struct {
	site              siteFlags
	private, from, to string
	etcd              etcdFlags
}

// copyPrefixes are the keys state copy moves (besides the leases).
var copyPrefixes = []string{enrol.NodesPrefix, fleet.KeyPrefix}

func isEtcd(spec string) bool { return etcd.IsURL(spec) || isEtcdHTTP(spec) }

// runStateCopy:
//  1. open both stores;
//  2. copy every key under copyPrefixes (refusing to overwrite another
//     value);
//  3. copy the acknowledged leases (a directory's lease file, etcd's
//     keys).
func runStateCopy(ctx context.Context, o stateCopyFlags, stdout io.Writer) error {
	if o.from == "" || o.to == "" {
		return errors.New("--from and --to are required")
	}
	site, err := o.site.load()
	if err != nil {
		return printSiteErrors(os.Stderr, err)
	}
	// 1. The stores.
	from, closeFrom, err := openState(ctx, o.from, site, o.private, o.etcd)
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	defer closeFrom()
	to, closeTo, err := openState(ctx, o.to, site, o.private, o.etcd)
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	defer closeTo()
	// 2. The keys.
	n := 0
	for _, p := range copyPrefixes {
		keys, err := from.List(ctx, p)
		if err != nil {
			return err
		}
		for _, k := range keys {
			v, err := from.Get(ctx, k)
			if err != nil {
				return err
			}
			if v == nil {
				continue
			}
			err = to.Update(ctx, k, func(old []byte) ([]byte, error) {
				switch {
				case old == nil:
					return v, nil
				case bytes.Equal(old, v):
					return nil, pxestate.ErrUnchanged
				}
				return nil, fmt.Errorf("state %s: the target holds another value: not overwritten", k)
			})
			if err != nil {
				return err
			}
			n++
		}
	}
	// 3. The leases.
	var ls []leases.Lease
	if isEtcd(o.from) {
		ls, err = leases.ReadShared(ctx, from)
	} else {
		ls, err = leases.ReadLog(filepath.Join(envDir(o.from, site), "leases"))
	}
	if err != nil {
		return fmt.Errorf("--from leases: %w", err)
	}
	if isEtcd(o.to) {
		err = leases.WriteShared(ctx, to, ls)
	} else if len(ls) > 0 {
		err = leases.WriteLog(filepath.Join(envDir(o.to, site), "leases"), ls)
	}
	if err != nil {
		return fmt.Errorf("--to leases: %w", err)
	}
	fmt.Fprintf(stdout, "copied %d keys and %d leases\n", n, len(ls))
	return nil
}
