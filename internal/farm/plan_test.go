package farm

import (
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"
)

func setOf(bs ...int) Set {
	var s Set
	for _, b := range bs {
		s.Add(b)
	}
	return s
}

func TestReconcileTakesFreeBuckets(t *testing.T) {
	now := time.Unix(1000, 0)
	p := Reconcile(Holdings{}, PlanInput{Target: setOf(1, 2, 3), Serving: true, Now: now,
		Peers: []PeerHold{{Name: "b", Alive: true, Held: setOf(3)}, {Name: "c", Alive: false, Held: setOf(2)}}})
	if p.Held != setOf(1, 2) || p.Blocked != setOf(3) || p.Taken != setOf(1, 2) {
		t.Fatalf("held %v blocked %v taken %v: want 1,2 taken (2's holder is dead), 3 blocked by a live holder", p.Held.List(), p.Blocked.List(), p.Taken.List())
	}
	// b releases 3: taken on the next round.
	p = Reconcile(p.Holdings, PlanInput{Target: setOf(1, 2, 3), Serving: true, Now: now, Peers: []PeerHold{{Name: "b", Alive: true}}})
	if p.Held != setOf(1, 2, 3) || !p.Blocked.Empty() || p.Taken != setOf(3) {
		t.Fatalf("held %v blocked %v", p.Held.List(), p.Blocked.List())
	}
}

// A node that gives buckets away while serving drains them; the peer that
// takes them sees them fresh until the drain ends.
func TestReconcileDrain(t *testing.T) {
	now := time.Unix(1000, 0)
	drain := 5 * time.Second
	a := Reconcile(Holdings{Held: setOf(1, 2, 3)}, PlanInput{Target: setOf(1), Serving: true, DrainFor: drain, Now: now})
	if a.Held != setOf(1) || a.Released != setOf(2, 3) || a.Draining(now) != setOf(2, 3) {
		t.Fatalf("held %v released %v draining %v", a.Held.List(), a.Released.List(), a.Draining(now).List())
	}
	if next := a.NextDrainEnd(now); !next.Equal(now.Add(drain)) {
		t.Errorf("next drain end %v", next)
	}
	v := a.Verdicts(now)
	if v[1] != Own || v[2] != Drain || v[4] != None {
		t.Errorf("verdicts %v %v %v", v[1], v[2], v[4])
	}
	// The new owner takes 2 and 3 (a no longer holds them) and sees them fresh.
	c := Reconcile(Holdings{}, PlanInput{Target: setOf(2, 3), Serving: true, DrainFor: drain, Now: now,
		Peers: []PeerHold{{Name: "a", Alive: true, Held: a.Held, Drain: a.Draining(now)}}})
	if c.Held != setOf(2, 3) || c.Fresh != setOf(2, 3) {
		t.Fatalf("new owner: held %v fresh %v", c.Held.List(), c.Fresh.List())
	}
	if v := c.Verdicts(now); v[2] != OwnFresh {
		t.Errorf("verdict %v, want own-fresh", v[2])
	}
	// The drain ends.
	later := now.Add(drain)
	a = Reconcile(a.Holdings, PlanInput{Target: setOf(1), Serving: true, DrainFor: drain, Now: later})
	if !a.Draining(later).Empty() || a.DrainUntil[2] != (time.Time{}) {
		t.Errorf("still draining %v after the drain time", a.Draining(later).List())
	}
	c = Reconcile(c.Holdings, PlanInput{Target: setOf(2, 3), Serving: true, Now: later,
		Peers: []PeerHold{{Name: "a", Alive: true, Held: a.Held}}})
	if !c.Fresh.Empty() {
		t.Errorf("fresh %v after the peer's drain ended", c.Fresh.List())
	}
	// A dead peer's drain does not count.
	c = Reconcile(c.Holdings, PlanInput{Target: setOf(2, 3), Serving: true, Now: later,
		Peers: []PeerHold{{Name: "a", Alive: false, Drain: setOf(2, 3)}}})
	if !c.Fresh.Empty() {
		t.Errorf("fresh %v from a dead peer", c.Fresh.List())
	}
}

func TestReconcileLeavingDoesNotDrain(t *testing.T) {
	now := time.Unix(1000, 0)
	h := Holdings{Held: setOf(1, 2)}
	h.DrainUntil[7] = now.Add(time.Hour)
	p := Reconcile(h, PlanInput{Serving: false, DrainFor: time.Minute, Now: now})
	if !p.Held.Empty() || !p.Draining(now).Empty() {
		t.Fatalf("a node leaving still holds %v and drains %v", p.Held.List(), p.Draining(now).List())
	}
	// A bucket coming back while it drains is simply held again.
	h = Holdings{}
	h.DrainUntil[4] = now.Add(time.Hour)
	p = Reconcile(h, PlanInput{Target: setOf(4), Serving: true, DrainFor: time.Minute, Now: now})
	if p.Held != setOf(4) || !p.Draining(now).Empty() {
		t.Fatalf("held %v draining %v", p.Held.List(), p.Draining(now).List())
	}
	if p.NextDrainEnd(now) != (time.Time{}) {
		t.Error("a drain end with nothing draining")
	}
	for v, s := range map[Verdict]string{None: "none", Own: "own", OwnFresh: "own-fresh", Drain: "drain"} {
		if v.String() != s {
			t.Errorf("%d: %s", v, v)
		}
	}
}

// Nodes whose views of each other lag by up to a few heartbeats never
// hold one bucket at once while they hear each other, whatever changes
// (nodes becoming eligible or not at the same moment, dying, coming back),
// and settle on the assignment.
const debugSim = false

func TestReconcileSimulation(t *testing.T) {
	names := []string{"a", "b", "c"}
	tb, _ := NewTable([]Member{{"a", 1}, {"b", 1}, {"c", 2}})
	const (
		step   = 10 * time.Millisecond
		delay  = 30 * time.Millisecond // a published state reaches the others this late at most
		settle = 100 * time.Millisecond
	)
	for seed := range uint64(simSeeds()) {
		r := rand.New(rand.NewPCG(seed, 7))
		type pub struct {
			at          time.Time
			eligible    bool
			held, drain Set
			target      Set
		}
		type node struct {
			h        Holdings
			eligible bool
			alive    bool
			pubs     []pub // what it published, in order
			lag      time.Duration
			since    time.Time // eligible and alive since
		}
		ns := map[string]*node{}
		for _, n := range names {
			ns[n] = &node{eligible: true, alive: true}
		}
		now := time.Unix(0, 0)
		seen := func(from string, by string) (pub, bool) {
			// The last state of from published at least lag ago.
			nd := ns[from]
			for i := len(nd.pubs) - 1; i >= 0; i-- {
				if !now.Before(nd.pubs[i].at.Add(ns[by].lag)) {
					return nd.pubs[i], true
				}
			}
			return pub{}, false
		}
		for tick := range 400 {
			now = now.Add(step)
			if tick%25 == 0 && tick < 300 {
				// Change something, sometimes two things at once.
				for range 1 + r.IntN(2) {
					name := names[r.IntN(3)]
					n := ns[name]
					if debugSim {
						defer func() { t.Logf("tick %d: change on %s -> eligible %v alive %v", tick, name, n.eligible, n.alive) }()
					}
					switch r.IntN(3) {
					case 0:
						n.eligible = !n.eligible
					case 1:
						n.alive = !n.alive
					default:
						n.eligible, n.alive = true, true
					}
				}
			}
			for _, self := range names {
				me := ns[self]
				me.lag = time.Duration(r.Int64N(int64(delay)))
				if !me.alive {
					me.h = Holdings{}
					me.since = time.Time{}
					continue
				}
				if !me.eligible {
					me.since = time.Time{}
				} else if me.since.IsZero() {
					me.since = now
				}
				var live []string
				var peers []PeerHold
				if me.eligible {
					live = append(live, self)
				}
				for _, o := range names {
					if o == self {
						continue
					}
					p, ok := seen(o, self)
					alive := ns[o].alive && ok
					peers = append(peers, PeerHold{Name: o, Alive: alive, Held: p.held, Drain: p.drain, Target: p.target})
					if alive && p.eligible {
						live = append(live, o)
					}
				}
				var target Set
				if me.eligible {
					target = tb.Assign(live).Of(self)
				}
				plan := Reconcile(me.h, PlanInput{Target: target, Serving: me.eligible, DrainFor: 50 * time.Millisecond, Now: now,
					Peers: peers, Settle: settle, ServingSince: me.since, Before: func(b int, peer string) bool { return tb.Before(b, peer, self) }})
				if debugSim && seed == 1 && tick >= 20 && tick <= 26 {
					t.Logf("tick %d %s live %v target %d held %d->%d taken %d blocked %d", tick, self, live, target.Count(), me.h.Held.Count(), plan.Held.Count(), plan.Taken.Count(), plan.Blocked.Count())
				}
				me.h = plan.Holdings
				me.pubs = append(me.pubs, pub{at: now, eligible: me.eligible, held: me.h.Held, drain: me.h.Draining(now), target: target})
			}
			for i, x := range names {
				for _, y := range names[i+1:] {
					if ns[x].alive && ns[y].alive {
						if both := ns[x].h.Held.Intersect(ns[y].h.Held); !both.Empty() {
							t.Fatalf("seed %d tick %d: %s and %s both hold %v", seed, tick, x, y, both.List())
						}
					}
				}
			}
		}
		// Settled: everyone alive and eligible holds its assignment.
		var live []string
		for _, n := range names {
			if ns[n].alive && ns[n].eligible {
				live = append(live, n)
			}
		}
		asg := tb.Assign(live)
		for _, n := range live {
			if ns[n].h.Held != asg.Of(n) {
				t.Fatalf("seed %d: %s holds %d buckets at the end, assigned %d", seed, n, ns[n].h.Held.Count(), asg.Of(n).Count())
			}
		}
	}
}

func TestReconcileSettleAndOrphans(t *testing.T) {
	now := time.Unix(1000, 0)
	in := PlanInput{Target: setOf(1, 2), Serving: true, Now: now, Settle: time.Second,
		Peers: []PeerHold{{Name: "dead", Alive: false, Held: setOf(1)}}}
	// Just became eligible: even the dead node's bucket waits.
	in.ServingSince = now
	if p := Reconcile(Holdings{}, in); !p.Held.Empty() {
		t.Fatalf("a node that just joined took %v at once", p.Held.List())
	}
	in.ServingSince = now.Add(-time.Hour)
	p := Reconcile(Holdings{}, in)
	if p.Held != setOf(1) || p.Blocked != setOf(2) {
		t.Fatalf("held %v blocked %v: the dead peer's bucket is taken at once, the other after the settle time", p.Held.List(), p.Blocked.List())
	}
	if next := p.NextSettle(time.Second); !next.Equal(now.Add(time.Second)) {
		t.Errorf("next settle %v", next)
	}
	in.Now = now.Add(time.Second)
	p = Reconcile(p.Holdings, in)
	if p.Held != setOf(1, 2) {
		t.Fatalf("after the settle time: held %v", p.Held.List())
	}
	// A preferred live peer that wants a bucket keeps it from us.
	in = PlanInput{Target: setOf(3, 4), Serving: true, Now: now,
		Peers:  []PeerHold{{Name: "p", Alive: true, Target: setOf(3, 4)}},
		Before: func(b int, peer string) bool { return b == 3 }}
	p = Reconcile(Holdings{}, in)
	if p.Held != setOf(4) || p.Blocked != setOf(3) {
		t.Fatalf("held %v blocked %v", p.Held.List(), p.Blocked.List())
	}
	tb, _ := NewTable([]Member{{"a", 1}, {"b", 1}})
	for b := range Buckets {
		if tb.Before(b, "a", "b") == tb.Before(b, "b", "a") {
			t.Fatalf("bucket %d: a before b and b before a agree", b)
		}
		if tb.Before(b, "a", "zz") {
			t.Fatal("unknown node")
		}
	}
}

// simSeeds is 200, or TANDEM_SIM_SEEDS for a longer run.
func simSeeds() int {
	if n, err := strconv.Atoi(os.Getenv("TANDEM_SIM_SEEDS")); err == nil && n > 0 {
		return n
	}
	return 200
}
