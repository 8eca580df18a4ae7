package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
)

var vip4 = mustAddr("192.0.2.100")

// A kill -9 of the primary's agent and application moves the service to
// the secondary; the restarted node comes back as SECOND with its state kept.
func TestFailoverKill9(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startPair()
	c.waitReach(vip4, "alpha", 5*time.Second)

	start := time.Now()
	c.kill9("alpha")
	c.waitState("beta", "ALONE", 5*time.Second)
	took := c.waitReach(vip4, "beta", 5*time.Second)
	t.Logf("kill -9 -> client served by beta after %s", time.Since(start).Round(time.Millisecond))
	if total := time.Since(start); total > 1500*time.Millisecond {
		t.Errorf("failover took %s, want < 1.5s with default heartbeats", total)
	}
	_ = took
	st := c.waitState("beta", "ALONE", time.Second)
	if st.PeerState != "DOWN" || !st.UpToDate || st.VIPHolder != "beta" {
		t.Errorf("beta after failover: %+v", st)
	}

	// The killed node restarts and rejoins as SECOND; beta becomes PRIM.
	c.start("alpha")
	c.waitState("alpha", "SECOND", 10*time.Second)
	c.waitState("beta", "PRIM", 5*time.Second)
	c.waitReach(vip4, "beta", 2*time.Second)
	a, _ := c.status("alpha")
	b, _ := c.status("beta")
	if a.Epoch != b.Epoch || !a.UpToDate || a.Sync != "synced" {
		t.Errorf("after rejoin: alpha epoch %d uptodate %v sync %s; beta epoch %d", a.Epoch, a.UpToDate, a.Sync, b.Epoch)
	}
}

// Pulling every cable of the primary: it notices at once (carrier) and
// stops serving, the secondary takes over after the timeout; the VIP is
// never on both.
func TestFailoverLinkDown(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startPair()
	c.waitReach(vip4, "alpha", 5*time.Second)
	alpha := c.node("alpha").host
	must(t, alpha.LinkDown("lan"))
	must(t, alpha.LinkDown("backup"))
	start := time.Now()
	c.waitState("beta", "ALONE", 5*time.Second)
	c.waitReach(vip4, "beta", 5*time.Second)
	t.Logf("link down -> client served by beta after %s", time.Since(start).Round(time.Millisecond))
	st := c.waitState("alpha", "WAIT", 2*time.Second)
	if !strings.Contains(st.Reason, "isolated") {
		t.Errorf("alpha reason %q, want isolation", st.Reason)
	}
	must(t, alpha.LinkUp("lan"))
	must(t, alpha.LinkUp("backup"))
	c.waitState("alpha", "SECOND", 10*time.Second)
	c.waitState("beta", "PRIM", 5*time.Second)
}

// swap moves the module; stop on the primary fails over; prim --force
// serves stale data only when asked.
func TestSwapStopPrimForce(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startPair()
	c.waitReach(vip4, "alpha", 5*time.Second)

	if _, err := c.command("beta", "swap", api.CommandOptions{}); err != nil {
		t.Fatalf("swap from the secondary: %v", err)
	}
	c.waitState("beta", "PRIM", 10*time.Second)
	c.waitState("alpha", "SECOND", 10*time.Second)
	c.waitReach(vip4, "beta", 3*time.Second)

	if _, err := c.command("beta", "swap", api.CommandOptions{}); err != nil {
		t.Fatalf("swap from the primary: %v", err)
	}
	c.waitState("alpha", "PRIM", 10*time.Second)
	c.waitState("beta", "SECOND", 10*time.Second)
	c.waitReach(vip4, "alpha", 3*time.Second)

	// stop on the primary = failover to the peer.
	if _, err := c.command("alpha", "stop", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitState("alpha", "STOP", 10*time.Second)
	c.waitState("beta", "ALONE", 5*time.Second)
	c.waitReach(vip4, "beta", 3*time.Second)

	// Both down; alpha comes back first: its data is older than beta's, so
	// it waits; prim is refused, prim --force serves and says what is lost.
	c.kill9("beta")
	c.sigterm("alpha")
	c.start("alpha")
	c.waitAgent("alpha")
	if _, err := c.command("alpha", "start", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitReason("alpha", "WAIT", "--force", 10*time.Second)
	if _, err := c.command("alpha", "prim", api.CommandOptions{}); err == nil {
		t.Fatal("prim without --force accepted on a node that is not up to date")
	}
	msg, err := c.command("alpha", "prim", api.CommandOptions{Force: true})
	if err != nil {
		t.Fatalf("prim --force: %v", err)
	}
	t.Logf("prim --force: %s", msg)
	c.waitState("alpha", "ALONE", 10*time.Second)
	c.waitReach(vip4, "alpha", 3*time.Second)
	// beta returns and must follow as SECOND.
	c.start("beta")
	c.waitState("beta", "SECOND", 10*time.Second)
	c.waitState("alpha", "PRIM", 5*time.Second)
}

// SIGTERM stops the module cleanly (scripts, VIP) and the peer takes over at
// once; the restarted agent keeps the module's state and up-to-date flag.
func TestAgentRestartKeepsState(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startPair()
	start := time.Now()
	c.sigterm("alpha")
	if h := c.holder(vip4); h == "alpha" {
		t.Fatal("VIP left on alpha after SIGTERM")
	}
	c.waitState("beta", "ALONE", 3*time.Second)
	c.waitReach(vip4, "beta", 3*time.Second)
	t.Logf("clean stop -> beta serving after %s", time.Since(start).Round(time.Millisecond))
	c.start("alpha")
	c.waitState("alpha", "SECOND", 10*time.Second)
	c.waitState("beta", "PRIM", 5*time.Second)

	// A module stopped by the administrator stays stopped across a restart.
	if _, err := c.command("alpha", "stop", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitState("alpha", "STOP", 5*time.Second)
	c.waitState("beta", "ALONE", 5*time.Second)
	c.sigterm("alpha")
	c.start("alpha")
	c.waitAgent("alpha")
	time.Sleep(1500 * time.Millisecond)
	if st, _ := c.status("alpha"); st.State != "STOP" || st.Started {
		t.Errorf("stopped module restarted by an agent restart: %+v", st)
	}
}

// An IPv6 VIP is added without DAD delay and announced; the client follows.
func TestIPv6VIP(t *testing.T) {
	vip6 := mustAddr("2001:db8:1::100")
	c := newCluster(t, clusterOpts{vips: []string{"2001:db8:1::100/64"}})
	c.startPair()
	c.waitReach(vip6, "alpha", 5*time.Second)
	c.kill9("alpha")
	c.waitState("beta", "ALONE", 5*time.Second)
	c.waitReach(vip6, "beta", 5*time.Second)
}
