package agent

import (
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// catGuard stands in for `tandem vip-guard`: cat copies what the guard is
// told into a file; starts counts the processes started.
func catGuard(t *testing.T) (newCmd func() (*exec.Cmd, error), out string, starts *atomic.Int32) {
	t.Helper()
	out = filepath.Join(t.TempDir(), "guard.out")
	starts = new(atomic.Int32)
	newCmd = func() (*exec.Cmd, error) {
		f, err := os.Create(out)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { f.Close() })
		cmd := exec.Command("cat")
		cmd.Stdout = f // the child has its own copy after Start
		starts.Add(1)
		return cmd, nil
	}
	return newCmd, out, starts
}

// told waits (bounded) until the guard's file holds want, as cat writes it
// after the guard closed its pipe.
func told(t *testing.T, out, want string) {
	t.Helper()
	var got []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got, _ = os.ReadFile(out); string(got) == want {
			return
		}
	}
	t.Fatalf("the guard was told %q, want %q", got, want)
}

// tell sends one line to the guard and fails the test on an error.
func tell(t *testing.T, g *guard, op, vip, ifname string) {
	t.Helper()
	if err := g.send(op, netip.MustParsePrefix(vip), ifname); err != nil {
		t.Fatalf("%s %s %s: %v", op, vip, ifname, err)
	}
}

// started fails the test unless want guard processes were started.
func started(t *testing.T, starts *atomic.Int32, want int32, when string) {
	t.Helper()
	if n := starts.Load(); n != want {
		t.Fatalf("%d guard processes %s, want %d", n, when, want)
	}
}

// The guard's process does not start with the agent: a removal before it
// runs has nothing to tell, and the first addition starts it before the
// VIP is added.
func TestGuardStartsOnFirstAdd(t *testing.T) {
	newCmd, out, starts := catGuard(t)
	g := newGuard(slog.Default(), time.Hour, newCmd)
	t.Cleanup(g.close) // cat ends at the pipe's end, also when the test fails
	tell(t, g, "del", "192.0.2.100/24", "eth0")
	started(t, starts, 0, "before any VIP was added")
	tell(t, g, "add", "192.0.2.100/24", "eth0")
	tell(t, g, "del", "192.0.2.100/24", "eth0")
	started(t, starts, 1, "after the first addition")
	g.close()
	told(t, out, "add 192.0.2.100/24 eth0\ndel 192.0.2.100/24 eth0\n")
}

// Without a VIP to guard, the process starts after the delay anyway, so
// that the first addition later does not wait for it.
func TestGuardStartsAfterDelay(t *testing.T) {
	newCmd, out, starts := catGuard(t)
	g := newGuard(slog.Default(), 20*time.Millisecond, newCmd)
	t.Cleanup(g.close)
	for deadline := time.Now().Add(5 * time.Second); starts.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	started(t, starts, 1, "after the delay")
	tell(t, g, "add", "2001:db8::100/64", "eth1")
	started(t, starts, 1, "after an addition to a running guard")
	g.close()
	told(t, out, "add 2001:db8::100/64 eth1\n")
}

// A guard closed before it started never starts, and refuses an addition.
func TestGuardClosedBeforeStart(t *testing.T) {
	newCmd, _, starts := catGuard(t)
	g := newGuard(slog.Default(), 20*time.Millisecond, newCmd)
	g.close()
	time.Sleep(100 * time.Millisecond)
	if err := g.send("add", netip.MustParsePrefix("192.0.2.100/24"), "eth0"); err == nil {
		t.Errorf("an addition to a closed guard succeeded, want an error")
	}
	if n := starts.Load(); n != 0 {
		t.Errorf("%d guard processes started after close, want 0", n)
	}
}
