// Package api is the agent's control API: HTTP/1.1 over a root-only Unix
// socket (what every `tandem` verb but `agent` talks to), its client, and
// the health probe listener used by cloud load balancers.
//
// Routes:
//
//	GET  /v1/status                       Status of every module
//	GET  /v1/status/{module}              Status of one module
//	POST /v1/modules/{module}/{verb}      verb: start|stop|restart|prim|second|swap|maintenance|reset-loop, body CommandOptions
//	GET  /v1/modules/{module}/logs        ?last=N&follow=1: the event log as JSON lines
//
// Errors are JSON {"error": "..."}: 400 bad request or verb, 404 unknown
// module, 409 refused command, 503 agent shutting down.
package api

import (
	"errors"
	"time"
)

// ModuleStatus is one module as seen by this node. The JSON names are part
// of the product contract (SPEC §3): never rename them.
type ModuleStatus struct {
	Module string `json:"module"`
	Mode   string `json:"mode"` // "mirror"
	Node   string `json:"node"`
	State  string `json:"state"`
	Reason string `json:"reason"`
	// Target is the state being entered while a transition runs.
	Target string `json:"target,omitempty"`
	Peer   string `json:"peer"`
	// PeerState is the peer's state, or "DOWN"/"UNKNOWN" when unreachable.
	PeerState string `json:"peer_state"`
	PeerAlive bool   `json:"peer_alive"`
	// Sync is synced, resyncing or none.
	Sync           string   `json:"sync"`
	ResyncPercent  float64  `json:"resync_percent"`
	UpToDate       bool     `json:"uptodate"`
	DefaultPrimary string   `json:"default_primary"`
	VIPs           []string `json:"vips"`
	VIPHolder      string   `json:"vip_holder"`
	Epoch          uint64   `json:"epoch"`
	Started        bool     `json:"started"`
	// Networks maps each heartbeat network to whether the peer is heard on it.
	Networks map[string]bool `json:"networks"`
	// Since is when State was entered.
	Since time.Time `json:"since"`
	// Directories are the replicated directories; LagBytes/LagOps what the
	// primary has sent and the secondary not yet acknowledged (bounded by
	// replication.max_lag), MaxLagBytes that bound.
	Directories []string `json:"directories,omitempty"`
	SyncMode    string   `json:"sync_mode,omitempty"`
	LagBytes    int64    `json:"lag_bytes"`
	LagOps      int64    `json:"lag_ops"`
	MaxLagBytes int64    `json:"max_lag_bytes,omitempty"`
	// Resync is the running resynchronisation of the SECOND (on both
	// nodes), nil when none runs.
	Resync *ResyncStatus `json:"resync,omitempty"`
	// Checkers are the module's checkers on this node; Loop counts their
	// actions against loop_limit; Maintenance shows the switches.
	Checkers    []CheckerStatus `json:"checkers,omitempty"`
	Loop        LoopStatus      `json:"loop"`
	Maintenance Maintenance     `json:"maintenance"`
	// Farm is set for a farm module (mode "farm"): the VIP's buckets and
	// every node's share, see FarmStatus.
	Farm *FarmStatus `json:"farm,omitempty"`
}

// ResyncStatus is the progress of a resynchronisation: the primary
// compares what its records (incremental) or everything (full) name with
// the secondary's copy and sends what differs.
type ResyncStatus struct {
	Kind string `json:"kind"` // "incremental" or "full"
	// Why a full compare was needed, for the administrator.
	Reason string `json:"reason,omitempty"`
	// BytesTotal is what the compare examines; BytesDone of it so far;
	// BytesLeft the rest; BytesSent the data sent so far.
	BytesTotal int64     `json:"bytes_total"`
	BytesDone  int64     `json:"bytes_done"`
	BytesLeft  int64     `json:"bytes_left"`
	BytesSent  int64     `json:"bytes_sent"`
	Files      int64     `json:"files"`
	RateBps    float64   `json:"rate_bytes_per_second"`
	ETASeconds float64   `json:"eta_seconds"`
	Started    time.Time `json:"started"`
}

// CheckerStatus is one checker of a module on this node.
type CheckerStatus struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	When   string `json:"when"`
	Action string `json:"action"`
	// Active: it runs in the module's current state.
	Active bool `json:"active"`
	// Verdict: ok, failed, or unknown (not checked yet).
	Verdict   string    `json:"verdict"`
	Detail    string    `json:"detail,omitempty"` // the last check's result
	LastCheck time.Time `json:"last_check,omitzero"`
	Since     time.Time `json:"since,omitzero"` // when the verdict was reached
	Checks    uint64    `json:"checks"`
	Failures  uint64    `json:"failures"` // failed checks
	Actions   uint64    `json:"actions"`  // actions it asked for
}

// LoopStatus counts the checkers' actions in the current loop window.
type LoopStatus struct {
	Restarts     int       `json:"restarts"`
	Failovers    int       `json:"failovers"`
	MaxRestarts  int       `json:"max_restarts"`
	MaxFailovers int       `json:"max_failovers"`
	Window       string    `json:"window"`
	Since        time.Time `json:"since,omitzero"` // start of the window
}

// Maintenance shows a module's maintenance switches on this node, each
// "on" (normal) or "off".
type Maintenance struct {
	Checkers  string `json:"checkers"`
	Failover  string `json:"failover"`
	BootStart string `json:"boot_start"`
}

// Status is what `tandem status` shows.
type Status struct {
	Cluster string         `json:"cluster"`
	Node    string         `json:"node"`
	Modules []ModuleStatus `json:"modules"`
}

// CommandOptions are the flags of the module commands.
type CommandOptions struct {
	Force bool `json:"force,omitempty"` // prim --force
	Full  bool `json:"full,omitempty"`  // second --full
	// Maintenance switches (verb maintenance): "on", "off", "" unchanged.
	Checkers  string `json:"checkers,omitempty"`
	Failover  string `json:"failover,omitempty"`
	BootStart string `json:"boot_start,omitempty"`
}

// Verbs are the module commands the API accepts. maintenance sets the
// switches of CommandOptions; reset-loop resets the loop counts.
var Verbs = []string{"start", "stop", "restart", "prim", "second", "swap", "maintenance", "reset-loop"}

// Backend is what the agent provides to the API server.
type Backend interface {
	// Status returns every module ("") or one; an unknown module gives an
	// error wrapping ErrUnknownModule.
	Status(module string) (Status, error)
	// Command runs verb (one of Verbs) on module and returns a message for
	// the administrator. An error means refused: its text is shown as is.
	Command(module, verb string, opts CommandOptions) (string, error)
	// LogPath returns the module's event log file (JSON lines).
	LogPath(module string) (string, error)
}

var (
	// ErrUnknownModule: no such module on this node.
	ErrUnknownModule = errors.New("unknown module")
	// ErrAgentDown: the agent cannot be reached (or is shutting down).
	ErrAgentDown = errors.New("tandem agent not reachable")
	// ErrRefused: the agent refused a command (HTTP 409).
	ErrRefused = errors.New("command refused")
)
