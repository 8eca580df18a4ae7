// Package module is the mirror module state machine. It is a pure function of
// its inputs: Step(machine, event) returns the next machine and the actions
// the caller must carry out. No clock, socket or goroutine lives here, so
// every state x event pair is tested without a network (GUIDE §1).
package module

import (
	"fmt"
	"time"
)

// State is a module state; the names are fixed by SPEC §2.
type State string

const (
	Stop   State = "STOP"
	Wait   State = "WAIT"
	Alone  State = "ALONE"
	Prim   State = "PRIM"
	Second State = "SECOND"
)

// States lists every mirror state, for exhaustive tests and validation.
var States = []State{Stop, Wait, Alone, Prim, Second}

// Running reports whether the application side of the module is active on
// this node (scripts started).
func (s State) Running() bool { return s == Alone || s == Prim || s == Second }

// Serving reports whether the node runs the application and holds the VIPs.
func (s State) Serving() bool { return s == Alone || s == Prim }

// Peer is what this node knows of the peer's copy of the module.
type Peer struct {
	Alive bool // heartbeats arrive on at least one network
	// Incompatible is non-empty when the peer's cluster file or module
	// definition differs from ours; we then never pair with it.
	Incompatible string
	Known        bool   // the peer runs an agent that has this module
	State        State  // its state (the one it is leaving while Busy)
	Target       State  // non-empty while it is in a transition
	Epoch        uint64 // its data generation
	UpToDate     bool
	Started      bool
	// Handover is set by a primary that released the module for a swap.
	Handover bool
	// SwapRequest counts swap requests made on the peer.
	SwapRequest uint64
	// Claim: the peer wants to become primary and waits for our Ack.
	Claim bool
	// Ack: the peer yields to our claim.
	Ack bool
	// FailoverOff: the peer's failover maintenance switch is set; no
	// checker hands the module over to it.
	FailoverOff bool
}

// usable reports whether the peer can take part in decisions.
func (p Peer) usable() bool { return p.Alive && p.Known && p.Incompatible == "" }

// Persistent is the part of a machine written to disk after every step
// that changes it (see SameRecovery); it survives agent restarts.
type Persistent struct {
	State    State  `json:"state"` // last settled state, for crash recovery
	Started  bool   `json:"started"`
	UpToDate bool   `json:"uptodate"`
	Epoch    uint64 `json:"epoch"`
	// PeerOutdated: we served without the peer, so its copy is older than ours.
	PeerOutdated bool `json:"peer_outdated"`
	// SwapSeen is the last peer swap request this node acted on.
	SwapSeen uint64 `json:"swap_seen"`
	// SwapRequest counts swap requests made on this node.
	SwapRequest uint64 `json:"swap_request"`
	// Maint holds the administrator's maintenance switches.
	Maint Maintenance `json:"maintenance,omitzero"`
	// LoopRestarts and LoopFailovers count the checkers' actions in the
	// loop window that began at LoopSince (Unix milliseconds, 0: none).
	LoopRestarts  int   `json:"loop_restarts,omitempty"`
	LoopFailovers int   `json:"loop_failovers,omitempty"`
	LoopSince     int64 `json:"loop_since,omitempty"`
}

// SameRecovery reports whether a record that was p on disk need not be
// rewritten to become q: they differ at most in State, and neither state
// is running. After a crash the boot step treats every state that is not
// running alike (it starts from STOP), so rewriting the record for STOP ->
// WAIT only cost two fsyncs on a returning node's way to pairing.
func (p Persistent) SameRecovery(q Persistent) bool {
	if !p.State.Running() && !q.State.Running() {
		q.State = p.State
	}
	return p == q
}

// Maintenance is the set of maintenance switches of a module on one node;
// the zero value is normal operation.
type Maintenance struct {
	// ChecksOff: checker verdicts are ignored (the agent stops running them).
	ChecksOff bool `json:"checkers_off,omitempty"`
	// FailoverOff: this node takes the module over from its peer only when
	// handed over (swap) or told to (prim), and no checker hands the module
	// over from it.
	FailoverOff bool `json:"failover_off,omitempty"`
	// BootStartOff: the module stays stopped when the agent starts.
	BootStartOff bool `json:"boot_start_off,omitempty"`
}

// LoopPolicy bounds the checkers' actions on one node within Window: at
// most Restarts local restarts, then at most Failovers failovers, then the
// module stops on this node.
type LoopPolicy struct {
	Restarts  int
	Failovers int
	Window    time.Duration
}

// DefaultLoop is the loop policy of a machine whose Loop is zero.
var DefaultLoop = LoopPolicy{Restarts: 2, Failovers: 1, Window: time.Hour}

// CheckAction is what a failed checker asks for.
type CheckAction string

const (
	ActRestart   CheckAction = "restart"   // stop and start the role's scripts here
	ActStopStart CheckAction = "stopstart" // hand the module over to the peer
	ActWait      CheckAction = "wait"      // leave the service until the checker recovers
	ActStop      CheckAction = "stop"      // stop the module on this node
)

// Toggle changes one maintenance switch, or leaves it (Keep).
type Toggle int8

const (
	Keep Toggle = iota
	On
	Off
)

// MaintChange is the change a MaintenanceCmd makes. A switch "on" means
// the feature works (checkers run, failover happens, the module starts
// at boot); Off is the maintenance position.
type MaintChange struct {
	Checkers, Failover, BootStart Toggle
}

// Machine is the complete state of one module on one node.
type Machine struct {
	Node      string
	PeerName  string
	Preferred bool // this node wins ties (default primary, or first listed node)
	State     State
	Reason    string
	Target    State // non-empty while a transition runs
	Persistent
	// Booting: just started, the peer's view is not known yet.
	Booting bool
	// Isolated: every cluster network of this node lost its carrier.
	Isolated bool
	Want     Want
	Handover bool // we released the module to the peer (swap)
	// ReplBroken: the replication stream to the SECOND failed; we serve
	// ALONE until the peer has resynchronised.
	ReplBroken bool
	// ReplReason says why replication failed, for status.
	ReplReason string
	// ShuttingDown: the agent is exiting; nothing starts again.
	ShuttingDown bool
	// Claim and Ack make a promotion while the peer is alive a two-step
	// exchange, so two nodes deciding at once on stale views (an
	// administrator's prim racing an election) cannot both promote.
	Claim bool
	Ack   bool
	Sync  Sync
	Peer  Peer
	// Loop is the checkers' loop limit (zero: DefaultLoop).
	Loop LoopPolicy
	// CheckWait is non-empty while a checker with action "wait" fails (it
	// says which and why): the node then serves in no role.
	CheckWait string
	// failure is the reason of the last failed start, kept in STOP.
	failure string
	// now is the latest Event.Now seen: the clock of the loop window.
	now time.Time
}

// Want is an administrator's preference for the next role.
type Want string

const (
	WantNone   Want = ""
	WantPrim   Want = "prim"
	WantSecond Want = "second"
)

// Sync is the replication state of a SECOND.
type Sync string

const (
	SyncNone      Sync = "none"
	SyncResyncing Sync = "resyncing"
	SyncSynced    Sync = "synced"
)

// New returns the machine of a module as loaded at agent start from its
// persisted record (zero value for a module never run on this node).
func New(node, peer string, preferred bool, p Persistent) Machine {
	m := Machine{Node: node, PeerName: peer, Preferred: preferred, State: Stop, Persistent: p, Sync: SyncNone}
	if m.Persistent.State == "" {
		m.Persistent.State = Stop
	}
	// Until Boot runs, show what ran last on its way to where Boot takes
	// it (it cleans up after a crash): a node that served before the crash
	// must not look serving before its boot step (status, the peer's view).
	m.State = m.Persistent.State
	if m.State.Running() {
		m.Target = Stop
		if m.Started {
			m.Target = Wait
		}
		m.Reason = "recovering from an agent crash"
	}
	return m
}

// EventKind names an input of the machine.
type EventKind int

const (
	// Boot: the agent starts; carries out crash recovery and resumes the
	// administrator's intent.
	Boot EventKind = iota
	// Start, Stop, Restart, PrimCmd, SecondCmd, SwapCmd: administrator commands.
	Start
	StopCmd
	Restart
	PrimCmd
	SecondCmd
	SwapCmd
	// PeerChanged: a new peer view (Event.Peer).
	PeerChanged
	// DiscoveryDone: the start-up wait for the peer's first heartbeat ended.
	DiscoveryDone
	// TransitionDone: the caller finished the actions of a transition
	// (Event.OK, Event.Reason).
	TransitionDone
	// IsolationChanged: Event.Isolated tells whether every cluster network
	// of this node is down.
	IsolationChanged
	// SyncDone: the replication layer finished bringing this SECOND up to date.
	SyncDone
	// Shutdown: the agent is exiting: stop scripts and VIPs, keep the intent.
	Shutdown
	// ReplicationFailed: the stream to the SECOND broke (Event.Reason); the
	// primary goes on ALONE and the SECOND is no longer up to date.
	ReplicationFailed
	// CheckerFailed: checker Event.Checker failed (Event.Reason) and asks
	// for Event.Action; Event.Now dates it for the loop limit.
	CheckerFailed
	// CheckerWait: Event.Reason is non-empty while a checker with action
	// "wait" fails, empty once none does.
	CheckerWait
	// MaintenanceCmd: the administrator sets switches (Event.Maint).
	MaintenanceCmd
	// ResetLoopCmd: the administrator resets the loop counts.
	ResetLoopCmd
)

var eventNames = map[EventKind]string{
	Boot: "boot", Start: "start", StopCmd: "stop", Restart: "restart", PrimCmd: "prim",
	SecondCmd: "second", SwapCmd: "swap", PeerChanged: "peer", DiscoveryDone: "discovery-done",
	TransitionDone: "transition-done", IsolationChanged: "isolation", SyncDone: "sync-done", Shutdown: "shutdown",
	ReplicationFailed: "replication-failed", CheckerFailed: "checker-failed", CheckerWait: "checker-wait",
	MaintenanceCmd: "maintenance", ResetLoopCmd: "reset-loop",
}

func (k EventKind) String() string {
	if n, ok := eventNames[k]; ok {
		return n
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// EventKinds lists every event kind, for exhaustive tests.
var EventKinds = []EventKind{Boot, Start, StopCmd, Restart, PrimCmd, SecondCmd, SwapCmd, PeerChanged,
	DiscoveryDone, TransitionDone, IsolationChanged, SyncDone, Shutdown, ReplicationFailed,
	CheckerFailed, CheckerWait, MaintenanceCmd, ResetLoopCmd}

// Event is one input.
type Event struct {
	Kind     EventKind
	Peer     Peer   // PeerChanged
	Force    bool   // PrimCmd
	OK       bool   // TransitionDone
	Reason   string // TransitionDone failure reason; CheckerFailed, CheckerWait
	Isolated bool   // IsolationChanged
	Checker  string // CheckerFailed: the checker's name
	Action   CheckAction
	Now      time.Time   // CheckerFailed, CheckerWait: when (for the loop window)
	Maint    MaintChange // MaintenanceCmd
}

// ActionKind names a side effect for the caller.
type ActionKind int

const (
	// RunScript: run Action.Script with Args (current, next, action).
	RunScript ActionKind = iota
	// AddVIPs / RemoveVIPs: every VIP of the module.
	AddVIPs
	RemoveVIPs
	// Done: the transition's last action; the caller answers with a
	// TransitionDone event carrying the outcome of the actions before it.
	Done
	// ArmDiscovery: start the discovery timer; answer with DiscoveryDone.
	ArmDiscovery
	// Log: record a decision in the module log.
	Log
	// MountData: intercept the replicated directories (FUSE) on the node
	// about to serve; UnmountData releases them after stop_prim, once the
	// secondary has everything (a swap's final sync).
	MountData
	UnmountData
	// StartReceiver / StopReceiver: receive the replication stream as SECOND
	// (directories read-only to everything but the agent).
	StartReceiver
	StopReceiver
	// FenceData: cut the replication streams at once and fail (EIO) every
	// durable call the peer has not acknowledged, now and until
	// UnmountData. An isolated node cannot reach its peer, which takes
	// over after its heartbeat timeout: waiting for acks is pointless,
	// and an application blocked in fsync would hold stop_prim up.
	FenceData
)

// Action is one side effect. The actions of a transition are carried out in
// order; a failed start script aborts the rest (the caller then reports
// TransitionDone with OK false); stop scripts and VIP removal never abort.
type Action struct {
	Kind   ActionKind
	Script string
	Args   []string // current state, next state, action ("start", "stop")
	Stop   bool     // a stop-type script: retried with "force" after its timeout
	Level  string   // Log: "info", "warn", "error"
	Msg    string   // Log
}

func (k ActionKind) String() string { return Action{Kind: k}.String() }

func (a Action) String() string {
	switch a.Kind {
	case RunScript:
		return fmt.Sprintf("script %s %v", a.Script, a.Args)
	case AddVIPs:
		return "add-vips"
	case RemoveVIPs:
		return "remove-vips"
	case Done:
		return "done"
	case ArmDiscovery:
		return "arm-discovery"
	case Log:
		return "log " + a.Level + ": " + a.Msg
	case MountData:
		return "mount-data"
	case UnmountData:
		return "unmount-data"
	case StartReceiver:
		return "start-receiver"
	case StopReceiver:
		return "stop-receiver"
	case FenceData:
		return "fence-data"
	}
	return fmt.Sprintf("action(%d)", int(a.Kind))
}
