package firstboot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bellbuild/bellbuild/firstboot/host"
	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// execModule runs the scripts of conf.exec inside the root, in key order,
// as Divingbell's exec DaemonSet did, with these rules:
//
//   - Each script is written to /var/lib/bellbuild/exec/NAME (0700) and run
//     with its args and env, chrooted in the root when the root is not "/"
//     (see inRootAt), as ./NAME from that directory like Divingbell (a
//     script's relative paths land there). Its output goes line by line to
//     the log and, for the last run, to /var/lib/bellbuild/exec-logs/NAME.log
//     (0600, the last 64 KiB).
//   - rerun_policy always (default) | never | once_successfully is tracked by
//     a hash of the whole definition (name, data, args, env, policies,
//     intervals, timeout; defaults filled in first, so an explicit default
//     equals an omitted one; env is a map, so its key order never matters;
//     args are a list, so their order does). A changed definition is a new
//     script and runs whatever its policy says.
//   - timeout (default 1800 s): SIGTERM to the script's process group, then
//     SIGKILL after execKillGrace; a timed-out run has failed.
//   - rerun_interval / retry_interval (>= 60 s; 0 = unset, which Divingbell
//     called "infinite" and treated as "no wait"): a script that last
//     succeeded (failed) runs again only once rerun_interval (retry_interval,
//     default rerun_interval) seconds have passed since its last start.
//     Divingbell never implemented *_interval_persist; we read "false" as
//     "the interval does not survive a reboot": the script is due again
//     when the kernel's boot id differs from the one of its last run.
//   - blocking_policy foreground (default): a failure is reported and the
//     next script runs; foreground_halt_pod_on_failure: a failure stops the
//     scripts after it (reported as an error naming them); background (which
//     Divingbell never implemented): the script starts and the next ones run
//     without waiting for it; the module waits for every background script
//     before it returns, so its exit status is in the ledger and the report
//     like any other (a background script runs in parallel with the
//     following scripts, not beyond the applier's run).
//   - An interrupted run (the applier killed or cancelled) counts as not run:
//     the ledger says "started" before the script starts and its result
//     only after it ends, and a "started" record is due again.
//   - Every run is a change ("run", with the reason), so a configuration with
//     rerun_policy always is never "converged"; never and once_successfully
//     converge.
//
// Ledger (module "exec"): "script/NAME" is the script file (EnsureFile);
// "state/NAME" has Extra def (definition hash), status (started, succeeded,
// failed), exit, started (Unix seconds), boot (boot id). A script that
// leaves the configuration loses its file, log and state; what it did to
// the host is not undone (nothing could know how).
type execModule struct{}

func init() { register(execModule{}) }

func (execModule) Name() string { return "exec" }

const (
	execDir            = "/var/lib/bellbuild/exec"
	execLogDir         = "/var/lib/bellbuild/exec-logs"
	execDefaultTimeout = 1800
	execMinInterval    = 60
	execLogMax         = 64 << 10
)

// execKillGrace is how long a script has between SIGTERM and SIGKILL
// (Divingbell waited 10 s). A variable so tests can shorten it.
var execKillGrace = 10 * time.Second

// execBootID returns the running kernel's boot id, which tells one boot
// from the next for the *_interval_persist: false rule.
var execBootID = func() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

var (
	execNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]*$`)
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// execDefaults fills in Divingbell's defaults, so that the definition hash
// of an explicit default equals that of an omitted one.
func execDefaults(e nodeconf.Exec) nodeconf.Exec {
	if e.RerunPolicy == "" {
		e.RerunPolicy = "always"
	}
	if e.BlockingPolicy == "" {
		e.BlockingPolicy = "foreground"
	}
	if e.Timeout == 0 {
		e.Timeout = execDefaultTimeout
	}
	if e.RetryInterval == 0 {
		e.RetryInterval = e.RerunInterval
	}
	t := true
	if e.RerunIntervalPersist == nil {
		e.RerunIntervalPersist = &t
	}
	if e.RetryIntervalPersist == nil {
		e.RetryIntervalPersist = &t
	}
	if len(e.Env) == 0 {
		e.Env = nil
	}
	if len(e.Args) == 0 {
		e.Args = nil
	}
	return e
}

// execDefHash is the hash of a script's whole definition. JSON encodes a
// map with sorted keys, so the order env was written in does not matter.
func execDefHash(name string, e nodeconf.Exec) string {
	e = execDefaults(e)
	b, err := json.Marshal(struct {
		Name string        `json:"name"`
		Def  nodeconf.Exec `json:"def"`
	}{name, e})
	if err != nil {
		panic(err) // strings, ints and maps of strings always encode
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (execModule) Check(_ context.Context, _ *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	for _, name := range sortedKeys(conf.Exec) {
		e := conf.Exec[name]
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, a...)))
		}
		if !execNameRE.MatchString(name) {
			bad("not a valid script name (letters, digits, '_', '.', '+', '-'; not starting with '.')")
		}
		if strings.TrimSpace(e.Data) == "" {
			bad("data is empty")
		}
		switch e.RerunPolicy {
		case "", "always", "never", "once_successfully":
		default:
			bad("rerun_policy %q: want always, never or once_successfully", e.RerunPolicy)
		}
		switch e.BlockingPolicy {
		case "", "foreground", "background", "foreground_halt_pod_on_failure":
		default:
			bad("blocking_policy %q: want foreground, background or foreground_halt_pod_on_failure", e.BlockingPolicy)
		}
		if e.Timeout < 0 {
			bad("timeout %d: want a positive number of seconds", e.Timeout)
		}
		if e.RerunInterval != 0 {
			if e.RerunInterval < execMinInterval {
				bad("rerun_interval %d: want at least %d seconds", e.RerunInterval, execMinInterval)
			}
			if p := e.RerunPolicy; p != "" && p != "always" {
				bad("rerun_interval needs rerun_policy always, got %q", p)
			}
		}
		if e.RetryInterval != 0 {
			if e.RetryInterval < execMinInterval {
				bad("retry_interval %d: want at least %d seconds", e.RetryInterval, execMinInterval)
			}
			if p := e.RerunPolicy; p == "never" {
				bad("retry_interval needs rerun_policy always or once_successfully, got %q", p)
			}
		}
		for _, k := range sortedKeys(e.Env) {
			if !envNameRE.MatchString(k) {
				bad("env %q: not a valid variable name", k)
			} else if strings.ContainsRune(e.Env[k], 0) {
				bad("env %s: value contains a NUL byte", k)
			}
		}
		for i, a := range e.Args {
			if strings.ContainsRune(a, 0) {
				bad("args[%d]: contains a NUL byte", i)
			}
		}
	}
	return errs
}

// execState is the "state/NAME" record's Extra, decoded.
type execState struct {
	def, status, boot string
	exit              int
	started           int64
}

func loadExecState(h *host.Host, name string) (execState, bool) {
	rec, ok := h.Ledger.Get("exec", "state/"+name)
	if !ok {
		return execState{}, false
	}
	st := execState{def: rec.Extra["def"], status: rec.Extra["status"], boot: rec.Extra["boot"]}
	st.exit, _ = strconv.Atoi(rec.Extra["exit"])
	st.started, _ = strconv.ParseInt(rec.Extra["started"], 10, 64)
	return st, true
}

// saveExecState puts a script's state in the ledger and writes it to the
// journal; with durable, it waits for the disk (a "started" record must be
// durable before the script starts).
func saveExecState(h *host.Host, name string, st execState, durable bool) error {
	extra := map[string]string{"def": st.def, "status": st.status, "started": strconv.FormatInt(st.started, 10)}
	if st.boot != "" {
		extra["boot"] = st.boot
	}
	if st.status != "started" {
		extra["exit"] = strconv.Itoa(st.exit)
	}
	h.Ledger.Put("exec", "state/"+name, host.Record{Extra: extra})
	if !durable {
		return h.FlushLedger()
	}
	return h.SaveLedger()
}

// execBatch is the run of names (in order) whose script files are written
// together: up to and including the first that may halt the scripts after
// it (blocking_policy foreground_halt_pod_on_failure).
func execBatch(conf *nodeconf.Conf, names []string) []string {
	for i, n := range names {
		if conf.Exec[n].BlockingPolicy == "foreground_halt_pod_on_failure" {
			return names[:i+1]
		}
	}
	return names
}

// execDue says whether a script runs now, and why (the reason goes into
// the report).
func execDue(e nodeconf.Exec, def string, st execState, known bool, now time.Time, boot string) (bool, string) {
	e = execDefaults(e)
	switch {
	case !known:
		return true, "new"
	case st.def != def:
		return true, "definition changed"
	case st.status == "started":
		return true, "last run was interrupted"
	case e.RerunPolicy == "never":
		return false, "ran before (rerun_policy never)"
	case e.RerunPolicy == "once_successfully" && st.status == "succeeded":
		return false, "succeeded before (rerun_policy once_successfully)"
	}
	interval, persist, what := e.RerunInterval, *e.RerunIntervalPersist, "rerun_interval"
	if st.status != "succeeded" {
		interval, persist, what = e.RetryInterval, *e.RetryIntervalPersist, "retry_interval"
	}
	if interval == 0 {
		return true, "rerun_policy " + e.RerunPolicy
	}
	if !persist && st.boot != boot {
		return true, "new boot (" + what + "_persist false)"
	}
	next := time.Unix(st.started, 0).Add(time.Duration(interval) * time.Second)
	if now.Before(next) {
		return false, fmt.Sprintf("%s: next run at %s", what, next.UTC().Format(time.RFC3339))
	}
	return true, what + " elapsed"
}

// execRun is one started script.
type execRun struct {
	name   string
	policy string
	st     execState
	done   chan execResult
}

// execResult is how a script ended.
type execResult struct {
	exit     int
	err      error // nil on exit 0
	output   []byte
	canceled bool // the applier was cancelled: the run counts as not run
}

func (execModule) Apply(ctx context.Context, h *host.Host, conf *nodeconf.Conf) []error {
	var errs []error
	want := map[string]bool{}
	for _, name := range sortedKeys(conf.Exec) {
		want["script/"+name], want["state/"+name] = true, true
	}
	var background []*execRun
	halted := ""
	names := sortedKeys(conf.Exec)
	written := map[string]bool{}
	for i, name := range names {
		e := conf.Exec[name]
		if halted != "" {
			errs = append(errs, fmt.Errorf("%s: not run: %s failed (blocking_policy foreground_halt_pod_on_failure)", name, halted))
			continue
		}
		if _, done := written[name]; !done {
			// The script files go in batches (one ledger save each), up
			// to the next script that may halt the others: a script
			// after a halt is not written.
			batch := execBatch(conf, names[i:])
			var items []host.FileItem
			for _, n := range batch {
				written[n] = true
				items = append(items, host.FileItem{Key: "script/" + n, Spec: host.FileSpec{Path: path.Join(execDir, n), Data: []byte(conf.Exec[n].Data), Mode: 0o700}})
			}
			_, ferrs := h.EnsureFiles("exec", items)
			for _, err := range ferrs {
				n, ok := strings.CutPrefix(itemKey(err), "script/")
				if !ok {
					return append(errs, err) // the ledger could not be saved
				}
				written[n] = false
				errs = append(errs, fmt.Errorf("%s: %w", n, err))
			}
		}
		if !written[name] {
			continue
		}
		def := execDefHash(name, e)
		st, known := loadExecState(h, name)
		boot := execBootID()
		due, why := execDue(e, def, st, known, h.Now(), boot)
		if !due {
			h.Log.Debug("exec: not due", "script", name, "reason", why)
			continue
		}
		h.Record(host.Change{Module: "exec", Item: name, Action: "run", To: why})
		if h.Plan {
			continue
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("%s: not run: %w", name, err))
			break
		}
		st = execState{def: def, status: "started", boot: boot, started: h.Now().Unix()}
		if err := saveExecState(h, name, st, true); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		run := &execRun{name: name, policy: execDefaults(e).BlockingPolicy, st: st, done: make(chan execResult, 1)}
		// The script starts here, in the module's goroutine (the host
		// handle is not for concurrent use); only the waiting is apart.
		wait := startScript(ctx, h, name, e)
		go func() { run.done <- wait() }()
		if run.policy == "background" {
			h.Log.Info("exec: started in the background", "script", name)
			background = append(background, run)
			continue
		}
		if err := finishRun(h, run, <-run.done); err != nil {
			errs = append(errs, err)
			if run.policy == "foreground_halt_pod_on_failure" {
				halted = name
			}
		}
	}
	for _, run := range background {
		if err := finishRun(h, run, <-run.done); err != nil {
			errs = append(errs, err)
		}
	}
	for _, key := range stale(h, "exec", "", want) {
		kind, name, _ := strings.Cut(key, "/")
		switch kind {
		case "script":
			if _, err := h.ReleaseFile("exec", key, path.Join(execDir, name)); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		case "state":
			h.Record(host.Change{Module: "exec", Item: name, Action: "remove", From: "state and log"})
			if h.Plan {
				continue
			}
			if err := h.Remove(path.Join(execLogDir, name+".log")); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			h.Ledger.Delete("exec", key)
			if err := h.SaveLedger(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// finishRun records how a run ended: its log, and its state (left
// "started" when the applier was cancelled, so that it counts as not run).
func finishRun(h *host.Host, run *execRun, res execResult) error {
	if err := h.WriteFile(path.Join(execLogDir, run.name+".log"), res.output, 0o600, 0, 0); err != nil {
		return fmt.Errorf("%s: log: %w", run.name, err)
	}
	if res.canceled {
		return fmt.Errorf("%s: %w", run.name, res.err)
	}
	st := run.st
	st.exit, st.status = res.exit, "succeeded"
	if res.err != nil {
		st.status = "failed"
	}
	h.Log.Info("exec: finished", "script", run.name, "status", st.status, "exit", st.exit)
	// What already happened: kept across a kill -9 at once, made durable
	// by the next save (the next script's start, or the module's end).
	if err := saveExecState(h, run.name, st, false); err != nil {
		return fmt.Errorf("%s: %w", run.name, err)
	}
	if res.err != nil {
		return fmt.Errorf("%s: %w", run.name, res.err)
	}
	return nil
}

// errExecTimeout means a script outlived its timeout and was terminated.
var errExecTimeout = errors.New("timed out")

// startScript starts one script and returns the function that waits for
// its end: it streams the output line by line to the log, and on timeout
// (or cancellation of ctx) sends SIGTERM to the script's process group,
// then SIGKILL after execKillGrace. Only the returned function may run in
// another goroutine: it touches nothing of h but its logger.
func startScript(ctx context.Context, h *host.Host, name string, e nodeconf.Exec) func() execResult {
	e = execDefaults(e)
	env := []string{"HOME=/root"}
	for _, k := range sortedKeys(e.Env) {
		env = append(env, k+"="+e.Env[k])
	}
	// As in Divingbell: run as ./NAME from the scripts' directory.
	cmd := inRootAt(context.WithoutCancel(ctx), h, env, execDir, "./"+name, e.Args...)
	log := h.Log
	out := &lineLog{log: log, script: name}
	cmd.Stdout, cmd.Stderr = out.stream("stdout"), out.stream("stderr")
	// Its own process group, so a timeout reaches its children too; and
	// killed with the applier (a run the applier does not see end counts
	// as not run, and must not go on beside the next attempt).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A grandchild that escaped the process group must not hold Wait
	// forever through the output pipes.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return func() execResult { return execResult{exit: -1, err: fmt.Errorf("start: %w", err)} }
	}
	return func() execResult {
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		stop := func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-waited:
			case <-time.After(execKillGrace):
				log.Warn("exec: script ignored SIGTERM; killing", "script", name)
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-waited
			}
		}
		timer := time.NewTimer(time.Duration(e.Timeout) * time.Second)
		defer timer.Stop()
		var res execResult
		var err error
		select {
		case err = <-waited:
		case <-timer.C:
			log.Error("exec: timeout; terminating", "script", name, "timeout", e.Timeout)
			stop()
			err = fmt.Errorf("%w after %d s", errExecTimeout, e.Timeout)
		case <-ctx.Done():
			stop()
			err, res.canceled = fmt.Errorf("interrupted: %w", context.Cause(ctx)), true
		}
		// The process group may outlive the script's main process (a
		// child in the background): the run is over, so is the group.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		res.output = out.bytes()
		res.exit = cmd.ProcessState.ExitCode()
		res.err = err
		return res
	}
}

// lineLog sends a script's output to the log one line at a time and keeps
// the last execLogMax bytes of both streams, interleaved as they came.
type lineLog struct {
	log     *slog.Logger
	script  string
	mu      sync.Mutex
	buf     []byte
	streams []*lineStream
}

func (l *lineLog) stream(name string) *lineStream {
	s := &lineStream{l: l, name: name}
	l.streams = append(l.streams, s)
	return s
}

// bytes flushes unterminated last lines and returns what was kept. Call it
// once the streams are closed (after Wait).
func (l *lineLog) bytes() []byte {
	for _, s := range l.streams {
		if len(s.partial) > 0 {
			l.line(s.name, s.partial)
			s.partial = nil
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.buf...)
}

func (l *lineLog) line(stream string, b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.log.Info("exec: output", "script", l.script, "stream", stream, "line", string(b))
	l.buf = append(l.buf, b...)
	l.buf = append(l.buf, '\n')
	if len(l.buf) > execLogMax {
		l.buf = l.buf[len(l.buf)-execLogMax:]
	}
}

// lineStream is one of a script's output streams.
type lineStream struct {
	l       *lineLog
	name    string
	partial []byte
}

func (s *lineStream) Write(p []byte) (int, error) {
	n := len(p)
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.partial = append(s.partial, p...)
			return n, nil
		}
		s.l.line(s.name, append(s.partial, p[:i]...))
		s.partial, p = nil, p[i+1:]
	}
}
