// Package runner runs a module's scripts (SPEC §9): prestart, start_prim,
// stop_prim, start_both, stop_both, start_second, stop_second, poststop.
//
// Each script runs in its own process group, in the module directory, with
// stdin on /dev/null, a minimal environment (never the agent's own) plus the
// Runner's Env, and its arguments: current state, next state, action.
// stdout and stderr share one pipe and every line goes to the module event
// log as it comes.
//
// Background daemons: a script that starts a daemon with `cmd &` lets it
// inherit stdout/stderr. Run returns as soon as the script itself exits (it
// does not wait for the pipe to close); output the daemon writes later is
// still logged (field background=true) until the daemon closes the pipe.
// Daemons should redirect their output (`cmd >>log 2>&1 &`) to keep the
// module log readable. A timeout kills the whole process group, daemons the
// script started included.
package runner

import (
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
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/eventlog"
)

// BaseEnv is the environment every script starts from.
var BaseEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
}

const (
	maxLine   = 4 << 10 // longest output line logged; the rest is cut
	lastLines = 5       // output lines kept in Result.LastLines

	// termGrace is how long a killed group gets between SIGTERM and SIGKILL.
	termGrace = 2 * time.Second
	// drainWait bounds how long Run waits, after the script exited, for
	// the output it wrote to be logged.
	drainWait = 500 * time.Millisecond
	// reapWait bounds the wait for a SIGKILLed script to be reaped (a
	// process stuck in the kernel, e.g. on a dead NFS mount, never is).
	reapWait = 5 * time.Second
)

// Runner runs the scripts of one module. It holds no mutable state: one
// Runner may run several scripts at once.
type Runner struct {
	BinDir string        // <moduledir>/bin; scripts run in its parent
	Env    []string      // added to BaseEnv (and overriding it), e.g. TANDEM_MODULE=db
	Log    *eventlog.Log // script events and output; nil drops them
}

// Result is the outcome of one script run.
type Result struct {
	Script    string
	Ran       bool // false if the script does not exist
	ExitCode  int  // -1 when the script did not exit by itself (timeout, signal, failed to start)
	Forced    bool // a stop script timed out and was run again with "force"
	TimedOut  bool
	Duration  time.Duration
	LastLines []string // last output lines (at most 5)
	Err       error    // could not run, or killed; nil for a plain non-zero exit

	timeout   time.Duration
	firstTook time.Duration // time spent in the run that timed out before the forced one
}

// OK reports whether the script succeeded or does not exist.
func (r Result) OK() bool {
	return !r.Ran || (r.Err == nil && !r.TimedOut && r.ExitCode == 0)
}

// Reason describes the result for a human, e.g.
// "start_prim exited 3 after 1.2s: cannot bind port 5432".
func (r Result) Reason() string {
	var s string
	switch {
	case !r.Ran && r.Err == nil:
		s = r.Script + ": not present, skipped"
	case r.TimedOut:
		s = fmt.Sprintf("%s timed out after %s", r.Script, fmtDur(r.timeout))
	case r.Err != nil && r.ExitCode < 0:
		s = fmt.Sprintf("%s: %v", r.Script, r.Err)
	default:
		s = fmt.Sprintf("%s exited %d after %s", r.Script, r.ExitCode, fmtDur(r.Duration-r.firstTook))
		if r.ExitCode != 0 && len(r.LastLines) > 0 {
			s += ": " + r.LastLines[len(r.LastLines)-1]
		}
	}
	if r.Forced {
		s = fmt.Sprintf("%s timed out after %s, forced run: %s", r.Script, fmtDur(r.timeout), s)
	}
	return s
}

// Run runs a start-type script BinDir/name with args; on timeout (<= 0: no
// limit) or ctx cancellation its process group is killed.
func (r *Runner) Run(ctx context.Context, name string, args []string, timeout time.Duration) Result {
	return r.run(ctx, name, args, timeout)
}

// RunStop runs a stop-type script. If it times out, its process group is
// killed and it is run once more with args[2] (the action) set to "force"
// and the same timeout; the Result then has Forced set and describes the
// forced run.
func (r *Runner) RunStop(ctx context.Context, name string, args []string, timeout time.Duration) Result {
	res := r.run(ctx, name, args, timeout)
	if !res.TimedOut || ctx.Err() != nil {
		return res
	}
	forced := make([]string, max(len(args), 3))
	copy(forced, args)
	forced[2] = "force"
	r.Log.Add(eventlog.KindScript, name+" timed out, running it again with force",
		"script", name, "timeout", fmtDur(timeout))
	res2 := r.run(ctx, name, forced, timeout)
	res2.Forced = true
	res2.firstTook = res.Duration
	res2.Duration += res.Duration
	return res2
}

func (r *Runner) run(ctx context.Context, name string, args []string, timeout time.Duration) Result {
	res := Result{Script: name, ExitCode: -1, timeout: timeout}
	path, err := r.check(name)
	if err != nil {
		res.Ran = !errors.Is(err, os.ErrNotExist)
		if res.Ran {
			res.Err = err
			r.Log.Add(eventlog.KindError, res.Reason(), "script", name)
		}
		return res
	}
	res.Ran = true
	if err := ctx.Err(); err != nil {
		res.Err = fmt.Errorf("not started: %w", context.Cause(ctx))
		return res
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		res.Err = fmt.Errorf("create output pipe: %w", err)
		r.Log.Add(eventlog.KindError, res.Reason(), "script", name)
		return res
	}
	cmd := &exec.Cmd{
		Path: path,
		Args: append([]string{path}, args...),
		Env:  append(append([]string(nil), BaseEnv...), r.Env...),
		Dir:  filepath.Dir(filepath.Clean(r.BinDir)),
		// Our own *os.File: exec starts no copying goroutine and Wait
		// returns when the script exits, even if a daemon keeps the pipe.
		Stdout:      pw,
		Stderr:      pw,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	r.Log.Add(eventlog.KindScript, strings.TrimSpace(name+" "+strings.Join(args, " ")),
		"script", name, "timeout", fmtDur(timeout))
	start := time.Now()
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		res.Err = startError(err)
		res.Duration = time.Since(start)
		r.Log.Add(eventlog.KindError, res.Reason(), "script", name)
		return res
	}
	out := newOutput(pr, r.Log, name)
	go out.loop()

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	tctx, cancel := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		tctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()

	var werr error
	select {
	case werr = <-done:
	case <-tctx.Done():
		res.TimedOut = ctx.Err() == nil
		werr = killGroup(cmd.Process.Pid, done)
		if !res.TimedOut {
			res.Err = fmt.Errorf("cancelled (%v), process group killed", context.Cause(ctx))
		}
	}
	res.Duration = time.Since(start)
	res.LastLines = out.cut()

	var ee *exec.ExitError
	switch {
	case werr == nil:
		res.ExitCode = 0
	case errors.As(werr, &ee):
		res.ExitCode = ee.ExitCode() // -1 when killed by a signal
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && res.Err == nil && !res.TimedOut {
			res.Err = fmt.Errorf("killed by signal %v after %s", ws.Signal(), fmtDur(res.Duration))
		}
	default:
		if res.Err == nil {
			res.Err = werr
		}
	}
	if res.TimedOut {
		res.ExitCode = -1
	}

	kv := []any{"script", name, "exit_code", res.ExitCode, "duration", fmtDur(res.Duration)}
	if res.TimedOut {
		kv = append(kv, "timed_out", true)
	}
	r.Log.Add(eventlog.KindScript, res.Reason(), kv...)
	return res
}

// check returns the script's path, an error wrapping os.ErrNotExist if it
// does not exist, or why it cannot run.
func (r *Runner) check(name string) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return "", fmt.Errorf("invalid script name %q (want a file name in %s)", name, r.BinDir)
	}
	if r.BinDir == "" {
		return "", errors.New("runner has no bin directory set")
	}
	path := filepath.Join(r.BinDir, name)
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, lerr := os.Lstat(path); lerr == nil {
			return "", fmt.Errorf("%s is a symbolic link to a missing file", path)
		}
		return "", err
	}
	if err != nil {
		return "", fmt.Errorf("cannot use %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not executable (chmod +x it)", path)
	}
	return path, nil
}

// startError turns an exec failure into an actionable error.
func startError(err error) error {
	switch {
	case errors.Is(err, syscall.ENOEXEC):
		return errors.New("exec format error (add a #! line)")
	case errors.Is(err, syscall.ENOENT):
		return errors.New("interpreter not found (check the #! line)")
	case errors.Is(err, syscall.EACCES):
		return errors.New("permission denied (is the file or its #! interpreter executable, or the filesystem mounted noexec?)")
	}
	return err
}

// killGroup ends the process group pgid: SIGTERM, up to termGrace for the
// whole group to go, then SIGKILL. It returns the script's Wait result.
func killGroup(pgid int, done <-chan error) error {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	var werr error
	exited := false
	deadline := time.Now().Add(termGrace)
	for time.Now().Before(deadline) {
		if !exited {
			select {
			case werr = <-done:
				exited = true
			default:
			}
		}
		if exited && !groupAlive(pgid) {
			return werr
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	if exited {
		return werr
	}
	select {
	case werr = <-done:
		return werr
	case <-time.After(reapWait):
		return fmt.Errorf("still running %s after SIGKILL (stuck in the kernel?)", reapWait)
	}
}

// groupAlive reports whether a process of group pgid still runs. Zombies
// do not count: orphans are reaped by init, which may take its time.
func groupAlive(pgid int) bool {
	if syscall.Kill(-pgid, 0) == syscall.ESRCH {
		return false
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}

// output logs the script's output line by line.
type output struct {
	r      *os.File
	log    *eventlog.Log
	script string

	mu       sync.Mutex
	line     []byte
	long     bool // current line exceeded maxLine: drop the rest of it
	last     []string
	cutReq   bool          // Run asks for the output so far (script exited)
	cutDone  chan struct{} // closed when everything written before cutReq is logged
	eof      bool
	afterCut bool
}

func newOutput(r *os.File, log *eventlog.Log, script string) *output {
	return &output{r: r, log: log, script: script, cutDone: make(chan struct{})}
}

func (o *output) loop() {
	defer o.r.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := o.r.Read(buf)
		o.mu.Lock()
		o.feed(buf[:n])
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded) && o.cutReq && !o.afterCut:
			// The script has exited, so what it wrote is already in the
			// pipe: read exactly that much, then hand over.
			o.r.SetReadDeadline(time.Time{})
			o.drainAvailable(buf)
			o.flush()
			o.afterCut = true
			close(o.cutDone)
		case errors.Is(err, os.ErrDeadlineExceeded):
			o.r.SetReadDeadline(time.Time{})
		default: // EOF: every writer is gone
			o.flush()
			o.eof = true
			if !o.afterCut {
				o.afterCut = true
				close(o.cutDone)
			}
			o.mu.Unlock()
			return
		}
		o.mu.Unlock()
	}
}

// drainAvailable reads what the pipe holds right now, without blocking.
func (o *output) drainAvailable(buf []byte) {
	for {
		avail := 0
		sc, err := o.r.SyscallConn()
		if err == nil {
			sc.Control(func(fd uintptr) {
				avail, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) // = FIONREAD
			})
		}
		if err != nil || avail <= 0 {
			return
		}
		n, err := o.r.Read(buf[:min(avail, len(buf))])
		o.feed(buf[:n])
		if err != nil {
			return
		}
	}
}

// cut waits (bounded) until the output the script wrote before exiting is
// logged, and returns its last lines. Later output is from background
// processes.
func (o *output) cut() []string {
	o.mu.Lock()
	o.cutReq = true
	o.mu.Unlock()
	o.r.SetReadDeadline(time.Now()) // wake the reader if it is blocked
	select {
	case <-o.cutDone:
	case <-time.After(drainWait):
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.afterCut = true
	return append([]string(nil), o.last...)
}

func (o *output) feed(b []byte) {
	for len(b) > 0 {
		i := indexNL(b)
		chunk := b
		if i >= 0 {
			chunk = b[:i]
		}
		if room := maxLine - len(o.line); len(chunk) > room {
			chunk, o.long = chunk[:max(room, 0)], true
		}
		o.line = append(o.line, chunk...)
		if i < 0 {
			return
		}
		o.flush()
		b = b[i+1:]
	}
}

func indexNL(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// flush logs the pending line, if any.
func (o *output) flush() {
	if len(o.line) == 0 && !o.long {
		return
	}
	s := strings.TrimSuffix(string(o.line), "\r")
	if o.long {
		s += " [line cut at 4 KiB]"
	}
	o.line, o.long = o.line[:0], false
	if o.afterCut {
		o.log.Add(eventlog.KindOutput, s, "script", o.script, "background", true)
		return
	}
	o.log.Add(eventlog.KindOutput, s, "script", o.script)
	if len(o.last) == lastLines {
		copy(o.last, o.last[1:])
		o.last = o.last[:lastLines-1]
	}
	o.last = append(o.last, s)
}

// fmtDur prints a duration the way people read it: 120ms, 1.2s, 60s.
func fmtDur(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return strconv.FormatFloat(d.Round(100*time.Millisecond).Seconds(), 'f', -1, 64) + "s"
}
