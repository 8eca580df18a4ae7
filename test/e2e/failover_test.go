package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

var vip4 = mustAddr("192.0.2.100")

// A kill -9 of the primary's agent and application moves the service to
// the secondary; the restarted node comes back as SECOND with its state kept.
func TestFailoverKill9(t *testing.T) {
	c := newCluster(t, tcluster.Options{})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)

	start := time.Now()
	c.Kill9("alpha")
	c.WaitState("beta", "ALONE", 5*time.Second)
	took := c.WaitReach(vip4, "beta", 5*time.Second)
	t.Logf("kill -9 -> client served by beta after %s", time.Since(start).Round(time.Millisecond))
	if total := time.Since(start); total > 1500*time.Millisecond {
		t.Errorf("failover took %s, want < 1.5s with default heartbeats", total)
	}
	_ = took
	st := c.WaitState("beta", "ALONE", time.Second)
	if st.PeerState != "DOWN" || !st.UpToDate || st.VIPHolder != "beta" {
		t.Errorf("beta after failover: %+v", st)
	}

	// The killed node restarts and rejoins as SECOND; beta becomes PRIM.
	c.Start("alpha")
	c.WaitState("alpha", "SECOND", 10*time.Second)
	c.WaitState("beta", "PRIM", 5*time.Second)
	c.WaitReach(vip4, "beta", 2*time.Second)
	a, _ := c.Status("alpha")
	b, _ := c.Status("beta")
	if a.Epoch != b.Epoch || !a.UpToDate || a.Sync != "synced" {
		t.Errorf("after rejoin: alpha epoch %d uptodate %v sync %s; beta epoch %d", a.Epoch, a.UpToDate, a.Sync, b.Epoch)
	}
}

// Pulling every cable of the primary: it notices at once (carrier) and
// stops serving, the secondary takes over after the timeout; the VIP is
// never on both.
func TestFailoverLinkDown(t *testing.T) {
	c := newCluster(t, tcluster.Options{})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)
	alpha := c.Node("alpha").Host
	must(t, alpha.LinkDown("lan"))
	must(t, alpha.LinkDown("backup"))
	start := time.Now()
	c.WaitState("beta", "ALONE", 5*time.Second)
	c.WaitReach(vip4, "beta", 5*time.Second)
	t.Logf("link down -> client served by beta after %s", time.Since(start).Round(time.Millisecond))
	st := c.WaitState("alpha", "WAIT", 2*time.Second)
	if !strings.Contains(st.Reason, "isolated") {
		t.Errorf("alpha reason %q, want isolation", st.Reason)
	}
	must(t, alpha.LinkUp("lan"))
	must(t, alpha.LinkUp("backup"))
	c.WaitState("alpha", "SECOND", 10*time.Second)
	c.WaitState("beta", "PRIM", 5*time.Second)
}

// swap moves the module; stop on the primary fails over; prim --force
// serves stale data only when asked.
func TestSwapStopPrimForce(t *testing.T) {
	c := newCluster(t, tcluster.Options{})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)

	if _, err := c.Command("beta", "swap", api.CommandOptions{}); err != nil {
		t.Fatalf("swap from the secondary: %v", err)
	}
	c.WaitState("beta", "PRIM", 10*time.Second)
	c.WaitState("alpha", "SECOND", 10*time.Second)
	c.WaitReach(vip4, "beta", 3*time.Second)

	if _, err := c.Command("beta", "swap", api.CommandOptions{}); err != nil {
		t.Fatalf("swap from the primary: %v", err)
	}
	c.WaitState("alpha", "PRIM", 10*time.Second)
	c.WaitState("beta", "SECOND", 10*time.Second)
	c.WaitReach(vip4, "alpha", 3*time.Second)

	// stop on the primary = failover to the peer.
	if _, err := c.Command("alpha", "stop", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitState("alpha", "STOP", 10*time.Second)
	c.WaitState("beta", "ALONE", 5*time.Second)
	c.WaitReach(vip4, "beta", 3*time.Second)

	// Both down; alpha comes back first: its data is older than beta's, so
	// it waits; prim is refused, prim --force serves and says what is lost.
	c.Kill9("beta")
	c.Sigterm("alpha")
	c.Start("alpha")
	c.WaitAgent("alpha")
	if _, err := c.Command("alpha", "start", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitReason("alpha", "WAIT", "--force", 10*time.Second)
	if _, err := c.Command("alpha", "prim", api.CommandOptions{}); err == nil {
		t.Fatal("prim without --force accepted on a node that is not up to date")
	}
	msg, err := c.Command("alpha", "prim", api.CommandOptions{Force: true})
	if err != nil {
		t.Fatalf("prim --force: %v", err)
	}
	t.Logf("prim --force: %s", msg)
	c.WaitState("alpha", "ALONE", 10*time.Second)
	c.WaitReach(vip4, "alpha", 3*time.Second)
	// beta returns and must follow as SECOND.
	c.Start("beta")
	c.WaitState("beta", "SECOND", 10*time.Second)
	c.WaitState("alpha", "PRIM", 5*time.Second)
}

// SIGTERM stops the module cleanly (scripts, VIP) and the peer takes over at
// once; the restarted agent keeps the module's state and up-to-date flag.
func TestAgentRestartKeepsState(t *testing.T) {
	c := newCluster(t, tcluster.Options{})
	c.StartPair()
	start := time.Now()
	c.Sigterm("alpha")
	if h := c.Holder(vip4); h == "alpha" {
		t.Fatal("VIP left on alpha after SIGTERM")
	}
	c.WaitState("beta", "ALONE", 3*time.Second)
	c.WaitReach(vip4, "beta", 3*time.Second)
	t.Logf("clean stop -> beta serving after %s", time.Since(start).Round(time.Millisecond))
	c.Start("alpha")
	c.WaitState("alpha", "SECOND", 10*time.Second)
	c.WaitState("beta", "PRIM", 5*time.Second)

	// A module stopped by the administrator stays stopped across a restart.
	if _, err := c.Command("alpha", "stop", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitState("alpha", "STOP", 5*time.Second)
	c.WaitState("beta", "ALONE", 5*time.Second)
	c.Sigterm("alpha")
	c.Start("alpha")
	c.WaitAgent("alpha")
	time.Sleep(1500 * time.Millisecond)
	if st, _ := c.Status("alpha"); st.State != "STOP" || st.Started {
		t.Errorf("stopped module restarted by an agent restart: %+v", st)
	}
}

// An IPv6 VIP is added without DAD delay and announced; the client follows.
func TestIPv6VIP(t *testing.T) {
	vip6 := mustAddr("2001:db8:1::100")
	c := newCluster(t, tcluster.Options{VIPs: []string{"2001:db8:1::100/64"}})
	c.StartPair()
	c.WaitReach(vip6, "alpha", 5*time.Second)
	c.Kill9("alpha")
	c.WaitState("beta", "ALONE", 5*time.Second)
	c.WaitReach(vip6, "beta", 5*time.Second)
}
