// Package e2e holds scenario tests across test hosts: real agents in network
// namespaces, real scripts, a real TCP service reached through the VIP.
// They need root (CI runs as root) and skip otherwise.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

var (
	bins     tcluster.Binaries
	buildErr error
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tandem-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, buildErr = tcluster.Build(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func newCluster(t *testing.T, o tcluster.Options) *tcluster.Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces); CI runs them as root")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return tcluster.New(t, bins, o)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// waitEvent polls the module logs of nodes until an event matches; it
// returns the node and the event, or fails the test after within.
func waitEvent(t *testing.T, c *tcluster.Cluster, nodes []string, within time.Duration, what string, match func(eventlog.Event) bool) (string, eventlog.Event) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, n := range nodes {
			evs, err := c.Events(n)
			if err != nil {
				t.Fatalf("read the module log of %s: %v", n, err)
			}
			for _, e := range evs {
				if match(e) {
					return n, e
				}
			}
		}
		if time.Now().After(deadline) {
			for _, n := range nodes {
				evs, _ := c.Events(n)
				t.Logf("module log of %s (last 15 events):\n%s", n, formatEvents(evs, 15))
			}
			t.Fatalf("no event %s in the module logs of %v within %s", what, nodes, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventsSince returns the node's module log events at or after since.
func eventsSince(t *testing.T, c *tcluster.Cluster, node string, since time.Time) []eventlog.Event {
	t.Helper()
	evs, err := c.Events(node)
	if err != nil {
		t.Fatalf("read the module log of %s: %v", node, err)
	}
	var out []eventlog.Event
	for _, e := range evs {
		if !e.Time.Before(since) {
			out = append(out, e)
		}
	}
	return out
}

func formatEvents(evs []eventlog.Event, last int) string {
	if last > 0 && len(evs) > last {
		evs = evs[len(evs)-last:]
	}
	var b strings.Builder
	for _, e := range evs {
		b.WriteString(eventlog.Format(e))
		b.WriteByte('\n')
	}
	return b.String()
}

// tandemCLI runs the tandem binary (bounded) and returns its exit code,
// stdout and stderr.
func tandemCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.Tandem, args...)
	cmd.Env = append(os.Environ(), "TANDEM_API=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode(), out.String(), errb.String()
	}
	t.Fatalf("tandem %s: %v (stderr %q)", strings.Join(args, " "), err, errb.String())
	return -1, "", ""
}

// startHogs starts n busy loops (plain sh, nothing to install) in each
// host, or in the root namespace for a nil host; they are SIGKILLed (with
// their process groups) when the test ends. stop ends them earlier.
func startHogs(t *testing.T, n int, hosts ...*testbed.Host) (stop func()) {
	t.Helper()
	const loop = "while :; do :; done"
	var root []*exec.Cmd
	var procs []*testbed.Proc
	var once sync.Once
	stop = func() {
		once.Do(func() {
			for _, cmd := range root {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				_ = cmd.Wait()
			}
			for _, p := range procs {
				if err := p.Kill9(); err != nil {
					t.Errorf("stop CPU hog: %v", err)
				}
			}
		})
	}
	t.Cleanup(stop)
	for _, h := range hosts {
		for range n {
			if h == nil {
				cmd := exec.Command("sh", "-c", loop)
				cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
				if err := cmd.Start(); err != nil {
					t.Fatalf("start CPU hog: %v", err)
				}
				root = append(root, cmd)
				continue
			}
			p, err := h.Start("sh", "-c", loop)
			if err != nil {
				t.Fatalf("start CPU hog: %v", err)
			}
			procs = append(procs, p)
		}
	}
	return stop
}

// cpuTimes reads the busy and total jiffies of all CPUs from /proc/stat.
func cpuTimes(t *testing.T) (busy, total uint64) {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatalf("read /proc/stat: %v", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		t.Fatalf("unexpected /proc/stat first line %q", line)
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("/proc/stat field %d %q: %v", i+1, s, err)
		}
		if i >= 7 { // guest time is already counted in user
			break
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}
