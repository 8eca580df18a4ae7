package farm

import "time"

// PeerHold is what a peer publishes about its buckets.
type PeerHold struct {
	Name  string
	Alive bool // heard within the heartbeat timeout
	Held  Set  // buckets whose new packets it accepts
	Drain Set  // buckets it gave away and still serves established TCP connections of
}

// Holdings is what this node has: the buckets it accepts, and the ones it
// drains (gave away while serving) until a deadline.
type Holdings struct {
	Held       Set
	DrainUntil [Buckets]time.Time // zero: not draining
}

// Draining returns the buckets still draining at now.
func (h *Holdings) Draining(now time.Time) Set {
	var s Set
	for b, t := range h.DrainUntil {
		if !t.IsZero() && now.Before(t) {
			s.Add(b)
		}
	}
	return s
}

// PlanInput is what the hand-over decision needs.
type PlanInput struct {
	// Target: the buckets the assignment gives this node (empty when this
	// node is not eligible).
	Target Set
	// Serving: this node stays UP, so the buckets it gives away drain.
	Serving  bool
	DrainFor time.Duration // 0: no drain
	Now      time.Time
	Peers    []PeerHold
}

// Plan is the outcome of Reconcile.
type Plan struct {
	Holdings
	// Fresh: held buckets a live peer still drains. Their new connections
	// are ours, but packets of connections we do not know belong to the
	// peer and are dropped rather than reset.
	Fresh Set
	// Blocked: target buckets not taken yet because a live peer still holds
	// them (it releases them when it sees the same view).
	Blocked Set
	// Taken and Released: what changed.
	Taken, Released Set
}

// Reconcile moves this node's holdings toward its target. A bucket is
// released at once; it is taken only when no live peer holds it, so two
// nodes never accept new packets of one bucket as long as they hear each
// other. A dead peer's holdings do not count: its buckets are taken as soon
// as the membership declares it down.
func Reconcile(h Holdings, in PlanInput) Plan {
	var peerHeld, peerDrain Set
	for _, p := range in.Peers {
		if p.Alive {
			peerHeld = peerHeld.Union(p.Held)
			peerDrain = peerDrain.Union(p.Drain)
		}
	}
	p := Plan{Holdings: h}
	for b := range Buckets {
		held, want := h.Held.Has(b), in.Target.Has(b)
		switch {
		case held && !want:
			p.Held.Del(b)
			p.Released.Add(b)
			if in.Serving && in.DrainFor > 0 {
				p.DrainUntil[b] = in.Now.Add(in.DrainFor)
			}
		case !held && want:
			if peerHeld.Has(b) {
				p.Blocked.Add(b)
			} else {
				p.Held.Add(b)
				p.Taken.Add(b)
			}
		}
		if d := p.DrainUntil[b]; !d.IsZero() && (!in.Now.Before(d) || !in.Serving || p.Held.Has(b)) {
			p.DrainUntil[b] = time.Time{}
		}
	}
	p.Fresh = p.Held.Intersect(peerDrain)
	return p
}

// NextDrainEnd is the earliest drain deadline after now (zero: none).
func (h *Holdings) NextDrainEnd(now time.Time) time.Time {
	var next time.Time
	for _, t := range h.DrainUntil {
		if !t.IsZero() && now.Before(t) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}

// Verdict is what the filter does with a bucket's packets.
type Verdict uint8

const (
	// None: not ours, dropped.
	None Verdict = iota
	// Own: ours, accepted.
	Own
	// OwnFresh: ours, but a peer still drains it: TCP packets that neither
	// open a connection nor belong to one we know are dropped.
	OwnFresh
	// Drain: given away; only established TCP connections we know pass.
	Drain
)

func (v Verdict) String() string {
	switch v {
	case Own:
		return "own"
	case OwnFresh:
		return "own-fresh"
	case Drain:
		return "drain"
	}
	return "none"
}

// Verdicts is the filter's per-bucket decision for a plan at now.
func (p *Plan) Verdicts(now time.Time) [Buckets]Verdict {
	var v [Buckets]Verdict
	drain := p.Draining(now)
	for b := range Buckets {
		switch {
		case p.Held.Has(b) && p.Fresh.Has(b):
			v[b] = OwnFresh
		case p.Held.Has(b):
			v[b] = Own
		case drain.Has(b):
			v[b] = Drain
		}
	}
	return v
}
