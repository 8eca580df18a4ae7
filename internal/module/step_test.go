package module

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// settled builds a machine of node "a" (peer "b") settled in state s.
func settled(s State, p Peer, mod func(*Machine)) Machine {
	m := New("a", "b", true, Persistent{})
	m.State = s
	m.Persistent.State = s
	m.Started = s != Stop
	m.Epoch = 3
	m.UpToDate = true
	m.Peer = p
	if s == Second {
		m.Sync = SyncSynced
	}
	if s == Alone {
		m.PeerOutdated = true
	}
	if mod != nil {
		mod(&m)
	}
	return m
}

var (
	peerDown   = Peer{}
	peerSecond = Peer{Alive: true, Known: true, State: Second, Epoch: 3, UpToDate: true, Started: true}
	peerPrim   = Peer{Alive: true, Known: true, State: Prim, Epoch: 3, UpToDate: true, Started: true}
	peerAlone  = Peer{Alive: true, Known: true, State: Alone, Epoch: 4, UpToDate: true, Started: true}
	peerWait   = Peer{Alive: true, Known: true, State: Wait, Epoch: 3, UpToDate: true, Started: true}
	peerStop   = Peer{Alive: true, Known: true, State: Stop, Epoch: 3, UpToDate: true}
)

func kinds(acts []Action) []string {
	var out []string
	for _, a := range acts {
		switch a.Kind {
		case Log:
		case RunScript:
			out = append(out, a.Script)
		default:
			out = append(out, a.String())
		}
	}
	return out
}

// TestEveryStateEveryEvent steps every state with every event kind, against
// several peer views, and checks the rules that must hold for any pair.
func TestEveryStateEveryEvent(t *testing.T) {
	peers := map[string]Peer{"down": peerDown, "second": peerSecond, "prim": peerPrim, "alone": peerAlone,
		"wait": peerWait, "stop": peerStop, "incompatible": {Alive: true, Known: true, State: Wait, Incompatible: "cluster file differs"}}
	// Machine variants: maintenance switches, exhausted loop counts, a
	// checker asking to wait.
	mods := map[string]func(*Machine){"plain": nil,
		"maint":        func(m *Machine) { m.Maint = Maintenance{ChecksOff: true, FailoverOff: true, BootStartOff: true} },
		"failover-off": func(m *Machine) { m.Maint.FailoverOff = true },
		"loop-full":    func(m *Machine) { m.LoopRestarts, m.LoopFailovers, m.LoopSince = 2, 1, t0.UnixMilli() },
		"waiting":      func(m *Machine) { m.CheckWait = "checker lan failed: no carrier" },
	}
	for _, s := range States {
		for pname, p := range peers {
			for mname, mod := range mods {
				for _, k := range EventKinds {
					for _, variant := range []Event{{Kind: k}, {Kind: k, Force: true}, {Kind: k, OK: true}, {Kind: k, Isolated: true},
						{Kind: k, Peer: peerDown}, {Kind: k, Peer: peerPrim}, {Kind: k, Peer: peerSecond},
						{Kind: k, Checker: "app", Action: ActRestart, Reason: "down", Now: t0},
						{Kind: k, Checker: "app", Action: ActStopStart, Reason: "down", Now: t0},
						{Kind: k, Checker: "app", Action: ActWait, Reason: "down", Now: t0},
						{Kind: k, Checker: "app", Action: ActStop, Reason: "down", Now: t0},
						{Kind: k, Maint: MaintChange{Checkers: Off, Failover: Off, BootStart: Off}},
						{Kind: k, Maint: MaintChange{Checkers: On, Failover: On, BootStart: On}}} {
						name := fmt.Sprintf("%s/peer-%s/%s/%s", s, pname, mname, k)
						m := settled(s, p, mod)
						next, acts, err := Step(m, variant)
						checkInvariants(t, name, m, next, acts, err, variant)
					}
				}
			}
		}
	}
}

// t0 is an arbitrary time for the loop window.
var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func checkInvariants(t *testing.T, name string, m, next Machine, acts []Action, err error, ev Event) {
	t.Helper()
	if err != nil {
		if !isCommand(ev.Kind) {
			t.Errorf("%s: non-command event refused: %v", name, err)
		}
		if next.State != m.State || next.Target != m.Target || next.Persistent != m.Persistent {
			t.Errorf("%s: refused command changed the machine", name)
		}
		return
	}
	ks := kinds(acts)
	hasDone := slices.Contains(ks, "done")
	if next.Target != "" && m.Target == "" && !hasDone {
		t.Errorf("%s: transition to %s without a done action: %v", name, next.Target, ks)
	}
	if hasDone && ks[len(ks)-1] != "done" {
		t.Errorf("%s: done is not the last action: %v", name, ks)
	}
	if slices.Contains(ks, "add-vips") {
		if !next.Target.Serving() {
			t.Errorf("%s: adds VIPs while heading to %s", name, next.Target)
		}
		p := next.Peer
		if p.usable() && (p.State.Serving() || p.Target.Serving()) {
			t.Errorf("%s: adds VIPs while peer holds them (%s/%s)", name, p.State, p.Target)
		}
		if !next.UpToDate {
			t.Errorf("%s: promotes a node that is not up to date", name)
		}
		if i, j := slices.Index(ks, "add-vips"), slices.Index(ks, "start_prim"); j < i {
			t.Errorf("%s: start_prim before the VIP: %v", name, ks)
		}
	}
	if slices.Contains(ks, "remove-vips") && !next.Isolated {
		if i, j := slices.Index(ks, "stop_prim"), slices.Index(ks, "remove-vips"); i >= 0 && i > j {
			t.Errorf("%s: VIP removed before stop_prim: %v", name, ks)
		}
	}
	if next.Isolated && slices.Contains(ks, "stop_prim") {
		// Isolated: the VIPs go and the durable waits fail before
		// stop_prim, which may wait for the application.
		if i, j, k := slices.Index(ks, "remove-vips"), slices.Index(ks, "fence-data"), slices.Index(ks, "stop_prim"); i < 0 || j < 0 || i > k || j > k {
			t.Errorf("%s: isolated, stop_prim before the VIPs go and the data is fenced: %v", name, ks)
		}
	}
	if slices.Contains(ks, "fence-data") && !next.Isolated {
		t.Errorf("%s: data fenced while not isolated: %v", name, ks)
	}
	if next.Target.Serving() && !m.State.Serving() && !m.Target.Serving() && next.Epoch < m.Epoch {
		t.Errorf("%s: epoch went backwards", name)
	}
	if next.State.Serving() && next.Target == "" && next.Peer.usable() && next.Peer.State == Second && next.State != Prim && !next.ReplBroken {
		t.Errorf("%s: serving with a SECOND peer but state %s", name, next.State)
	}
	// Checkers: never beyond the loop limit, never a promotion, a
	// hand-over only to a synced SECOND, nothing while switched off.
	l := next.loop()
	if next.LoopRestarts > l.Restarts || next.LoopFailovers > l.Failovers {
		t.Errorf("%s: loop counts %d/%d beyond the limit %+v", name, next.LoopRestarts, next.LoopFailovers, l)
	}
	if ev.Kind == CheckerFailed || ev.Kind == CheckerWait {
		// A failure never promotes (a recovery may: the node was waiting),
		// unless the situation alone would.
		base, _, _ := Step(m, Event{Kind: PeerChanged, Peer: m.Peer})
		failure := ev.Kind == CheckerFailed || ev.Reason != ""
		if failure && next.Target.Serving() && next.Target != m.State && m.Target == "" && !base.Target.Serving() {
			t.Errorf("%s: a checker promoted %s to %s", name, m.State, next.Target)
		}
		if next.Handover && !m.Handover {
			p := m.Peer
			if !p.usable() || p.State != Second || !p.UpToDate || p.FailoverOff || m.Maint.FailoverOff || m.State != Prim {
				t.Errorf("%s: checker hand-over from %s to a peer that cannot take it (%+v)", name, m.State, p)
			}
		}
		if m.Maint.ChecksOff && (next.Target != base.Target || next.Started != base.Started || next.Handover != base.Handover) {
			t.Errorf("%s: a checker acted while checkers are off: %s -> %s %v", name, m.State, next.Target, ks)
		}
	}
	if ev.Kind == MaintenanceCmd && next.Persistent.Maint == m.Persistent.Maint && ev.Maint != (MaintChange{}) && ev.Maint.Checkers != Keep {
		if next.Maint.ChecksOff != (ev.Maint.Checkers == Off) {
			t.Errorf("%s: maintenance switch not applied", name)
		}
	}
}

func isCommand(k EventKind) bool {
	switch k {
	case Start, StopCmd, Restart, PrimCmd, SecondCmd, SwapCmd, MaintenanceCmd, ResetLoopCmd:
		return true
	}
	return false
}

type tcase struct {
	name      string
	m         Machine
	ev        Event
	wantState State  // state right after the step
	target    State  // transition started toward
	acts      string // space-separated script/action names, "" = no transition
	err       string // substring of the refusal
	check     func(t *testing.T, m Machine)
}

func TestRules(t *testing.T) {
	fresh := func(preferred bool) Machine {
		m := New("a", "b", preferred, Persistent{})
		return m
	}
	cases := []tcase{
		{name: "first start alone waits for peer discovery", m: fresh(true), ev: Event{Kind: Start},
			wantState: Stop, target: Wait, acts: "remove-vips prestart arm-discovery done"},
		{name: "fresh node alone after discovery waits", m: func() Machine { m := fresh(true); m.State = Wait; m.Started = true; return m }(),
			ev: Event{Kind: DiscoveryDone}, wantState: Wait,
			check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "first start") }},
		{name: "fresh pair: preferred node claims first", m: func() Machine { m := fresh(true); m.State = Wait; m.Started = true; m.Booting = true; return m }(),
			ev: Event{Kind: PeerChanged, Peer: Peer{Alive: true, Known: true, State: Wait, Started: true}}, wantState: Wait,
			check: func(t *testing.T, m Machine) {
				if !m.Claim {
					t.Error("no claim published")
				}
			}},
		{name: "claim loser yields and acks", m: func() Machine { m := fresh(false); m.State = Wait; m.Started = true; m.Want = WantPrim; return m }(),
			ev: Event{Kind: PeerChanged, Peer: Peer{Alive: true, Known: true, State: Wait, Started: true, Claim: true}}, wantState: Wait,
			check: func(t *testing.T, m Machine) {
				if m.Claim || !m.Ack {
					t.Errorf("loser must ack: claim %v ack %v", m.Claim, m.Ack)
				}
			}},
		{name: "fresh pair: preferred node serves once acked", m: func() Machine {
			m := fresh(true)
			m.State, m.Started, m.Claim = Wait, true, true
			return m
		}(),
			ev: Event{Kind: PeerChanged, Peer: Peer{Alive: true, Known: true, State: Wait, Started: true, Ack: true}}, wantState: Wait, target: Alone,
			acts: "start_both mount-data add-vips start_prim done",
			check: func(t *testing.T, m Machine) {
				if m.Epoch != 1 || !m.UpToDate || !m.PeerOutdated {
					t.Errorf("fresh promotion: epoch %d uptodate %v peerOutdated %v", m.Epoch, m.UpToDate, m.PeerOutdated)
				}
			}},
		{name: "fresh pair: other node waits", m: func() Machine { m := fresh(false); m.State = Wait; m.Started = true; return m }(),
			ev: Event{Kind: PeerChanged, Peer: Peer{Alive: true, Known: true, State: Wait, Started: true}}, wantState: Wait},
		{name: "returning node joins as SECOND", m: settled(Wait, peerDown, nil),
			ev: Event{Kind: PeerChanged, Peer: peerAlone}, wantState: Wait, target: Second, acts: "start_both start-receiver start_second done"},
		{name: "peer loss on SECOND = failover", m: settled(Second, peerPrim, nil),
			ev: Event{Kind: PeerChanged, Peer: peerDown}, wantState: Second, target: Alone,
			acts: "stop_second stop-receiver mount-data add-vips start_prim done",
			check: func(t *testing.T, m Machine) {
				if m.Epoch != 4 || !m.PeerOutdated {
					t.Errorf("failover must start a new epoch: %d %v", m.Epoch, m.PeerOutdated)
				}
			}},
		{name: "peer loss on PRIM = ALONE without scripts", m: settled(Prim, peerSecond, nil),
			ev: Event{Kind: PeerChanged, Peer: peerDown}, wantState: Prim, target: Alone, acts: "done",
			check: func(t *testing.T, m Machine) {
				if !m.PeerOutdated || m.Epoch != 4 {
					t.Errorf("ALONE must mark the peer outdated: %v %d", m.PeerOutdated, m.Epoch)
				}
			}},
		{name: "SECOND not up to date never promotes", m: settled(Second, peerPrim, func(m *Machine) { m.UpToDate = false; m.Sync = SyncResyncing }),
			ev: Event{Kind: PeerChanged, Peer: peerDown}, wantState: Second, target: Wait, acts: "stop_second stop-receiver stop_both done"},
		{name: "peer stopped on PRIM side = failover", m: settled(Second, peerPrim, nil),
			ev: Event{Kind: PeerChanged, Peer: peerStop}, wantState: Second, target: Alone},
		{name: "SECOND waits while the primary is still releasing", m: settled(Second, peerPrim, nil),
			ev: Event{Kind: PeerChanged, Peer: func() Peer { p := peerPrim; p.Target = Stop; return p }()}, wantState: Second},
		{name: "stop on PRIM", m: settled(Prim, peerSecond, nil), ev: Event{Kind: StopCmd}, wantState: Prim, target: Stop,
			acts: "stop_prim remove-vips unmount-data stop_both poststop done"},
		{name: "ALONE joined by SECOND becomes PRIM", m: settled(Alone, peerDown, nil),
			ev: Event{Kind: PeerChanged, Peer: func() Peer { p := peerSecond; p.Epoch = 3; return p }()}, wantState: Alone, target: Prim, acts: "done"},
		{name: "prim refused when not up to date", m: settled(Wait, peerDown, func(m *Machine) { m.UpToDate = false }),
			ev: Event{Kind: PrimCmd}, wantState: Wait, err: "not up to date"},
		{name: "prim refused when peer may be newer", m: settled(Wait, peerDown, nil),
			ev: Event{Kind: PrimCmd}, wantState: Wait, err: "unreachable"},
		{name: "prim --force names the loss", m: settled(Wait, peerDown, func(m *Machine) { m.UpToDate = false }),
			ev: Event{Kind: PrimCmd, Force: true}, wantState: Wait, target: Alone,
			check: func(t *testing.T, m Machine) {
				if m.Epoch != 4 || !m.UpToDate {
					t.Errorf("forced: epoch %d uptodate %v", m.Epoch, m.UpToDate)
				}
			}},
		{name: "prim refused while peer serves", m: settled(Second, peerPrim, nil), ev: Event{Kind: PrimCmd, Force: true},
			wantState: Second, err: "swap"},
		{name: "prim from STOP when proven runs prestart", m: settled(Stop, peerDown, func(m *Machine) { m.PeerOutdated = true }),
			ev: Event{Kind: PrimCmd}, wantState: Stop, target: Wait},
		{name: "swap on PRIM releases first", m: settled(Prim, peerSecond, nil), ev: Event{Kind: SwapCmd},
			wantState: Prim, target: Second, acts: "stop_prim remove-vips unmount-data start-receiver start_second done",
			check: func(t *testing.T, m Machine) {
				if !m.Handover {
					t.Error("handover not set")
				}
			}},
		{name: "swap taken over by the SECOND", m: settled(Second, peerPrim, nil),
			ev:        Event{Kind: PeerChanged, Peer: func() Peer { p := peerSecond; p.Handover = true; return p }()},
			wantState: Second, target: Prim, acts: "stop_second stop-receiver mount-data add-vips start_prim done",
			check: func(t *testing.T, m Machine) {
				if m.Epoch != 3 {
					t.Errorf("a swap must not start a new epoch: %d", m.Epoch)
				}
			}},
		{name: "swap requested on SECOND travels to the PRIM", m: settled(Second, peerPrim, nil), ev: Event{Kind: SwapCmd},
			wantState: Second, check: func(t *testing.T, m Machine) {
				if m.SwapRequest != 1 {
					t.Error("swap request not counted")
				}
			}},
		{name: "PRIM acts on the peer's swap request", m: settled(Prim, peerSecond, nil),
			ev:        Event{Kind: PeerChanged, Peer: func() Peer { p := peerSecond; p.SwapRequest = 1; return p }()},
			wantState: Prim, target: Second, acts: "stop_prim remove-vips unmount-data start-receiver start_second done"},
		{name: "swap refused without a synced SECOND", m: settled(Alone, peerDown, nil), ev: Event{Kind: SwapCmd},
			wantState: Alone, err: "not paired"},
		{name: "split brain: loser demotes", m: settled(Alone, Peer{Alive: true, Known: true, State: Alone, Epoch: 5, UpToDate: true, Started: true}, nil),
			ev:        Event{Kind: PeerChanged, Peer: Peer{Alive: true, Known: true, State: Alone, Epoch: 5, UpToDate: true, Started: true}},
			wantState: Alone, target: Second, acts: "stop_prim remove-vips unmount-data start-receiver start_second done"},
		{name: "split brain: winner keeps serving", m: settled(Alone, peerDown, func(m *Machine) { m.Epoch = 5 }),
			ev:        Event{Kind: PeerChanged, Peer: Peer{Alive: true, Known: true, State: Alone, Epoch: 5, UpToDate: true, Started: true}},
			wantState: Alone},
		{name: "isolation stops serving at once", m: settled(Prim, peerSecond, nil), ev: Event{Kind: IsolationChanged, Isolated: true},
			wantState: Prim, target: Wait, acts: "remove-vips fence-data stop_prim unmount-data stop_both done"},
		{name: "isolation of an ALONE node: VIPs first too", m: settled(Alone, peerDown, nil), ev: Event{Kind: IsolationChanged, Isolated: true},
			wantState: Alone, target: Wait, acts: "remove-vips fence-data stop_prim unmount-data stop_both done"},
		{name: "isolation during a restart: VIPs and stream cut at once", m: func() Machine {
			m := settled(Prim, peerSecond, nil)
			m.Target = Prim
			return m
		}(), ev: Event{Kind: IsolationChanged, Isolated: true}, wantState: Prim, target: Prim, acts: "remove-vips fence-data",
			check: func(t *testing.T, m Machine) {
				if !m.ReplBroken {
					t.Error("a cut stream must be marked broken: the SECOND lacks ops")
				}
				m2, acts, _ := Step(m, Event{Kind: TransitionDone, OK: true})
				if m2.Target != Wait || strings.Join(kinds(acts), " ") != "remove-vips fence-data stop_prim unmount-data stop_both done" {
					t.Errorf("after the restart: -> %s %v", m2.Target, kinds(acts))
				}
			}},
		{name: "isolation healed during a restart: serves ALONE, the SECOND resynchronises", m: func() Machine {
			m := settled(Prim, peerSecond, nil)
			m.Target = Prim
			m, _, _ = Step(m, Event{Kind: IsolationChanged, Isolated: true})
			m, _, _ = Step(m, Event{Kind: IsolationChanged, Isolated: false})
			return m
		}(), ev: Event{Kind: TransitionDone, OK: true}, wantState: Prim, target: Alone,
			check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "isolated") }},
		{name: "isolation during a swap: VIPs and stream cut at once", m: func() Machine {
			m := settled(Prim, peerSecond, nil)
			m.Target, m.Handover = Second, true
			return m
		}(), ev: Event{Kind: IsolationChanged, Isolated: true}, wantState: Prim, target: Second, acts: "remove-vips fence-data"},
		{name: "isolation during a start toward service: VIPs removed, and the node waits once it ends", m: func() Machine {
			m := settled(Wait, peerDown, nil)
			m.Target = Alone
			return m
		}(), ev: Event{Kind: IsolationChanged, Isolated: true}, wantState: Wait, target: Alone, acts: "remove-vips fence-data",
			check: func(t *testing.T, m Machine) {
				m2, acts, _ := Step(m, Event{Kind: TransitionDone, OK: true})
				if m2.Target != Wait || strings.Join(kinds(acts), " ") != "remove-vips fence-data stop_prim unmount-data stop_both done" {
					t.Errorf("after the start: -> %s %v", m2.Target, kinds(acts))
				}
			}},
		{name: "isolation of a SECOND: nothing to fence", m: settled(Second, peerPrim, nil), ev: Event{Kind: IsolationChanged, Isolated: true},
			wantState: Second, target: Wait, acts: "stop_second stop-receiver stop_both done"},
		{name: "restart re-runs role scripts", m: settled(Prim, peerSecond, nil), ev: Event{Kind: Restart},
			wantState: Prim, target: Prim, acts: "stop_prim start_prim done"},
		{name: "start script failure -> STOP with reason", m: func() Machine {
			m := settled(Second, peerDown, nil)
			m.Target = Alone
			return m
		}(), ev: Event{Kind: TransitionDone, OK: false, Reason: "start_prim exited 3"}, wantState: Alone, target: Stop,
			acts: "stop_prim remove-vips unmount-data stop_both poststop done",
			check: func(t *testing.T, m Machine) {
				if m.Started {
					t.Error("failed start must leave the module stopped")
				}
			}},
		{name: "incompatible peer: WAIT with the field", m: settled(Wait, peerDown, nil),
			ev:        Event{Kind: PeerChanged, Peer: Peer{Alive: true, Incompatible: "cluster file differs: heartbeat.timeout: here 600ms, on peer 1s"}},
			wantState: Wait, check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "heartbeat.timeout") }},
		{name: "crash recovery cleans up before anything", m: func() Machine {
			return New("a", "b", true, Persistent{State: Prim, Started: true, UpToDate: true, Epoch: 3})
		}(), ev: Event{Kind: Boot}, wantState: Prim, target: Wait,
			acts: "stop_prim remove-vips unmount-data stop_both arm-discovery done"},
		{name: "restart after crash of a PRIM with a SECOND waits", m: settled(Wait, peerDown, func(m *Machine) { m.PeerOutdated = false }),
			ev: Event{Kind: DiscoveryDone}, wantState: Wait,
			check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "prim --force") }},
		{name: "restart after crash of an ALONE serves again", m: settled(Wait, peerDown, func(m *Machine) { m.PeerOutdated = true; m.Booting = true }),
			ev: Event{Kind: DiscoveryDone}, wantState: Wait, target: Alone},
		{name: "shutdown of PRIM stops everything", m: settled(Prim, peerSecond, nil), ev: Event{Kind: Shutdown},
			wantState: Prim, target: Stop, acts: "stop_prim remove-vips unmount-data stop_both poststop done",
			check: func(t *testing.T, m Machine) {
				if !m.Started {
					t.Error("shutdown must keep the intent to run")
				}
			}},
		{name: "peer with newer data stopped: wait", m: settled(Wait, peerDown, nil),
			ev: Event{Kind: PeerChanged, Peer: func() Peer { p := peerStop; p.Epoch = 9; return p }()}, wantState: Wait,
			check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "newer data") }},
		{name: "peer stopped, ours newer: serve", m: settled(Wait, peerDown, nil),
			ev: Event{Kind: PeerChanged, Peer: func() Peer { p := peerStop; p.Ack = true; return p }()}, wantState: Wait, target: Alone},
		{name: "replication failure: PRIM goes on ALONE with a new epoch", m: settled(Prim, peerSecond, nil),
			ev: Event{Kind: ReplicationFailed, Reason: "no ack within 3s"}, wantState: Prim, target: Alone, acts: "done",
			check: func(t *testing.T, m Machine) {
				if !m.PeerOutdated || m.Epoch != 4 || !m.ReplBroken {
					t.Errorf("after replication failure: peerOutdated %v epoch %d broken %v", m.PeerOutdated, m.Epoch, m.ReplBroken)
				}
			}},
		{name: "SECOND whose primary went on ALONE is no longer up to date", m: settled(Second, peerPrim, nil),
			ev: Event{Kind: PeerChanged, Peer: func() Peer { p := peerPrim; p.State = Alone; p.Epoch = 4; return p }()}, wantState: Second,
			check: func(t *testing.T, m Machine) {
				if m.UpToDate || m.Sync != SyncResyncing {
					t.Errorf("uptodate %v sync %s", m.UpToDate, m.Sync)
				}
			}},
		{name: "SECOND whose receiver failed marks its copy outdated", m: settled(Second, peerPrim, nil),
			ev: Event{Kind: ReplicationFailed, Reason: "no space left on device"}, wantState: Second,
			check: func(t *testing.T, m Machine) {
				if m.UpToDate || m.Sync != SyncResyncing {
					t.Errorf("uptodate %v sync %s", m.UpToDate, m.Sync)
				}
			}},
		{name: "SECOND not up to date never takes over", m: settled(Second, peerAlone, func(m *Machine) { m.UpToDate = false; m.Sync = SyncResyncing }),
			ev: Event{Kind: PeerChanged, Peer: peerDown}, wantState: Second, target: Wait},
		{name: "entering serving mounts the data before the VIP and start_prim", m: settled(Second, peerPrim, nil),
			ev: Event{Kind: PeerChanged, Peer: peerDown}, wantState: Second, target: Alone,
			acts: "stop_second stop-receiver mount-data add-vips start_prim done"},
		{name: "second command waits for a serving peer", m: settled(Stop, peerDown, nil), ev: Event{Kind: SecondCmd},
			wantState: Stop, target: Wait},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			next, acts, err := Step(tc.m, tc.ev)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("want refusal containing %q, got %v", tc.err, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected refusal: %v", err)
			}
			if next.State != tc.wantState || next.Target != tc.target {
				t.Fatalf("state %s target %q, want %s target %q (reason %q, acts %v)", next.State, next.Target, tc.wantState, tc.target, next.Reason, kinds(acts))
			}
			if tc.acts != "" {
				got := strings.Join(kinds(acts), " ")
				if got != tc.acts {
					t.Errorf("actions %q, want %q", got, tc.acts)
				}
			}
			if tc.check != nil {
				tc.check(t, next)
			}
		})
	}
}

func wantIn(t *testing.T, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Errorf("%q does not contain %q", s, sub)
	}
}

// A PRIM whose SECOND announces it is leaving (still SECOND, becoming WAIT
// or STOP) serves ALONE as a new data generation: restarted alone after a
// crash, it must be able to prove it holds the latest data.
func TestAloneAfterLeavingSecondIsNewGeneration(t *testing.T) {
	for _, target := range []State{Wait, Stop} {
		m := settled(Prim, peerSecond, nil)
		before := m.Epoch
		leaving := peerSecond
		leaving.Target = target
		next, _, err := Step(m, Event{Kind: PeerChanged, Peer: leaving})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; next.Target != "" && i < 4; i++ {
			next, _, err = Step(next, Event{Kind: TransitionDone, OK: true})
			if err != nil {
				t.Fatal(err)
			}
		}
		if next.State != Alone {
			t.Fatalf("peer becoming %s: state %s, want ALONE", target, next.State)
		}
		if !next.PeerOutdated || next.Epoch != before+1 {
			t.Errorf("peer becoming %s: ALONE with epoch %d (was %d), peer outdated %v: want a new generation", target, next.Epoch, before, next.PeerOutdated)
		}
	}
}

// TestNewBeforeBoot: between the agent's start and its boot step, a module
// that served before a crash shows its old state on its way out, never as
// serving (the status and the peer's view of a restarted agent).
func TestNewBeforeBoot(t *testing.T) {
	for _, c := range []struct {
		p      Persistent
		target State
	}{
		{Persistent{State: Prim, Started: true}, Wait},
		{Persistent{State: Alone, Started: true}, Wait},
		{Persistent{State: Prim}, Stop},
		{Persistent{State: Second, Started: true}, Wait},
		{Persistent{State: Stop, Started: true}, ""},
	} {
		m := New("a", "b", true, c.p)
		if m.State != c.p.State || m.Target != c.target {
			t.Errorf("New after %s (started %v): %s -> %q, want %s -> %q", c.p.State, c.p.Started, m.State, m.Target, c.p.State, c.target)
		}
		if m.State.Serving() && m.Target == "" {
			t.Errorf("New after %s: looks serving before boot", c.p.State)
		}
		// Boot is not refused as busy, and runs the crash clean-up.
		m2, acts, err := Step(m, Event{Kind: Boot})
		if err != nil {
			t.Fatalf("Boot after %s: %v", c.p.State, err)
		}
		if c.p.State.Running() && (m2.Target != c.target || len(acts) == 0) {
			t.Errorf("Boot after %s: -> %q %v", c.p.State, m2.Target, kinds(acts))
		}
	}
}
