package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Proc is a process started in a host through the bed; Close kills it.
type Proc struct {
	Cmd     *exec.Cmd
	LogPath string // stdout and stderr, in the bed's Dir
	Host    *Host

	done   chan struct{}
	err    error // valid once done is closed
	killMu sync.Mutex
}

var errWaitTimeout = errors.New("timed out")

var logNameRE = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// Start runs a command in the host in its own process group, with stdout
// and stderr appended to a log file in the bed's Dir.
func (h *Host) Start(name string, args ...string) (*Proc, error) {
	return h.StartCmd(h.Command(name, args...))
}

// StartCmd starts a command made by h.Command (after the caller set Env,
// Dir...), tracking it like Start. Stdout/Stderr left nil go to the log.
func (h *Host) StartCmd(cmd *exec.Cmd) (*Proc, error) {
	b := h.bed
	b.mu.Lock()
	b.logSeq++
	seq := b.logSeq
	b.mu.Unlock()
	prog := "cmd"
	if i := indexOf(cmd.Args, "--"); i >= 0 && i+1 < len(cmd.Args) {
		prog = filepath.Base(cmd.Args[i+1])
	}
	logPath := filepath.Join(b.dir, fmt.Sprintf("%s-%s-%d.log", h.Name, logNameRE.ReplaceAllString(prog, "_"), seq))
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("host %s: open log %s: %w", h.Name, logPath, err)
	}
	defer f.Close() // the child has its own copy after Start
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	if cmd.Stderr == nil {
		cmd.Stderr = f
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	p := &Proc{Cmd: cmd, LogPath: logPath, Host: h, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("host %s: start %s: %w", h.Name, strings.Join(cmd.Args, " "), err)
	}
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// Pid is the process id (also its process group id).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process only (not its group).
func (p *Proc) Signal(sig os.Signal) error {
	if err := p.Cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("host %s: signal %v to pid %d: %w", p.Host.Name, sig, p.Pid(), err)
	}
	return nil
}

// killGroup SIGKILLs the process group and the process itself (in case it
// moved to another group).
func (p *Proc) killGroup() { p.SignalGroup(unix.SIGKILL) }

// Freeze SIGSTOPs the process and its group: from then on it does nothing,
// as at the instant of a crash, until Kill9. A process blocked in a system
// call stops when the call returns, before it runs any of its own code.
func (p *Proc) Freeze() { p.SignalGroup(unix.SIGSTOP) }

// SignalGroup sends sig to the process and its group, without waiting.
func (p *Proc) SignalGroup(sig unix.Signal) {
	select {
	case <-p.done:
		// Reaped: the pid may be reused, but the group can hold children.
		if groupAlive(p.Pid()) {
			_ = unix.Kill(-p.Pid(), sig)
		}
		return
	default:
	}
	_ = unix.Kill(-p.Pid(), sig)
	_ = unix.Kill(p.Pid(), sig)
}

// Kill9 sends SIGKILL to the process and its group, then waits (at most
// 10 s) until the process is reaped and no live member of the group is
// left.
func (p *Proc) Kill9() error {
	p.killMu.Lock()
	defer p.killMu.Unlock()
	p.killGroup()
	deadline := time.Now().Add(10 * time.Second)
	if err := p.waitUntil(deadline); errors.Is(err, errWaitTimeout) {
		return fmt.Errorf("host %s: pid %d not reaped 10s after SIGKILL", p.Host.Name, p.Pid())
	}
	for groupAlive(p.Pid()) {
		if time.Now().After(deadline) {
			return fmt.Errorf("host %s: process group %d still alive 10s after SIGKILL", p.Host.Name, p.Pid())
		}
		_ = unix.Kill(-p.Pid(), unix.SIGKILL)
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// Wait waits up to timeout for the process to exit and returns its exit
// error (nil for status 0). On timeout the process keeps running.
func (p *Proc) Wait(timeout time.Duration) error {
	err := p.waitUntil(time.Now().Add(timeout))
	if errors.Is(err, errWaitTimeout) {
		return fmt.Errorf("host %s: pid %d still running after %v: %w", p.Host.Name, p.Pid(), timeout, err)
	}
	return err
}

func (p *Proc) waitUntil(deadline time.Time) error {
	d := time.Until(deadline)
	if d <= 0 {
		select {
		case <-p.done:
			return p.err
		default:
			return errWaitTimeout
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err
	case <-t.C:
		return errWaitTimeout
	}
}

// Log returns the process's log so far.
func (p *Proc) Log() (string, error) {
	data, err := os.ReadFile(p.LogPath)
	return string(data), err
}
