package module

import "testing"

func TestFailbackDue(t *testing.T) {
	away := Machine{Node: "b", PeerName: "a", State: Prim, Persistent: Persistent{Epoch: 7, UpToDate: true},
		Peer: Peer{Alive: true, Known: true, State: Second, Epoch: 7, UpToDate: true}}
	if !FailbackDue(away, true) {
		t.Fatal("a PRIM away from home with a synced home SECOND: no failback")
	}
	for name, change := range map[string]func(m *Machine, home *bool){
		"no home (none or lastprim)": func(m *Machine, home *bool) { *home = false },
		"this node is home":          func(m *Machine, home *bool) { m.Preferred = true },
		"ALONE":                      func(m *Machine, home *bool) { m.State = Alone },
		"in a transition":            func(m *Machine, home *bool) { m.Target = Second },
		"peer resyncing":             func(m *Machine, home *bool) { m.Peer.UpToDate = false },
		"peer of another epoch":      func(m *Machine, home *bool) { m.Peer.Epoch = 6 },
		"peer down":                  func(m *Machine, home *bool) { m.Peer.Alive = false },
		"peer not SECOND":            func(m *Machine, home *bool) { m.Peer.State = Wait },
		"peer in a transition":       func(m *Machine, home *bool) { m.Peer.Target = Prim },
		"failover off here":          func(m *Machine, home *bool) { m.Maint.FailoverOff = true },
		"failover off on the peer":   func(m *Machine, home *bool) { m.Peer.FailoverOff = true },
		"a checker waits":            func(m *Machine, home *bool) { m.CheckWait = "http" },
		"administrator's wish":       func(m *Machine, home *bool) { m.Want = WantPrim },
		"swap pending":               func(m *Machine, home *bool) { m.Peer.SwapRequest = m.SwapSeen + 1 },
		"isolated":                   func(m *Machine, home *bool) { m.Isolated = true },
		"incompatible peer":          func(m *Machine, home *bool) { m.Peer.Incompatible = "cluster file differs" },
	} {
		m, home := away, true
		change(&m, &home)
		if FailbackDue(m, home) {
			t.Errorf("%s: failback due", name)
		}
	}
}
