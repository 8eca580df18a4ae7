package checker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// procRoot is where the process table is read (tests may point elsewhere).
var procRoot = "/proc"

type pidFileChecker struct{ path string }

type unitChecker struct {
	unit, systemctl string
}

type patternChecker struct {
	re      *regexp.Regexp
	atLeast int
	self    int
}

func newProcess(s Spec, env Env) (Checker, error) {
	n := 0
	for _, v := range []string{s.PIDFile, s.Unit, s.Pattern} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("a process checker needs exactly one of pidfile, unit or pattern")
	}
	switch {
	case s.PIDFile != "":
		p := s.PIDFile
		if !filepath.IsAbs(p) {
			p = filepath.Join(env.Dir, p)
		}
		return pidFileChecker{path: p}, nil
	case s.Unit != "":
		sc := env.Systemctl
		if sc == "" {
			sc = "systemctl"
		}
		return unitChecker{unit: s.Unit, systemctl: sc}, nil
	}
	re, err := regexp.Compile(s.Pattern)
	if err != nil {
		return nil, fmt.Errorf("pattern %q: %v", s.Pattern, err)
	}
	at := s.AtLeast
	if at <= 0 {
		at = 1
	}
	return patternChecker{re: re, atLeast: at, self: os.Getpid()}, nil
}

func (c pidFileChecker) Check(ctx context.Context) Result {
	b, err := os.ReadFile(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return fail("pid file %s does not exist", c.path)
	}
	if err != nil {
		return fail("read pid file: %v", err)
	}
	s := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return fail("pid file %s holds %q, not a process id", c.path, truncate(s, 40))
	}
	switch alive(pid) {
	case errNoProcess:
		return fail("process %d (from %s) is not running", pid, c.path)
	case errZombie:
		return fail("process %d (from %s) has exited (zombie)", pid, c.path)
	}
	return ok("process %d is running", pid)
}

var (
	errNoProcess = errors.New("no such process")
	errZombie    = errors.New("zombie")
)

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) error {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return errNoProcess
	}
	st, err := procState(pid)
	if err != nil {
		return errNoProcess // gone between the two looks
	}
	if st == 'Z' || st == 'X' {
		return errZombie
	}
	return nil
}

// procState reads the state letter of /proc/PID/stat.
func procState(pid int) (byte, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// pid (comm) state ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("unexpected stat line of %d", pid)
	}
	return b[i+2], nil
}

func (c unitChecker) Check(ctx context.Context) Result {
	cmd := exec.CommandContext(ctx, c.systemctl, "is-active", c.unit)
	out, err := cmd.Output()
	state := strings.TrimSpace(string(out))
	var ee *exec.ExitError
	switch {
	case err == nil && state == "active":
		return ok("unit %s is active", c.unit)
	case err == nil || errors.As(err, &ee):
		if state == "" {
			state = "not active"
		}
		return fail("unit %s is %s", c.unit, state)
	case errors.Is(err, exec.ErrNotFound):
		return fail("cannot check unit %s: %s not found (is this a systemd system?)", c.unit, c.systemctl)
	}
	return fail("cannot check unit %s: %v", c.unit, err)
}

func (c patternChecker) Check(ctx context.Context) Result {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return fail("read the process table: %v", err)
	}
	n, first := 0, 0
	for _, e := range ents {
		if ctx.Err() != nil {
			return fail("scan interrupted after %d matching processes", n)
		}
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == c.self {
			continue
		}
		line, ok := cmdline(pid)
		if !ok || !c.re.MatchString(line) {
			continue
		}
		if st, err := procState(pid); err != nil || st == 'Z' || st == 'X' {
			continue
		}
		if n == 0 {
			first = pid
		}
		n++
	}
	if n >= c.atLeast {
		return ok("%d process(es) match %q (first %d, at least %d needed)", n, c.re, first, c.atLeast)
	}
	return fail("%d process(es) match %q, at least %d needed", n, c.re, c.atLeast)
}

// cmdline is the command line of pid with arguments joined by spaces, or
// its name in brackets for a kernel thread.
func cmdline(pid int) (string, bool) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return "", false
	}
	b = bytes.TrimRight(b, "\x00")
	if len(b) > 0 {
		return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})), true
	}
	comm, err := os.ReadFile(filepath.Join(dir, "comm"))
	if err != nil {
		return "", false
	}
	return "[" + strings.TrimSpace(string(comm)) + "]", true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
