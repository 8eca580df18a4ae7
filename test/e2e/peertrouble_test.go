package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// Peer trouble (issue 3, point 4): a secondary that dies, stops answering
// or runs out of space makes the primary go ALONE without blocking the
// application longer than the replication timeout; reads never cross the
// network.

// replTimeout is the module's replication.timeout in these tests: the
// longest a durable call may wait for a silent secondary.
const replTimeout = 2 * time.Second

// latencyMargin is what a durable call may take beyond replTimeout on this
// two-core machine (scheduling, the FUSE round trips, the local fsync).
const latencyMargin = time.Second

func replicatedCluster(t *testing.T, extra string) *tcluster.Cluster {
	t.Helper()
	return newCluster(t, tcluster.Options{
		Directories: []string{dataDir},
		ModuleExtra: fmt.Sprintf("replication:\n  timeout: %s\n", replTimeout) + extra,
	})
}

// A killed secondary: the primary goes ALONE, the writer keeps going and
// no record waited longer than the replication timeout.
func TestPeerTroubleSecondaryKilled(t *testing.T) {
	c := replicatedCluster(t, "")
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	ack := filepath.Join(c.Dir(), "acks.log")
	w := startWriter(t, c.Node("alpha").Host, ack, "--rate", "300", "--slow", "200ms")
	time.Sleep(time.Second)
	before := ackedRecords(t, ack)
	t0 := time.Now()
	c.Kill9("beta")
	alone := waitAloneEvent(t, c, "alpha", t0, 10*time.Second)
	t.Logf("alpha ALONE %v after kill -9 of beta's agent (%q)", alone.Time.Sub(t0).Round(time.Millisecond), alone.Fields["reason"])
	at := ackedRecords(t, ack)
	time.Sleep(time.Second)
	after := ackedRecords(t, ack)
	if after-at < 100 {
		t.Errorf("the writer on alpha acknowledged %d records in the second after alpha went ALONE (rate 300/s): blocked?", after-at)
	}
	maxLat := stopWriter(t, w)
	t.Logf("records acknowledged: %d before the kill, %d when ALONE, %d a second later; longest record %v", before, at, after, maxLat)
	if maxLat > replTimeout+latencyMargin {
		t.Errorf("a record waited %v for the dead secondary: more than replication.timeout %v + %v", maxLat, replTimeout, latencyMargin)
	}
	if rep, out := verifyOn(t, c.Node("alpha").Host, ack); !rep.OK {
		t.Fatalf("acknowledged writes damaged on alpha:\n%s", out)
	}
	// The secondary comes back, gets the whole tree and the pair is whole.
	c.Start("beta")
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	compareCopies(t, c, 5*time.Second)
}

// A secondary that stops answering: its agent frozen (SIGSTOP: no
// heartbeats, no acks, connections left open), or its replication port
// silent while its heartbeats still arrive. Either way the primary stops
// waiting within the replication timeout and goes on ALONE; when the
// secondary answers again it must not take over with its stale copy, and
// it resynchronises. The roles are swapped first so that the silent
// secondary is the preferred node (alpha), which wins ties.
func TestPeerTroubleSecondarySilent(t *testing.T) {
	for _, how := range []string{"sigstop", "port-dropped"} {
		t.Run(how, func(t *testing.T) {
			c := replicatedCluster(t, "")
			c.StartPair()
			waitPair(t, c, "alpha", "beta", 30*time.Second)
			swap(t, c, "alpha")
			waitPair(t, c, "beta", "alpha", 30*time.Second)
			prim, sec := c.Node("beta"), c.Node("alpha")
			ack := filepath.Join(c.Dir(), "acks.log")
			w := startWriter(t, prim.Host, ack, "--rate", "300", "--slow", "200ms")
			time.Sleep(time.Second)
			t0 := time.Now()
			switch how {
			case "sigstop":
				must(t, sec.Proc().Signal(syscall.SIGSTOP))
				t.Cleanup(func() { _ = sec.Proc().Signal(syscall.SIGCONT) })
			case "port-dropped":
				dropReplication(t, sec.Host)
			}
			alone := waitAloneEvent(t, c, "beta", t0, 10*time.Second)
			t.Logf("beta ALONE %v after the secondary went silent (%q)", alone.Time.Sub(t0).Round(time.Millisecond), alone.Fields["reason"])
			at := ackedRecords(t, ack)
			time.Sleep(time.Second)
			after := ackedRecords(t, ack)
			if after-at < 100 {
				t.Errorf("the writer on beta acknowledged %d records in the second after beta went ALONE (rate 300/s): blocked?", after-at)
			}
			// Keep it silent a while longer: the primary must not be held
			// by its attempts to reconnect either.
			time.Sleep(3 * replTimeout)
			st := mustStatus(t, c, "beta")
			t.Logf("beta is %s (%q) after %v of silence; states since: %s", st.State, st.Reason,
				time.Since(t0).Round(time.Millisecond), strings.Join(stateChanges(t, c, "beta", t0), ", "))
			maxLat := stopWriter(t, w)
			t.Logf("longest record %v", maxLat)
			if maxLat > replTimeout+latencyMargin {
				t.Errorf("a record waited %v for the silent secondary: more than replication.timeout %v + %v", maxLat, replTimeout, latencyMargin)
			}
			if rep, out := verifyOn(t, prim.Host, ack); !rep.OK {
				t.Fatalf("acknowledged writes damaged on beta:\n%s", out)
			}

			// The secondary answers again.
			t1 := time.Now()
			switch how {
			case "sigstop":
				must(t, sec.Proc().Signal(syscall.SIGCONT))
			case "port-dropped":
				undropReplication(t, sec.Host)
			}
			time.Sleep(2 * time.Second)
			if took := tookOver(t, c, "alpha", t1); took != "" {
				t.Errorf("alpha, the stale secondary, served again after it answered: %s", took)
			}
			primary := waitAnyPair(t, c, 30*time.Second)
			if rep, out := verifyOn(t, c.Node(primary).Host, ack); !rep.OK {
				t.Fatalf("acknowledged writes lost on the primary %s:\n%s", primary, out)
			}
			compareCopies(t, c, 5*time.Second)
		})
	}
}

// The secondary's disk fills up: the primary goes ALONE and says why, the
// application keeps running on it, nothing is corrupted on either side,
// the secondary's log says why too; once space is freed the pair resyncs
// to identical copies.
func TestPeerTroubleSecondaryDiskFull(t *testing.T) {
	c := replicatedCluster(t, "")
	// beta's copy lives on a 64 MiB tmpfs (alpha's on the real disk); the
	// filler goes beside the replicated directory, on the same tmpfs.
	small := filepath.Join(c.Dir(), "small-beta") // removed with the bed
	beta := c.Node("beta").Host
	must(t, beta.MountTmpfs(small, 64<<20))
	if out, err := beta.Run("mkdir", "-p", small+"/data"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	must(t, beta.BindMount(small+"/data", dataDir))
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	ack := filepath.Join(c.Dir(), "acks.log")
	w := startWriter(t, c.Node("alpha").Host, ack, "--rate", "200", "--size", "4096", "--slow", "200ms")
	time.Sleep(time.Second)

	t0 := time.Now()
	must(t, beta.FillDisk(small))
	alone := waitAloneEvent(t, c, "alpha", t0, 15*time.Second)
	reason, _ := alone.Fields["reason"].(string)
	t.Logf("alpha ALONE %v after beta's disk filled: reason %q", alone.Time.Sub(t0).Round(time.Millisecond), reason)
	space := func(e eventlog.Event) bool { return mentionsSpace(e.Msg) }
	_, e := waitEvent(t, c, []string{"alpha"}, 5*time.Second, "naming the secondary's full disk", space)
	t.Logf("alpha's log: %s", eventlog.Format(e))
	if !mentionsSpace(reason) {
		t.Errorf("alpha's status reason while ALONE, %q, does not say why (the secondary's disk is full; only the log does: %q)", reason, e.Msg)
	}
	_, e = waitEvent(t, c, []string{"beta"}, 5*time.Second, "naming the full disk", space)
	t.Logf("beta's log: %s", eventlog.Format(e))

	// The application keeps running on the primary, unharmed.
	at := ackedRecords(t, ack)
	time.Sleep(2 * time.Second)
	after := ackedRecords(t, ack)
	if after-at < 200 {
		t.Errorf("the writer on alpha acknowledged %d records in the 2s after beta's disk filled (rate 200/s)", after-at)
	}
	select {
	case <-w.Done():
		log, _ := w.Log()
		t.Fatalf("the writer on alpha stopped:\n%s", tail(log, 20))
	default:
	}
	states := stateChanges(t, c, "alpha", t0)
	t.Logf("alpha's states since the disk filled: %s", strings.Join(states, ", "))
	maxLat := stopWriter(t, w)
	if maxLat > replTimeout+latencyMargin {
		t.Errorf("a record waited %v: more than replication.timeout %v + %v", maxLat, replTimeout, latencyMargin)
	}
	if rep, out := verifyOn(t, c.Node("alpha").Host, ack); !rep.OK {
		t.Fatalf("acknowledged writes damaged on alpha:\n%s", out)
	}

	// Free the space: the secondary resynchronises and the copies match.
	must(t, beta.FreeDisk(small))
	t1 := time.Now()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	t.Logf("pair synced %v after the space was freed", time.Since(t1).Round(time.Millisecond))
	// beta's copy, seen from inside its mount namespace through its agent.
	compareTrees(t, c.BackingDir("alpha", dataDir), fmt.Sprintf("/proc/%d/root%s", c.Node("beta").Proc().Pid(), dataDir), 5*time.Second)
	if rep, out := verifyOn(t, beta, ack); !rep.OK {
		t.Fatalf("acknowledged writes missing or damaged on beta after the resync:\n%s", out)
	}
}

// sync: write: every write() that returned is on the secondary, so a
// writer acknowledging after write() alone loses nothing on kill -9.
func TestPeerTroubleSyncWriteNoLoss(t *testing.T) {
	c := replicatedCluster(t, "sync: write\n")
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	ack := filepath.Join(c.Dir(), "acks.log")
	w := startWriter(t, c.Node("alpha").Host, ack, "--mode", "none", "--checkpoint-every", "0")
	time.Sleep(1500 * time.Millisecond)
	c.Kill9("alpha", w)
	waitServing(t, c, "beta", 0, 10*time.Second)
	rep, out := verifyOn(t, c.Node("beta").Host, ack)
	t.Logf("verify on beta: %s", strings.TrimSpace(out))
	if !rep.OK {
		t.Fatalf("writes acknowledged after write() returned are lost on beta")
	}
	if rep.Acked < 100 {
		t.Errorf("only %d records acknowledged in 1.5s: is the writer working?", rep.Acked)
	}
}

// Reads on the primary are served locally: reading a 64 MiB file many
// times moves (almost) nothing over the cluster networks.
func TestReadsStayLocal(t *testing.T) {
	c := replicatedCluster(t, "")
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	alpha := c.Node("alpha").Host
	if out, err := alpha.Run("dd", "if=/dev/urandom", "of="+dataDir+"/big", "bs=1M", "count=64", "conv=fsync", "status=none"); err != nil {
		t.Fatalf("write 64 MiB through alpha's mount: %v: %s", err, out)
	}
	compareCopies(t, c, 20*time.Second)
	const rounds = 5
	before := netBytes(t, alpha)
	t0 := time.Now()
	for range rounds {
		// Drop the page cache so that every round really reads through
		// the FUSE daemon, not the kernel's cache of its pages.
		must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200))
		if out, err := alpha.Run("dd", "if="+dataDir+"/big", "of=/dev/null", "bs=1M", "status=none"); err != nil {
			t.Fatalf("read through alpha's mount: %v: %s", err, out)
		}
	}
	elapsed := time.Since(t0)
	after := netBytes(t, alpha)
	moved := after - before
	// Heartbeats: 10/s per network and direction, a few hundred bytes each.
	allowed := int64(1<<20) + int64(elapsed.Seconds()*4*10*400)
	t.Logf("read %d MiB through alpha's mount in %v; alpha's interfaces moved %d bytes (allowed %d)", rounds*64, elapsed.Round(time.Millisecond), moved, allowed)
	if moved > allowed {
		t.Errorf("reading moved %d bytes over the cluster networks: reads cross the network", moved)
	}
}

// ackedRecords counts the records acknowledged in the ack log so far.
func ackedRecords(t *testing.T, ack string) int {
	t.Helper()
	f, err := os.Open(ack)
	if err != nil {
		t.Fatalf("read the ack log: %v", err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "r ") {
			n++
		}
	}
	return n
}

var maxLatRE = regexp.MustCompile(`writer: max record latency (\S+) \(record (\d+)\)`)

// stopWriter stops the writer with SIGTERM, fails the test if it had
// stopped on its own (an error), and returns its longest record latency.
func stopWriter(t *testing.T, w *testbed.Proc) time.Duration {
	t.Helper()
	select {
	case <-w.Done():
		log, _ := w.Log()
		t.Fatalf("the writer stopped on its own:\n%s", tail(log, 20))
	default:
	}
	must(t, w.Signal(syscall.SIGTERM))
	if err := w.Wait(10 * time.Second); err != nil {
		log, _ := w.Log()
		t.Fatalf("the writer did not stop cleanly: %v\n%s", err, tail(log, 20))
	}
	log, _ := w.Log()
	m := maxLatRE.FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no max record latency in the writer's output:\n%s", tail(log, 20))
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatalf("writer's max latency %q: %v", m[1], err)
	}
	if slow := slowLines(log); slow != "" {
		t.Logf("writer's slow records:\n%s", slow)
	}
	return d
}

func slowLines(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "slow record") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func mustStatus(t *testing.T, c *tcluster.Cluster, node string) statusView {
	t.Helper()
	st, err := c.Status(node)
	if err != nil {
		t.Fatalf("status of %s: %v", node, err)
	}
	return statusView{State: st.State, Reason: st.Reason, Sync: st.Sync}
}

type statusView struct{ State, Reason, Sync string }

func mentionsSpace(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "no space") || strings.Contains(s, "disk") || strings.Contains(s, "enospc") || strings.Contains(s, "space left")
}

// stateChanges lists node's state changes logged since t0.
func stateChanges(t *testing.T, c *tcluster.Cluster, node string, since time.Time) []string {
	t.Helper()
	var out []string
	for _, e := range eventsSince(t, c, node, since) {
		if e.Kind == "state" {
			out = append(out, e.Msg+" @"+strconv.FormatInt(e.Time.Sub(since).Milliseconds(), 10)+"ms")
		}
	}
	return out
}

// netBytes sums the received and sent bytes of the host's interfaces
// other than lo (read in its network namespace).
func netBytes(t *testing.T, h *testbed.Host) int64 {
	t.Helper()
	out, err := h.Run("cat", "/proc/net/dev")
	if err != nil {
		t.Fatalf("%v", err)
	}
	var sum int64
	for _, line := range strings.Split(out, "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) == "lo" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			continue
		}
		rx, err1 := strconv.ParseInt(f[0], 10, 64)
		tx, err2 := strconv.ParseInt(f[8], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		sum += rx + tx
	}
	return sum
}

// dropReplication drops the replication port's traffic in host (both
// directions) while its heartbeats still flow.
func dropReplication(t *testing.T, h *testbed.Host) {
	t.Helper()
	const rules = `table inet tandem_e2e_repl {
  chain in { type filter hook input priority 0; tcp dport 7401 drop; tcp sport 7401 drop; }
  chain out { type filter hook output priority 0; tcp sport 7401 drop; tcp dport 7401 drop; }
}`
	cmd := h.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("drop the replication port on %s: %v: %s", h.Name, err, out)
	}
}

func undropReplication(t *testing.T, h *testbed.Host) {
	t.Helper()
	if out, err := h.Run("nft", "delete", "table", "inet", "tandem_e2e_repl"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// waitAloneEvent waits until node's log records that it went ALONE after
// since (a status poll can miss a short stay) and returns that event.
func waitAloneEvent(t *testing.T, c *tcluster.Cluster, node string, since time.Time, within time.Duration) eventlog.Event {
	t.Helper()
	_, e := waitEvent(t, c, []string{node}, within, "-> ALONE", func(e eventlog.Event) bool {
		return e.Kind == "state" && strings.HasSuffix(e.Msg, "-> ALONE") && !e.Time.Before(since)
	})
	return e
}

// tookOver describes node's state changes into a serving state since t0
// ("" if none).
func tookOver(t *testing.T, c *tcluster.Cluster, node string, since time.Time) string {
	t.Helper()
	var out []string
	for _, e := range eventsSince(t, c, node, since) {
		if e.Kind == "state" && (strings.HasSuffix(e.Msg, "-> ALONE") || strings.HasSuffix(e.Msg, "-> PRIM")) {
			out = append(out, fmt.Sprintf("%s (%v)", e.Msg, e.Fields["reason"]))
		}
	}
	return strings.Join(out, ", ")
}

// swap asks node (the primary) to hand the module over, retrying while
// its view of the secondary is not synced yet (a heartbeat behind).
func swap(t *testing.T, c *tcluster.Cluster, node string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Command(node, "swap", api.CommandOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("swap on %s: %v", node, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitAnyPair waits for a synced pair either way round and returns the
// primary.
func waitAnyPair(t *testing.T, c *tcluster.Cluster, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	var a, b api.ModuleStatus
	for time.Now().Before(deadline) {
		a, _ = c.Status("alpha")
		b, _ = c.Status("beta")
		switch {
		case a.State == "PRIM" && a.Target == "" && b.State == "SECOND" && b.Target == "" && b.Sync == "synced":
			return "alpha"
		case b.State == "PRIM" && b.Target == "" && a.State == "SECOND" && a.Target == "" && a.Sync == "synced":
			return "beta"
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no synced pair within %s: alpha %s (target %q, sync %s, %q), beta %s (target %q, sync %s, %q)",
		within, a.State, a.Target, a.Sync, a.Reason, b.State, b.Target, b.Sync, b.Reason)
	return ""
}
