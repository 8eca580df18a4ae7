package farm

import "time"

// PeerHold is what a peer publishes about its buckets (for a dead peer:
// what it published last).
type PeerHold struct {
	Name   string
	Alive  bool // heard within the heartbeat timeout
	Held   Set  // buckets whose new packets it accepts
	Drain  Set  // buckets it gave away and still serves established TCP connections of
	Target Set  // buckets the assignment gives it, as it sees the farm
}

// Holdings is what this node has: the buckets it accepts, and the ones it
// drains (gave away while serving) until a deadline.
type Holdings struct {
	Held       Set
	DrainUntil [Buckets]time.Time // zero: not draining
	// WantSince: when each bucket of the target became ours to take.
	WantSince [Buckets]time.Time
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
	// Settle: how long a bucket must stay in the target before it is taken,
	// unless its last holder is dead and this node has been serving for
	// Settle already. Two nodes that change their views at the same moment
	// (both become UP, one comes back as another dies) each see the other's
	// target by then.
	Settle time.Duration
	// ServingSince: when this node became eligible (Serving) last.
	ServingSince time.Time
	// Before reports whether peer comes before this node in bucket b's
	// preference order: its claim on b wins.
	Before func(b int, peer string) bool
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
// released at once. It is taken only when no live peer holds it, no live
// peer that comes first in its preference order wants it, and it has been
// in the target for Settle (at once when its last holder is dead: the
// membership declared it down). So two nodes that hear each other never
// accept new packets of one bucket at once, even when both change their
// view of the farm at the same moment.
func Reconcile(h Holdings, in PlanInput) Plan {
	var peerHeld, peerDrain, orphan Set
	for _, p := range in.Peers {
		if p.Alive {
			peerHeld = peerHeld.Union(p.Held)
			peerDrain = peerDrain.Union(p.Drain)
		} else {
			orphan = orphan.Union(p.Held)
		}
	}
	orphan = orphan.Minus(peerHeld)
	if !in.Serving || in.Now.Sub(in.ServingSince) < in.Settle {
		// Just joined: the others may not know us yet and take the dead
		// node's buckets at once; we wait like for any other bucket.
		orphan = Set{}
	}
	p := Plan{Holdings: h}
	for b := range Buckets {
		held, want := h.Held.Has(b), in.Target.Has(b)
		if !want {
			p.WantSince[b] = time.Time{}
		} else if p.WantSince[b].IsZero() {
			p.WantSince[b] = in.Now
		}
		switch {
		case held && !want:
			p.Held.Del(b)
			p.Released.Add(b)
			if in.Serving && in.DrainFor > 0 {
				p.DrainUntil[b] = in.Now.Add(in.DrainFor)
			}
		case !held && want:
			if peerHeld.Has(b) || in.preferredPeerWants(b) ||
				(!orphan.Has(b) && in.Now.Sub(p.WantSince[b]) < in.Settle) {
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

// preferredPeerWants reports whether a live peer that comes before this
// node in b's preference order has b in its target.
func (in *PlanInput) preferredPeerWants(b int) bool {
	if in.Before == nil {
		return false
	}
	for _, p := range in.Peers {
		if p.Alive && p.Target.Has(b) && in.Before(b, p.Name) {
			return true
		}
	}
	return false
}

// NextSettle is when the next blocked bucket's settle time ends (zero:
// none pending).
func (p *Plan) NextSettle(settle time.Duration) time.Time {
	var next time.Time
	for b := range Buckets {
		if !p.Blocked.Has(b) || p.WantSince[b].IsZero() {
			continue
		}
		if t := p.WantSince[b].Add(settle); next.IsZero() || t.Before(next) {
			next = t
		}
	}
	return next
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
