package firstboot

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

// watchNode is a node that writes motd.
func watchNode(motd string) *nodeconf.Node {
	return &nodeconf.Node{Node: "n1", Profile: "p", Conf: nodeconf.Conf{
		Files: map[string]nodeconf.File{"/etc/motd": {Content: motd}},
	}}
}

// encodeNode is what `bellbuild render -o json` writes for n.
func encodeNode(t *testing.T, n *nodeconf.Node) []byte {
	t.Helper()
	data, err := nodeconf.Marshal(n, nodeconf.JSON)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// watcher runs Watch on a real root in the background, as `bellbuild
// apply --watch --offline` does, until the test ends.
type watcher struct {
	t              *testing.T
	root, conf     string
	stdout, stderr testtool.Buffer
	done           chan error
}

func startWatch(t *testing.T, conf string, interval time.Duration) *watcher {
	t.Helper()
	return startWatchUpgrade(t, conf, interval, nil)
}

// startWatchUpgrade is startWatch with an upgrade after each run (the
// hook cmd wires to the upgrader).
func startWatchUpgrade(t *testing.T, conf string, interval time.Duration, upgrade func(context.Context, *nodeconf.Node) RebootState) *watcher {
	t.Helper()
	w := &watcher{t: t, root: t.TempDir(), conf: conf, done: make(chan error, 1)}
	buildRoot(t, w.root, rootTree{"/etc/motd": fileEntry("0644", "0:0", "Debian original\n")})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		w.done <- Watch(ctx, WatchOptions{Interval: interval, Run: RunOptions{
			Source:  Source{Path: conf, Machine: Machine{Hostname: "n1"}},
			Options: Options{RootDir: w.root},
			Stdout:  &w.stdout, Stderr: &w.stderr,
			Upgrade: upgrade,
		}})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-w.done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return w
}

func (w *watcher) runs() int {
	return strings.Count(w.stdout.String(), "bellbuild: node=n1 profile=p ")
}

func (w *watcher) motd() string {
	b, _ := os.ReadFile(filepath.Join(w.root, "etc/motd"))
	return string(b)
}

func (w *watcher) waitFor(what string, ok func() bool) {
	w.t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			w.t.Fatalf("waiting for %s\nstdout:\n%s\nstderr:\n%s", what, w.stdout.String(), w.stderr.String())
		}
	}
}

// replace writes data to path by rename, as `bellbuild config write` does
// on a volume.
func replace(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// TestWatch runs Watch on a root and changes its configuration under it:
// a new content is applied once, the same bytes written again are not, a
// broken file is reported and the watch goes on, and cancelling the
// context ends it without an error.
func TestWatch(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "node.json")
	replace(t, conf, encodeNode(t, watchNode("first\n")))
	w := startWatch(t, conf, 50*time.Millisecond)

	w.waitFor("the first run", func() bool { return w.motd() == "first\n" && w.runs() == 1 })
	replace(t, conf, encodeNode(t, watchNode("second\n")))
	w.waitFor("the rerun after a change", func() bool { return w.motd() == "second\n" && w.runs() == 2 })

	// The same bytes again: nothing to do, no run.
	replace(t, conf, encodeNode(t, watchNode("second\n")))
	time.Sleep(500 * time.Millisecond) // ten intervals
	if n := w.runs(); n != 2 {
		t.Errorf("%d runs after rewriting the same content, want 2:\n%s", n, w.stdout.String())
	}

	// A broken file is reported, not run; the watch survives it.
	replace(t, conf, []byte("{not json"))
	w.waitFor("the broken file's error", func() bool { return strings.Contains(w.stderr.String(), conf) })
	replace(t, conf, encodeNode(t, watchNode("third\n")))
	w.waitFor("the run after the error", func() bool { return w.motd() == "third\n" && w.runs() == 3 })
}

// TestWatchWakesForRebootWindow: a run whose upgrade waits for a reboot
// window (RebootState.At) is followed by another at that time, the
// configuration unchanged (in the window, that run's upgrade reboots),
// and by no more.
func TestWatchWakesForRebootWindow(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "node.json")
	replace(t, conf, encodeNode(t, watchNode("first\n")))
	var mu sync.Mutex
	var calls []time.Time
	at := time.Now().Add(time.Second).Truncate(time.Second)
	w := startWatchUpgrade(t, conf, 20*time.Millisecond, func(context.Context, *nodeconf.Node) RebootState {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, time.Now())
		if len(calls) == 1 {
			return RebootState{Pending: "pending", At: at}
		}
		return RebootState{} // rebooted
	})
	w.waitFor("the run at the window", func() bool { return w.runs() == 2 })
	time.Sleep(300 * time.Millisecond) // 15 intervals
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 || calls[1].Before(at) {
		t.Errorf("upgrades at %v, want one before %v and one at it", calls, at)
	}
	want := "reboot=pending reboot_at=" + at.UTC().Format(time.RFC3339) + "\n"
	if first, _, _ := strings.Cut(w.stdout.String(), "\n"); !strings.HasSuffix(first+"\n", want) {
		t.Errorf("the first summary %q does not end with %q", first, want)
	}
}

// TestWatchWaitsForCompleteFile writes a rendered node in place in two
// halves, with a pause of many intervals between them: nothing is applied
// while the file is half-written, however long it stays so (it is reported
// once, and no run fails), and the whole file is applied once complete.
func TestWatchWaitsForCompleteFile(t *testing.T) {
	for _, format := range []nodeconf.Format{nodeconf.JSON, nodeconf.YAML} {
		t.Run(string(format), func(t *testing.T) {
			conf := filepath.Join(t.TempDir(), "node."+string(format))
			first, err := nodeconf.Marshal(watchNode("first\n"), format)
			if err != nil {
				t.Fatal(err)
			}
			replace(t, conf, first)
			w := startWatch(t, conf, 20*time.Millisecond)
			w.waitFor("the first run", func() bool { return w.motd() == "first\n" && w.runs() == 1 })

			// The new file, written in place by a slow writer: its first
			// half ends at a line, so in YAML it parses.
			second, err := nodeconf.Marshal(watchNode("second\nmore\n"), format)
			if err != nil {
				t.Fatal(err)
			}
			half := strings.LastIndexByte(string(second[:len(second)/2]), '\n') + 1
			f, err := os.OpenFile(conf, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(second[:half]); err != nil {
				t.Fatal(err)
			}
			w.waitFor("the half-written file reported", func() bool {
				return strings.Contains(w.stderr.String(), "not applied: waiting for a complete configuration")
			})
			time.Sleep(500 * time.Millisecond) // 25 more intervals
			if got := w.motd(); got != "first\n" || w.runs() != 1 {
				t.Fatalf("a half-written file was applied: motd %q, %d runs\nstdout:\n%s", got, w.runs(), w.stdout.String())
			}
			if _, err := f.Write(second[half:]); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			w.waitFor("the complete file applied", func() bool { return w.motd() == "second\nmore\n" && w.runs() == 2 })
			if n := strings.Count(w.stderr.String(), "waiting for a complete configuration"); n != 1 {
				t.Errorf("the half-written file was reported %d times, want once:\n%s", n, w.stderr.String())
			}
			if strings.Contains(w.stderr.String(), "retrying") {
				t.Errorf("a run failed:\n%s", w.stderr.String())
			}
		})
	}
}

// TestWatchOptions: bad timings are refused before anything runs.
func TestWatchOptions(t *testing.T) {
	for _, tc := range []struct {
		o   WatchOptions
		msg string
	}{
		{WatchOptions{Interval: -time.Second}, "watch interval -1s: must be positive"},
		{WatchOptions{Resync: -time.Second}, "resync -1s: must not be negative"},
	} {
		tc.o.Run.Stdout, tc.o.Run.Stderr = io.Discard, io.Discard
		if err := Watch(context.Background(), tc.o); err == nil || err.Error() != tc.msg {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.msg)
		}
	}
}
