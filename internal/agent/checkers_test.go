package agent

import (
	"testing"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/checker"
	"github.com/tandem-ha/tandem/internal/module"
)

func TestCheckerActiveIn(t *testing.T) {
	m := func(s module.State, mod func(*module.Machine)) module.Machine {
		x := module.Machine{State: s}
		x.Started = true
		if mod != nil {
			mod(&x)
		}
		return x
	}
	spec := func(w checker.When, a checker.Action) checker.Spec { return checker.Spec{When: w, Action: a} }
	cases := []struct {
		name string
		s    checker.Spec
		m    module.Machine
		want bool
	}{
		{"prim on PRIM", spec(checker.Prim, checker.Restart), m(module.Prim, nil), true},
		{"prim on ALONE", spec(checker.Prim, checker.Restart), m(module.Alone, nil), true},
		{"prim on SECOND", spec(checker.Prim, checker.Restart), m(module.Second, nil), false},
		{"prim on WAIT", spec(checker.Prim, checker.Restart), m(module.Wait, nil), false},
		{"prim wait-action on WAIT (to see it recover)", spec(checker.Prim, checker.Wait), m(module.Wait, nil), true},
		{"second on SECOND", spec(checker.Second, checker.Restart), m(module.Second, nil), true},
		{"second on PRIM", spec(checker.Second, checker.Restart), m(module.Prim, nil), false},
		{"both on SECOND", spec(checker.Both, checker.Restart), m(module.Second, nil), true},
		{"both on ALONE", spec(checker.Both, checker.Restart), m(module.Alone, nil), true},
		{"both on WAIT", spec(checker.Both, checker.Restart), m(module.Wait, nil), false},
		{"pre on WAIT", spec(checker.Pre, checker.Wait), m(module.Wait, nil), true},
		{"pre on SECOND", spec(checker.Pre, checker.Wait), m(module.Second, nil), true},
		{"pre on STOP", spec(checker.Pre, checker.Wait), m(module.Stop, nil), false},
		{"nothing during a transition", spec(checker.Prim, checker.Restart), m(module.Prim, func(x *module.Machine) { x.Target = module.Prim }), false},
		{"nothing when stopped", spec(checker.Pre, checker.Wait), m(module.Wait, func(x *module.Machine) { x.Started = false }), false},
		{"nothing with checkers off", spec(checker.Prim, checker.Restart), m(module.Prim, func(x *module.Machine) { x.Maint.ChecksOff = true }), false},
		{"nothing while shutting down", spec(checker.Both, checker.Restart), m(module.Second, func(x *module.Machine) { x.ShuttingDown = true }), false},
	}
	for _, tc := range cases {
		if got := activeIn(tc.s, tc.m); got != tc.want {
			t.Errorf("%s: active %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestMaintenanceEvent(t *testing.T) {
	ev, err := maintenanceEvent(api.CommandOptions{Checkers: "off", BootStart: "on"})
	if err != nil || ev.Kind != module.MaintenanceCmd || ev.Maint != (module.MaintChange{Checkers: module.Off, BootStart: module.On}) {
		t.Errorf("event %+v err %v", ev, err)
	}
	if _, err := maintenanceEvent(api.CommandOptions{Failover: "maybe"}); err == nil {
		t.Error("failover maybe accepted")
	}
}
