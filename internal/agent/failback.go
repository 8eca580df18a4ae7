package agent

import (
	"time"

	"github.com/tandem-ha/tandem/internal/module"
)

// Automatic failback to default_primary (module.FailbackDue): once the home
// node has been a settled, synced SECOND for failbackSettle, the node
// serving away from home swaps the module back. After an attempt, the
// next waits failbackRetry, so a home node that keeps failing does not
// make the module bounce.
const (
	failbackSettle = 3 * time.Second
	failbackRetry  = 30 * time.Second
)

// homeIsPeer: default_primary names the peer (not "" = stay where it
// runs, nor "lastprim").
func (r *modRunner) homeIsPeer() bool {
	return r.cfg.DefaultPrimary != "" && r.cfg.DefaultPrimary != "lastprim" && r.cfg.DefaultPrimary == r.peer
}

// checkFailback is called after every step and every second.
func (x *replica) checkFailback(m module.Machine) {
	r := x.r
	due := module.FailbackDue(m, r.homeIsPeer())
	now := time.Now()
	x.mu.Lock()
	if !due {
		x.fbSince = time.Time{}
		x.mu.Unlock()
		return
	}
	if x.fbSince.IsZero() {
		x.fbSince = now
	}
	fire := now.Sub(x.fbSince) >= failbackSettle && now.Sub(x.fbLast) >= failbackRetry
	if fire {
		x.fbLast, x.fbSince = now, time.Time{}
	}
	x.mu.Unlock()
	if fire {
		r.log.Add("info", "failback: "+r.peer+" (default_primary) is synced; handing the module back (swap)")
		go r.post(module.Event{Kind: module.SwapCmd})
	}
}
