package state

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const childEnv = "BELLBUILD_STATE_CHILD"

// TestMain runs the tests, or is the child that TestKilledUpdates kills.
func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		child(dir)
	}
	os.Exit(m.Run())
}

// child counts up key "n" of the store in dir, printing each value once
// its Update has returned, until it is killed.
func child(dir string) {
	d, err := OpenDir(dir)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for {
		var next int
		err := d.Update(context.Background(), "n", func(old []byte) ([]byte, error) {
			n, err := parseCount(old)
			if err != nil {
				return nil, err
			}
			next = n + 1
			// A long value: a torn write would show.
			return []byte(strings.Repeat(strconv.Itoa(next)+" ", 2000)), nil
		})
		if err != nil {
			fmt.Fprintln(w, "error", err)
			w.Flush()
			os.Exit(1)
		}
		fmt.Fprintln(w, "done", next)
		w.Flush()
	}
}

// parseCount reads a value child wrote: the same number 2,000 times.
func parseCount(v []byte) (int, error) {
	if v == nil {
		return 0, nil
	}
	f := strings.Fields(string(v))
	if len(f) != 2000 {
		return 0, fmt.Errorf("torn value: %d fields", len(f))
	}
	for _, x := range f {
		if x != f[0] {
			return 0, fmt.Errorf("torn value: %s and %s", f[0], x)
		}
	}
	return strconv.Atoi(f[0])
}

// TestKilledUpdates: child processes updating one key are killed (SIGKILL)
// at random points; the value is always whole, never goes back before a
// value an Update returned, and the directory holds nothing but the key
// and its lock.
func TestKilledUpdates(t *testing.T) {
	if testing.Short() {
		t.Skip("child processes killed 20 times: skipped under -short")
	}
	dir := t.TempDir()
	d, _ := OpenDir(dir)
	confirmed := 0
	for round := range 20 {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"="+dir)
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		// Let it run a varying while, then kill it mid-stride.
		go func() {
			time.Sleep(time.Duration(5+round*3) * time.Millisecond)
			cmd.Process.Signal(syscall.SIGKILL)
		}()
		for sc.Scan() {
			var n int
			if _, err := fmt.Sscanf(sc.Text(), "done %d", &n); err != nil {
				t.Fatalf("child: %s", sc.Text())
			}
			confirmed = n
		}
		cmd.Wait()
		v, err := d.Get(context.Background(), "n")
		if err != nil {
			t.Fatal(err)
		}
		n, err := parseCount(v)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if n < confirmed {
			t.Fatalf("round %d: value %d, but an Update returned %d", round, n, confirmed)
		}
		confirmed = n
	}
	// One more Update cleans up what the kills left.
	if err := d.Update(context.Background(), "n", func(old []byte) ([]byte, error) { return old, nil }); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"n", "n.lock"}, names); diff != "" {
		t.Errorf("left in the directory (-want +got):\n%s", diff)
	}
	if confirmed == 0 {
		t.Error("no Update ever returned: the test proved nothing")
	}
}

// TestConcurrentUpdates: goroutines incrementing one key lose no update.
func TestConcurrentUpdates(t *testing.T) {
	d, _ := OpenDir(t.TempDir())
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				err := d.Update(ctx, "a/b", func(old []byte) ([]byte, error) {
					n, _ := strconv.Atoi(string(old))
					return []byte(strconv.Itoa(n + 1)), nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	v, _ := d.Get(ctx, "a/b")
	if string(v) != "200" {
		t.Errorf("after 200 increments: %q", v)
	}
}

func TestDir(t *testing.T) {
	dir := t.TempDir()
	d, _ := OpenDir(dir)
	ctx := context.Background()
	set := func(key, val string) {
		t.Helper()
		if err := d.Update(ctx, key, func([]byte) ([]byte, error) { return []byte(val), nil }); err != nil {
			t.Fatal(err)
		}
	}
	set("enrol/nodes/b", "2")
	set("enrol/nodes/a", "1")
	set("enrol/other", "x")
	set("leases", "y")
	t.Run("list", func(t *testing.T) {
		got, err := d.List(ctx, "enrol/nodes/")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"enrol/nodes/a", "enrol/nodes/b"}, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		if got, _ := d.List(ctx, "nothing/here"); len(got) != 0 {
			t.Errorf("list of nothing: %v", got)
		}
	})
	t.Run("mode", func(t *testing.T) {
		fi, err := os.Stat(filepath.Join(dir, "enrol/nodes/a"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("value file: %v %v", fi.Mode(), err)
		}
	})
	t.Run("unchanged writes nothing", func(t *testing.T) {
		before, _ := os.Stat(filepath.Join(dir, "leases"))
		if err := d.Update(ctx, "leases", func([]byte) ([]byte, error) { return nil, ErrUnchanged }); err != nil {
			t.Fatal(err)
		}
		after, _ := os.Stat(filepath.Join(dir, "leases"))
		if !os.SameFile(before, after) {
			t.Error("the file was replaced")
		}
	})
	t.Run("error writes nothing", func(t *testing.T) {
		boom := errors.New("boom")
		if err := d.Update(ctx, "leases", func([]byte) ([]byte, error) { return []byte("z"), boom }); !errors.Is(err, boom) {
			t.Fatalf("err = %v", err)
		}
		if v, _ := d.Get(ctx, "leases"); string(v) != "y" {
			t.Errorf("value %q after a failed update", v)
		}
	})
	t.Run("delete", func(t *testing.T) {
		if err := d.Update(ctx, "enrol/other", func([]byte) ([]byte, error) { return nil, nil }); err != nil {
			t.Fatal(err)
		}
		if v, err := d.Get(ctx, "enrol/other"); v != nil || err != nil {
			t.Errorf("after delete: %q %v", v, err)
		}
	})
	t.Run("bad keys", func(t *testing.T) {
		for _, k := range []string{"", "/abs", "a/../b", "a//b", "A", "a/.hidden", "x.lock", "a/b/", strings.Repeat("a", 600)} {
			if _, err := d.Get(ctx, k); !errors.Is(err, ErrBadKey) {
				t.Errorf("Get(%q): %v", k, err)
			}
			if err := d.Update(ctx, k, func([]byte) ([]byte, error) { return []byte("x"), nil }); !errors.Is(err, ErrBadKey) {
				t.Errorf("Update(%q): %v", k, err)
			}
		}
	})
	t.Run("cancelled wait for the lock", func(t *testing.T) {
		held := make(chan struct{})
		release := make(chan struct{})
		go d.Update(ctx, "leases", func(old []byte) ([]byte, error) {
			close(held)
			<-release
			return nil, ErrUnchanged
		})
		<-held
		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		err := d.Update(cctx, "leases", func([]byte) ([]byte, error) { return []byte("late"), nil })
		close(release)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want the context's", err)
		}
	})
}

// TestReadMakesNothing: a store never written reads as empty, and reading
// it makes no directory.
func TestReadMakesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if v, err := d.Get(ctx, "enrol/nodes/a"); v != nil || err != nil {
		t.Errorf("Get: %q %v", v, err)
	}
	if keys, err := d.List(ctx, "enrol/nodes/"); len(keys) != 0 || err != nil {
		t.Errorf("List: %v %v", keys, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("reading made %s (%v)", dir, err)
	}
	if err := d.Update(ctx, "enrol/nodes/a", func([]byte) ([]byte, error) { return []byte("x"), nil }); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("after the first update: %v %v", fi, err)
	}
}
