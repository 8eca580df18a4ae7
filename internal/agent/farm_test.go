package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/checker"
	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/farm"
	"github.com/tandem-ha/tandem/internal/membership"
)

// fakeDP records the verdicts a runner loads.
type fakeDP struct {
	mu sync.Mutex
	v  [farm.Buckets]farm.Verdict
	up bool
}

func (d *fakeDP) Update(v [farm.Buckets]farm.Verdict) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.v = v
	return nil
}

func (d *fakeDP) Teardown() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.up, d.v = false, [farm.Buckets]farm.Verdict{}
	return nil
}

func (d *fakeDP) count(want farm.Verdict) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, v := range d.v {
		if v == want {
			n++
		}
	}
	return n
}

// farmPair is two agents (alpha, beta) running one farm module, joined by
// a fake heartbeat that copies each one's payload to the other.
type farmPair struct {
	agents map[string]*Agent
	runner map[string]*farmRunner
	dps    map[string]*fakeDP
	alive  map[string]bool
	mu     sync.Mutex
}

func newFarmPair(t *testing.T, drain time.Duration) *farmPair {
	t.Helper()
	fp := &farmPair{agents: map[string]*Agent{}, runner: map[string]*farmRunner{}, dps: map[string]*fakeDP{}, alive: map[string]bool{"alpha": true, "beta": true}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, node := range []string{"alpha", "beta"} {
		c := &config.Cluster{Name: "c", Networks: []string{"lan"},
			Heartbeat: config.Heartbeat{Interval: 10 * time.Millisecond, Timeout: 30 * time.Millisecond}}
		a := &Agent{cluster: c, node: node, peerViews: map[string]peerInfo{}, byName: map[string]*modRunner{},
			log: slog.Default(), settings: config.NodeSettings{StateDir: t.TempDir()}}
		a.clusterFields = []config.Field{{Path: "name", Value: "c"}}
		a.clusterDigest = digestHex(a.clusterFields)
		m := &config.Module{Name: "web", Kind: config.KindFarm, Nodes: []string{"alpha", "beta"}, Dir: t.TempDir(),
			Scripts: config.Scripts{Timeout: 5 * time.Second, StopTimeout: 5 * time.Second},
			Farm:    &config.Farm{VIP: netip.MustParsePrefix("192.0.2.100/24"), Interface: "eth0", Hash: config.HashAddr, Drain: drain}}
		m.Checkers = []config.Checker{{Name: "app", Type: "custom", When: "prim", Action: "wait", Command: "check", Interval: time.Hour, Timeout: time.Second, Failures: 1}}
		r, err := newFarmRunner(a, m)
		if err != nil {
			t.Fatal(err)
		}
		a.farms = []*farmRunner{r}
		fp.agents[node], fp.runner[node] = a, r
		d := &fakeDP{}
		fp.dps[node] = d
		r.newDP = func(farm.DataplaneConfig) (farmDataplane, error) {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.up = true
			return d, nil
		}
		r.cleanup = func(string, netip.Addr, string) error { return nil }
		wg.Add(1)
		go func() { defer wg.Done(); r.loop(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); fp.heartbeats(ctx) }()
	// Registered after the TempDirs, so it runs before their removal: the
	// loops write state files until they end.
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, r := range fp.runner {
		r.boot()
	}
	return fp
}

// heartbeats copies each agent's payload to the other every few ms.
func (fp *farmPair) heartbeats(ctx context.Context) {
	for ctx.Err() == nil {
		for _, from := range []string{"alpha", "beta"} {
			to := map[string]string{"alpha": "beta", "beta": "alpha"}[from]
			b, _ := json.Marshal(fp.agents[from].payloadNow())
			p, _ := decodePayload(b)
			fp.mu.Lock()
			alive := fp.alive[from]
			fp.mu.Unlock()
			a := fp.agents[to]
			a.mu.Lock()
			a.peerViews[from] = peerInfo{view: membership.PeerView{Name: from, Alive: alive}, payload: p}
			a.mu.Unlock()
			fp.runner[to].poke()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (fp *farmPair) wait(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s: alpha %s held %d, beta %s held %d", what,
		fp.runner["alpha"].machine().State, fp.dps["alpha"].count(farm.Own)+fp.dps["alpha"].count(farm.OwnFresh),
		fp.runner["beta"].machine().State, fp.dps["beta"].count(farm.Own)+fp.dps["beta"].count(farm.OwnFresh))
}

func (fp *farmPair) held(node string) int {
	return fp.dps[node].count(farm.Own) + fp.dps[node].count(farm.OwnFresh)
}

// The two nodes split the buckets, never both hold one, and a node whose
// application checker says "unhealthy" gives its buckets away until it
// recovers; the status shows the shares.
func TestFarmRunnerPairAndHealthHook(t *testing.T) {
	fp := newFarmPair(t, time.Hour)
	noOverlap := func() {
		a, b := fp.dps["alpha"], fp.dps["beta"]
		a.mu.Lock()
		b.mu.Lock()
		defer a.mu.Unlock()
		defer b.mu.Unlock()
		for i := range farm.Buckets {
			ownA := a.v[i] == farm.Own || a.v[i] == farm.OwnFresh
			ownB := b.v[i] == farm.Own || b.v[i] == farm.OwnFresh
			if ownA && ownB {
				t.Fatalf("bucket %d held by both nodes", i)
			}
		}
	}
	for _, n := range []string{"alpha", "beta"} {
		if _, err := fp.agents[n].Command("web", "start", api.CommandOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	fp.wait(t, "both UP with 128 buckets each", func() bool {
		noOverlap()
		return fp.runner["alpha"].machine().State == farm.Up && fp.runner["beta"].machine().State == farm.Up &&
			fp.held("alpha") == 128 && fp.held("beta") == 128
	})
	var st api.Status
	fp.wait(t, "alpha's status showing both shares", func() bool {
		var err error
		st, err = fp.agents["alpha"].Status("web")
		return err == nil && st.Modules[0].Farm != nil && len(st.Modules[0].Farm.Nodes) == 2 &&
			st.Modules[0].Farm.Nodes[0].Share == 50 && st.Modules[0].Farm.Nodes[1].Share == 50
	})
	if st.Modules[0].State != "UP" || st.Modules[0].Mode != "farm" || st.Modules[0].Farm.Held != 128 {
		t.Errorf("status %+v", st.Modules[0])
	}

	// The hook: alpha's application is unhealthy.
	if err := fp.agents["alpha"].SetAppHealth("web", false, "http 500"); err != nil {
		t.Fatal(err)
	}
	fp.wait(t, "beta holding everything", func() bool {
		noOverlap()
		return fp.runner["alpha"].machine().State == farm.Wait && fp.held("alpha") == 0 && fp.held("beta") == 256
	})
	st, _ = fp.agents["alpha"].Status("web")
	if r := st.Modules[0].Reason; r != "application checker failed: http 500" {
		t.Errorf("reason %q", r)
	}
	// Recovered: alpha gets its share back; beta drains what it gives away
	// and alpha sees those buckets fresh.
	fp.agents["alpha"].SetAppHealth("web", true, "")
	fp.wait(t, "alpha back with its share", func() bool {
		noOverlap()
		return fp.held("alpha") == 128 && fp.held("beta") == 128
	})
	if d := fp.dps["beta"].count(farm.Drain); d != 128 {
		t.Errorf("beta drains %d buckets, want 128", d)
	}
	if f := fp.dps["alpha"].count(farm.OwnFresh); f != 128 {
		t.Errorf("alpha has %d fresh buckets, want 128", f)
	}

	// beta dies: alpha takes everything, no longer fresh.
	fp.mu.Lock()
	fp.alive["beta"] = false
	fp.mu.Unlock()
	fp.wait(t, "alpha holding everything", func() bool { return fp.dps["alpha"].count(farm.Own) == 256 })

	if err := fp.agents["alpha"].SetAppHealth("nope", false, ""); err == nil {
		t.Error("SetAppHealth on an unknown module accepted")
	}
	if _, err := fp.agents["alpha"].Command("web", "swap", api.CommandOptions{}); err == nil {
		t.Error("swap accepted on a farm")
	}
	if _, err := fp.agents["alpha"].Command("web", "stop", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	fp.wait(t, "alpha stopped", func() bool {
		m := fp.runner["alpha"].machine()
		fp.dps["alpha"].mu.Lock()
		defer fp.dps["alpha"].mu.Unlock()
		return m.State == farm.Stop && m.Target == "" && !fp.dps["alpha"].up
	})
}

func TestFarmCheckerActive(t *testing.T) {
	up := farm.Machine{State: farm.Up, Persistent: farm.Persistent{Started: true, Running: true}}
	wait := up
	wait.State = farm.Wait
	spec := func(w checker.When, a checker.Action) checker.Spec { return checker.Spec{When: w, Action: a} }
	for _, c := range []struct {
		s    checker.Spec
		m    farm.Machine
		want bool
	}{
		{spec(checker.Prim, checker.Restart), up, true},
		{spec(checker.Both, checker.Stop), up, true},
		{spec(checker.Prim, checker.Restart), wait, false},
		{spec(checker.Prim, checker.Wait), wait, true},
		{spec(checker.Pre, checker.Stop), wait, true},
		{spec(checker.Second, checker.Restart), up, false},
		{spec(checker.Prim, checker.Restart), farm.Machine{State: farm.Up, Target: farm.Wait, Persistent: up.Persistent}, false},
		{spec(checker.Pre, checker.Wait), farm.Machine{State: farm.Stop}, false},
	} {
		if got := farmCheckerActive(c.s, c.m); got != c.want {
			t.Errorf("%s/%s in %s (target %q): active %v, want %v", c.s.When, c.s.Action, c.m.State, c.m.Target, got, c.want)
		}
	}
}
