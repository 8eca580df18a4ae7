package module

import (
	"reflect"
	"testing"
)

func TestSameRecovery(t *testing.T) {
	base := Persistent{Started: true, UpToDate: true, Epoch: 7}
	with := func(s State, f func(*Persistent)) Persistent {
		p := base
		p.State = s
		if f != nil {
			f(&p)
		}
		return p
	}
	for _, c := range []struct {
		name string
		p, q Persistent
		same bool
	}{
		{"STOP -> WAIT", with(Stop, nil), with(Wait, nil), true},
		{"WAIT -> STOP", with(Wait, nil), with(Stop, nil), true},
		{"never run -> WAIT", with("", nil), with(Wait, nil), true},
		{"unchanged SECOND", with(Second, nil), with(Second, nil), true},
		{"WAIT -> SECOND", with(Wait, nil), with(Second, nil), false},
		{"SECOND -> WAIT", with(Second, nil), with(Wait, nil), false},
		{"PRIM -> ALONE", with(Prim, nil), with(Alone, nil), false},
		{"STOP -> WAIT, new epoch", with(Stop, nil), with(Wait, func(p *Persistent) { p.Epoch++ }), false},
		{"STOP -> WAIT, no longer up to date", with(Stop, nil), with(Wait, func(p *Persistent) { p.UpToDate = false }), false},
		{"WAIT, stopped", with(Wait, nil), with(Wait, func(p *Persistent) { p.Started = false }), false},
		{"WAIT, maintenance", with(Wait, nil), with(Wait, func(p *Persistent) { p.Maint.FailoverOff = true }), false},
	} {
		if got := c.p.SameRecovery(c.q); got != c.same {
			t.Errorf("%s: SameRecovery = %v, want %v", c.name, got, c.same)
		}
	}
}

// SameRecovery lets the agent leave STOP on disk while the module is in
// WAIT (and the reverse): that is safe only while the boot step, the one
// reader of the record's state, treats every state that is not running
// alike. It must stay so.
func TestBootSameForEveryNonRunningState(t *testing.T) {
	var nonRunning []State
	for _, s := range append([]State{""}, States...) {
		if !s.Running() {
			nonRunning = append(nonRunning, s)
		}
	}
	for _, p := range []Persistent{
		{},
		{Started: true},
		{Started: true, UpToDate: true, Epoch: 3},
		{Started: true, Epoch: 3, PeerOutdated: true},
		{Started: true, Maint: Maintenance{BootStartOff: true}},
		{Started: true, Maint: Maintenance{FailoverOff: true}, LoopRestarts: 2, LoopSince: 1},
	} {
		type outcome struct {
			m    Machine
			acts []Action
		}
		ref := map[bool]outcome{}
		for _, s := range nonRunning {
			p.State = s
			for _, preferred := range []bool{true, false} {
				m, acts, err := Step(New("a", "b", preferred, p), Event{Kind: Boot})
				if err != nil {
					t.Fatalf("boot from %q %+v: %v", s, p, err)
				}
				m.Persistent.State = "" // the one field that differs
				want, ok := ref[preferred]
				if !ok {
					ref[preferred] = outcome{m, acts}
					continue
				}
				if !reflect.DeepEqual(m, want.m) || !reflect.DeepEqual(acts, want.acts) {
					t.Errorf("boot from %q %+v (preferred %v):\n %+v %v\nwant (as from %q)\n %+v %v", s, p, preferred, m, kinds(acts), nonRunning[0], want.m, kinds(want.acts))
				}
			}
		}
	}
}
