package e2e

import (
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

const web = tcluster.Module

// startAll starts both agents and every module of the cluster on both
// nodes.
func startAll(t *testing.T, c *tcluster.Cluster) {
	t.Helper()
	c.Start("alpha")
	c.Start("beta")
	for _, n := range []string{"alpha", "beta"} {
		c.WaitAgent(n)
		for _, m := range c.Modules() {
			if _, err := c.ModuleCommand(n, m, "start", api.CommandOptions{}); err != nil {
				t.Fatalf("start module %s on %s: %v", m, n, err)
			}
		}
	}
}

// TestSwapNoLossDowntime (issue 4, point 6): the writer runs as the
// module's application while the module is swapped back and forth; no
// acknowledged write is lost, both copies stay identical, and the swap's
// downtime is measured twice: the longest time without an acknowledged
// write (the application is stopped on one node, started on the other,
// and resumes) and the longest time the VIP did not answer.
// TANDEM_SWAPS changes the number of swaps (default 4).
func TestSwapNoLossDowntime(t *testing.T) {
	swaps := 4
	if s := os.Getenv("TANDEM_SWAPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("TANDEM_SWAPS=%q: want a positive number of swaps", s)
		}
		swaps = n
	}
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}, DefaultPrimary: tcluster.NoDefaultPrimary,
		Scripts: writerApp(web, dataDir, tcluster.AppPort, "--rate 500")})
	watchPrims(t, c)
	c.StartPair()
	waitModulePair(t, c, web, "alpha", "beta", 30*time.Second)
	acks := watchAcks(t, ackLogOf(c, web))
	probe := probeVIP(t, c, web)
	waitWriting(t, c, acks, "alpha", web, 200, 20*time.Second, "before the first swap")
	checkWriter(t, c, "alpha", web, dataDir, true, "before the first swap")

	prim, sec := "alpha", "beta"
	var writeGaps, vipGaps, settles []time.Duration
	for i := 1; i <= swaps; i++ {
		waitWriting(t, c, acks, prim, web, 200, 20*time.Second, fmt.Sprintf("before swap %d", i))
		// Asked on the primary twice (alpha, beta), then on the
		// secondary twice (beta, alpha), and so on.
		asked := prim
		if (i-1)/2%2 == 1 {
			asked = sec
		}
		t0 := time.Now()
		if out, err := c.Command(asked, "swap", api.CommandOptions{}); err != nil {
			t.Fatalf("swap %d asked on %s: %v (%s)", i, asked, err, out)
		}
		settled := waitModulePair(t, c, web, sec, prim, 30*time.Second)
		c.WaitReach(c.ModuleVIP(web), sec, 10*time.Second)
		waitWriting(t, c, acks, sec, web, 200, 10*time.Second, fmt.Sprintf("after swap %d", i))
		t1 := time.Now()
		wg, wat := acks.LongestGap(t0, t1)
		vg, vat := probe.LongestGap(t0, t1)
		writeGaps, vipGaps, settles = append(writeGaps, wg), append(vipGaps, vg), append(settles, settled.Sub(t0))
		t.Logf("swap %d %s -> %s (asked on %s): no acknowledged write for %v (from +%v), VIP silent for %v (from +%v), synced pair again after %v",
			i, prim, sec, asked, wg.Round(time.Millisecond), wat.Sub(t0).Round(time.Millisecond),
			vg.Round(time.Millisecond), vat.Sub(t0).Round(time.Millisecond), settled.Sub(t0).Round(time.Millisecond))
		rep := checkWriter(t, c, sec, web, dataDir, true, fmt.Sprintf("after swap %d", i))
		t.Logf("after swap %d: %d acknowledged records intact on %s, copies identical", i, rep.Acked, sec)
		prim, sec = sec, prim
	}
	t.Logf("swap downtime over %d swaps: writes %s, VIP %s; swap command to synced pair %s",
		len(writeGaps), spread(writeGaps), spread(vipGaps), spread(settles))
}

// spread formats durations as "min / p50 / p95 / max" (nearest rank).
func spread(ds []time.Duration) string {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return "none"
	}
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	rank := func(p float64) time.Duration { return r(s[min(len(s)-1, int(math.Ceil(p*float64(len(s))))-1)]) }
	return fmt.Sprintf("min %v / p50 %v / p95 %v / max %v", r(s[0]), rank(0.5), rank(0.95), r(s[len(s)-1]))
}

// TestFailbackToDefaultPrimary (issue 4, point 6): module web has
// default_primary beta; module stay has none. beta is killed, web serves
// on alpha (the writer runs there), beta returns, resynchronises, and web
// goes home to beta by itself once beta is synced. Then alpha is killed:
// stay moves to beta and, alpha back and synced, stays there.
func TestFailbackToDefaultPrimary(t *testing.T) {
	const stayDir = "/srv/stay-data"
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}, DefaultPrimary: "beta",
		Scripts: writerApp(web, dataDir, tcluster.AppPort, "--rate 300"),
		Modules: []tcluster.ModuleSpec{{Name: "stay", VIPs: []string{"192.0.2.101/24"}, Directories: []string{stayDir}}}})
	watchPrims(t, c)
	startAll(t, c)
	waitModulePair(t, c, web, "beta", "alpha", 30*time.Second)
	waitModulePair(t, c, "stay", "alpha", "beta", 30*time.Second)
	acks := watchAcks(t, ackLogOf(c, web))
	waitWriting(t, c, acks, "beta", web, 100, 20*time.Second, "web at home on beta")

	// web away from home: beta dies, alpha serves and writes alone.
	c.Kill9("beta")
	waitModuleServing(t, c, web, "alpha", 10*time.Second)
	waitWriting(t, c, acks, "alpha", web, 300, 20*time.Second, "web on alpha")
	checkWriter(t, c, "alpha", web, dataDir, false, "web alone on alpha")

	since := time.Now()
	c.Start("beta")
	synced := waitModulePair(t, c, web, "alpha", "beta", 60*time.Second)
	ev := waitResync(t, c, "alpha", web, "complete", since, 10*time.Second)
	home := waitModulePair(t, c, web, "beta", "alpha", 30*time.Second)
	c.WaitReach(c.ModuleVIP(web), "beta", 10*time.Second)
	t.Logf("beta back: %s; synced %v after its start; home again %v after being synced",
		resyncSummary(ev), synced.Sub(since).Round(time.Millisecond), home.Sub(synced).Round(time.Millisecond))
	if ev.Fields["kind"] != "incremental" {
		t.Errorf("beta's resync was %v, want incremental: alpha recorded what changed while alone", ev.Fields["kind"])
	}
	if !logged(c, "alpha", web, since, "failback") {
		t.Errorf("alpha's module log does not say why web went back to beta (no failback event)")
	}
	if d := home.Sub(synced); d < 2*time.Second {
		t.Errorf("web went home %v after beta was synced: sooner than the settle time (3 s)", d)
	}
	waitWriting(t, c, acks, "beta", web, 100, 20*time.Second, "web back on beta")
	checkWriter(t, c, "beta", web, dataDir, true, "web home on beta")

	// stay away from alpha, its first node: without default_primary it
	// stays on beta once alpha is back and synced.
	c.Kill9("alpha")
	waitModuleServing(t, c, "stay", "beta", 10*time.Second)
	c.Start("alpha")
	waitModulePair(t, c, "stay", "beta", "alpha", 60*time.Second)
	waitModulePair(t, c, web, "beta", "alpha", 60*time.Second)
	deadline := time.Now().Add(8 * time.Second) // well past the 3 s failback settle time
	for time.Now().Before(deadline) {
		for _, m := range []string{web, "stay"} {
			if st, err := c.ModuleStatus("beta", m); err != nil || st.State != "PRIM" {
				t.Fatalf("module %s left beta with alpha back: beta %s (target %q, %q, err %v)", m, st.State, st.Target, st.Reason, err)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkWriter(t, c, "beta", web, dataDir, true, "end")
}

// logged reports whether node's log of module has an event after since
// whose message contains sub.
func logged(c *tcluster.Cluster, node, module string, since time.Time, sub string) bool {
	evs, _ := c.ModuleEvents(node, module)
	for _, e := range evs {
		if !e.Time.Before(since) && strings.Contains(eventlog.Format(e), sub) {
			return true
		}
	}
	return false
}
