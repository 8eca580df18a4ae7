package farm

import "fmt"

// State is a farm module's state on one node (SPEC §2).
type State string

const (
	Stop State = "STOP" // not started (administrator, or a start that failed)
	Wait State = "WAIT" // started but takes no bucket; Reason says why
	Up   State = "UP"   // runs the application and takes its share of the buckets
)

// Persistent is the part of a Machine that survives agent restarts.
type Persistent struct {
	Started bool `json:"started"` // the administrator's intent
	// Running: the application was started and the filter installed; true
	// at boot means the agent died without stopping them.
	Running bool `json:"running"`
}

// Machine is the complete state of a farm module on one node. Step is a
// pure function of it: no clock, socket or goroutine, so every state x
// event pair is tested without a network.
type Machine struct {
	Persistent
	State  State
	Target State // non-empty while scripts run
	Reason string
	// Healthy is the application checkers' verdict (true until told).
	Healthy      bool
	HealthReason string
	Isolated     bool // every cluster network interface lost its carrier
	// Discovered: the other nodes had time to be heard since the agent
	// started; until then this node takes no bucket (it could not know
	// which ones a live peer holds).
	Discovered bool
	op         string // current transition: start, stop, restart, cleanup, fail
	restart    bool   // a restart was asked
	shutdown   bool   // the agent is stopping: stop without changing Started
	failed     string // why the last start failed
	stopped    string // why a checker stopped the module (Event.Reason of StopCmd)
}

// EventKind says what happened.
type EventKind int

const (
	Booted           EventKind = iota // agent started; Event.Persisted holds the saved part
	StartCmd                          // administrator: start
	StopCmd                           // administrator (or a checker, Event.Reason says why): stop
	RestartCmd                        // administrator: restart (stop and start scripts)
	HealthChanged                     // application checker verdict: Event.OK, Event.Reason
	IsolationChanged                  // Event.Isolated
	DiscoveryDone                     // the heartbeat timeout passed since boot
	TransitionDone                    // the actions of a transition ran: Event.OK, Event.Reason
	Shutdown                          // the agent stops
)

var eventNames = [...]string{"boot", "start", "stop", "restart", "health", "isolation", "discovery-done", "transition-done", "shutdown"}

func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one input of Step.
type Event struct {
	Kind      EventKind
	OK        bool
	Reason    string
	Isolated  bool
	Persisted Persistent
}

// ActionKind is something the caller must do.
type ActionKind int

const (
	RunScript      ActionKind = iota // Script with Args; Stop: a stop script (never fails the transition)
	SetupFilter                      // VIP on lo, shared MAC, ARP responder, nftables tables (no bucket yet)
	TeardownFilter                   // remove all of it (idempotent)
	Done                             // report TransitionDone{OK: true}
)

// Action is one side effect, carried out in order. A failed start script
// or SetupFilter ends the transition with TransitionDone{OK: false}.
type Action struct {
	Kind   ActionKind
	Script string
	Args   []string
	Stop   bool
}

// New returns the machine of a module before Boot.
func New() Machine { return Machine{State: Stop, Healthy: true} }

// Eligible reports whether this node takes buckets now.
func (m Machine) Eligible() bool {
	return m.State == Up && m.Target == ""
}

// Step applies one event. An error refuses an administrator command and
// leaves the machine unchanged.
func Step(m Machine, ev Event) (Machine, []Action, error) {
	switch ev.Kind {
	case Booted:
		m.Persistent = ev.Persisted
		if m.Running {
			// The agent died with the application running: stop it and
			// clean the filter before anything else.
			m.op, m.Target = "cleanup", Stop
			m.Reason = "cleaning up after an agent crash"
			return m, []Action{
				{Kind: TeardownFilter},
				script("stop_both", m.State, Stop, "stop", true),
				{Kind: Done},
			}, nil
		}
	case StartCmd:
		if m.shutdown {
			return m, nil, fmt.Errorf("the agent is shutting down")
		}
		m.Started, m.failed, m.stopped = true, "", ""
	case StopCmd:
		m.Started, m.restart, m.failed, m.stopped = false, false, "", ev.Reason
	case RestartCmd:
		if !m.Started {
			return m, nil, fmt.Errorf("the module is not started here (use start)")
		}
		m.restart = true
	case HealthChanged:
		m.Healthy, m.HealthReason = ev.OK, ev.Reason
	case IsolationChanged:
		m.Isolated = ev.Isolated
	case DiscoveryDone:
		m.Discovered = true
	case Shutdown:
		m.shutdown, m.restart = true, false
	case TransitionDone:
		if m.Target == "" {
			return m, nil, nil // stale
		}
		acts := m.finish(ev)
		if len(acts) > 0 {
			return m.settle(), acts, nil
		}
	default:
		return m, nil, fmt.Errorf("unknown event %v", ev.Kind)
	}
	m2, acts := m.decide()
	return m2, acts, nil
}

// finish ends the running transition; it may start the cleanup of a failed
// start (returned actions).
func (m *Machine) finish(ev Event) []Action {
	op := m.op
	m.op, m.Target = "", ""
	switch op {
	case "start", "restart":
		if ev.OK {
			m.Running = true
			return nil
		}
		// Undo what ran: filter, application.
		m.failed = ev.Reason
		m.Started, m.restart = false, false
		m.op, m.Target = "fail", Stop
		m.Running = true // until the cleanup ran
		return []Action{
			{Kind: TeardownFilter},
			script("stop_both", m.State, Stop, "stop", true),
			script("poststop", m.State, Stop, "stop", true),
			{Kind: Done},
		}
	case "stop", "fail", "cleanup":
		m.Running = false
	}
	return nil
}

// decide starts the transition the intent asks for, or settles the state.
func (m Machine) decide() (Machine, []Action) {
	if m.Target != "" {
		return m.settle(), nil
	}
	want := m.Started && !m.shutdown
	switch {
	case want && !m.Running:
		m.op, m.Target = "start", Up
		return m.settle(), []Action{
			script("prestart", m.State, Up, "start", false),
			script("start_both", m.State, Up, "start", false),
			{Kind: SetupFilter},
			{Kind: Done},
		}
	case !want && m.Running:
		m.op, m.Target = "stop", Stop
		m.restart = false
		return m.settle(), []Action{
			{Kind: TeardownFilter},
			script("stop_both", m.State, Stop, "stop", true),
			script("poststop", m.State, Stop, "stop", true),
			{Kind: Done},
		}
	case want && m.restart:
		m.restart = false
		m.op, m.Target = "restart", Up
		m = m.settle() // WAIT while the application restarts: no bucket
		return m, []Action{
			script("stop_both", m.State, Up, "stop", true),
			script("start_both", m.State, Up, "start", false),
			{Kind: Done},
		}
	}
	return m.settle(), nil
}

// settle computes State and Reason from the rest. While a transition
// runs, State is the state being left (Target the one being entered), as
// for mirror modules; a node in a transition takes no bucket.
func (m Machine) settle() Machine {
	switch m.op {
	case "start":
		m.State, m.Reason = Stop, ""
		return m
	case "stop":
		m.Reason = "stopping"
		return m
	case "fail":
		m.Reason = "start failed, stopping: " + m.failed
		return m
	case "cleanup":
		m.Reason = "cleaning up after an agent crash"
		return m
	case "restart":
		m.State, m.Reason = Wait, "restarting the application"
		return m
	}
	switch {
	case !m.Running:
		m.State, m.Reason = Stop, ""
		if m.failed != "" {
			m.Reason = "start failed: " + m.failed
		}
		if m.stopped != "" {
			m.Reason = m.stopped
		}
	case !m.Discovered:
		m.State, m.Reason = Wait, "waiting to hear the other nodes (one heartbeat timeout after the agent started)"
	case m.Isolated:
		m.State, m.Reason = Wait, "isolated: every cluster network interface lost its carrier"
	case !m.Healthy:
		m.State, m.Reason = Wait, "application checker failed"
		if m.HealthReason != "" {
			m.Reason += ": " + m.HealthReason
		}
	default:
		m.State, m.Reason = Up, ""
	}
	return m
}

func script(name string, from, to State, action string, stop bool) Action {
	return Action{Kind: RunScript, Script: name, Args: []string{string(from), string(to), action}, Stop: stop}
}
