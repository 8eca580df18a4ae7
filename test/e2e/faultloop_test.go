package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// TestResyncFaultLoop (issue 4, point 8) is the issue-3 fault loop
// (TestNoLossFaultLoop) with the online resynchronisation in the way: the
// writer runs as the module's application while, at random moments, the
// primary is killed (kill -9, agent and application), a node's cables are
// pulled (the primary's or the secondary's), the module is swapped, and a
// returning node is interrupted while its resync runs (kill -9, SIGTERM or
// its cables pulled once the primary logged "resync started"). After each
// step: every acknowledged record is on the serving node (writer verify),
// the copies are identical once the SECOND is synced, and a module never
// has two primaries (status of both nodes polled all along, and the VIPs
// sampled every 5 ms).
//
// A ballast file rewritten while the peer is away, and a resync bandwidth
// cap, make the resyncs that get interrupted last long enough to be.
// stop_prim kills the writer at once: a graceful stop would hit the bug
// TestIsolationSlowStopPrim reproduces on every cable cut.
//
// TANDEM_SEED replays a run; TANDEM_FAULTS changes the number of faults
// (default 50, 12 with -short); TANDEM_FAULT_KINDS (a comma list) draws
// the faults from those kinds only.
func TestResyncFaultLoop(t *testing.T) {
	const ballastMiB = 32
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}, DefaultPrimary: tcluster.NoDefaultPrimary,
		Scripts:     writerAppKill(web, dataDir, tcluster.AppPort, "--rate 300"),
		ModuleExtra: "replication:\n  resync_bandwidth: 8MiB\n"})
	seed := testSeed(t)
	faults := faultCount(t, 50, 12)
	rng := rand.New(rand.NewPCG(seed, 0x8e5c))
	kinds := []string{"kill9", "kill9", "cut-prim", "cut-prim", "cut-sec", "swap", "swap"}
	if k := os.Getenv("TANDEM_FAULT_KINDS"); k != "" {
		kinds = strings.Split(k, ",") // to hammer one sequence, e.g. swap,cut-sec
		for _, kind := range kinds {
			if !slices.Contains([]string{"kill9", "cut-prim", "cut-sec", "swap"}, kind) {
				t.Fatalf("TANDEM_FAULT_KINDS=%q: %q is not one of kill9, cut-prim, cut-sec, swap", k, kind)
			}
		}
	}
	prims := watchPrims(t, c)
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	alpha := c.Node("alpha").Host
	if out, err := alpha.Run("dd", "if=/dev/urandom", "of="+dataDir+"/ballast", "bs=1M", fmt.Sprint("count=", ballastMiB), "status=none"); err != nil {
		t.Fatalf("write the ballast file: %v\n%s", err, out)
	}
	acks := watchAcks(t, ackLogOf(c, web))
	waitWriting(t, c, acks, "alpha", web, 50, 20*time.Second, "start")
	checkWriter(t, c, "alpha", web, dataDir, true, "start")

	f := &faultLoop{t: t, c: c, rng: rng, seed: seed, acks: acks, prims: prims, kinds: map[string]int{}, resyncKinds: map[string]int{}}
	prim, sec := "alpha", "beta"
	began := time.Now()
	for f.n < faults {
		step := time.Now()
		time.Sleep(time.Duration(100+rng.IntN(900)) * time.Millisecond)
		kind := kinds[rng.IntN(len(kinds))]
		f.fault(kind)
		down := ""
		switch kind {
		case "swap":
			asked := []string{prim, sec}[rng.IntN(2)]
			if out, err := c.Command(asked, "swap", api.CommandOptions{}); err != nil {
				f.fatalf("swap asked on %s: %v (%s)", asked, err, out)
			}
			waitModulePair(t, c, web, sec, prim, 30*time.Second)
			prim, sec = sec, prim
		case "kill9":
			c.Kill9(prim)
			f.failedOver(sec)
			down, prim, sec = prim, sec, prim
			f.agentDead[down] = true
		case "cut-prim":
			f.cut(prim)
			f.failedOver(sec)
			// The cut-off node stopped serving by itself, its writer
			// with it (the ack log has one writer at a time).
			waitNotServing(t, c, prim, 15*time.Second)
			down, prim, sec = prim, sec, prim
		case "cut-sec":
			f.cut(sec)
			c.WaitState(prim, "ALONE", 15*time.Second)
			waitNotServing(t, c, sec, 15*time.Second)
			down = sec
		}
		if down != "" {
			f.check(prim, false, kind)
			f.heal(prim, down, faults)
		}
		waitModulePair(t, c, web, prim, sec, 90*time.Second)
		f.check(prim, true, kind)
		t.Logf("fault %2d %-8s done in %5dms: %s PRIM, %s synced; %d acks so far%s",
			f.n, kind, time.Since(step).Milliseconds(), prim, sec, acks.Acks(), f.note)
		f.note = ""
	}
	var secs []time.Duration
	for _, s := range f.resyncSecs {
		secs = append(secs, time.Duration(s*float64(time.Second)))
	}
	t.Logf("%d faults in %s (seed %d): %v; resyncs %v, times %s; %d of %d interruptions hit a running resync",
		f.n, time.Since(began).Round(time.Second), seed, sortedCounts(f.kinds), sortedCounts(f.resyncKinds), spread(secs), f.hit, f.interrupts)
}

// faultLoop is the state of TestResyncFaultLoop.
type faultLoop struct {
	t     *testing.T
	c     *tcluster.Cluster
	rng   *rand.Rand
	seed  uint64
	acks  *ackWatch
	prims *primWatch

	n           int // faults injected
	kinds       map[string]int
	resyncKinds map[string]int
	resyncSecs  []float64
	interrupts  int
	hit         int // interruptions that found the resync still running
	agentDead   map[string]bool
	linksCut    map[string]bool
	note        string
}

func (f *faultLoop) fatalf(format string, args ...any) {
	f.t.Helper()
	f.t.Fatalf("fault %d (seed %d): %s", f.n, f.seed, fmt.Sprintf(format, args...))
}

func (f *faultLoop) fault(kind string) {
	f.n++
	f.kinds[kind]++
	if f.agentDead == nil {
		f.agentDead, f.linksCut = map[string]bool{}, map[string]bool{}
	}
}

func (f *faultLoop) cut(node string) {
	f.t.Helper()
	h := f.c.Node(node).Host
	for _, n := range []string{"lan", "backup"} {
		must(f.t, h.LinkDown(n))
	}
	f.linksCut[node] = true
}

// failedOver waits for node to serve and for its writer to write.
func (f *faultLoop) failedOver(node string) {
	f.t.Helper()
	waitModuleServing(f.t, f.c, web, node, 15*time.Second)
	waitWriting(f.t, f.c, f.acks, node, web, 20, 20*time.Second, fmt.Sprintf("fault %d (seed %d)", f.n, f.seed))
}

// check verifies the acknowledged records on the serving node (and the
// copies when the pair is synced), and that no safety sampler saw two
// primaries or a VIP on two nodes.
func (f *faultLoop) check(serving string, synced bool, kind string) {
	f.t.Helper()
	checkWriter(f.t, f.c, serving, web, dataDir, synced, fmt.Sprintf("fault %d %s (seed %d)", f.n, kind, f.seed))
	if n := f.prims.Violations(); n > 0 {
		f.fatalf("a module was primary on both nodes (%d samples so far; the first is reported at the end)", n)
	}
	if n, first := f.c.VIPViolations(); n > 0 {
		f.fatalf("a VIP was on both nodes (%d samples so far): %s", n, first)
	}
}

// heal brings down back (its agent restarted, its cables plugged back) as
// a synced SECOND of prim. Half the time the return is interrupted once
// or twice while the resync runs: kill -9 of its agent, SIGTERM, or its
// cables pulled again, each a fault of its own.
func (f *faultLoop) heal(prim, down string, faults int) {
	f.t.Helper()
	t, c := f.t, f.c
	interrupts := 0
	if f.rng.IntN(2) == 0 {
		interrupts = 1 + f.rng.IntN(2)
	}
	if interrupts > 0 {
		// Changes for the resync to carry: 6 random MiB of the ballast,
		// 0.75 s at the 8 MiB/s cap.
		var script strings.Builder
		script.WriteString("cd " + dataDir)
		for range 6 {
			fmt.Fprintf(&script, " && dd if=/dev/urandom of=ballast bs=1M count=1 seek=%d conv=notrunc status=none", f.rng.IntN(32-1))
		}
		if out, err := c.Node(prim).Host.Run("sh", "-c", script.String()); err != nil {
			f.fatalf("rewrite the ballast on %s: %v\n%s", prim, err, out)
		}
	}
	for i := 0; i < interrupts && f.n < faults; i++ {
		since := time.Now()
		f.bringBack(down)
		waitResync(t, c, prim, web, "started", since, 60*time.Second)
		time.Sleep(time.Duration(f.rng.IntN(300)) * time.Millisecond)
		how := []string{"kill9", "kill9", "sigterm", "cut"}[f.rng.IntN(4)]
		running := true
		for _, e := range resyncEvents(c, prim, web, since) {
			if e.Fields["result"] == "complete" {
				running = false
			}
		}
		f.fault("resync-" + how)
		f.interrupts++
		if running {
			f.hit++
		}
		switch how {
		case "kill9":
			c.Kill9(down)
			f.agentDead[down] = true
		case "sigterm":
			c.Sigterm(down)
			f.agentDead[down] = true
		case "cut":
			f.cut(down)
		}
		c.WaitState(prim, "ALONE", 15*time.Second)
		f.note += fmt.Sprintf("; resync %d interrupted by %s (%s)", i+1, how, map[bool]string{true: "running", false: "already complete"}[running])
		f.check(prim, false, "resync-"+how)
	}
	since := time.Now()
	f.bringBack(down)
	ev := waitResync(t, c, prim, web, "complete", since, 90*time.Second)
	kind, _ := ev.Fields["kind"].(string)
	f.resyncKinds[kind]++
	f.resyncSecs = append(f.resyncSecs, num(ev.Fields["seconds"]))
	f.note += "; " + resyncSummary(ev)
}

// bringBack restarts down's agent or plugs its cables back.
func (f *faultLoop) bringBack(down string) {
	f.t.Helper()
	if f.linksCut[down] {
		h := f.c.Node(down).Host
		for _, n := range []string{"lan", "backup"} {
			must(f.t, h.LinkUp(n))
		}
		f.linksCut[down] = false
	}
	if f.agentDead[down] {
		f.c.Start(down)
		f.agentDead[down] = false
	}
}

// waitNotServing waits until node neither serves the module nor is
// entering a serving state, and its writer is gone.
func waitNotServing(t *testing.T, c *tcluster.Cluster, node string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := c.ModuleStatus(node, web)
		if err == nil && !isPrim(st, nil) && !(st.State == "PRIM" || st.State == "ALONE") && writerPid(c, node, web) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still serves %s after it was cut off: %s target %q (%q), err %v, writer pid %d", node, within, st.State, st.Target, st.Reason, err, writerPid(c, node, web))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sortedCounts(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for i, k := range ks {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}
