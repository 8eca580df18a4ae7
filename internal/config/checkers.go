package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Checker types, when values and actions of a module's checkers.
var (
	CheckerTypes   = []string{"process", "tcp", "http", "custom", "interface", "ping"}
	CheckerWhens   = []string{"pre", "prim", "second", "both"}
	CheckerActions = []string{"restart", "stopstart", "wait", "stop"}
)

// Loop limit defaults: two local restarts and one failover by checkers per
// hour, then the module stops on this node.
const (
	DefaultLoopRestarts  = 2
	DefaultLoopFailovers = 1
	DefaultLoopWindow    = time.Hour
	maxCheckers          = 32
)

// Checker is one entry of a module's checkers list, defaults applied.
type Checker struct {
	Name     string
	Type     string // one of CheckerTypes
	When     string // one of CheckerWhens
	Action   string // one of CheckerActions
	Interval time.Duration
	Timeout  time.Duration
	Failures int // consecutive failed checks before the verdict is "failed"

	PIDFile string // process: relative to the module's state directory
	Unit    string // process: a systemd unit
	Pattern string // process: regular expression on the command line
	AtLeast int    // process with pattern: processes needed

	Address string // tcp host:port; ping IP address

	URL    string // http
	Status int    // http: expected status
	Body   string // http: regular expression the body must match

	Command string   // custom: relative to the module's bin/ directory
	Args    []string // custom

	Interface string // interface

	Line int // of the entry in the module file
}

// LoopLimit bounds what checkers may do on one node within Window: at most
// Restarts local restarts, then at most Failovers failovers; past that the
// module stops on this node. The zero value (no loop_limit block) means
// the defaults: use Module.Loop.
type LoopLimit struct {
	Restarts  int
	Failovers int
	Window    time.Duration
}

// Loop returns the module's loop limit, defaults applied.
func (m *Module) Loop() LoopLimit {
	if m.LoopLimit.Window == 0 {
		return LoopLimit{Restarts: DefaultLoopRestarts, Failovers: DefaultLoopFailovers, Window: DefaultLoopWindow}
	}
	return m.LoopLimit
}

type rawChecker struct {
	Name      string        `yaml:"name"`
	Type      string        `yaml:"type"`
	When      string        `yaml:"when"`
	Action    string        `yaml:"action"`
	Interval  time.Duration `yaml:"interval"`
	Timeout   time.Duration `yaml:"timeout"`
	Failures  int           `yaml:"failures"`
	PIDFile   string        `yaml:"pidfile"`
	Unit      string        `yaml:"unit"`
	Pattern   string        `yaml:"pattern"`
	AtLeast   int           `yaml:"atleast"`
	Address   string        `yaml:"address"`
	URL       string        `yaml:"url"`
	Status    int           `yaml:"status"`
	Body      string        `yaml:"body"`
	Command   string        `yaml:"command"`
	Args      []string      `yaml:"args"`
	Interface string        `yaml:"interface"`
}

type rawLoopLimit struct {
	Restarts  int           `yaml:"restarts"`
	Failovers int           `yaml:"failovers"`
	Window    time.Duration `yaml:"window"`
}

// checkerFieldsOf lists the type-specific fields each checker type accepts.
var checkerFieldsOf = map[string][]string{
	"process":   {"pidfile", "unit", "pattern", "atleast"},
	"tcp":       {"address"},
	"http":      {"url", "status", "body"},
	"custom":    {"command", "args"},
	"interface": {"interface"},
	"ping":      {"address"},
}

var checkerNameRe = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)

// checkerDefaults are per type: interval, timeout, failures, when.
func checkerDefaults(typ string) (interval, timeout time.Duration, failures int, when string) {
	switch typ {
	case "process", "interface":
		return time.Second, 5 * time.Second, 1, map[string]string{"process": "prim", "interface": "pre"}[typ]
	case "ping":
		return 2 * time.Second, time.Second, 2, "pre"
	case "custom":
		return 5 * time.Second, 5 * time.Second, 1, "prim"
	}
	return 5 * time.Second, 5 * time.Second, 2, "prim" // tcp, http
}

// validateCheckers checks the checkers list and loop_limit.
func (d *decoder) validateCheckers(raw *rawModule, m *Module) {
	if len(raw.Checkers) > maxCheckers {
		d.add(d.line("checkers"), "checkers", "%d checkers: at most %d per module", len(raw.Checkers), maxCheckers)
	}
	names := map[string]int{}
	for i, rc := range raw.Checkers {
		p := fmt.Sprintf("checkers[%d]", i)
		if !d.isMapping(p) {
			continue // reported by the decoder
		}
		if c, ok := d.checker(p, rc, names); ok {
			m.Checkers = append(m.Checkers, c)
		}
	}

	if !d.set("loop_limit") {
		return // Module.Loop gives the defaults
	}
	m.LoopLimit = LoopLimit{Restarts: DefaultLoopRestarts, Failovers: DefaultLoopFailovers, Window: DefaultLoopWindow}
	l := raw.LoopLimit
	if d.ok("loop_limit.restarts") {
		if l.Restarts < 0 || l.Restarts > 1000 {
			d.add(d.line("loop_limit.restarts"), "loop_limit.restarts", "%d is out of range: 0 (fail over at once) to 1000", l.Restarts)
		} else {
			m.LoopLimit.Restarts = l.Restarts
		}
	}
	if d.ok("loop_limit.failovers") {
		if l.Failovers < 0 || l.Failovers > 1000 {
			d.add(d.line("loop_limit.failovers"), "loop_limit.failovers", "%d is out of range: 0 (never fail over, stop instead) to 1000", l.Failovers)
		} else {
			m.LoopLimit.Failovers = l.Failovers
		}
	}
	if l.Window > 0 {
		m.LoopLimit.Window = l.Window
	}
}

// checker validates one entry; ok is false when it cannot be used.
func (d *decoder) checker(p string, rc rawChecker, names map[string]int) (Checker, bool) {
	c := Checker{Name: rc.Name, Type: rc.Type, Line: d.line(p)}
	okAll := true
	bad := func(field, format string, a ...any) {
		d.add(d.line(p+"."+field), p+"."+field, format, a...)
		okAll = false
	}
	switch {
	case d.bad[p+".name"]:
		okAll = false
	case rc.Name == "":
		bad("name", "required: a name for the log and status (a-z, 0-9, '_', '-'), e.g. name: app")
	case !checkerNameRe.MatchString(rc.Name):
		bad("name", "invalid name %q: use 1 to 32 of a-z, 0-9, '_' and '-'", rc.Name)
	default:
		if l, dup := names[rc.Name]; dup {
			bad("name", "checker %q is already defined at line %d", rc.Name, l)
		} else {
			names[rc.Name] = d.line(p + ".name")
		}
	}
	switch {
	case d.bad[p+".type"]:
		return c, false
	case rc.Type == "":
		bad("type", "required: one of %s", strings.Join(CheckerTypes, ", "))
		return c, false
	case !slices.Contains(CheckerTypes, rc.Type):
		bad("type", "unknown type %q%s (known: %s)", rc.Type, suggest(rc.Type, CheckerTypes), strings.Join(CheckerTypes, ", "))
		return c, false
	}
	// Fields of other types are mistakes, not silently ignored.
	own := checkerFieldsOf[rc.Type]
	for typ, fields := range checkerFieldsOf {
		for _, f := range fields {
			if typ == rc.Type || slices.Contains(own, f) || !d.set(p+"."+f) {
				continue
			}
			var users []string
			for _, t := range CheckerTypes {
				if slices.Contains(checkerFieldsOf[t], f) {
					users = append(users, t)
				}
			}
			bad(f, "does not apply to a %s checker (only to %s)", rc.Type, strings.Join(users, ", "))
		}
	}

	interval, timeout, failures, when := checkerDefaults(rc.Type)
	c.Interval, c.Timeout, c.Failures, c.When = interval, timeout, failures, when
	if rc.Interval > 0 {
		c.Interval = rc.Interval
		if c.Interval < 10*time.Millisecond {
			bad("interval", "%s is too short: at least 10ms", rc.Interval)
		}
	}
	if rc.Timeout > 0 {
		c.Timeout = rc.Timeout
	}
	if d.ok(p + ".failures") {
		if rc.Failures < 1 || rc.Failures > 100 {
			bad("failures", "%d is out of range: 1 (the first failed check counts) to 100", rc.Failures)
		} else {
			c.Failures = rc.Failures
		}
	}
	if rc.When != "" {
		if !slices.Contains(CheckerWhens, rc.When) {
			bad("when", "unknown value %q: pre (every started state, WAIT included), prim (PRIM, ALONE), second (SECOND) or both (PRIM, ALONE, SECOND)", rc.When)
		}
		c.When = rc.When
	}
	c.Action = "restart"
	if c.When == "pre" {
		c.Action = "wait"
	}
	if rc.Action != "" {
		switch {
		case !slices.Contains(CheckerActions, rc.Action):
			bad("action", "unknown action %q: restart (stop and start scripts here), stopstart (fail over to the peer), wait (leave the service until the checker recovers) or stop", rc.Action)
		case c.When == "pre" && (rc.Action == "restart" || rc.Action == "stopstart"):
			bad("action", "a pre checker also runs in WAIT, where there is nothing to %s: use wait or stop (or when: prim)", rc.Action)
		case c.When == "second" && rc.Action == "stopstart":
			bad("action", "a SECOND has nothing to hand over: use restart, wait or stop (or when: prim/both)")
		}
		c.Action = rc.Action
	}

	switch rc.Type {
	case "process":
		d.processChecker(p, rc, &c, bad)
	case "tcp":
		c.Address = rc.Address
		host, port, err := net.SplitHostPort(rc.Address)
		switch {
		case rc.Address == "":
			bad("address", "required: host:port to connect to, e.g. 127.0.0.1:5432")
		case err != nil || host == "":
			bad("address", "invalid address %q: want host:port, e.g. 127.0.0.1:5432 or [2001:db8::1]:80", rc.Address)
		default:
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				bad("address", "invalid port %q in %q: 1 to 65535", port, rc.Address)
			}
		}
	case "http":
		c.URL, c.Body, c.Status = rc.URL, rc.Body, 200
		u, err := url.Parse(rc.URL)
		switch {
		case rc.URL == "":
			bad("url", "required: the URL to GET, e.g. http://127.0.0.1:8080/health")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			bad("url", "invalid URL %q: want http:// or https:// with a host", rc.URL)
		}
		if d.ok(p + ".status") {
			if rc.Status < 100 || rc.Status > 599 {
				bad("status", "%d is not an HTTP status (100 to 599)", rc.Status)
			}
			c.Status = rc.Status
		}
		if rc.Body != "" {
			if _, err := regexp.Compile(rc.Body); err != nil {
				bad("body", "invalid regular expression %q: %v", rc.Body, err)
			}
		}
	case "custom":
		c.Command, c.Args = rc.Command, rc.Args
		switch {
		case rc.Command == "":
			bad("command", "required: an executable, relative to the module's bin/ directory or absolute, e.g. command: check_app")
		case !filepath.IsAbs(rc.Command) && (rc.Command != filepath.Clean(rc.Command) || strings.HasPrefix(rc.Command, "..")):
			bad("command", "%q: a relative command must stay inside the module's bin/ directory", rc.Command)
		}
	case "interface":
		c.Interface = rc.Interface
		switch {
		case rc.Interface == "":
			bad("interface", "required: the interface whose link is watched, e.g. interface: eth0")
		case !ifaceNameRe.MatchString(rc.Interface):
			bad("interface", "invalid interface name %q", rc.Interface)
		}
	case "ping":
		c.Address = rc.Address
		a, err := netip.ParseAddr(rc.Address)
		switch {
		case rc.Address == "":
			bad("address", "required: the IP address to ping, e.g. the gateway 192.0.2.1")
		case err != nil:
			bad("address", "invalid IP address %q (a name is not resolved: write the address)", rc.Address)
		case a.IsUnspecified() || a.IsMulticast():
			bad("address", "%s cannot be pinged (unspecified or multicast)", rc.Address)
		}
	}
	return c, okAll
}

func (d *decoder) processChecker(p string, rc rawChecker, c *Checker, bad func(string, string, ...any)) {
	c.PIDFile, c.Unit, c.Pattern = rc.PIDFile, rc.Unit, rc.Pattern
	var given []string
	for _, f := range []struct{ name, v string }{{"pidfile", rc.PIDFile}, {"unit", rc.Unit}, {"pattern", rc.Pattern}} {
		if f.v != "" {
			given = append(given, f.name)
		}
	}
	switch len(given) {
	case 0:
		bad("type", "a process checker needs one of pidfile (a file holding the pid; relative to the module's state directory), unit (a systemd unit) or pattern (a regular expression on the command line)")
	case 1:
	default:
		bad(given[1], "give only one of pidfile, unit and pattern (here: %s)", strings.Join(given, ", "))
	}
	if rc.Pattern != "" {
		if _, err := regexp.Compile(rc.Pattern); err != nil {
			bad("pattern", "invalid regular expression %q: %v", rc.Pattern, err)
		}
	}
	if rc.Unit != "" && strings.ContainsAny(rc.Unit, " \t/") {
		bad("unit", "invalid unit name %q", rc.Unit)
	}
	c.AtLeast = 1
	if d.ok(p + ".atleast") {
		switch {
		case rc.Pattern == "":
			bad("atleast", "only applies with pattern (how many processes must match)")
		case rc.AtLeast < 1:
			bad("atleast", "%d: at least 1", rc.AtLeast)
		default:
			c.AtLeast = rc.AtLeast
		}
	}
}

// checkerFields are the checkers and loop_limit in canonical form (both
// nodes of a module must agree on them).
func (m *Module) checkerFields() []Field {
	var f []Field
	for _, c := range m.Checkers {
		p := "checkers." + c.Name + "."
		f = append(f, Field{p + "type", c.Type}, Field{p + "when", c.When}, Field{p + "action", c.Action},
			Field{p + "interval", c.Interval.String()}, Field{p + "timeout", c.Timeout.String()},
			Field{p + "failures", strconv.Itoa(c.Failures)})
		for _, o := range []Field{
			{p + "pidfile", c.PIDFile}, {p + "unit", c.Unit}, {p + "pattern", c.Pattern},
			{p + "address", c.Address}, {p + "url", c.URL}, {p + "body", c.Body},
			{p + "command", c.Command}, {p + "interface", c.Interface},
		} {
			if o.Value != "" {
				f = append(f, o)
			}
		}
		if c.Pattern != "" {
			f = append(f, Field{p + "atleast", strconv.Itoa(c.AtLeast)})
		}
		if c.Type == "http" {
			f = append(f, Field{p + "status", strconv.Itoa(c.Status)})
		}
		if len(c.Args) > 0 {
			f = append(f, Field{p + "args", strconv.Quote(strings.Join(c.Args, "\x00"))})
		}
	}
	l := m.Loop()
	return append(f, Field{"loop_limit.restarts", strconv.Itoa(l.Restarts)},
		Field{"loop_limit.failovers", strconv.Itoa(l.Failovers)}, Field{"loop_limit.window", l.Window.String()})
}

// checkCommands verifies that the relative commands of custom checkers
// exist in bin/ and can be run (absolute ones may live elsewhere on each
// node and are checked when they run).
func checkCommands(m *Module) []*Error {
	var errs []*Error
	for i, c := range m.Checkers {
		if c.Type != "custom" || c.Command == "" || filepath.IsAbs(c.Command) {
			continue
		}
		p := filepath.Join(m.Dir, "bin", c.Command)
		field := fmt.Sprintf("checkers[%d].command", i)
		st, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			errs = append(errs, errorf(m.File, c.Line, field, "%s does not exist (a relative command is looked up in the module's bin/ directory)", p))
		case err != nil:
			errs = append(errs, errorf(m.File, c.Line, field, "cannot check %s: %v", p, unwrapPathError(err)))
		case !st.Mode().IsRegular():
			errs = append(errs, errorf(m.File, c.Line, field, "%s is not a regular file", p))
		case st.Mode().Perm()&0o111 == 0:
			errs = append(errs, errorf(m.File, c.Line, field, "%s is not executable (chmod +x it)", p))
		}
	}
	return errs
}
