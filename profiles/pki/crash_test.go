package pki

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashEnv makes the test binary a crash child (see TestMain).
const crashEnv = "BELLBUILD_PKI_CRASH_CHILD"

// TestMain runs the tests, or, with $BELLBUILD_PKI_CRASH_CHILD set by
// TestSerialsSurviveKill, is the child it kills.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
	}
	os.Exit(m.Run())
}

// crashChild opens the PKI of the site under dir and issues user
// certificates one call at a time (now and then two in one call),
// printing each serial once Issue has returned it, until it is killed.
func crashChild(dir string) {
	s, err := Open(Options{Site: filepath.Join(dir, "site")})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		r, _ := UserRequest("u" + strconv.Itoa(i))
		reqs := []Request{r}
		if i%7 == 0 {
			r2, _ := UserRequest("v" + strconv.Itoa(i))
			reqs = append(reqs, r2)
		}
		out, err := s.Issue(context.Background(), reqs...)
		if err != nil {
			fmt.Fprintln(w, "error", err)
			w.Flush()
			os.Exit(1)
		}
		for _, is := range out {
			fmt.Fprintln(w, "issued", is.Serial)
		}
		w.Flush()
	}
}

// TestSerialsSurviveKill: 1,000 serials issued by child processes killed
// (SIGKILL) at random points: every serial a child saw returned is in the
// log, no serial is in it twice, and the log still opens and appends.
func TestSerialsSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 fsynced issues in killed child processes: skipped under -short")
	}
	s := newSite(t, func(o *Options) { o.Now = time.Now }) // the child's clock
	dir := filepath.Dir(s.opts.Site)
	seen := map[string]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	kills := 0
	for len(seen) < 1000 {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill after a random number of lines, or a random time after the
		// first: either lands anywhere in an issue (signing, the write,
		// the fsync).
		after := rng.IntN(120) + 1
		delay := time.Duration(rng.IntN(20)) * time.Millisecond
		sc := bufio.NewScanner(stdout)
		n := 0
		var timer *time.Timer
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 0 {
				continue
			}
			if f[0] == "error" {
				t.Fatalf("child: %s", sc.Text())
			}
			if f[0] == "issued" {
				if seen[f[1]] {
					t.Fatalf("serial %s returned twice", f[1])
				}
				seen[f[1]] = true
				n++
			}
			if n == 1 && timer == nil {
				timer = time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
			}
			if n >= after || len(seen) >= 1000 {
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		if timer != nil {
			timer.Stop()
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		kills++
	}
	// The log holds every serial a child was given, each once (Open
	// refuses a serial recorded twice), and still takes appends.
	st := s.reopen(t)
	for serial := range seen {
		if e, ok := st.st.serials[serial]; !ok || e.rec.Op != "issue" {
			t.Errorf("serial %s was returned but is not in the log", serial)
		}
	}
	if _, err := st.Issue(context.Background(), userReq(t, "after")); err != nil {
		t.Fatalf("issuing after the kills: %v", err)
	}
	if _, err := Open(s.opts); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d serials returned, %d in the log, %d kills", len(seen), len(st.st.leaves), kills)
}

// TestTornLog: a line cut short by a crash is ignored by readers and cut
// off by the next writer.
func TestTornLog(t *testing.T) {
	s := newSite(t)
	is := issueOne(t, s.Store, userReq(t, "a"))
	logPath := filepath.Join(s.opts.Site, "private/pki/log.jsonl")
	f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"op":"issue","time":"2030-01-01T12:00:00Z","serial":"4`)
	f.Close()
	st := s.reopen(t)
	if _, ok := st.st.serials[is.Serial]; !ok || len(st.st.leaves) != 1 {
		t.Fatalf("after a torn line: %d leaves", len(st.st.leaves))
	}
	issueOne(t, st, userReq(t, "b"))
	data, _ := os.ReadFile(logPath)
	if strings.Contains(string(data), `"serial":"4`+"\n") || !strings.HasSuffix(string(data), "\n") {
		t.Errorf("the torn line is still there:\n%s", data)
	}
	if n := len(s.reopen(t).st.leaves); n != 2 {
		t.Errorf("%d leaves after the repair, want 2", n)
	}
}
