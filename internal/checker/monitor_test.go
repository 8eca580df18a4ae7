package checker

import (
	"context"
	"sync"
	"testing"
	"time"
)

// scripted returns the results of a list in order, then the last forever.
type scripted struct {
	mu  sync.Mutex
	res []bool
	n   int
}

func (s *scripted) Check(ctx context.Context) Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := min(s.n, len(s.res)-1)
	s.n++
	if s.res[i] {
		return Result{OK: true, Detail: "fine"}
	}
	return Result{Detail: "broken"}
}

func (s *scripted) set(res ...bool) {
	s.mu.Lock()
	s.res, s.n = res, 0
	s.mu.Unlock()
}

type collector struct {
	mu   sync.Mutex
	reps []Report
}

func (c *collector) add(r Report) {
	c.mu.Lock()
	c.reps = append(c.reps, r)
	c.mu.Unlock()
}

func (c *collector) wait(t *testing.T, n int) []Report {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		if len(c.reps) >= n {
			out := append([]Report(nil), c.reps...)
			c.mu.Unlock()
			return out
		}
		c.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t.Fatalf("%d reports, want %d: %+v", len(c.reps), n, c.reps)
	return nil
}

func TestMonitorVerdicts(t *testing.T) {
	sc := &scripted{res: []bool{true, false, true, false, false, false}}
	col := &collector{}
	m := NewMonitor(Spec{Name: "app", Action: Restart, Interval: 5 * time.Millisecond, Failures: 2}, sc, col.add)
	defer m.Close()
	if st := m.Status(); st.Active || st.Verdict != Unknown {
		t.Fatalf("new monitor: %+v", st)
	}
	m.SetActive(true)
	// ok (unknown->ok), fail (1 of 2: nothing), ok (nothing), fail, fail
	// (ok->failed, fire), fail (nothing more).
	col.wait(t, 2)
	time.Sleep(50 * time.Millisecond)
	m.SetActive(false)
	col.mu.Lock()
	reps := append([]Report(nil), col.reps...)
	col.mu.Unlock()
	if len(reps) != 2 {
		t.Fatalf("reports %+v, want 2", reps)
	}
	if r := reps[0]; r.Verdict != OK || r.Prev != Unknown || r.Fire || !r.Changed() {
		t.Errorf("first report %+v", r)
	}
	if r := reps[1]; r.Verdict != Failed || r.Prev != OK || !r.Fire || r.Result.Detail != "broken" || r.Action != Restart {
		t.Errorf("second report %+v", r)
	}
	st := m.Status()
	if st.Active || st.Verdict != Failed || st.Fired != 1 || st.Failures < 4 || st.Checks < 6 || st.Detail != "broken" {
		t.Errorf("status after deactivation %+v", st)
	}

	// Re-activated (after the module's restart) and still failing: the
	// action fires again although the verdict did not change.
	m.SetActive(true)
	reps = col.wait(t, 3)
	if r := reps[2]; r.Verdict != Failed || r.Prev != Failed || !r.Fire || r.Changed() {
		t.Errorf("report after re-activation %+v", r)
	}
	// Recovery is reported, and a new failure fires again.
	sc.set(true, false, false)
	reps = col.wait(t, 5)
	if r := reps[3]; r.Verdict != OK || r.Prev != Failed || r.Fire {
		t.Errorf("recovery %+v", r)
	}
	if r := reps[4]; r.Verdict != Failed || !r.Fire {
		t.Errorf("new failure %+v", r)
	}
	if st := m.Status(); st.Fired != 3 || !st.Active {
		t.Errorf("status %+v", st)
	}
}

// slow blocks each check until released or cancelled.
type slow struct{ started chan struct{} }

func (s slow) Check(ctx context.Context) Result {
	s.started <- struct{}{}
	<-ctx.Done()
	return Result{Detail: "cancelled"}
}

func TestMonitorDeactivationDropsCheckInFlight(t *testing.T) {
	s := slow{started: make(chan struct{}, 10)}
	col := &collector{}
	m := NewMonitor(Spec{Name: "x", Interval: time.Millisecond, Timeout: time.Hour}, s, col.add)
	m.SetActive(true)
	select {
	case <-s.started:
	case <-time.After(5 * time.Second):
		t.Fatal("no check started")
	}
	m.SetActive(false)
	time.Sleep(50 * time.Millisecond)
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.reps) != 0 {
		t.Errorf("a check cut short by deactivation was reported: %+v", col.reps)
	}
	if st := m.Status(); st.Checks != 0 || st.Verdict != Unknown {
		t.Errorf("status %+v", st)
	}
}
