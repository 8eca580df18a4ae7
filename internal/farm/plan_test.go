package farm

import (
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

// Two nodes with one view never hold one bucket at once, whatever the
// order in which they reconcile, while a third comes and goes.
func TestReconcileNoDoubleHold(t *testing.T) {
	tb, _ := NewTable([]Member{{"a", 1}, {"b", 1}, {"c", 1}})
	hold := map[string]*Holdings{"a": {}, "b": {}, "c": {}}
	now := time.Unix(0, 0)
	views := [][]string{{"a", "b", "c"}, {"a", "b"}, {"a", "b", "c"}, {"b", "c"}, {"a", "b", "c"}}
	for step, live := range views {
		asg := tb.Assign(live)
		for round := range 3 {
			for _, self := range []string{"c", "a", "b"} {
				alive := map[string]bool{}
				for _, n := range live {
					alive[n] = true
				}
				var peers []PeerHold
				for _, o := range []string{"a", "b", "c"} {
					if o != self {
						peers = append(peers, PeerHold{Name: o, Alive: alive[o], Held: hold[o].Held})
					}
				}
				target := Set{}
				if alive[self] {
					target = asg.Of(self)
				}
				p := Reconcile(*hold[self], PlanInput{Target: target, Serving: alive[self], Now: now, Peers: peers})
				*hold[self] = p.Holdings
				// Invariant among live nodes.
				for _, x := range live {
					for _, y := range live {
						if x < y && !hold[x].Held.Intersect(hold[y].Held).Empty() {
							t.Fatalf("step %d round %d: %s and %s both hold %v", step, round, x, y, hold[x].Held.Intersect(hold[y].Held).List())
						}
					}
				}
			}
		}
		for _, n := range live {
			if hold[n].Held != asg.Of(n) {
				t.Fatalf("step %d: %s holds %d buckets, assigned %d", step, n, hold[n].Held.Count(), asg.Of(n).Count())
			}
		}
	}
}
