package checker

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// customOutput bounds the output kept from a custom checker (its last line
// goes to the verdict).
const customOutput = 4 << 10

type customChecker struct {
	path string
	args []string
	env  []string
	dir  string
}

func newCustom(s Spec, env Env) (Checker, error) {
	if s.Command == "" {
		return nil, errors.New("no command given")
	}
	p := s.Command
	if !filepath.IsAbs(p) {
		p = filepath.Join(env.BinDir, p)
	}
	e := env.Environ
	if e == nil {
		e = os.Environ()
	}
	e = append(slices.Clip(e), "TANDEM_CHECKER="+s.Name)
	return customChecker{path: p, args: s.Args, env: e, dir: filepath.Dir(filepath.Clean(env.BinDir))}, nil
}

func (c customChecker) Check(ctx context.Context) Result {
	st, err := os.Stat(c.path)
	switch {
	case err != nil:
		return fail("command %s: %v", c.path, unwrapPath(err))
	case !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0:
		return fail("command %s is not an executable file (chmod +x it)", c.path)
	}
	out := &tailBuffer{}
	cmd := exec.CommandContext(ctx, c.path, c.args...)
	cmd.Env = c.env
	if c.dir != "." {
		cmd.Dir = c.dir
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, killed as a whole at the timeout; WaitDelay
	// returns even when a daemon it started keeps the output pipe open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	last := out.lastLine()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return fail("%s killed: %v", filepath.Base(c.path), context.Cause(ctx))
	case err == nil:
		if last == "" {
			return ok("%s exited 0", filepath.Base(c.path))
		}
		return ok("%s exited 0: %s", filepath.Base(c.path), last)
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		if last == "" {
			return fail("%s exited %d", filepath.Base(c.path), ee.ExitCode())
		}
		return fail("%s exited %d: %s", filepath.Base(c.path), ee.ExitCode(), last)
	}
	return fail("%s: %v", filepath.Base(c.path), err)
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// tailBuffer keeps the last customOutput bytes written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > customOutput {
		t.b = append(t.b[:0], t.b[len(t.b)-customOutput:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) lastLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(t.b)), "\n")
	return truncate(strings.TrimSpace(lines[len(lines)-1]), 200)
}
