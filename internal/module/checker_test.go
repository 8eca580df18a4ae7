package module

import (
	"strings"
	"testing"
	"time"
)

func failed(action CheckAction, at time.Time) Event {
	return Event{Kind: CheckerFailed, Checker: "app", Action: action, Reason: "process 42 is not running", Now: at}
}

// TestCheckerRules pins each rule of checkers, actions, the loop limit and
// the maintenance switches (issue 6).
func TestCheckerRules(t *testing.T) {
	loopFull := func(m *Machine) { m.LoopRestarts, m.LoopSince = 2, t0.UnixMilli() }
	cases := []tcase{
		{name: "restart on PRIM re-runs its scripts, no failover", m: settled(Prim, peerSecond, nil), ev: failed(ActRestart, t0),
			wantState: Prim, target: Prim, acts: "stop_prim start_prim done",
			check: func(t *testing.T, m Machine) {
				if m.LoopRestarts != 1 || m.LoopSince != t0.UnixMilli() || m.Handover {
					t.Errorf("restarts %d since %d handover %v", m.LoopRestarts, m.LoopSince, m.Handover)
				}
			}},
		{name: "restart on ALONE", m: settled(Alone, peerDown, nil), ev: failed(ActRestart, t0),
			wantState: Alone, target: Alone, acts: "stop_prim start_prim done"},
		{name: "restart on SECOND re-runs the SECOND's scripts", m: settled(Second, peerPrim, nil), ev: failed(ActRestart, t0),
			wantState: Second, target: Second, acts: "stop_second start_second done"},
		{name: "restarts used up: failover to the synced SECOND", m: settled(Prim, peerSecond, loopFull), ev: failed(ActRestart, t0.Add(time.Minute)),
			wantState: Prim, target: Second, acts: "stop_prim remove-vips unmount-data start-receiver start_second done",
			check: func(t *testing.T, m Machine) {
				if !m.Handover || m.LoopFailovers != 1 || m.LoopRestarts != 2 || m.Epoch != 3 {
					t.Errorf("handover %v failovers %d restarts %d epoch %d", m.Handover, m.LoopFailovers, m.LoopRestarts, m.Epoch)
				}
				wantIn(t, m.Reason, "failing over to b")
			}},
		{name: "restarts and failover used up: stop here", m: settled(Prim, peerSecond, func(m *Machine) { loopFull(m); m.LoopFailovers = 1 }),
			ev: failed(ActRestart, t0.Add(time.Minute)), wantState: Prim, target: Stop,
			acts: "stop_prim remove-vips unmount-data stop_both poststop done",
			check: func(t *testing.T, m Machine) {
				if m.Started {
					t.Error("still started after the loop limit")
				}
				wantIn(t, m.Reason, "loop limit")
				wantIn(t, m.Reason, "2 restarts and 1 failovers within 1h0m0s")
			}},
		{name: "restarts used up on ALONE: nowhere to fail over, stop", m: settled(Alone, peerDown, loopFull), ev: failed(ActRestart, t0),
			wantState: Alone, target: Stop, check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "cannot fail over: b is down") }},
		{name: "restarts used up on SECOND: stop", m: settled(Second, peerPrim, loopFull), ev: failed(ActRestart, t0),
			wantState: Second, target: Stop, check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "loop limit") }},
		{name: "a new window starts the counts again", m: settled(Prim, peerSecond, func(m *Machine) { loopFull(m); m.LoopFailovers = 1 }),
			ev: failed(ActRestart, t0.Add(61*time.Minute)), wantState: Prim, target: Prim, acts: "stop_prim start_prim done",
			check: func(t *testing.T, m Machine) {
				if m.LoopRestarts != 1 || m.LoopFailovers != 0 || m.LoopSince != t0.Add(61*time.Minute).UnixMilli() {
					t.Errorf("restarts %d failovers %d since %d", m.LoopRestarts, m.LoopFailovers, m.LoopSince)
				}
			}},
		{name: "custom loop limit: no local restart, fail over at once", m: settled(Prim, peerSecond, func(m *Machine) { m.Loop = LoopPolicy{Restarts: 0, Failovers: 3, Window: time.Minute} }),
			ev: failed(ActRestart, t0), wantState: Prim, target: Second},
		{name: "stopstart hands over to the synced SECOND at once", m: settled(Prim, peerSecond, nil), ev: failed(ActStopStart, t0),
			wantState: Prim, target: Second, acts: "stop_prim remove-vips unmount-data start-receiver start_second done",
			check: func(t *testing.T, m Machine) {
				if m.LoopRestarts != 0 || m.LoopFailovers != 1 {
					t.Errorf("restarts %d failovers %d", m.LoopRestarts, m.LoopFailovers)
				}
			}},
		{name: "stopstart without a peer restarts locally", m: settled(Alone, peerDown, nil), ev: failed(ActStopStart, t0),
			wantState: Alone, target: Alone, acts: "stop_prim start_prim done"},
		{name: "stopstart to a resyncing SECOND restarts locally", m: settled(Prim, func() Peer { p := peerSecond; p.UpToDate = false; return p }(), nil),
			ev: failed(ActStopStart, t0), wantState: Prim, target: Prim},
		{name: "stopstart with failover off here restarts locally", m: settled(Prim, peerSecond, func(m *Machine) { m.Maint.FailoverOff = true }),
			ev: failed(ActStopStart, t0), wantState: Prim, target: Prim},
		{name: "stopstart with failover off on the peer restarts locally", m: settled(Prim, func() Peer { p := peerSecond; p.FailoverOff = true; return p }(), nil),
			ev: failed(ActStopStart, t0), wantState: Prim, target: Prim},
		{name: "stopstart on SECOND restarts it", m: settled(Second, peerPrim, nil), ev: failed(ActStopStart, t0),
			wantState: Second, target: Second, acts: "stop_second start_second done"},
		{name: "stop stops the module here with the reason", m: settled(Prim, peerSecond, nil), ev: failed(ActStop, t0),
			wantState: Prim, target: Stop, acts: "stop_prim remove-vips unmount-data stop_both poststop done",
			check: func(t *testing.T, m Machine) {
				if m.Started {
					t.Error("still started")
				}
				wantIn(t, m.Reason, "checker app failed (process 42 is not running); action stop")
			}},
		{name: "wait on PRIM leaves the service", m: settled(Prim, peerSecond, nil), ev: failed(ActWait, t0),
			wantState: Prim, target: Wait, acts: "stop_prim remove-vips unmount-data stop_both done",
			check: func(t *testing.T, m Machine) {
				wantIn(t, m.Reason, "checker app failed")
				wantIn(t, m.Reason, "waiting for it to recover")
				if m.LoopFailovers != 1 {
					t.Errorf("leaving the service must count as a failover: %d", m.LoopFailovers)
				}
			}},
		{name: "wait on SECOND stops receiving", m: settled(Second, peerPrim, nil), ev: Event{Kind: CheckerWait, Reason: "checker lan failed: no carrier", Now: t0},
			wantState: Second, target: Wait, acts: "stop_second stop-receiver stop_both done"},
		{name: "wait in WAIT keeps the node out of any role", m: settled(Wait, peerAlone, nil), ev: Event{Kind: CheckerWait, Reason: "checker lan failed: no carrier"},
			wantState: Wait, check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "checker lan failed") }},
		{name: "a recovered wait checker lets the node join as SECOND", m: settled(Wait, peerAlone, func(m *Machine) { m.CheckWait = "checker lan failed" }),
			ev: Event{Kind: CheckerWait}, wantState: Wait, target: Second},
		{name: "wait past the failover limit stops the node", m: settled(Prim, peerSecond, func(m *Machine) { m.LoopFailovers, m.LoopSince = 1, t0.UnixMilli() }),
			ev: Event{Kind: CheckerWait, Reason: "checker lan failed: no carrier", Now: t0}, wantState: Prim, target: Stop,
			check: func(t *testing.T, m Machine) {
				wantIn(t, m.Reason, "loop limit: checker lan failed")
				if m.Started {
					t.Error("still started")
				}
			}},
		{name: "checkers off: a failure is ignored", m: settled(Prim, peerSecond, func(m *Machine) { m.Maint.ChecksOff = true }),
			ev: failed(ActRestart, t0), wantState: Prim},
		{name: "checkers off: a wait is ignored", m: settled(Prim, peerSecond, func(m *Machine) { m.Maint.ChecksOff = true }),
			ev: Event{Kind: CheckerWait, Reason: "checker lan failed"}, wantState: Prim},
		{name: "a failure during a transition is ignored", m: settled(Prim, peerSecond, func(m *Machine) { m.Target = Prim }),
			ev: failed(ActRestart, t0), wantState: Prim, target: Prim,
			check: func(t *testing.T, m Machine) {
				if m.LoopRestarts != 0 {
					t.Error("counted")
				}
			}},
		{name: "a failure of a stopped module is ignored", m: settled(Stop, peerPrim, nil), ev: failed(ActStop, t0), wantState: Stop},
		{name: "restart in WAIT is ignored", m: settled(Wait, peerDown, func(m *Machine) { m.PeerOutdated = false }), ev: failed(ActRestart, t0), wantState: Wait},
		{name: "stop in WAIT (a pre checker) stops the module", m: settled(Wait, peerPrim, nil), ev: failed(ActStop, t0),
			wantState: Wait, target: Stop, acts: "poststop done",
			check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "action stop") }},
		{name: "isolation is not counted as a checker failover", m: settled(Prim, peerSecond, func(m *Machine) { m.CheckWait = "checker lan failed" }),
			ev: Event{Kind: IsolationChanged, Isolated: true}, wantState: Prim, target: Wait,
			check: func(t *testing.T, m Machine) {
				if m.LoopFailovers != 0 {
					t.Errorf("counted %d", m.LoopFailovers)
				}
			}},
		{name: "reset-loop clears the counts", m: settled(Prim, peerSecond, func(m *Machine) { loopFull(m); m.LoopFailovers = 1 }),
			ev: Event{Kind: ResetLoopCmd}, wantState: Prim,
			check: func(t *testing.T, m Machine) {
				if m.LoopRestarts != 0 || m.LoopFailovers != 0 || m.LoopSince != 0 {
					t.Errorf("counts %d %d %d", m.LoopRestarts, m.LoopFailovers, m.LoopSince)
				}
			}},
		{name: "maintenance switches are persisted", m: settled(Prim, peerSecond, nil),
			ev: Event{Kind: MaintenanceCmd, Maint: MaintChange{Checkers: Off, Failover: Off, BootStart: Off}}, wantState: Prim,
			check: func(t *testing.T, m Machine) {
				if m.Persistent.Maint != (Maintenance{ChecksOff: true, FailoverOff: true, BootStartOff: true}) {
					t.Errorf("maint %+v", m.Persistent.Maint)
				}
			}},
		{name: "maintenance: Keep leaves a switch", m: settled(Prim, peerSecond, func(m *Machine) { m.Maint.FailoverOff = true }),
			ev: Event{Kind: MaintenanceCmd, Maint: MaintChange{Checkers: Off}}, wantState: Prim,
			check: func(t *testing.T, m Machine) {
				if !m.Maint.FailoverOff || !m.Maint.ChecksOff || m.Maint.BootStartOff {
					t.Errorf("maint %+v", m.Maint)
				}
			}},
		{name: "failover off: the SECOND does not take over a dead primary", m: settled(Second, peerPrim, func(m *Machine) { m.Maint.FailoverOff = true }),
			ev: Event{Kind: PeerChanged, Peer: peerDown}, wantState: Second,
			check: func(t *testing.T, m Machine) { wantIn(t, m.Reason, "failover is off on a") }},
		{name: "failover off: prim still promotes", m: settled(Second, peerDown, func(m *Machine) { m.Maint.FailoverOff = true }),
			ev: Event{Kind: PrimCmd, Force: true}, wantState: Second, target: Alone},
		{name: "failover off: a swap hand-over is still taken", m: settled(Second, peerPrim, func(m *Machine) { m.Maint.FailoverOff = true }),
			ev: Event{Kind: PeerChanged, Peer: func() Peer { p := peerSecond; p.Handover = true; return p }()}, wantState: Second, target: Prim},
		{name: "failover switched back on: the SECOND takes over", m: settled(Second, peerDown, func(m *Machine) { m.Maint.FailoverOff = true }),
			ev: Event{Kind: MaintenanceCmd, Maint: MaintChange{Failover: On}}, wantState: Second, target: Alone},
		{name: "boot start off: the module stays stopped", m: New("a", "b", true, Persistent{State: Stop, Started: true, UpToDate: true, Epoch: 3, Maint: Maintenance{BootStartOff: true}}),
			ev: Event{Kind: Boot}, wantState: Stop, acts: "remove-vips",
			check: func(t *testing.T, m Machine) {
				if m.Started {
					t.Error("started")
				}
				wantIn(t, m.Reason, "boot start is off")
			}},
		{name: "boot start off after a crash: clean up to STOP", m: New("a", "b", true, Persistent{State: Prim, Started: true, UpToDate: true, Epoch: 3, Maint: Maintenance{BootStartOff: true}}),
			ev: Event{Kind: Boot}, wantState: Prim, target: Stop, acts: "stop_prim remove-vips unmount-data stop_both poststop done"},
		{name: "boot start on: the module resumes", m: New("a", "b", true, Persistent{State: Stop, Started: true, UpToDate: true, Epoch: 3}),
			ev: Event{Kind: Boot}, wantState: Stop, target: Wait},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			next, acts, err := Step(tc.m, tc.ev)
			if err != nil {
				t.Fatalf("unexpected refusal: %v", err)
			}
			if next.State != tc.wantState || next.Target != tc.target {
				t.Fatalf("state %s target %q, want %s target %q (reason %q, acts %v)", next.State, next.Target, tc.wantState, tc.target, next.Reason, kinds(acts))
			}
			if tc.acts != "" {
				if got := strings.Join(kinds(acts), " "); got != tc.acts {
					t.Errorf("actions %q, want %q", got, tc.acts)
				}
			}
			if tc.check != nil {
				tc.check(t, next)
			}
		})
	}
}

// TestLoopLimitSettles: a module whose checker fails every time it runs,
// on both nodes, moves at most 2×failovers+1 times per window and then
// stops on both nodes with the reason; the VIP is never on both.
func TestLoopLimitSettles(t *testing.T) {
	for _, action := range []CheckAction{ActRestart, ActStopStart, ActWait} {
		t.Run(string(action), func(t *testing.T) {
			s := newSim(t, 1)
			s.step(0, Event{Kind: Boot})
			s.step(1, Event{Kind: Boot})
			s.step(0, Event{Kind: Start})
			s.step(1, Event{Kind: Start})
			s.refreshViews()
			s.quiesce()
			moves, restarts, holder := 0, 0, 0
			now := t0
			for range 40 {
				now = now.Add(time.Minute)
				served := false
				for i := range 2 {
					n := s.n[i]
					if !n.m.State.Serving() {
						continue
					}
					served = true
					if i != holder {
						moves++
						holder = i
					}
					ev := failed(action, now)
					if action == ActWait {
						ev = Event{Kind: CheckerWait, Reason: "checker app failed", Now: now}
					}
					if n.m.Target == "" && n.m.State == n.m.Persistent.State {
						restarts++
					}
					s.step(i, ev)
					if action == ActWait {
						// The checker recovers once the node left the service.
						s.quiesce()
						s.step(i, Event{Kind: CheckerWait, Now: now})
					}
				}
				s.refreshViews()
				s.quiesce()
				if !served {
					break
				}
			}
			a, b := s.n[0].m, s.n[1].m
			t.Logf("%s: %d moves of the service, %d checker failures; a=%s (%s) b=%s (%s)", action, moves, restarts, a.State, a.Reason, b.State, b.Reason)
			if a.State != Stop || b.State != Stop {
				t.Errorf("a failing application must end stopped on both nodes: a=%s b=%s", a.State, b.State)
			}
			for _, m := range []Machine{a, b} {
				if !strings.Contains(m.Reason, "loop limit") {
					t.Errorf("%s: reason %q does not name the loop limit", m.Node, m.Reason)
				}
			}
			if max := 2*DefaultLoop.Failovers + 1; moves > max {
				t.Errorf("%d moves of the service, want at most %d", moves, max)
			}
		})
	}
}
