package farm

import (
	"strings"
	"testing"
)

// run applies events, and reports each transition's actions; every
// transition is completed with TransitionDone{OK: ok(script)}.
type sim struct {
	t    *testing.T
	m    Machine
	log  []string
	fail map[string]bool // scripts (or "filter") that fail
}

func (s *sim) step(ev Event) error {
	s.t.Helper()
	m, acts, err := Step(s.m, ev)
	if err != nil {
		return err
	}
	s.m = m
	for len(acts) > 0 {
		ok, reason := true, ""
		for _, a := range acts {
			switch a.Kind {
			case RunScript:
				s.log = append(s.log, a.Script+" "+strings.Join(a.Args, " "))
				if s.fail[a.Script] && !a.Stop {
					ok, reason = false, a.Script+" failed"
				}
			case SetupFilter:
				s.log = append(s.log, "setup")
				if s.fail["filter"] {
					ok, reason = false, "filter failed"
				}
			case TeardownFilter:
				s.log = append(s.log, "teardown")
			case Done:
			}
			if !ok {
				break
			}
		}
		m, acts, err = Step(s.m, Event{Kind: TransitionDone, OK: ok, Reason: reason})
		if err != nil {
			s.t.Fatal(err)
		}
		s.m = m
	}
	return nil
}

func (s *sim) want(state State, reasonPart string) {
	s.t.Helper()
	if s.m.State != state || s.m.Target != "" || !strings.Contains(s.m.Reason, reasonPart) {
		s.t.Fatalf("state %s target %q reason %q; want %s with %q (log %v)", s.m.State, s.m.Target, s.m.Reason, state, reasonPart, s.log)
	}
}

func newSim(t *testing.T) *sim { return &sim{t: t, m: New(), fail: map[string]bool{}} }

func TestStateStartStop(t *testing.T) {
	s := newSim(t)
	s.step(Event{Kind: Booted})
	s.want(Stop, "")
	s.step(Event{Kind: StartCmd})
	s.want(Wait, "waiting to hear")
	if s.m.Eligible() {
		t.Fatal("eligible before discovery")
	}
	s.step(Event{Kind: DiscoveryDone})
	s.want(Up, "")
	if !s.m.Eligible() || !s.m.Started || !s.m.Running {
		t.Fatalf("UP but eligible=%v started=%v running=%v", s.m.Eligible(), s.m.Started, s.m.Running)
	}
	want := []string{"prestart STOP UP start", "start_both STOP UP start", "setup"}
	if strings.Join(s.log, ";") != strings.Join(want, ";") {
		t.Fatalf("start ran %v, want %v", s.log, want)
	}
	s.log = nil
	s.step(Event{Kind: StopCmd})
	s.want(Stop, "")
	want = []string{"teardown", "stop_both UP STOP stop", "poststop UP STOP stop"}
	if strings.Join(s.log, ";") != strings.Join(want, ";") {
		t.Fatalf("stop ran %v, want %v", s.log, want)
	}
	if s.m.Started || s.m.Running {
		t.Fatal("stopped but still started/running")
	}
}

func TestStateHealthIsolationRestart(t *testing.T) {
	s := newSim(t)
	s.step(Event{Kind: Booted, Persisted: Persistent{Started: true}})
	s.step(Event{Kind: DiscoveryDone})
	s.want(Up, "")
	s.step(Event{Kind: HealthChanged, OK: false, Reason: "http 500"})
	s.want(Wait, "application checker failed: http 500")
	s.step(Event{Kind: HealthChanged, OK: true})
	s.want(Up, "")
	s.step(Event{Kind: IsolationChanged, Isolated: true})
	s.want(Wait, "isolated")
	s.step(Event{Kind: IsolationChanged, Isolated: false})
	s.want(Up, "")
	s.log = nil
	// Restart: the machine is WAIT (no bucket) while the scripts run.
	m, acts, err := Step(s.m, Event{Kind: RestartCmd})
	if err != nil || m.State != Wait || m.Target != Up || m.Eligible() || len(acts) != 3 {
		t.Fatalf("restart: %v %s->%s eligible=%v %v", err, m.State, m.Target, m.Eligible(), acts)
	}
	s.m = m
	s.step(Event{Kind: TransitionDone, OK: true})
	s.want(Up, "")
	s.step(Event{Kind: StopCmd, Reason: "checker web failed 3 times"})
	s.want(Stop, "checker web failed 3 times")
	if _, _, err := Step(s.m, Event{Kind: RestartCmd}); err == nil {
		t.Error("restart of a stopped module accepted")
	}
}

func TestStateStartFailure(t *testing.T) {
	s := newSim(t)
	s.fail["start_both"] = true
	s.step(Event{Kind: Booted})
	s.step(Event{Kind: DiscoveryDone})
	s.step(Event{Kind: StartCmd})
	s.want(Stop, "start failed: start_both failed")
	if s.m.Started || s.m.Running {
		t.Fatal("failed start left the module started")
	}
	if !strings.Contains(strings.Join(s.log, ";"), "teardown;stop_both") {
		t.Errorf("no cleanup after the failure: %v", s.log)
	}
	s.fail = map[string]bool{"filter": true}
	s.step(Event{Kind: StartCmd})
	s.want(Stop, "filter failed")
	s.fail = map[string]bool{}
	s.step(Event{Kind: StartCmd})
	s.want(Up, "")
}

// A crash (Running persisted) is cleaned up before the module starts again.
func TestStateCrashRecovery(t *testing.T) {
	s := newSim(t)
	s.step(Event{Kind: Booted, Persisted: Persistent{Started: true, Running: true}})
	want := "teardown;stop_both STOP STOP stop;prestart STOP UP start;start_both STOP UP start;setup"
	if got := strings.Join(s.log, ";"); got != want {
		t.Fatalf("boot after crash ran %s, want %s", got, want)
	}
	s.step(Event{Kind: DiscoveryDone})
	s.want(Up, "")
}

// Commands during a transition are remembered; shutdown keeps the intent.
func TestStateCommandsDuringTransition(t *testing.T) {
	m := New()
	m, _, _ = Step(m, Event{Kind: Booted})
	m, acts, _ := Step(m, Event{Kind: StartCmd})
	if m.Target != Up || len(acts) == 0 {
		t.Fatalf("start: target %q", m.Target)
	}
	m, acts, _ = Step(m, Event{Kind: StopCmd})
	if len(acts) != 0 || m.Target != Up {
		t.Fatalf("stop during start: %v target %q", acts, m.Target)
	}
	m, acts, _ = Step(m, Event{Kind: TransitionDone, OK: true})
	if m.Target != Stop || len(acts) == 0 {
		t.Fatalf("after the start, the stop asked meanwhile should run: target %q", m.Target)
	}
	m, _, _ = Step(m, Event{Kind: TransitionDone, OK: true})
	if m.State != Stop || m.Running {
		t.Fatalf("state %s", m.State)
	}
	// Shutdown stops without forgetting the intent.
	m, _, _ = Step(m, Event{Kind: StartCmd})
	m, _, _ = Step(m, Event{Kind: TransitionDone, OK: true})
	m, acts, _ = Step(m, Event{Kind: Shutdown})
	if m.Target != Stop || len(acts) == 0 {
		t.Fatalf("shutdown: target %q", m.Target)
	}
	m, _, _ = Step(m, Event{Kind: TransitionDone, OK: true})
	if !m.Started || m.Running || m.State != Stop {
		t.Fatalf("after shutdown: started=%v running=%v %s", m.Started, m.Running, m.State)
	}
	if _, _, err := Step(m, Event{Kind: StartCmd}); err == nil {
		t.Error("start accepted during shutdown")
	}
	if m2, acts, err := Step(m, Event{Kind: TransitionDone}); err != nil || len(acts) != 0 || m2.State != m.State {
		t.Error("stale TransitionDone changed something")
	}
	if _, _, err := Step(m, Event{Kind: EventKind(99)}); err == nil {
		t.Error("unknown event accepted")
	}
	if EventKind(99).String() == "" || StartCmd.String() != "start" {
		t.Error("event names")
	}
}
