package module

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrBusy refuses a command while a transition runs.
var ErrBusy = errors.New("the module is changing state; retry in a moment")

// Step applies one event to the machine and returns the next machine and the
// actions to carry out. A refused administrator command returns an error and
// the machine unchanged.
func Step(m Machine, ev Event) (Machine, []Action, error) {
	var acts []Action
	if !ev.Now.IsZero() {
		m.now = ev.Now
	}
	switch ev.Kind {
	case Boot:
		return boot(m)
	case Start:
		if m.Target != "" {
			return m, nil, ErrBusy
		}
		if m.Started && m.State != Stop {
			break
		}
		m.Started, m.Want, m.failure, m.ShuttingDown = true, WantNone, "", false
		return startFromStop(m)
	case StopCmd:
		m.Started, m.Want, m.failure = false, WantNone, ""
		if m.Target != "" {
			return m, nil, nil // decided when the running transition ends
		}
	case Restart:
		if m.Target != "" {
			return m, nil, ErrBusy
		}
		if !m.State.Running() {
			return m, nil, fmt.Errorf("module is %s on %s: nothing to restart (use start)", m.State, m.Node)
		}
		role := roleScripts(m.State)
		return restartRole(m, logf("info", "restart: re-running %s and %s", role.stop, role.start))
	case CheckerFailed:
		if ev.Action != ActWait {
			return checkerFailed(m, ev)
		}
		if m.CheckWait != "" {
			break // already waiting for a checker
		}
		ev.Reason = fmt.Sprintf("checker %s failed: %s", ev.Checker, ev.Reason)
		fallthrough
	case CheckerWait:
		if m.CheckWait == ev.Reason {
			break
		}
		switch {
		case m.Maint.ChecksOff:
		case ev.Reason == "":
			acts = append(acts, logf("info", "the checkers that asked to wait recovered"))
		case m.CheckWait == "" && m.State != Stop:
			acts = append(acts, logf("warn", "%s: this node serves in no role until it recovers", ev.Reason))
		}
		m.CheckWait = ev.Reason
	case MaintenanceCmd:
		var changed []string
		set := func(t Toggle, v *bool, on, off string) {
			if t == Keep || *v == (t == Off) {
				return
			}
			*v = t == Off
			changed = append(changed, map[bool]string{true: off, false: on}[*v])
		}
		set(ev.Maint.Checkers, &m.Maint.ChecksOff, "checkers on", "checkers off")
		set(ev.Maint.Failover, &m.Maint.FailoverOff, "failover on", "failover off")
		set(ev.Maint.BootStart, &m.Maint.BootStartOff, "boot start on", "boot start off")
		if len(changed) == 0 {
			break
		}
		acts = append(acts, logf("warn", "maintenance on %s: %s", m.Node, strings.Join(changed, ", ")))
	case ResetLoopCmd:
		if m.LoopRestarts != 0 || m.LoopFailovers != 0 {
			acts = append(acts, logf("info", "loop counts reset by the administrator (were %d restarts and %d failovers)", m.LoopRestarts, m.LoopFailovers))
		}
		m.LoopRestarts, m.LoopFailovers, m.LoopSince = 0, 0, 0
	case PrimCmd:
		return primCmd(m, ev.Force)
	case SecondCmd:
		if m.Target != "" {
			return m, nil, ErrBusy
		}
		if m.State.Serving() {
			return m, nil, fmt.Errorf("%s serves the module as %s: use swap to move it to %s, or stop it first", m.Node, m.State, m.PeerName)
		}
		if m.State == Second {
			break
		}
		m.Want, m.failure = WantSecond, ""
		if m.State == Stop {
			m.Started, m.ShuttingDown = true, false
			return startFromStop(m)
		}
		m.Started = true
	case SwapCmd:
		return swapCmd(m)
	case PeerChanged:
		p := ev.Peer
		if !m.Peer.usable() && p.usable() && p.SwapRequest > m.SwapSeen {
			// Requests made while we were apart are stale.
			m.SwapSeen = p.SwapRequest
		}
		if m.State == Second && m.Sync == SyncSynced && m.Peer.usable() && m.Peer.State == Prim &&
			p.usable() && p.State == Alone {
			// Our primary went on without us (its stream to us broke): our
			// copy no longer follows it.
			m.Sync, m.UpToDate = SyncResyncing, false
			acts = append(acts, logf("warn", "%s serves ALONE: this copy is no longer up to date and resynchronises", m.PeerName))
		}
		m.Peer = p
		if p.Alive {
			m.Booting = false
		}
		if m.Target == "" && m.State == Prim && p.usable() && p.State == Second && p.UpToDate &&
			p.SwapRequest > m.SwapSeen {
			m.SwapSeen = p.SwapRequest
			return swapOut(m)
		}
	case DiscoveryDone:
		m.Booting = false
	case TransitionDone:
		if m.Target == "" {
			break
		}
		if !ev.OK {
			return startFailed(m, ev.Reason)
		}
		settle(&m)
	case IsolationChanged:
		if m.Isolated == ev.Isolated {
			break
		}
		m.Isolated = ev.Isolated
		if ev.Isolated {
			acts = append(acts, logf("warn", "every cluster network of %s is down: this node is isolated", m.Node))
			if m.Target != "" && (m.State.Serving() || m.Target.Serving()) {
				// A transition runs (a restart, a swap, a start toward
				// PRIM...): the node leaves the service when it ends, but
				// the peer may take over before. The VIPs go now (the
				// agent adds none while isolated), and no durable call
				// waits for a peer it cannot reach (carried out at once:
				// no done).
				// The cut stream lost ops the peer will never get: a node
				// that goes on serving (the network came back before the
				// transition ended) serves ALONE and resynchronises it.
				if !m.ReplBroken {
					m.ReplBroken, m.ReplReason = true, "cut: "+m.Node+" was isolated"
				}
				acts = append(acts, logf("warn", "isolated while %s -> %s runs: VIPs removed and replication cut now", m.State, m.Target),
					Action{Kind: RemoveVIPs}, Action{Kind: FenceData})
			}
		} else {
			acts = append(acts, logf("info", "a cluster network of %s is back", m.Node))
		}
	case SyncDone:
		if m.State == Second && m.Target == "" {
			m.Sync, m.UpToDate = SyncSynced, true
			if m.Peer.usable() {
				m.Epoch = m.Peer.Epoch
			}
			m.PeerOutdated = false
		}
	case ReplicationFailed:
		if m.State == Second && m.UpToDate {
			// Our receiver failed to apply the stream: this copy lacks data.
			m.Sync, m.UpToDate = SyncResyncing, false
			acts = append(acts, logf("error", "this copy is no longer up to date: %s", ev.Reason))
		}
		if m.State.Serving() && !m.ReplBroken {
			m.ReplBroken, m.ReplReason = true, ev.Reason
			acts = append(acts, logf("error", "replication to %s failed: %s; serving ALONE", m.PeerName, ev.Reason))
		}
	case Shutdown:
		m.ShuttingDown = true
		if m.Target != "" {
			return m, nil, nil
		}
		if !m.State.Running() {
			m.State, m.Reason = Stop, "agent stopped"
			m.Persistent.State = Stop
			return m, nil, nil
		}
		m.Reason = "agent shutting down"
		return transition(m, Stop, acts)
	default:
		return m, nil, fmt.Errorf("unknown event %v", ev.Kind)
	}
	m2, more := decide(normalize(m))
	return normalize(m2), append(acts, more...), nil
}

// normalize keeps derived flags true after any step.
func normalize(m Machine) Machine {
	p := m.Peer
	if m.State == Prim && m.Target == "" && p.usable() && p.State == Second && p.UpToDate && p.Epoch == m.Epoch {
		m.PeerOutdated = false // the peer holds everything we have
	}
	if m.State == Alone && !m.PeerOutdated {
		// Serving alone is a new data generation, whatever view of the
		// peer the move to ALONE was decided on (a peer stopping cleanly
		// may still look like a synced SECOND at that moment): without it
		// this node, restarted alone, could not prove it holds the latest
		// data.
		m.PeerOutdated = true
		m.Epoch++
	}
	if m.Handover && (p.State.Serving() || !p.usable()) {
		m.Handover = false
	}
	if m.State.Running() || !p.usable() {
		m.Claim = false
	}
	if m.ReplReason != "" && !m.ReplBroken && (!m.State.Serving() || (p.usable() && p.UpToDate)) {
		m.ReplReason = ""
	}
	// Cleared once we have gone ALONE (a new epoch the peer lacks) and the
	// peer knows its copy is outdated: a full resync may then start.
	if m.ReplBroken && (!m.State.Serving() || (m.State == Alone && m.Target == "" && (!p.usable() || !p.UpToDate))) {
		m.ReplBroken = false // the peer resynchronises from scratch
	}

	if !p.usable() || !p.Claim {
		m.Ack = false
	}
	return m
}

// boot resumes a module after the agent starts, cleaning up first when the
// agent died while the module ran (its VIPs or application may be left).
func boot(m Machine) (Machine, []Action, error) {
	last := m.Persistent.State
	m.State, m.Target = Stop, ""
	var pre []Action
	if m.Started && m.Maint.BootStartOff {
		// The intent stays with the administrator: `tandem start`.
		m.Started = false
		m.failure = "boot start is off (maintenance): `tandem start` starts the module"
		pre = append(pre, logf("info", "boot start is off (maintenance): the module stays stopped"))
	}
	m, acts, err := bootResume(m, last)
	return m, append(pre, acts...), err
}

func bootResume(m Machine, last State) (Machine, []Action, error) {
	if last.Running() {
		// Advertise the old state until cleanup is done so the peer waits.
		m.State = last
		m.Reason = "recovering from an agent crash"
		next := Stop
		if m.Started {
			next = Wait
		}
		m.Target = next
		role := roleScripts(last)
		acts := []Action{logf("warn", "the agent stopped while the module was %s: cleaning up before anything else", last),
			script(role.stop, last, next, "stop", true)}
		if last.Serving() {
			acts = append(acts, Action{Kind: RemoveVIPs}, Action{Kind: UnmountData})
		} else {
			acts = append(acts, Action{Kind: StopReceiver})
		}
		acts = append(acts, script("stop_both", last, next, "stop", true))
		if !m.Started {
			acts = append(acts, script("poststop", last, Stop, "stop", true))
		}
		m.Booting = m.Started
		if m.Started {
			acts = append(acts, Action{Kind: ArmDiscovery})
		}
		return m, append(acts, Action{Kind: Done}), nil
	}
	if !m.Started {
		m.Reason = "stopped"
		if m.failure != "" {
			m.Reason = m.failure
		}
		return m, []Action{{Kind: RemoveVIPs}}, nil
	}
	return startFromStop(m)
}

// startFromStop runs prestart on the way to WAIT, where the role is decided.
func startFromStop(m Machine) (Machine, []Action, error) {
	m.State, m.Target = Stop, Wait
	m.Reason = "starting"
	m.Booting = !m.Peer.Alive
	acts := []Action{{Kind: RemoveVIPs}, script("prestart", Stop, Wait, "start", false)}
	if m.Booting {
		acts = append(acts, Action{Kind: ArmDiscovery})
	}
	return m, append(acts, Action{Kind: Done}), nil
}

func primCmd(m Machine, force bool) (Machine, []Action, error) {
	if m.Target != "" {
		return m, nil, ErrBusy
	}
	if m.State.Serving() {
		m2, acts := decide(normalize(m))
		return normalize(m2), acts, nil
	}
	p := m.Peer
	if p.usable() && (p.State.Serving() || p.Target.Serving()) {
		return m, nil, fmt.Errorf("%s serves the module (%s): use `tandem swap` to move it to %s", m.PeerName, p.State, m.Node)
	}
	proven, why := canProve(m)
	var acts []Action
	if !proven {
		if !force {
			return m, nil, fmt.Errorf("%s is not known to hold the latest data: %s; `tandem prim --force` serves this node's data anyway", m.Node, why)
		}
		lost := fmt.Sprintf("writes made on %s after epoch %d", m.PeerName, m.Epoch)
		if p.usable() && p.Epoch > m.Epoch {
			lost = fmt.Sprintf("writes made on %s in epochs %d to %d", m.PeerName, m.Epoch+1, p.Epoch)
		}
		m.Epoch = max(m.Epoch, p.Epoch) + 1
		m.UpToDate, m.PeerOutdated = true, true
		acts = append(acts, logf("warn", "prim --force: %s serves its own data as epoch %d; may be lost: %s (%s will be fully resynchronised from %s)",
			m.Node, m.Epoch, lost, m.PeerName, m.Node))
	}
	m.Want, m.failure = WantPrim, ""
	m.Booting = false // the administrator decided; no need to wait for the peer
	if m.State == Stop {
		m.Started, m.ShuttingDown = true, false
		m2, more, err := startFromStop(m)
		return m2, append(acts, more...), err
	}
	m.Started = true
	m2, more := decide(m)
	return m2, append(acts, more...), nil
}

// canProve reports whether this node may serve without losing data, and why not.
func canProve(m Machine) (bool, string) {
	p := m.Peer
	switch {
	case !m.UpToDate && m.Epoch == 0:
		return false, "it has never served this module"
	case !m.UpToDate:
		return false, fmt.Sprintf("its copy (epoch %d) is not up to date", m.Epoch)
	case p.usable() && p.Epoch > m.Epoch:
		return false, fmt.Sprintf("%s holds newer data (epoch %d > %d)", m.PeerName, p.Epoch, m.Epoch)
	case p.usable():
		return true, ""
	case m.PeerOutdated:
		return true, ""
	}
	return false, fmt.Sprintf("%s is unreachable and may have served after epoch %d", m.PeerName, m.Epoch)
}

func swapCmd(m Machine) (Machine, []Action, error) {
	if m.Target != "" {
		return m, nil, ErrBusy
	}
	p := m.Peer
	switch {
	case !p.usable():
		return m, nil, fmt.Errorf("cannot swap: peer %s is not paired (%s)", m.PeerName, peerSummary(p))
	case m.State == Prim && p.State == Second && p.UpToDate && p.Target == "":
		return swapOut(m)
	case m.State == Second && p.State == Prim && p.Target == "" && m.Sync == SyncSynced:
		m.SwapRequest++
		return m, []Action{logf("info", "swap requested: asking %s to hand the module over", m.PeerName)}, nil
	}
	return m, nil, fmt.Errorf("cannot swap: needs PRIM and a synced SECOND, here %s is %s and %s is %s", m.Node, m.State, m.PeerName, peerSummary(p))
}

// swapOut releases the module to the peer: scripts and VIPs leave this node
// strictly before the peer, seeing Handover, takes them.
func swapOut(m Machine) (Machine, []Action, error) {
	m.Handover = true
	m.Reason = "swap: handing over to " + m.PeerName
	return transition(m, Second, []Action{logf("info", "swap: releasing the module to %s", m.PeerName)})
}

func startFailed(m Machine, reason string) (Machine, []Action, error) {
	target := m.Target
	m.failure = reason
	m.Started, m.Want, m.Handover = false, WantNone, false
	acts := []Action{logf("error", "%s failed: %s; stopping the module", transitionName(m.State, target), reason)}
	if !target.Running() {
		m.State, m.Target = Stop, ""
		m.Persistent.State = Stop
		m.Reason = reason
		return m, acts, nil
	}
	// Clean up what the failed start may have begun; advertise the failed
	// role until done so the peer does not take over too early.
	m.State = target
	m.Target = ""
	return transition(m, Stop, acts)
}

func transitionName(from, to State) string {
	return fmt.Sprintf("%s -> %s", from, to)
}

// settle records the end of a successful transition.
func settle(m *Machine) {
	prev := m.State
	m.State, m.Target = m.Target, ""
	m.Persistent.State = m.State
	if m.State == Second && prev != Second {
		if m.Handover {
			m.Sync = SyncSynced
		} else {
			m.Sync, m.UpToDate = SyncResyncing, false
		}
	}
	if m.State != Second {
		m.Sync = SyncNone
	}
	if m.State == Stop && m.failure != "" {
		m.Reason = m.failure
	}
}

// decide moves a settled machine toward the state its inputs call for.
func decide(m Machine) (Machine, []Action) {
	if m.Target != "" || (m.ShuttingDown && !m.State.Running()) {
		return m, nil
	}
	want, reason := desired(m)
	p := m.Peer
	if want.Serving() && !m.State.Running() && p.usable() {
		// Electing with a live peer: claim first, promote once it yields.
		if p.Claim && !wins(m) {
			m.Claim, m.Ack = false, true
			m.Reason = m.PeerName + " claims the primary role"
			return m, nil
		}
		m.Claim, m.Ack = true, false
		if !p.Ack {
			m.Reason = "claiming the primary role: waiting for " + m.PeerName + " to agree"
			return m, nil
		}
	} else {
		m.Claim = false
		m.Ack = p.usable() && p.Claim
	}
	if want == m.State {
		m.Reason = reason
		return m, nil
	}
	var acts []Action
	if want == Wait && m.State.Serving() && m.CheckWait != "" && !m.Maint.ChecksOff && !m.Isolated {
		// Leaving the service for a checker counts as a failover, so
		// a flapping "wait" checker cannot move the module back and forth.
		rollLoop(&m, m.now)
		l := m.loop()
		if m.LoopFailovers >= l.Failovers {
			m.Started, m.Want = false, WantNone
			m.failure = fmt.Sprintf("loop limit: %s again after %d failovers within %s; stopped on %s (`tandem start` starts it again)",
				m.CheckWait, m.LoopFailovers, l.Window, m.Node)
			want, reason = Stop, m.failure
			acts = append(acts, logf("error", "%s", m.failure))
		} else {
			m.LoopFailovers++
			acts = append(acts, logf("warn", "%s: leaving the service (failover %d of %d within %s)", m.CheckWait, m.LoopFailovers, l.Failovers, l.Window))
		}
	}
	m.Reason = reason
	m2, more, _ := transition(m, want, acts)
	return m2, more
}

// desired is the heart of the policy: the state this node should be in.
func desired(m Machine) (State, string) {
	p := m.Peer
	if m.ShuttingDown {
		return Stop, "agent shutting down"
	}
	if !m.Started {
		if m.failure != "" {
			return Stop, m.failure
		}
		return Stop, "stopped by the administrator"
	}
	if m.Isolated {
		return Wait, fmt.Sprintf("isolated: every cluster network of %s is down", m.Node)
	}
	if m.CheckWait != "" && !m.Maint.ChecksOff {
		return Wait, m.CheckWait + "; waiting for it to recover"
	}
	peerSteady := p.usable() && p.State.Serving() && (p.Target == "" || p.Target.Serving())
	switch {
	case m.State.Serving():
		if peerSteady {
			if wins(m) {
				return Alone, fmt.Sprintf("split brain: %s also serves; %s keeps the module (epoch %d vs %d)", m.PeerName, m.Node, m.Epoch, p.Epoch)
			}
			return Second, fmt.Sprintf("split brain: %s also serves and wins (epoch %d vs %d); this node's changes since are discarded", m.PeerName, p.Epoch, m.Epoch)
		}
		if p.usable() && p.State == Second && p.Target == "" && !m.ReplBroken {
			if m.ReplReason != "" && !p.UpToDate {
				return Prim, fmt.Sprintf("replication to %s failed (%s); %s resynchronises", m.PeerName, m.ReplReason, m.PeerName)
			}
			return Prim, ""
		}
		if m.ReplBroken {
			return Alone, fmt.Sprintf("replication to %s failed (%s); it resynchronises when it can", m.PeerName, m.ReplReason)
		}
		return Alone, aloneReason(m)
	case m.State == Second:
		if p.usable() && (p.State.Serving() || p.Target.Serving()) {
			return Second, ""
		}
		if m.Handover && p.usable() && p.State == Second {
			return Second, "swap: waiting for " + m.PeerName + " to take over"
		}
		if !m.UpToDate {
			return Wait, fmt.Sprintf("%s stopped serving while this node was not up to date", m.PeerName)
		}
		if p.usable() && p.State == Second && !p.Handover && !wins(m) {
			return Second, ""
		}
		if p.usable() && p.Handover {
			return serveState(m), fmt.Sprintf("swap: taking over from %s", m.PeerName)
		}
		if m.Maint.FailoverOff && m.Want != WantPrim {
			return Second, fmt.Sprintf("%s is %s; failover is off on %s (maintenance): `tandem prim` serves here", m.PeerName, peerSummary(p), m.Node)
		}
		return serveState(m), fmt.Sprintf("failover: %s is %s", m.PeerName, peerSummary(p))
	}
	// WAIT (or STOP while starting): choose a role.
	if m.Booting {
		return Wait, fmt.Sprintf("waiting for %s's heartbeat", m.PeerName)
	}
	if p.Alive && p.Incompatible != "" {
		return Wait, fmt.Sprintf("cannot pair with %s: %s", m.PeerName, p.Incompatible)
	}
	if p.Alive && !p.Known {
		return Wait, fmt.Sprintf("%s runs an agent without this module", m.PeerName)
	}
	if p.usable() && (p.State.Serving() || p.Target.Serving()) {
		if peerSteady {
			return Second, ""
		}
		return Wait, fmt.Sprintf("%s is becoming %s", m.PeerName, p.Target)
	}
	if m.Want == WantSecond {
		return Wait, fmt.Sprintf("started as secondary: waiting for %s to serve", m.PeerName)
	}
	if p.usable() {
		return electWithPeer(m)
	}
	if ok, why := canProve(m); ok && (m.PeerOutdated || m.Want == WantPrim) {
		return Alone, aloneReason(m)
	} else if m.Epoch == 0 && !m.UpToDate {
		return Wait, fmt.Sprintf("first start: waiting for %s so both agree which copy is the reference; `tandem prim --force` serves from %s", m.PeerName, m.Node)
	} else {
		if why == "" {
			why = fmt.Sprintf("%s may have served after epoch %d", m.PeerName, m.Epoch)
		}
		return Wait, fmt.Sprintf("waiting for %s: %s; `tandem prim --force` serves this node's data and discards the peer's newer writes", m.PeerName, why)
	}
}

// electWithPeer decides between two started nodes that are both not serving.
func electWithPeer(m Machine) (State, string) {
	p := m.Peer
	if p.State == Second && p.UpToDate {
		return Wait, fmt.Sprintf("%s takes over", m.PeerName)
	}
	fresh := m.Epoch == 0 && !m.UpToDate && p.Epoch == 0 && !p.UpToDate
	if fresh {
		if m.Preferred || m.Want == WantPrim {
			return serveState(m), "first start"
		}
		return Wait, fmt.Sprintf("first start: %s becomes primary", m.PeerName)
	}
	if !m.UpToDate || p.Epoch > m.Epoch {
		if !p.Started {
			return Wait, fmt.Sprintf("%s holds newer data (epoch %d, here %d) but its module is stopped: start it on %s, or `tandem prim --force` here",
				m.PeerName, p.Epoch, m.Epoch, m.PeerName)
		}
		return Wait, fmt.Sprintf("%s holds the latest data (epoch %d)", m.PeerName, p.Epoch)
	}
	if m.Epoch > p.Epoch || !p.UpToDate || !p.Started || m.Want == WantPrim || m.Preferred {
		return serveState(m), ""
	}
	return Wait, fmt.Sprintf("%s becomes primary", m.PeerName)
}

// serveState is the serving state this node should enter.
func serveState(m Machine) State {
	p := m.Peer
	if p.usable() && p.State == Second && p.Target == "" {
		return Prim
	}
	return Alone
}

// wins breaks a tie when both nodes serve or both could.
func wins(m Machine) bool {
	if m.Epoch != m.Peer.Epoch {
		return m.Epoch > m.Peer.Epoch
	}
	return m.Preferred
}

func aloneReason(m Machine) string {
	p := m.Peer
	switch {
	case !p.Alive:
		return fmt.Sprintf("peer %s is down", m.PeerName)
	case p.Incompatible != "":
		return fmt.Sprintf("cannot pair with %s: %s", m.PeerName, p.Incompatible)
	case !p.Known:
		return fmt.Sprintf("%s runs an agent without this module", m.PeerName)
	}
	return fmt.Sprintf("%s is %s", m.PeerName, peerSummary(p))
}

func peerSummary(p Peer) string {
	switch {
	case !p.Alive:
		return "down"
	case p.Incompatible != "":
		return "incompatible: " + p.Incompatible
	case !p.Known:
		return "without this module"
	case p.Target != "":
		return fmt.Sprintf("%s (becoming %s)", p.State, p.Target)
	}
	return string(p.State)
}

// transition plans the scripts and VIP moves from m.State to to.
func transition(m Machine, to State, acts []Action) (Machine, []Action, error) {
	from := m.State
	if to.Serving() {
		// A new data generation starts whenever we serve without a synced peer.
		p := m.Peer
		synced := p.usable() && p.State == Second && p.UpToDate && p.Epoch == m.Epoch && !m.ReplBroken
		if !m.UpToDate && m.Epoch == 0 {
			m.UpToDate = true
		}
		if !synced && !m.PeerOutdated {
			m.PeerOutdated = true
			m.Epoch++
		}
		m.Want = WantNone
	}
	if to == Second {
		m.Want = WantNone
		if p := m.Peer; p.usable() && !m.Handover {
			// Following the peer means taking its data as the reference.
			m.Epoch = p.Epoch
		}
	}
	m.Target = to
	acts = append(acts, logf("info", "%s -> %s%s", from, to, reasonSuffix(m.Reason)))
	switch {
	case !from.Running() && to.Running():
		acts = append(acts, script("start_both", from, to, "start", false))
		acts = append(acts, enterRole(from, to)...)
	case from.Running() && !to.Running():
		acts = append(acts, leaveRole(from, to, m.Isolated)...)
		acts = append(acts, script("stop_both", from, to, "stop", true))
		if to == Stop {
			acts = append(acts, script("poststop", from, to, "stop", true))
		}
	case from.Serving() && to.Serving():
		// PRIM <-> ALONE: the application keeps running.
	case from.Running() && to.Running():
		acts = append(acts, leaveRole(from, to, m.Isolated)...)
		acts = append(acts, enterRole(from, to)...)
	case from == Wait && to == Stop:
		acts = append(acts, script("poststop", from, to, "stop", true))
	}
	return m, append(acts, Action{Kind: Done}), nil
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return " (" + r + ")"
}

type role struct{ start, stop string }

func roleScripts(s State) role {
	if s == Second {
		return role{"start_second", "stop_second"}
	}
	return role{"start_prim", "stop_prim"}
}

func enterRole(from, to State) []Action {
	if to.Serving() {
		return []Action{{Kind: MountData}, {Kind: AddVIPs}, script("start_prim", from, to, "start", false)}
	}
	return []Action{{Kind: StartReceiver}, script("start_second", from, to, "start", false)}
}

// leaveRole stops a role. A serving node normally stops the application
// before its VIPs go (clients see a clean stop). An isolated one removes
// them first and fences the data: the peer takes over after its heartbeat
// timeout, whatever stop_prim waits for (an application blocked in fsync
// waits for a peer it cannot reach), and no client reaches this node anyway.
func leaveRole(from, to State, isolated bool) []Action {
	if from.Serving() && isolated {
		return []Action{{Kind: RemoveVIPs}, {Kind: FenceData}, script("stop_prim", from, to, "stop", true), {Kind: UnmountData}}
	}
	if from.Serving() {
		return []Action{script("stop_prim", from, to, "stop", true), {Kind: RemoveVIPs}, {Kind: UnmountData}}
	}
	return []Action{script("stop_second", from, to, "stop", true), {Kind: StopReceiver}}
}

func script(name string, from, to State, action string, stop bool) Action {
	return Action{Kind: RunScript, Script: name, Args: []string{string(from), string(to), action}, Stop: stop}
}

func logf(level, format string, a ...any) Action {
	return Action{Kind: Log, Level: level, Msg: fmt.Sprintf(format, a...)}
}

// restartRole re-runs the current role's stop and start scripts: no role
// change, VIPs and replication stay.
func restartRole(m Machine, why Action) (Machine, []Action, error) {
	role := roleScripts(m.State)
	m.Target = m.State
	return m, []Action{
		why,
		script(role.stop, m.State, m.State, "stop", true),
		script(role.start, m.State, m.State, "start", false),
		{Kind: Done},
	}, nil
}

// loop returns the machine's loop policy.
func (m Machine) loop() LoopPolicy {
	if m.Loop.Window <= 0 {
		return DefaultLoop
	}
	return m.Loop
}

// rollLoop starts a new loop window when the current one is over (or
// none started); a zero now keeps the current one.
func rollLoop(m *Machine, now time.Time) {
	if now.IsZero() {
		return
	}
	t := now.UnixMilli()
	if m.LoopSince == 0 || t < m.LoopSince || t-m.LoopSince >= m.loop().Window.Milliseconds() {
		m.LoopRestarts, m.LoopFailovers, m.LoopSince = 0, 0, t
	}
}

// canHandOver reports whether a failover to the peer is possible now
// without losing data (a synced SECOND), and why not.
func canHandOver(m Machine) (bool, string) {
	p := m.Peer
	switch {
	case m.Maint.FailoverOff:
		return false, "failover is off on " + m.Node + " (maintenance)"
	case m.State != Prim || !p.usable() || p.State != Second || p.Target != "":
		return false, fmt.Sprintf("%s is %s", m.PeerName, peerSummary(p))
	case !p.UpToDate:
		return false, m.PeerName + " is not up to date"
	case m.ReplBroken:
		return false, "replication to " + m.PeerName + " failed"
	case p.FailoverOff:
		return false, "failover is off on " + m.PeerName + " (maintenance)"
	}
	return true, ""
}

// checkerFailed applies a checker's restart, stopstart or stop under the
// loop limit: restarts first (restart), then one hand-over to the peer
// (stopstart, or restart past its limit), then the module stops here.
func checkerFailed(m Machine, ev Event) (Machine, []Action, error) {
	what := fmt.Sprintf("checker %s failed (%s)", ev.Checker, ev.Reason)
	switch {
	case m.Maint.ChecksOff:
		return redecide(m, logf("info", "%s: ignored, checkers are off (maintenance)", what))
	case m.Target != "" || !m.Started || m.ShuttingDown || (!m.State.Running() && ev.Action != ActStop):
		// A stop applies in WAIT too (a pre checker); the others need a role.
		return redecide(m, logf("info", "%s: ignored, the module is %s", what, stateSummary(m)))
	}
	switch ev.Action {
	case ActRestart, ActStopStart, ActStop:
	default:
		return redecide(m, logf("error", "%s: unknown action %q ignored", what, ev.Action))
	}
	rollLoop(&m, m.now)
	l := m.loop()
	window := l.Window.String()
	if ev.Action == ActStop {
		return stopByChecker(m, what+"; action stop")
	}
	restart := func(why string) (Machine, []Action, error) {
		m.LoopRestarts++
		return restartRole(m, logf("warn", "%s: %srestarting on %s (restart %d of %d within %s)", what, why, m.Node, m.LoopRestarts, l.Restarts, window))
	}
	if ev.Action == ActRestart || m.State == Second {
		if m.LoopRestarts < l.Restarts {
			return restart("")
		}
		if m.State == Second {
			return stopByChecker(m, fmt.Sprintf("loop limit: %s after %d restarts within %s", what, m.LoopRestarts, window))
		}
	}
	ok, whyNot := canHandOver(m)
	switch {
	case ok && m.LoopFailovers < l.Failovers:
		m.LoopFailovers++
		m.Handover = true
		m.Reason = fmt.Sprintf("%s: failing over to %s", what, m.PeerName)
		msg := logf("warn", "%s: failing over to %s (failover %d of %d within %s, after %d restarts)",
			what, m.PeerName, m.LoopFailovers, l.Failovers, window, m.LoopRestarts)
		return transition(m, Second, []Action{msg})
	case !ok && ev.Action == ActStopStart && m.LoopRestarts < l.Restarts:
		return restart(fmt.Sprintf("cannot fail over (%s): ", whyNot))
	}
	limit := fmt.Sprintf("loop limit: %s again after %d restarts and %d failovers within %s", what, m.LoopRestarts, m.LoopFailovers, window)
	if !ok && m.LoopFailovers < l.Failovers {
		limit += fmt.Sprintf(" (cannot fail over: %s)", whyNot)
	}
	return stopByChecker(m, limit)
}

// redecide logs why an event changed nothing and decides as any step does.
func redecide(m Machine, why Action) (Machine, []Action, error) {
	m2, more := decide(normalize(m))
	return normalize(m2), append([]Action{why}, more...), nil
}

// stopByChecker stops the module on this node with reason kept in status.
func stopByChecker(m Machine, reason string) (Machine, []Action, error) {
	m.Started, m.Want = false, WantNone
	m.failure = reason + "; stopped on " + m.Node + " (`tandem start` starts it again)"
	acts := []Action{logf("error", "%s", m.failure)}
	m2, more := decide(normalize(m))
	return normalize(m2), append(acts, more...), nil
}

func stateSummary(m Machine) string {
	switch {
	case m.Target != "":
		return fmt.Sprintf("changing from %s to %s", m.State, m.Target)
	case m.ShuttingDown:
		return "shutting down"
	case !m.Started:
		return "stopped"
	}
	return string(m.State)
}
