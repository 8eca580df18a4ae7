package agent

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/checker"
	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/module"
	"github.com/tandem-ha/tandem/internal/runner"
)

// modCheckers runs one module's checkers: each one's Monitor is active in
// the states its "when" names (and, for action wait, in WAIT too, to see
// it recover), never during a transition nor with the checkers switched
// off. Verdict changes go to the module log; actions go to the state
// machine as CheckerFailed, and the failing wait checkers as CheckerWait.
type modCheckers struct {
	r     *modRunner
	specs []checker.Spec
	mons  []*checker.Monitor

	// mu orders a report's "still current?" test and its event against
	// sync: an action posted under mu reaches the module before the end of
	// any transition that deactivated its checker, so it is ignored there.
	mu       sync.Mutex
	active   []bool
	waiting  map[string]string // failed wait checkers -> the failure seen
	lastWait string            // the CheckerWait reason last posted
}

func newModCheckers(r *modRunner, stateDir string) (*modCheckers, error) {
	c := &modCheckers{r: r, waiting: map[string]string{}}
	// A custom checker gets the scripts' environment.
	environ := append(slices.Clone(runner.BaseEnv), r.run.Env...)
	env := checker.Env{Dir: stateDir, BinDir: filepath.Join(r.cfg.Dir, "bin"), Environ: environ}
	for i, cc := range r.cfg.Checkers {
		spec := specOf(cc)
		ch, err := checker.New(spec, env)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", r.cfg.Name, err)
		}
		c.specs = append(c.specs, spec)
		c.mons = append(c.mons, checker.NewMonitor(spec, ch, func(rep checker.Report) { c.report(i, rep) }))
		c.active = append(c.active, false)
	}
	return c, nil
}

func specOf(c config.Checker) checker.Spec {
	return checker.Spec{
		Name: c.Name, Type: checker.Type(c.Type), When: checker.When(c.When), Action: checker.Action(c.Action),
		Interval: c.Interval, Timeout: c.Timeout, Failures: c.Failures,
		PIDFile: c.PIDFile, Unit: c.Unit, Pattern: c.Pattern, AtLeast: c.AtLeast,
		Address: c.Address, URL: c.URL, Status: c.Status, Body: c.Body,
		Command: c.Command, Args: c.Args, Interface: c.Interface,
	}
}

// activeIn reports whether a checker runs while the module is as m says.
func activeIn(s checker.Spec, m module.Machine) bool {
	if m.Maint.ChecksOff || !m.Started || m.ShuttingDown || m.Target != "" {
		return false
	}
	st := m.State
	if s.Action == checker.Wait && st == module.Wait {
		return true // to see it recover
	}
	switch s.When {
	case checker.Pre:
		return st != module.Stop
	case checker.Prim:
		return st.Serving()
	case checker.Second:
		return st == module.Second
	case checker.Both:
		return st.Running()
	}
	return false
}

// sync (de)activates the checkers after a step of the machine. It runs on
// the module's event loop, before the step's actions are carried out.
func (c *modCheckers) sync(m module.Machine) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, mon := range c.mons {
		on := activeIn(c.specs[i], m)
		if on != c.active[i] {
			c.active[i] = on
			mon.SetActive(on)
		}
	}
}

// close stops every checker (agent exit).
func (c *modCheckers) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, mon := range c.mons {
		mon.Close()
		c.active[i] = false
	}
}

// report handles one verdict of checker i.
func (c *modCheckers) report(i int, rep checker.Report) {
	spec := c.specs[i]
	log := c.r.log
	kv := []any{"checker", spec.Name, "type", string(spec.Type), "verdict", string(rep.Verdict), "action", string(spec.Action),
		"took", rep.Result.Took.Round(time.Millisecond).String()}
	switch {
	case rep.Changed() && rep.Verdict == checker.Failed:
		log.Add(eventlog.KindChecker, fmt.Sprintf("checker %s failed: %s", spec.Name, rep.Result.Detail), kv...)
	case rep.Changed() && rep.Prev == checker.Failed:
		log.Add(eventlog.KindChecker, fmt.Sprintf("checker %s recovered: %s", spec.Name, rep.Result.Detail), kv...)
	case rep.Changed():
		log.Add(eventlog.KindChecker, fmt.Sprintf("checker %s ok: %s", spec.Name, rep.Result.Detail), kv...)
	case rep.Fire:
		log.Add(eventlog.KindChecker, fmt.Sprintf("checker %s still fails: %s", spec.Name, rep.Result.Detail), kv...)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if spec.Action == checker.Wait {
		if rep.Verdict == checker.Failed {
			if _, ok := c.waiting[spec.Name]; !ok {
				c.waiting[spec.Name] = rep.Result.Detail
			}
		} else {
			delete(c.waiting, spec.Name)
		}
		reason := c.waitReason()
		if reason != c.lastWait {
			c.lastWait = reason
			c.r.post(module.Event{Kind: module.CheckerWait, Reason: reason, Now: rep.At})
		}
		return
	}
	if !rep.Fire || !c.active[i] || rep.Activation != c.mons[i].Activation() {
		return // deactivated since: the module moved on
	}
	c.r.post(module.Event{Kind: module.CheckerFailed, Checker: spec.Name, Action: module.CheckAction(spec.Action),
		Reason: rep.Result.Detail, Now: rep.At})
}

// waitReason names the failing wait checkers, in configuration order.
func (c *modCheckers) waitReason() string {
	var parts []string
	for _, s := range c.specs {
		if d, ok := c.waiting[s.Name]; ok {
			parts = append(parts, fmt.Sprintf("checker %s failed: %s", s.Name, d))
		}
	}
	return strings.Join(parts, "; ")
}

// status describes the checkers, the loop counts and the maintenance
// switches for `tandem status`.
func (c *modCheckers) status(m module.Machine, now time.Time) ([]api.CheckerStatus, api.LoopStatus, api.Maintenance) {
	var out []api.CheckerStatus
	for i, mon := range c.mons {
		s, st := c.specs[i], mon.Status()
		out = append(out, api.CheckerStatus{
			Name: s.Name, Type: string(s.Type), When: string(s.When), Action: string(s.Action),
			Active: st.Active, Verdict: string(st.Verdict), Detail: st.Detail, LastCheck: st.LastCheck, Since: st.Since,
			Checks: st.Checks, Failures: st.Failures, Actions: st.Fired,
		})
	}
	l := c.r.cfg.Loop()
	loop := api.LoopStatus{MaxRestarts: l.Restarts, MaxFailovers: l.Failovers, Window: l.Window.String()}
	if m.LoopSince != 0 {
		since := time.UnixMilli(m.LoopSince)
		if now.Sub(since) < l.Window {
			loop.Restarts, loop.Failovers, loop.Since = m.LoopRestarts, m.LoopFailovers, since
		}
	} else {
		loop.Restarts, loop.Failovers = m.LoopRestarts, m.LoopFailovers
	}
	onOff := func(off bool) string {
		if off {
			return "off"
		}
		return "on"
	}
	maint := api.Maintenance{Checkers: onOff(m.Maint.ChecksOff), Failover: onOff(m.Maint.FailoverOff), BootStart: onOff(m.Maint.BootStartOff)}
	return out, loop, maint
}

// maintenanceEvent turns the API's options into a MaintenanceCmd.
func maintenanceEvent(opts api.CommandOptions) (module.Event, error) {
	ev := module.Event{Kind: module.MaintenanceCmd}
	var errs []string
	toggle := func(name, v string) module.Toggle {
		switch v {
		case "":
			return module.Keep
		case "on":
			return module.On
		case "off":
			return module.Off
		}
		errs = append(errs, fmt.Sprintf("%s: %q is not on or off", name, v))
		return module.Keep
	}
	ev.Maint = module.MaintChange{
		Checkers:  toggle("checkers", opts.Checkers),
		Failover:  toggle("failover", opts.Failover),
		BootStart: toggle("boot_start", opts.BootStart),
	}
	if len(errs) > 0 {
		return ev, fmt.Errorf("maintenance: %s", strings.Join(errs, "; "))
	}
	return ev, nil
}
