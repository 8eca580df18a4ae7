package e2e

import (
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// TestIsolationSlowStopPrim: the primary's cables are pulled while its
// application waits in fdatasync for the secondary, and its stop_prim
// stops the application gracefully (SIGTERM, then waits for it to exit),
// as stop scripts of databases do. The isolated node must stop serving
// (VIP removed) before the peer's heartbeat timeout lets the peer take the
// VIP (design.md, "Isolation"), and no write it acknowledged may be
// missing on the peer that serves next.
//
// Found by TestResyncFaultLoop: the blocked durable wait was released
// (EIO) only when replication.timeout (3 s) failed the stream, the writer
// could not exit until then, stop_prim waited for it, and the VIPs,
// removed only after stop_prim, stayed on the isolated node ~2.5 s after
// the peer added them. Now an isolated node removes its VIPs and fences
// its data (streams cut, unacknowledged durable calls fail) first.
func TestIsolationSlowStopPrim(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}, DefaultPrimary: tcluster.NoDefaultPrimary,
		Scripts: writerApp(web, dataDir, tcluster.AppPort, "")})
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	acks := watchAcks(t, ackLogOf(c, web))
	waitWriting(t, c, acks, "alpha", web, 200, 20*time.Second, "before the cut")
	alpha := c.Node("alpha").Host
	vip := c.ModuleVIP(web)
	t0 := time.Now()
	for _, n := range []string{"lan", "backup"} {
		must(t, alpha.LinkDown(n))
	}
	var writerGone, vipGone, betaServes time.Duration
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && (writerGone == 0 || vipGone == 0 || betaServes == 0) {
		el := time.Since(t0)
		if writerGone == 0 && writerPid(c, "alpha", web) == 0 {
			writerGone = el
		}
		if ok, err := alpha.HasAddr(vip); vipGone == 0 && err == nil && !ok {
			vipGone = el
		}
		if ok, err := c.Node("beta").Host.HasAddr(vip); betaServes == 0 && err == nil && ok {
			betaServes = el
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("after the cut: alpha's writer gone after %v, alpha's VIP removed after %v; beta added the VIP after %v",
		writerGone.Round(time.Millisecond), vipGone.Round(time.Millisecond), betaServes.Round(time.Millisecond))
	if vipGone == 0 || betaServes == 0 || vipGone > betaServes {
		t.Fatalf("the isolated alpha kept the VIP until %v, beta added it at %v: both held it", vipGone.Round(time.Millisecond), betaServes.Round(time.Millisecond))
	}
	// Every write alpha acknowledged before or after the cut is on beta,
	// whose writer goes on from there.
	waitServing(t, c, "beta", 0, 10*time.Second)
	waitWriting(t, c, acks, "beta", web, 50, 20*time.Second, "after the failover")
	checkWriter(t, c, "beta", web, dataDir, false, "after the isolation of alpha")
}
