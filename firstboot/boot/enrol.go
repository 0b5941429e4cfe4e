package boot

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bellbuild/bellbuild/firstboot"
	"github.com/bellbuild/bellbuild/firstboot/enrol"
	"github.com/bellbuild/bellbuild/images/layout"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/pxe/enrol/wire"
)

// EnrolOptions tune the boot's enrolment (tests shorten the polls).
type EnrolOptions struct {
	// PollMin and PollMax bound the wait between polls (enrol's defaults
	// when zero).
	PollMin, PollMax time.Duration
	// Net brings the boot NIC up as the command line says
	// (bellbuild.net=); the real init does.
	Net bool
}

// enrolAtBoot is the boot's enrolment, when the command line names serve's
// endpoint (bellbuild.enrol=, which serve puts there with
// bellbuild.enrol_ca= and bellbuild.net=):
//
//  1. bring the boot NIC up (the address iPXE had);
//  2. open the node's key (made now, unless the root keeps one);
//  3. enrol, waiting for approval as long as the node's enrol_wait says
//     (default 10 minutes) and printing the pending line;
//  4. once approved: renew what is due, fetch the whole configuration,
//     have the credentials' certificates signed.
//
// It returns the configuration to apply again (nil when there is none:
// not approved in time, or a failure, printed) and the enrolment's
// state for the summary line ("" when the node does not enrol).
func enrolAtBoot(ctx context.Context, root, cmdline string, node *nodeconf.Node, o EnrolOptions, con io.Writer) (*nodeconf.Node, string) {
	url, ok := Param(cmdline, wire.ParamURL)
	if !ok || node == nil || node.Node == "" {
		return nil, ""
	}
	printf := func(format string, a ...any) { fmt.Fprintf(con, "bellbuild: "+format+"\n", a...) }
	ep := enrol.Endpoint{URL: url, Node: node.Node}
	ep.RootPin, _ = Param(cmdline, wire.ParamCA)
	if node.Conf.X509 != nil {
		ep.CA = node.Conf.X509.CA
	}
	// 1. The network.
	if v, ok := Param(cmdline, wire.ParamNet); ok {
		spec, err := ParseNetSpec(v)
		if err != nil {
			printf("error: %s: %v", wire.ParamNet, err)
		} else {
			ep.MAC = spec.MAC.String()
			if o.Net {
				if _, err := NetUp(spec, 10*time.Second); err != nil {
					printf("error: enrolment: the network: %v", err)
				}
			}
		}
	}
	if ep.MAC == "" {
		ep.MAC = nodeMAC(root, node)
	}
	// 2. The key.
	wait, err := node.Enrol.WaitFor()
	if err != nil {
		printf("error: %v; waiting %s", err, nodeconf.DefaultEnrolWait)
		wait = nodeconf.DefaultEnrolWait
	}
	c, err := enrol.New(enrol.Options{Endpoint: ep, Dir: filepath.Join(root, enrol.Dir), Console: con,
		PollMin: o.PollMin, PollMax: o.PollMax})
	if err != nil {
		printf("error: enrolment: %v", err)
		return nil, wire.StateRefused
	}
	// 3, 4.
	res, err := c.Converge(ctx, wait)
	if err != nil {
		printf("error: enrolment: %v", err)
	}
	if res.State != wire.StateApproved && res.Node == nil {
		printf("node=%s enrolment still %s after %s: carrying on without what only an enrolled node gets; the day-2 run keeps asking", node.Node, res.State, wait)
	}
	return res.Node, res.State
}

// nodeMAC is the node's first MAC this machine has, else the machine's
// first.
func nodeMAC(root string, node *nodeconf.Node) string {
	macs := MACs(filepath.Join(root, "sys/class/net"))
	for _, m := range macs {
		for _, s := range node.MACs {
			if strings.EqualFold(s, m.String()) {
				return m.String()
			}
		}
	}
	if len(macs) > 0 {
		return macs[0].String()
	}
	if len(node.MACs) > 0 {
		return node.MACs[0]
	}
	return ""
}

// mergeReports is the summary of a boot that applied twice (the public
// configuration, then the whole one): every change, and the second run's
// errors, pending and deferred items (it saw the same and more).
func mergeReports(first, second *firstboot.Report) *firstboot.Report {
	out := *second
	out.Changes = append(slices.Clone(first.Changes), second.Changes...)
	return &out
}

// AddEnrolPoll makes the new root's init keep talking to serve after the
// boot: a busybox root gets a respawn line running `bellbuild apply
// --watch --resync EVERY` on config for node (each run asks serve: a
// pending node is enrolled once approved, an enrolled one renews its
// certificates when due and fetches the configuration and the CRL); a
// systemd root gets bellbuild-enrol.service doing the same. A root with
// neither is left alone (false).
func AddEnrolPoll(root, config, node string, every time.Duration) (bool, error) {
	args := fmt.Sprintf("apply --config %s --root / --node %s --watch --resync %s", config, node, every)
	inittab := filepath.Join(root, "etc/inittab")
	if data, err := os.ReadFile(inittab); err == nil && strings.Contains(string(data), "::") {
		if strings.Contains(string(data), " apply --config "+config+" --root / --node "+node+" --watch --resync ") {
			return true, nil
		}
		f, err := os.OpenFile(inittab, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return false, err
		}
		_, err = fmt.Fprintf(f, "# bellbuild: keep asking serve to enrol this node\n::respawn:/%s %s\n", layout.Applier, args)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err == nil, err
	}
	if _, err := os.Lstat(filepath.Join(root, "lib/systemd/systemd")); err != nil {
		return false, nil
	}
	unit := "[Unit]\nDescription=bellbuild: enrol this node with serve, then keep its configuration\n" +
		"Wants=network-online.target\nAfter=network-online.target\n\n" +
		"[Service]\nExecStart=/" + layout.Applier + " " + args + "\nRestart=always\nRestartSec=30\n" +
		"StandardOutput=journal+console\nStandardError=journal+console\n\n" +
		"[Install]\nWantedBy=multi-user.target\n"
	const name = "etc/systemd/system/bellbuild-enrol.service"
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return false, err
	}
	if err := os.WriteFile(filepath.Join(root, name), []byte(unit), 0o644); err != nil {
		return false, err
	}
	if err := os.Symlink("/"+name, filepath.Join(wants, filepath.Base(name))); err != nil && !os.IsExist(err) {
		return false, err
	}
	return true, nil
}
