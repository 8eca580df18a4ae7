package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// aaModule is one module of the active-active test.
type aaModule struct {
	name, home, dir, vip string
	port                 uint16
}

// TestActiveActive (issue 4, point 7): two nodes, four mirror modules
// split 2/2, each with its own VIP, replicated directory, scripts, stream
// and default primary, each running the no-loss writer. One node is
// killed (kill -9: agent and applications): all four serve on the
// survivor; it comes back: each module resynchronises and the two that
// live there go home. Then the same with the other node. Every writer's
// acknowledged records are checked on the serving node after each phase,
// and the copies compared whenever the pair is synced.
func TestActiveActive(t *testing.T) {
	mods := []aaModule{
		{web, "alpha", dataDir, "192.0.2.100/24", tcluster.AppPort},
		{"a2", "alpha", "/srv/a2-data", "192.0.2.101/24", tcluster.AppPort + 1},
		{"b1", "beta", "/srv/b1-data", "192.0.2.102/24", tcluster.AppPort + 2},
		{"b2", "beta", "/srv/b2-data", "192.0.2.103/24", tcluster.AppPort + 3},
	}
	const rate = "--rate 150"
	o := tcluster.Options{Directories: []string{dataDir}, DefaultPrimary: mods[0].home, VIPs: []string{mods[0].vip}, Scripts: writerApp(web, dataDir, tcluster.AppPort, rate)}
	for _, m := range mods[1:] {
		o.Modules = append(o.Modules, tcluster.ModuleSpec{Name: m.name, DefaultPrimary: m.home, VIPs: []string{m.vip},
			Directories: []string{m.dir}, Port: m.port, Scripts: writerApp(m.name, m.dir, m.port, rate)})
	}
	c := newCluster(t, o)
	watchPrims(t, c)
	began := time.Now()
	startAll(t, c)
	other := map[string]string{"alpha": "beta", "beta": "alpha"}
	acks := map[string]*ackWatch{}
	for _, m := range mods {
		waitModulePair(t, c, m.name, m.home, other[m.home], 60*time.Second)
		acks[m.name] = watchAcks(t, ackLogOf(c, m.name))
	}
	// check waits for fresh writes of every module, checks them on the
	// node that serves it (and the copies when synced) and that its VIP
	// answers from there.
	check := func(phase string, where func(aaModule) string, synced bool) {
		t.Helper()
		for _, m := range mods {
			waitWriting(t, c, acks[m.name], where(m), m.name, 50, 30*time.Second, phase)
		}
		for _, m := range mods {
			n := where(m)
			c.WaitReachModule(m.name, n, 10*time.Second)
			rep := checkWriter(t, c, n, m.name, m.dir, synced, phase)
			t.Logf("%s: module %s on %s: %d acknowledged records intact%s", phase, m.name, n, rep.Acked, map[bool]string{true: ", copies identical"}[synced])
		}
	}
	check("all home", func(m aaModule) string { return m.home }, true)
	t.Logf("4 modules home and synced, writing, %v after the start", time.Since(began).Round(time.Millisecond))

	for _, victim := range []string{"beta", "alpha"} {
		survivor := other[victim]
		t0 := time.Now()
		c.Kill9(victim)
		for _, m := range mods {
			waitModuleServing(t, c, m.name, survivor, 15*time.Second)
		}
		t.Logf("%s killed: all 4 modules serve on %s after %v", victim, survivor, time.Since(t0).Round(time.Millisecond))
		check(victim+" down", func(aaModule) string { return survivor }, false)

		since := time.Now()
		c.Start(victim)
		synced, home := waitAllHome(t, c, mods, 90*time.Second)
		for _, m := range mods {
			ev := waitResync(t, c, survivor, m.name, "complete", since, 10*time.Second)
			msg := fmt.Sprintf("%s back: module %s: %s; synced %v after the agent's start", victim, m.name, resyncSummary(ev), synced[m.name].Sub(since).Round(time.Millisecond))
			if m.home == victim {
				msg += fmt.Sprintf(", home again %v after being synced", home[m.name].Sub(synced[m.name]).Round(time.Millisecond))
			}
			t.Log(msg)
			if ev.Fields["kind"] != "incremental" {
				t.Errorf("%s back: module %s: resync %v, want incremental", victim, m.name, ev.Fields["kind"])
			}
		}
		check(victim+" back", func(m aaModule) string { return m.home }, true)
	}
	t.Logf("active-active: %v in all", time.Since(began).Round(time.Millisecond))
}

// waitAllHome polls every module until it is PRIM on its home node with
// a synced SECOND, and returns when each was first seen synced (either
// way round) and home.
func waitAllHome(t *testing.T, c *tcluster.Cluster, mods []aaModule, within time.Duration) (synced, home map[string]time.Time) {
	t.Helper()
	synced, home = map[string]time.Time{}, map[string]time.Time{}
	other := map[string]string{"alpha": "beta", "beta": "alpha"}
	deadline := time.Now().Add(within)
	for len(home) < len(mods) {
		if time.Now().After(deadline) {
			for _, m := range mods {
				if home[m.name].IsZero() {
					a, _ := c.ModuleStatus("alpha", m.name)
					b, _ := c.ModuleStatus("beta", m.name)
					t.Logf("module %s (home %s): alpha %s->%q sync %s %q; beta %s->%q sync %s %q", m.name, m.home,
						a.State, a.Target, a.Sync, a.Reason, b.State, b.Target, b.Sync, b.Reason)
					logModuleEvents(t, c, m.name, 15)
				}
			}
			t.Fatalf("not every module home with a synced SECOND within %s", within)
		}
		for _, m := range mods {
			if !home[m.name].IsZero() {
				continue
			}
			for _, prim := range []string{m.home, other[m.home]} {
				p, perr := c.ModuleStatus(prim, m.name)
				s, serr := c.ModuleStatus(other[prim], m.name)
				if perr != nil || serr != nil || p.State != "PRIM" || p.Target != "" || s.State != "SECOND" || s.Target != "" || s.Sync != "synced" {
					continue
				}
				now := time.Now()
				if synced[m.name].IsZero() {
					synced[m.name] = now
				}
				if prim == m.home {
					home[m.name] = now
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return synced, home
}
