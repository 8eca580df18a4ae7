// Package checker runs a module's application checkers: process (pid file,
// systemd unit, command line pattern with an "at least" count), TCP connect,
// HTTP status and body, a custom executable, a network interface's link, and
// ping. A Checker performs one check; a Monitor runs it every interval while
// the module is in a state where it applies, counts consecutive failures and
// reports verdict changes and the moments an action is due. Deciding what the
// action does is the state machine's job (internal/module), not this one's.
package checker

import (
	"context"
	"fmt"
	"time"
)

// Type is a checker kind.
type Type string

const (
	Process   Type = "process"
	TCP       Type = "tcp"
	HTTP      Type = "http"
	Custom    Type = "custom"
	Interface Type = "interface"
	Ping      Type = "ping"
)

// Types lists every checker kind.
var Types = []Type{Process, TCP, HTTP, Custom, Interface, Ping}

// When says in which module states a checker runs.
type When string

const (
	// Pre runs whenever the module is started on this node (WAIT included):
	// a prerequisite of any role, such as a network interface.
	Pre When = "pre"
	// Prim runs on the node that serves (PRIM, ALONE).
	Prim When = "prim"
	// Second runs on the SECOND.
	Second When = "second"
	// Both runs on PRIM, ALONE and SECOND.
	Both When = "both"
)

// Whens lists every value of When.
var Whens = []When{Pre, Prim, Second, Both}

// Action is what a failed checker asks for.
type Action string

const (
	// Restart re-runs the role's stop and start scripts on this node.
	Restart Action = "restart"
	// StopStart hands the module over to the peer (failover).
	StopStart Action = "stopstart"
	// Wait leaves the service and waits in WAIT until the checker recovers.
	Wait Action = "wait"
	// Stop stops the module on this node.
	Stop Action = "stop"
)

// Actions lists every action.
var Actions = []Action{Restart, StopStart, Wait, Stop}

// Spec is one configured checker.
type Spec struct {
	Name     string
	Type     Type
	When     When
	Action   Action
	Interval time.Duration // between the end of a check and the next
	Timeout  time.Duration // of one check
	// Failures is how many consecutive failed checks make the verdict
	// "failed" (1: the first one).
	Failures int

	// process: exactly one of PIDFile, Unit, Pattern.
	PIDFile string // relative: to Env.Dir
	Unit    string // systemd unit
	Pattern string // regular expression on the command line
	AtLeast int    // Pattern: processes needed (default 1)

	Address string // tcp: host:port; ping: an IP address

	URL    string // http
	Status int    // http: expected status (default 200)
	Body   string // http: regular expression the body must match ("" any)

	Command string   // custom: executable, relative to Env.BinDir
	Args    []string // custom

	Interface string // interface
}

// Env is what the checkers of one module need from their surroundings.
type Env struct {
	// Dir resolves relative pid files: the module's state directory.
	Dir string
	// BinDir resolves a custom checker's relative command: the module's bin/.
	BinDir string
	// Environ is a custom checker's environment (the agent's when nil).
	Environ []string
	// Systemctl is the systemctl program ("systemctl" from PATH if empty).
	Systemctl string
}

// Result is the outcome of one check.
type Result struct {
	OK     bool
	Detail string // what was seen, for the log and status
	Took   time.Duration
}

// Checker performs one check; it must return by ctx's deadline.
type Checker interface {
	Check(ctx context.Context) Result
}

// New builds the checker of s. Specs come validated from the configuration;
// an error here names the checker and what is wrong.
func New(s Spec, env Env) (Checker, error) {
	var c Checker
	var err error
	switch s.Type {
	case Process:
		c, err = newProcess(s, env)
	case TCP:
		c, err = newTCP(s)
	case HTTP:
		c, err = newHTTP(s)
	case Custom:
		c, err = newCustom(s, env)
	case Interface:
		c, err = newInterface(s)
	case Ping:
		c, err = newPing(s)
	default:
		err = fmt.Errorf("unknown type %q (known: process, tcp, http, custom, interface, ping)", s.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("checker %s: %w", s.Name, err)
	}
	return c, nil
}

// Run performs one check of c bounded by timeout and times it.
func Run(ctx context.Context, c Checker, timeout time.Duration) Result {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	start := time.Now()
	r := c.Check(ctx)
	r.Took = time.Since(start)
	if !r.OK && ctx.Err() == context.DeadlineExceeded && timeout > 0 {
		r.Detail = fmt.Sprintf("no answer within %s: %s", timeout, r.Detail)
	}
	return r
}

func fail(format string, a ...any) Result { return Result{Detail: fmt.Sprintf(format, a...)} }

func ok(format string, a ...any) Result { return Result{OK: true, Detail: fmt.Sprintf(format, a...)} }
