package agent

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/checker"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/farm"
)

// farmCheckers runs a farm module's checkers. A farm has no primary, so
// "prim" and "both" checkers run while the node is UP, "pre" ones whenever
// the application runs, "second" ones never. Actions:
//   - wait: the node leaves the assignment (WAIT, its buckets go to the
//     others) until the checker recovers;
//   - restart: the stop and start scripts run again (the node gives its
//     buckets away meanwhile); past loop_limit.restarts within the window,
//     the module stops on this node;
//   - stopstart and stop: the module stops on this node (the others serve
//     its clients: that is a farm's failover).
type farmCheckers struct {
	r     *farmRunner
	specs []checker.Spec
	mons  []*checker.Monitor

	mu       sync.Mutex
	active   []bool
	waiting  map[string]string
	lastWait string
	restarts []time.Time // local restarts asked by checkers, for the loop limit
}

func newFarmCheckers(r *farmRunner, stateDir string) (*farmCheckers, error) {
	c := &farmCheckers{r: r, waiting: map[string]string{}}
	env := checker.Env{Dir: stateDir, BinDir: filepath.Join(r.cfg.Dir, "bin"), Environ: r.run.Env}
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

func farmCheckerActive(s checker.Spec, m farm.Machine) bool {
	if !m.Started || !m.Running || m.Target != "" {
		return false
	}
	switch {
	case s.When == checker.Second:
		return false
	case s.When == checker.Pre, s.Action == checker.Wait:
		return m.State == farm.Up || m.State == farm.Wait // a wait checker must see its recovery
	}
	return m.State == farm.Up
}

func (c *farmCheckers) sync(m farm.Machine) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, mon := range c.mons {
		on := farmCheckerActive(c.specs[i], m)
		if on != c.active[i] {
			c.active[i] = on
			mon.SetActive(on)
		}
	}
}

func (c *farmCheckers) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, mon := range c.mons {
		mon.Close()
		c.active[i] = false
	}
}

func (c *farmCheckers) report(i int, rep checker.Report) {
	spec := c.specs[i]
	kv := []any{"checker", spec.Name, "type", string(spec.Type), "verdict", string(rep.Verdict), "action", string(spec.Action)}
	switch {
	case rep.Changed() && rep.Verdict == checker.Failed:
		c.r.log.Add(eventlog.KindChecker, fmt.Sprintf("checker %s failed: %s", spec.Name, rep.Result.Detail), kv...)
	case rep.Changed() && rep.Prev == checker.Failed:
		c.r.log.Add(eventlog.KindChecker, fmt.Sprintf("checker %s recovered: %s", spec.Name, rep.Result.Detail), kv...)
	case rep.Changed():
		c.r.log.Add(eventlog.KindChecker, fmt.Sprintf("checker %s ok: %s", spec.Name, rep.Result.Detail), kv...)
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
		var parts []string
		for _, s := range c.specs {
			if d, ok := c.waiting[s.Name]; ok {
				parts = append(parts, fmt.Sprintf("checker %s: %s", s.Name, d))
			}
		}
		reason := strings.Join(parts, "; ")
		if reason != c.lastWait {
			c.lastWait = reason
			c.r.post(farm.Event{Kind: farm.HealthChanged, OK: reason == "", Reason: reason})
		}
		return
	}
	if !rep.Fire || !c.active[i] || rep.Activation != c.mons[i].Activation() {
		return
	}
	why := fmt.Sprintf("checker %s failed: %s", spec.Name, rep.Result.Detail)
	if spec.Action == checker.Restart {
		loop := c.r.cfg.Loop()
		var recent []time.Time
		for _, t := range c.restarts {
			if rep.At.Sub(t) < loop.Window {
				recent = append(recent, t)
			}
		}
		if len(recent) < loop.Restarts {
			c.restarts = append(recent, rep.At)
			c.r.log.Add(eventlog.KindChecker, why+": restarting the application here", kv...)
			c.r.post(farm.Event{Kind: farm.RestartCmd})
			return
		}
		c.restarts = recent
		why += fmt.Sprintf(" (%d restarts within %s: loop_limit reached)", len(recent), loop.Window)
	}
	c.r.log.Add(eventlog.KindChecker, why+": stopping the module here, the other nodes serve its clients", kv...)
	c.r.post(farm.Event{Kind: farm.StopCmd, Reason: "stopped: " + why})
}

func (c *farmCheckers) status() []api.CheckerStatus {
	var out []api.CheckerStatus
	for i, mon := range c.mons {
		s, st := c.specs[i], mon.Status()
		out = append(out, api.CheckerStatus{
			Name: s.Name, Type: string(s.Type), When: string(s.When), Action: string(s.Action),
			Active: st.Active, Verdict: string(st.Verdict), Detail: st.Detail, LastCheck: st.LastCheck, Since: st.Since,
			Checks: st.Checks, Failures: st.Failures, Actions: st.Fired,
		})
	}
	return out
}
