package testbed

import (
	"os"
	"strings"
)

// TB is the part of testing.TB NewT uses; a *testing.T or *testing.B
// satisfies it. (Not testing.TB itself, to keep the testing package out of
// the tandem binary, which builds beds for `tandem demo`.)
type TB interface {
	Helper()
	Cleanup(func())
	Failed() bool
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

// NewT builds a bed for a test. It skips the test when not root or when
// ip/nsenter/unshare are missing, first removes stale beds of dead
// processes, and closes the bed in t.Cleanup (also after a failure or a
// panic). When the test failed, the tail of every started process's log is
// logged.
func NewT(t TB, opts Options) *Bed {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("testbed: %v", err)
	}
	if err := CleanupStale(); err != nil {
		t.Logf("testbed: removing stale beds: %v", err)
	}
	b, err := New(opts)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b.logTails(t, 40)
		}
		if err := b.Close(); err != nil {
			t.Errorf("testbed: close: %v", err)
		}
	})
	return b
}

func (b *Bed) logTails(t TB, lines int) {
	b.mu.Lock()
	procs := append([]*Proc(nil), b.procs...)
	b.mu.Unlock()
	for _, p := range procs {
		data, err := os.ReadFile(p.LogPath)
		if err != nil {
			continue
		}
		l := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(l) > lines {
			l = l[len(l)-lines:]
		}
		t.Logf("testbed %s: last lines of %s (%s):\n%s", b.id, p.LogPath, strings.Join(p.Cmd.Args, " "), strings.Join(l, "\n"))
	}
	if os.Getenv(KeepEnv) != "1" {
		t.Logf("testbed %s: set %s=1 to keep %s after the test", b.id, KeepEnv, b.dir)
	}
}
