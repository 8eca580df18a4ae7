package checker

import (
	"context"
	"sync"
	"time"
)

// Verdict is a checker's opinion of the application.
type Verdict string

const (
	Unknown Verdict = "unknown" // not checked yet
	OK      Verdict = "ok"
	Failed  Verdict = "failed"
)

// Report is one verdict of a Monitor, sent after every check that changes
// the verdict or makes an action due.
type Report struct {
	Name    string
	Action  Action
	Verdict Verdict
	Prev    Verdict // the verdict before this check
	// Fire: an action is due. It is set once per activation, on the check
	// that completes Failures consecutive failures; a Monitor re-activated
	// after the action (the module restarted) fires again if the check
	// still fails, so repeated failures are counted by the state machine.
	Fire   bool
	Result Result
	At     time.Time
	// Activation numbers the activation the check ran in (see Activation).
	Activation uint64
}

// Changed reports whether the verdict changed.
func (r Report) Changed() bool { return r.Verdict != r.Prev }

// Status is the observable state of a Monitor (status output, metrics).
type Status struct {
	Active      bool
	Verdict     Verdict
	Detail      string    // the last check's result
	LastCheck   time.Time // zero: never checked
	Since       time.Time // when Verdict was reached
	Checks      uint64    // checks run
	Failures    uint64    // failed checks
	Fired       uint64    // actions asked for
	Consecutive int       // failed checks in a row in this activation
}

// Monitor runs one checker every Spec.Interval while active. Activation
// is the owner's decision (the module's state); a deactivated Monitor
// keeps its verdict, so a checker that made the module wait still says
// "failed" until it is run again and sees otherwise.
type Monitor struct {
	spec   Spec
	c      Checker
	report func(Report)

	repMu sync.Mutex // serialises record+report across activations
	mu    sync.Mutex
	gen   uint64
	stop  context.CancelFunc // of the current activation; nil when inactive
	fired bool
	st    Status
}

// NewMonitor returns an inactive Monitor of c; report is called (from the
// Monitor's goroutine, never concurrently) with every Report.
func NewMonitor(spec Spec, c Checker, report func(Report)) *Monitor {
	if spec.Failures <= 0 {
		spec.Failures = 1
	}
	if spec.Interval <= 0 {
		spec.Interval = time.Second
	}
	return &Monitor{spec: spec, c: c, report: report, st: Status{Verdict: Unknown}}
}

// Spec returns the monitored checker's spec.
func (m *Monitor) Spec() Spec { return m.spec }

// SetActive starts or stops the checks. Starting a stopped Monitor begins
// a new activation: the first check runs one interval later, the failure
// count starts from zero and an action may fire again.
func (m *Monitor) SetActive(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if on == (m.stop != nil) {
		return
	}
	m.gen++
	m.st.Active = on
	if !on {
		m.stop()
		m.stop = nil
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.stop = cancel
	m.fired = false
	m.st.Consecutive = 0
	go m.loop(ctx, m.gen)
}

// Close stops the Monitor for good.
func (m *Monitor) Close() { m.SetActive(false) }

// Activation numbers the current activation (it changes on every
// SetActive that starts or stops the checks): a Report of an older one is
// stale.
func (m *Monitor) Activation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

// Status returns the Monitor's counters and last verdict.
func (m *Monitor) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st
}

func (m *Monitor) loop(ctx context.Context, gen uint64) {
	t := time.NewTimer(m.spec.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		res := Run(ctx, m.c, m.spec.Timeout)
		if ctx.Err() != nil {
			return // deactivated during the check: its result is stale
		}
		m.repMu.Lock()
		rep, send := m.record(gen, res)
		if send {
			m.report(rep)
		}
		m.repMu.Unlock()
		t.Reset(m.spec.Interval)
	}
}

// record folds one result into the status; it returns the report to send.
func (m *Monitor) record(gen uint64, res Result) (Report, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gen != m.gen {
		return Report{}, false
	}
	now := time.Now()
	st := &m.st
	st.Checks++
	st.LastCheck, st.Detail = now, res.Detail
	prev := st.Verdict
	next := prev
	if res.OK {
		st.Consecutive = 0
		next = OK
		m.fired = false
	} else {
		st.Failures++
		st.Consecutive++
		if st.Consecutive >= m.spec.Failures {
			next = Failed
		}
	}
	rep := Report{Name: m.spec.Name, Action: m.spec.Action, Verdict: next, Prev: prev, Result: res, At: now, Activation: gen}
	if next == Failed && !m.fired {
		m.fired, rep.Fire = true, true
		st.Fired++
	}
	if next != prev {
		st.Verdict, st.Since = next, now
	}
	return rep, rep.Fire || next != prev
}
