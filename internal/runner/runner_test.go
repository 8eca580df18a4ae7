package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
)

type fixture struct {
	r       *Runner
	modDir  string
	logPath string
}

func setup(t *testing.T) *fixture {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	modDir := t.TempDir()
	bin := filepath.Join(modDir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "events.log")
	l, err := eventlog.Open(logPath, "db", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &fixture{
		r:       &Runner{BinDir: bin, Env: []string{"TANDEM_MODULE=db", "TANDEM_NODE=alpha"}, Log: l},
		modDir:  modDir,
		logPath: logPath,
	}
}

func (f *fixture) script(t *testing.T, name, body string) {
	t.Helper()
	p := filepath.Join(f.r.BinDir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// output returns the output lines logged for script, in log order.
func (f *fixture) output(t *testing.T, script string) []string {
	t.Helper()
	evs, err := eventlog.Read(f.logPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.Kind == eventlog.KindOutput && e.Fields["script"] == script {
			out = append(out, e.Msg)
		}
	}
	return out
}

func args3() []string { return []string{"SECOND", "ALONE", "start"} }

// gone reports whether pid no longer runs (a zombie counts as gone).
func gone(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running after %v", pid, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pidFrom(t *testing.T, lines []string, prefix string) int {
	t.Helper()
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			pid, err := strconv.Atoi(rest)
			if err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no %q line in %q", prefix, lines)
	return 0
}

func TestOutputOrderArgsAndEvents(t *testing.T) {
	f := setup(t)
	f.script(t, "start_prim", `
echo "args: $1 $2 $3"
i=1
while [ $i -le 200 ]; do
  if [ $((i % 2)) = 0 ]; then echo "line $i" >&2; else echo "line $i"; fi
  i=$((i+1))
done
printf 'no newline at end'`)
	res := f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	if !res.OK() || !res.Ran || res.ExitCode != 0 || res.Err != nil {
		t.Fatalf("result %+v: %s", res, res.Reason())
	}
	out := f.output(t, "start_prim")
	if len(out) != 202 {
		t.Fatalf("%d output lines, want 202: %q", len(out), out)
	}
	if out[0] != "args: SECOND ALONE start" {
		t.Errorf("first line %q", out[0])
	}
	for i := 1; i <= 200; i++ {
		if out[i] != fmt.Sprintf("line %d", i) {
			t.Fatalf("line %d is %q", i, out[i])
		}
	}
	if out[201] != "no newline at end" {
		t.Errorf("last line %q", out[201])
	}
	want := []string{"line 197", "line 198", "line 199", "line 200", "no newline at end"}
	if strings.Join(res.LastLines, "|") != strings.Join(want, "|") {
		t.Errorf("LastLines = %q", res.LastLines)
	}

	evs, _ := eventlog.Read(f.logPath, 0)
	first, last := evs[0], evs[len(evs)-1]
	if first.Kind != "script" || first.Msg != "start_prim SECOND ALONE start" {
		t.Errorf("start event %+v", first)
	}
	if last.Kind != "script" || last.Fields["exit_code"] != float64(0) || last.Fields["duration"] == nil {
		t.Errorf("end event %+v", last)
	}
}

func TestExitCodeAndReason(t *testing.T) {
	f := setup(t)
	f.script(t, "start_prim", `echo "cannot bind port 5432" >&2; exit 3`)
	res := f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	if res.OK() || res.ExitCode != 3 || res.Err != nil || res.TimedOut {
		t.Fatalf("result %+v", res)
	}
	r := res.Reason()
	if !strings.HasPrefix(r, "start_prim exited 3 after ") || !strings.HasSuffix(r, ": cannot bind port 5432") {
		t.Errorf("Reason %q", r)
	}
}

func TestMissingScript(t *testing.T) {
	f := setup(t)
	res := f.r.Run(context.Background(), "start_prim", args3(), time.Second)
	if res.Ran || !res.OK() || res.Err != nil {
		t.Fatalf("missing script: %+v", res)
	}
	// A missing bin directory is the same: nothing to run.
	r2 := &Runner{BinDir: filepath.Join(t.TempDir(), "nobin")}
	if res := r2.Run(context.Background(), "stop_prim", args3(), time.Second); res.Ran || !res.OK() {
		t.Fatalf("missing bin dir: %+v", res)
	}
}

func TestNotRunnable(t *testing.T) {
	f := setup(t)
	p := filepath.Join(f.r.BinDir, "start_prim")
	os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o644)
	res := f.r.Run(context.Background(), "start_prim", args3(), time.Second)
	if res.OK() || !res.Ran || res.Err == nil || !strings.Contains(res.Reason(), "not executable (chmod +x it)") {
		t.Fatalf("non-executable: %+v %q", res, res.Reason())
	}

	os.WriteFile(p, []byte("echo no shebang\n"), 0o755)
	os.Chmod(p, 0o755)
	res = f.r.Run(context.Background(), "start_prim", args3(), time.Second)
	if res.OK() || res.Reason() != "start_prim: exec format error (add a #! line)" {
		t.Fatalf("no shebang: %+v %q", res, res.Reason())
	}

	os.WriteFile(p, []byte("#!/nonexistent/interp\n"), 0o755)
	res = f.r.Run(context.Background(), "start_prim", args3(), time.Second)
	if res.OK() || !strings.Contains(res.Reason(), "check the #! line") {
		t.Fatalf("bad interpreter: %q", res.Reason())
	}

	os.Remove(p)
	os.Symlink(filepath.Join(f.modDir, "gone"), p)
	res = f.r.Run(context.Background(), "start_prim", args3(), time.Second)
	if res.OK() || !strings.Contains(res.Reason(), "symbolic link to a missing file") {
		t.Fatalf("dangling symlink: %q", res.Reason())
	}

	res = f.r.Run(context.Background(), "../x", args3(), time.Second)
	if res.OK() || !strings.Contains(res.Reason(), "invalid script name") {
		t.Fatalf("bad name: %q", res.Reason())
	}
}

func TestTimeoutKillsGroup(t *testing.T) {
	f := setup(t)
	f.script(t, "start_prim", `sleep 100 & echo "child=$!"; wait`)
	t0 := time.Now()
	res := f.r.Run(context.Background(), "start_prim", args3(), 300*time.Millisecond)
	took := time.Since(t0)
	if !res.TimedOut || res.OK() || res.Forced {
		t.Fatalf("result %+v", res)
	}
	if took > 2*time.Second {
		t.Errorf("Run took %v for a 300ms timeout", took)
	}
	if res.Reason() != "start_prim timed out after 300ms" {
		t.Errorf("Reason %q", res.Reason())
	}
	waitGone(t, pidFrom(t, f.output(t, "start_prim"), "child="), 2*time.Second)
}

func TestTimeoutEscalatesToSIGKILL(t *testing.T) {
	f := setup(t)
	// sleep inherits the ignored SIGTERM; only SIGKILL ends it.
	f.script(t, "start_prim", `trap '' TERM; sleep 100 & echo "child=$!"; wait`)
	t0 := time.Now()
	res := f.r.Run(context.Background(), "start_prim", args3(), 200*time.Millisecond)
	took := time.Since(t0)
	if !res.TimedOut {
		t.Fatalf("result %+v", res)
	}
	if took < termGrace || took > termGrace+2*time.Second {
		t.Errorf("Run took %v, want about 200ms + %v", took, termGrace)
	}
	waitGone(t, pidFrom(t, f.output(t, "start_prim"), "child="), 2*time.Second)
}

func TestContextCancel(t *testing.T) {
	f := setup(t)
	f.script(t, "start_prim", `sleep 100 & echo "child=$!"; wait`)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	t0 := time.Now()
	res := f.r.Run(ctx, "start_prim", args3(), time.Minute)
	if time.Since(t0) > 3*time.Second || res.OK() || res.TimedOut || res.Err == nil {
		t.Fatalf("after cancel: %+v in %v", res, time.Since(t0))
	}
	if !strings.Contains(res.Reason(), "cancelled") {
		t.Errorf("Reason %q", res.Reason())
	}
	waitGone(t, pidFrom(t, f.output(t, "start_prim"), "child="), 2*time.Second)

	res = f.r.Run(ctx, "start_prim", args3(), time.Minute)
	if res.OK() || res.Err == nil || len(f.output(t, "start_prim")) != 1 {
		t.Fatalf("run with a cancelled context: %+v", res)
	}
}

func TestStopRetriesWithForce(t *testing.T) {
	f := setup(t)
	f.script(t, "stop_prim", `echo "action=$3"; if [ "$3" != force ]; then sleep 100; fi; exit 0`)
	t0 := time.Now()
	res := f.r.RunStop(context.Background(), "stop_prim", []string{"PRIM", "STOP", "stop"}, 300*time.Millisecond)
	if !res.Forced || !res.OK() || res.TimedOut || res.ExitCode != 0 {
		t.Fatalf("result %+v: %s", res, res.Reason())
	}
	if took := time.Since(t0); took > 3*time.Second {
		t.Errorf("took %v", took)
	}
	if res.Duration < 300*time.Millisecond {
		t.Errorf("Duration %v should include the timed-out run", res.Duration)
	}
	out := f.output(t, "stop_prim")
	if strings.Join(out, ",") != "action=stop,action=force" {
		t.Errorf("output %q", out)
	}
	if !strings.HasPrefix(res.Reason(), "stop_prim timed out after 300ms, forced run: stop_prim exited 0 after") {
		t.Errorf("Reason %q", res.Reason())
	}

	// A stop script that also hangs with force fails, once retried.
	f.script(t, "stop_second", `sleep 100`)
	res = f.r.RunStop(context.Background(), "stop_second", []string{"SECOND", "STOP"}, 200*time.Millisecond)
	if res.OK() || !res.Forced || !res.TimedOut {
		t.Fatalf("hanging stop: %+v", res)
	}

	// Start scripts are not retried.
	f.script(t, "start_prim", `sleep 100`)
	res = f.r.Run(context.Background(), "start_prim", args3(), 200*time.Millisecond)
	if res.Forced {
		t.Fatal("start script was forced")
	}
}

func TestBackgroundDaemonDoesNotBlock(t *testing.T) {
	f := setup(t)
	f.script(t, "start_prim", `sleep 30 &
echo "daemon=$!"
echo done`)
	t0 := time.Now()
	res := f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	took := time.Since(t0)
	pid := pidFrom(t, res.LastLines, "daemon=")
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	if !res.OK() {
		t.Fatalf("result %+v", res)
	}
	if took > 2*time.Second {
		t.Errorf("Run took %v with a background daemon holding stdout", took)
	}
	if res.LastLines[len(res.LastLines)-1] != "done" {
		t.Errorf("LastLines %q", res.LastLines)
	}
	if gone(pid) {
		t.Fatal("background daemon was killed")
	}
}

func TestBackgroundOutputStillLogged(t *testing.T) {
	f := setup(t)
	f.script(t, "start_prim", `(sleep 0.5; echo "late line") &
echo early`)
	res := f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	if !res.OK() || strings.Join(res.LastLines, ",") != "early" {
		t.Fatalf("result %+v", res)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		evs, _ := eventlog.Read(f.logPath, 0)
		for _, e := range evs {
			if e.Msg == "late line" && e.Fields["background"] == true {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("late background output not logged: %+v", evs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestEnvAndWorkDir(t *testing.T) {
	f := setup(t)
	t.Setenv("TANDEM_RUNNER_LEAK_CHECK_7f3a", "secret")
	f.script(t, "start_prim", `env; echo "pwd=$(pwd)"; if [ -t 0 ]; then echo tty; fi; read x && echo "stdin=$x"; echo end`)
	res := f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	if !res.OK() {
		t.Fatalf("result %+v", res)
	}
	out := strings.Join(f.output(t, "start_prim"), "\n")
	for _, want := range []string{"TANDEM_MODULE=db", "TANDEM_NODE=alpha", "HOME=/root", "LANG=C.UTF-8",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "pwd=" + f.modDir} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "TANDEM_RUNNER_LEAK_CHECK_7f3a") {
		t.Errorf("agent environment leaked into the script:\n%s", out)
	}
	if strings.Contains(out, "stdin=") || strings.Contains(out, "\ntty") {
		t.Errorf("stdin is not /dev/null:\n%s", out)
	}

	// Runner.Env overrides the base environment.
	f.r.Env = append(f.r.Env, "PATH=/bin")
	f.script(t, "start_prim", `echo "$PATH"`)
	f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	out2 := f.output(t, "start_prim")
	if out2[len(out2)-1] != "/bin" {
		t.Errorf("PATH override: %q", out2[len(out2)-1])
	}
}

func TestLongLineCapped(t *testing.T) {
	f := setup(t)
	f.script(t, "start_prim", `head -c 100000 /dev/zero | tr '\0' x; echo; echo after`)
	res := f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	if !res.OK() {
		t.Fatalf("result %+v", res)
	}
	out := f.output(t, "start_prim")
	if len(out) != 2 || out[1] != "after" {
		t.Fatalf("%d lines", len(out))
	}
	if !strings.HasPrefix(out[0], strings.Repeat("x", maxLine)) || len(out[0]) > maxLine+64 {
		t.Errorf("long line kept %d bytes", len(out[0]))
	}
}

func TestKilledBySignal(t *testing.T) {
	f := setup(t)
	f.script(t, "start_prim", `kill -KILL $$`)
	res := f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	if res.OK() || res.ExitCode != -1 || !strings.Contains(res.Reason(), "killed by signal") {
		t.Fatalf("result %+v %q", res, res.Reason())
	}
}

func TestNilLog(t *testing.T) {
	f := setup(t)
	f.r.Log = nil
	f.script(t, "start_prim", `echo hi; exit 0`)
	res := f.r.Run(context.Background(), "start_prim", args3(), 10*time.Second)
	if !res.OK() || strings.Join(res.LastLines, "") != "hi" {
		t.Fatalf("result %+v", res)
	}
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		120 * time.Millisecond:  "120ms",
		1234 * time.Millisecond: "1.2s",
		60 * time.Second:        "60s",
		0:                       "0s",
	} {
		if got := fmtDur(d); got != want {
			t.Errorf("fmtDur(%v) = %q, want %q", d, got, want)
		}
	}
}
