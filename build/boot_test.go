package build

import (
	"context"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles"
	"github.com/bellbuild/bellbuild/testvm"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// bootCase is one boot: a profile baked from a site, booted with extra
// kernel arguments and NICs, and the console lines it must show, in order
// (regular expressions matched against whole lines).
type bootCase struct {
	name    string
	site    func(testing.TB) *profiles.Site
	profile string
	cmdline string
	nics    []testvm.NIC
	want    []string
	// then, when set, runs against the booted VM after want.
	then func(t *testing.T, vm *testtool.VM)
}

// baked is a profile baked for boot tests.
type baked struct {
	dir     string
	cmdline string
}

func defaultSite(testing.TB) *profiles.Site { return profiles.Default() }

// TestBoot boots baked images in QEMU (TCG) and reads, on the serial
// console, the applier's summary and the values the node's configuration
// put in force inside the VM.
func TestBoot(t *testing.T) {
	testtool.SkipVM(t)
	needHost(t)
	cases := []bootCase{
		{
			name:    "minimal",
			site:    defaultSite,
			profile: "minimal",
			want: []string{
				`^bellbuild: node=- profile=minimal changes=[1-9]\d* errors=0$`,
				`^bellbuild: busybox init: shell on ttyS0$`,
			},
			then: func(t *testing.T, vm *testtool.VM) {
				// The shell is the stage's: busybox init handed over.
				vm.Wait(`^bellbuild:/# `)
				vm.Send("echo swappiness=$(cat /proc/sys/vm/swappiness) pid1=$(cat /proc/1/comm)\n")
				vm.Wait(`^swappiness=10 pid1=init$`)
				// Power-off is seen as QEMU ending.
				vm.Send("poweroff -f\n")
				ctx, cancel := context.WithTimeout(context.Background(), testtool.BootTimeout)
				defer cancel()
				if err := vm.VM.Wait(ctx); err != nil {
					t.Fatalf("after poweroff -f: %v", err)
				}
			},
		},
		{
			// No bellbuild.node=: the NIC's MAC is demo-2's in the
			// embedded inventory.
			name:    "demo by MAC",
			site:    defaultSite,
			profile: "demo",
			nics:    []testvm.NIC{{MAC: "52:54:00:00:00:02"}},
			want: []string{
				`^\[010-report.sh\] demo: domainname=db.demo.bellbuild$`,
				`^\[010-report.sh\] demo: swappiness=60$`,
				// demo-base's inline user_crypt_passwd is a secret
				// whatever its form: a shared image never holds it.
				`^bellbuild: node=demo-2 profile=demo changes=[1-9]\d* errors=0 pending=1$`,
			},
		},
		{
			name:    "fleet n1",
			site:    testSite,
			profile: "fleet",
			cmdline: "bellbuild.node=n1",
			want: []string{
				`^\[010-report.sh\] check: swappiness=31$`,
				`^\[010-report.sh\] check: domainname=n1.fleet.test$`,
				`^\[010-report.sh\] check: passwd=ops:/home/ops$`,
				`^\[010-report.sh\] check: limits=ops soft nofile 3001$`,
				`^\[010-report.sh\] check: keys=n1@test$`,
				`^bellbuild: node=n1 profile=fleet changes=[1-9]\d* errors=0$`,
			},
		},
		{
			name:    "fleet n2",
			site:    testSite,
			profile: "fleet",
			cmdline: "bellbuild.node=n2",
			want: []string{
				`^\[010-report.sh\] check: swappiness=42$`,
				`^\[010-report.sh\] check: domainname=n2.fleet.test$`,
				`^\[010-report.sh\] check: passwd=ops:/home/ops$`,
				`^\[010-report.sh\] check: limits=ops soft nofile 4002$`,
				`^\[010-report.sh\] check: keys=n2@test$`,
				`^bellbuild: node=n2 profile=fleet changes=[1-9]\d* errors=0$`,
			},
		},
	}
	// Each profile is baked once, into the parent test's directories, and
	// booted by as many cases as use it.
	opts := testOptions(t)
	images := map[string]baked{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			im, ok := images[tc.profile]
			if !ok {
				s := tc.site(t)
				o := opts
				o.Site = s
				m, err := Image(context.Background(), spec(t, s, tc.profile), o)
				if err != nil {
					t.Fatal(err)
				}
				im = baked{dir: m.Stats.Dir, cmdline: m.Cmdline}
				images[tc.profile] = im
			}
			// panic=-1 with QEMU's -no-reboot: a failed boot ends the VM
			// at once instead of waiting for the timeout.
			vm := testtool.NewVM(t, testvm.Config{
				Kernel:  filepath.Join(im.dir, KernelFile),
				Initrd:  filepath.Join(im.dir, InitramfsFile),
				Cmdline: im.cmdline + " panic=-1 " + tc.cmdline,
				NICs:    tc.nics,
			})
			start := time.Now()
			for _, re := range tc.want {
				vm.Wait(re)
			}
			t.Logf("booted to the applier's summary in %s", time.Since(start).Round(time.Second))
			// Exactly one summary line.
			if n := len(regexp.MustCompile(`(?m)^bellbuild: node=`).FindAllString(vm.Console(), -1)); n != 1 {
				t.Errorf("%d summary lines on the console, want 1", n)
			}
			if tc.then != nil {
				tc.then(t, vm)
			}
		})
	}
}
