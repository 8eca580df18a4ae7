package module

// Failback: a module whose default_primary names a node returns to it once
// that node is back, resynchronised and settled as SECOND. The decision is
// a pure function of the machine; the agent carries it out as a swap (the
// planned exchange that loses no acknowledged write) after the condition
// held for a while, so a flapping home node does not bounce the module.

// FailbackDue reports whether this node, serving as PRIM away from home
// (home names the peer), should hand the module back now: the peer is a
// settled, up-to-date SECOND of our epoch, and neither side's failover
// switch is off. home is false when default_primary is empty ("none":
// stay where it runs) or "lastprim".
func FailbackDue(m Machine, home bool) bool {
	p := m.Peer
	return home && !m.Preferred && m.State == Prim && m.Target == "" && !m.Booting && !m.Isolated &&
		!m.ShuttingDown && m.Want == "" && m.CheckWait == "" && !m.Maint.FailoverOff &&
		p.usable() && p.State == Second && p.Target == "" && p.UpToDate && p.Epoch == m.Epoch &&
		!p.FailoverOff && !p.Claim && p.SwapRequest == m.SwapSeen
}
