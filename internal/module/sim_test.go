package module

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"
)

// A two-node simulation: transitions run one action at a time, interleaved
// at random with peer views, commands, crashes, restarts and partitions.
// Heartbeats are modelled as instant (views are refreshed after every step)
// while scripts are slow, which is the real ratio.

type simNode struct {
	name    string
	m       Machine
	up      bool // agent running
	pending []Action
	stamp   int // partition generation when the pending transition was decided
	vips    bool
	app     bool // start_prim ran and stop_prim did not
	fail    bool // next start script fails
	// departures counts the times a checker made this node leave the
	// service (hand-over or wait) since its loop counts were last reset.
	departures int
}

type sim struct {
	t           *testing.T
	rng         *rand.Rand
	n           [2]*simNode
	partitioned bool
	partitions  int // generation, bumped on every partition change
	trace       []string
	now         time.Time // the checkers' clock: one loop window per run
}

func newSim(t *testing.T, seed uint64) *sim {
	s := &sim{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), now: t0}
	s.n[0] = &simNode{name: "a", m: New("a", "b", true, Persistent{}), up: true}
	s.n[1] = &simNode{name: "b", m: New("b", "a", false, Persistent{}), up: true}
	return s
}

func (s *sim) view(i int) Peer {
	o := s.n[1-i]
	if !o.up || s.partitioned {
		return Peer{}
	}
	m := o.m
	return Peer{Alive: true, Known: true, State: m.State, Target: m.Target, Epoch: m.Epoch, UpToDate: m.UpToDate,
		Started: m.Started, Handover: m.Handover, SwapRequest: m.SwapRequest, Claim: m.Claim, Ack: m.Ack, FailoverOff: m.Maint.FailoverOff}
}

func (s *sim) step(i int, ev Event) {
	n := s.n[i]
	if !n.up {
		return
	}
	next, acts, err := Step(n.m, ev)
	s.trace = append(s.trace, fmt.Sprintf("%s %s -> %s/%s %v err=%v", n.name, ev.Kind, next.State, next.Target, kinds(acts), err))
	if err != nil {
		return
	}
	prev := n.m
	if prev.State.Serving() && prev.Target == "" && (next.Target == Second || next.Target == Wait) &&
		(ev.Kind == CheckerFailed || next.CheckWait != "") {
		n.departures++
		if n.departures > next.loop().Failovers {
			s.fatal("%s left the service %d times for its checkers within one loop window (limit %d failovers)", n.name, n.departures, next.loop().Failovers)
		}
	}
	if next.LoopFailovers == 0 && next.LoopRestarts == 0 {
		n.departures = 0 // reset by the administrator
	}
	n.m = next
	for _, a := range acts {
		switch a.Kind {
		case Log:
		case ArmDiscovery:
			// Fired later by the random scheduler.
		default:
			if len(n.pending) == 0 {
				n.stamp = s.partitions
			}
			n.pending = append(n.pending, a)
		}
	}
}

// resync completes a SECOND's resynchronisation when its primary streams to
// it, as the agent's sender does.
func (s *sim) resync() {
	for i := range 2 {
		n, o := s.n[i], s.n[1-i]
		if n.up && o.up && !s.partitioned && n.m.State == Second && n.m.Target == "" && n.m.Sync == SyncResyncing &&
			o.m.State.Serving() && !o.m.ReplBroken && n.m.Peer.State.Serving() {
			s.step(i, Event{Kind: SyncDone})
		}
	}
}

// runAction carries out one pending action of node i.
func (s *sim) runAction(i int) {
	n := s.n[i]
	if len(n.pending) == 0 || !n.up {
		return
	}
	a := n.pending[0]
	n.pending = n.pending[1:]
	switch a.Kind {
	case AddVIPs:
		o := s.n[1-i]
		// A decision taken before a partition healed races with the heal;
		// only a witness prevents that (SPEC §7).
		if o.vips && !s.partitioned && o.up && n.stamp == s.partitions {
			s.fatal("node %s adds the VIPs while %s holds them", n.name, o.name)
		}
		n.vips = true
	case RemoveVIPs:
		n.vips = false
	case RunScript:
		switch a.Script {
		case "start_prim":
			if n.fail {
				n.fail = false
				n.pending = nil
				s.step(i, Event{Kind: TransitionDone, OK: false, Reason: "start_prim exited 1"})
				return
			}
			n.app = true
		case "stop_prim":
			n.app = false
		}
	case Done:
		s.step(i, Event{Kind: TransitionDone, OK: true})
	}
}

func (s *sim) fatal(format string, a ...any) {
	s.t.Helper()
	tail := s.trace
	if len(tail) > 40 {
		tail = tail[len(tail)-40:]
	}
	for _, l := range tail {
		s.t.Log(l)
	}
	s.t.Fatalf(format, a...)
}

// refreshViews delivers one round of heartbeats (each node's view of the
// other as it is now). One round only: views may lag by a step, as in life.
func (s *sim) refreshViews() {
	for i := range 2 {
		if s.n[i].up {
			v := s.view(i)
			if v != s.n[i].m.Peer {
				s.step(i, Event{Kind: PeerChanged, Peer: v})
			}
		}
	}
	s.resync()
}

func (s *sim) crash(i int) {
	n := s.n[i]
	n.up = false
	n.pending = nil
	n.vips = false // the VIP guard removes them when the agent dies
	n.app = false  // killed with the agent
	n.m = New(n.m.Node, n.m.PeerName, n.m.Preferred, n.m.Persistent)
	s.trace = append(s.trace, n.name+" crashed")
}

func (s *sim) restart(i int) {
	n := s.n[i]
	if n.up {
		return
	}
	n.up = true
	s.trace = append(s.trace, n.name+" restarted")
	s.step(i, Event{Kind: Boot})
}

func (s *sim) quiesce() {
	for range 200 {
		busy := false
		for i := range 2 {
			if s.n[i].up && len(s.n[i].pending) > 0 {
				busy = true
				s.runAction(i)
				s.refreshViews()
			}
		}
		for i := range 2 {
			n := s.n[i]
			if n.up && (n.m.Peer != s.view(i) || (n.m.State == Second && n.m.Sync == SyncResyncing && s.n[1-i].up && !s.partitioned)) {
				busy = true
			}
		}
		s.refreshViews()
		for i := range 2 {
			if s.n[i].up && s.n[i].m.Booting {
				s.step(i, Event{Kind: DiscoveryDone})
				busy = true
				s.refreshViews()
			}
		}
		if !busy {
			return
		}
	}
	s.fatal("no quiescence after 200 rounds")
}

func (s *sim) checkSettled() {
	a, b := s.n[0], s.n[1]
	if !a.up || !b.up || s.partitioned || !a.m.Started || !b.m.Started {
		return
	}
	sa, sb := a.m.State, b.m.State
	if sa.Serving() && sb.Serving() {
		s.fatal("both serve after quiescence: %s %s", sa, sb)
	}
	serving := sa.Serving() || sb.Serving()
	if serving && !((sa == Prim && sb == Second) || (sb == Prim && sa == Second)) {
		s.fatal("connected and settled but not PRIM/SECOND: a=%s (%s) b=%s (%s)", sa, a.m.Reason, sb, b.m.Reason)
	}
	for _, n := range s.n {
		if n.m.State.Serving() != n.vips {
			s.fatal("%s is %s but vips=%v", n.name, n.m.State, n.vips)
		}
	}
}

func TestSimulation(t *testing.T) {
	seeds := 300
	if v, err := strconv.Atoi(os.Getenv("TANDEM_SIM_SEEDS")); err == nil {
		seeds = v
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runSim(t, seed) })
	}
}

func runSim(t *testing.T, seed uint64) {
	s := newSim(t, seed)
	s.step(0, Event{Kind: Boot})
	s.step(1, Event{Kind: Boot})
	s.step(0, Event{Kind: Start})
	s.step(1, Event{Kind: Start})
	s.refreshViews()
	s.quiesce()
	s.checkSettled()
	if !(s.n[0].m.State == Prim && s.n[1].m.State == Second) {
		s.fatal("fresh pair did not settle as a=PRIM b=SECOND: %s %s", s.n[0].m.State, s.n[1].m.State)
	}
	for range 60 {
		i := s.rng.IntN(2)
		switch r := s.rng.IntN(100); {
		case r < 40:
			s.runAction(i)
		case r < 48:
			s.crash(i)
		case r < 58:
			s.restart(i)
		case r < 62:
			s.partitioned = !s.partitioned
			s.partitions++
			s.trace = append(s.trace, fmt.Sprint("partitioned=", s.partitioned))
		case r < 68:
			s.step(i, Event{Kind: SwapCmd})
		case r < 72:
			s.step(i, Event{Kind: StopCmd})
		case r < 80:
			s.step(i, Event{Kind: Start})
		case r < 83:
			s.step(i, Event{Kind: PrimCmd})
		case r < 85:
			s.step(i, Event{Kind: PrimCmd, Force: true})
		case r < 88:
			s.step(i, Event{Kind: Restart})
		case r < 90:
			s.n[i].fail = true
		case r < 95:
			s.step(i, Event{Kind: DiscoveryDone})
		case r < 97:
			s.step(i, Event{Kind: SecondCmd})
		default:
			s.step(i, Event{Kind: ReplicationFailed, Reason: "stream broke"})
		}
		if s.rng.IntN(6) == 0 {
			s.checkerEvent(s.rng.IntN(2))
		}
		s.refreshViews()
		// Every node that serves holds the VIPs only when it should.
		for _, n := range s.n {
			if n.vips && !(n.m.State.Serving() || n.m.Target.Serving() || n.m.State == Stop || n.m.Target != "") {
				s.fatal("%s holds VIPs in settled state %s", n.name, n.m.State)
			}
		}
	}
	// Heal everything and let it settle: the pair must end PRIM/SECOND.
	if s.partitioned {
		s.partitioned = false
		s.partitions++
		s.trace = append(s.trace, "healed")
	}
	s.n[0].fail, s.n[1].fail = false, false
	s.restart(0)
	s.restart(1)
	s.refreshViews()
	for i := range 2 {
		s.step(i, Event{Kind: MaintenanceCmd, Maint: MaintChange{Checkers: On, Failover: On, BootStart: On}})
		s.step(i, Event{Kind: CheckerWait})
		s.refreshViews()
	}
	s.quiesce()
	for i := range 2 {
		if !s.n[i].m.Started {
			s.step(i, Event{Kind: Start})
		}
	}
	s.refreshViews()
	s.quiesce()
	a, b := s.n[0].m, s.n[1].m
	if !a.State.Serving() && !b.State.Serving() {
		// Legitimate only when neither can prove it holds the latest data
		// and both wait for an administrator.
		if a.State != Wait || b.State != Wait {
			s.fatal("healed pair serves nowhere: a=%s (%s) b=%s (%s)", a.State, a.Reason, b.State, b.Reason)
		}
		return
	}
	s.checkSettled()
}

// checkerEvent delivers a random checker verdict or maintenance command.
func (s *sim) checkerEvent(i int) {
	s.now = s.now.Add(time.Second)
	toggle := func() Toggle { return Toggle(s.rng.IntN(3)) }
	switch r := s.rng.IntN(10); {
	case r < 4:
		acts := []CheckAction{ActRestart, ActStopStart, ActStop, ActWait}
		s.step(i, Event{Kind: CheckerFailed, Checker: "app", Action: acts[s.rng.IntN(len(acts))], Reason: "down", Now: s.now})
	case r < 6:
		s.step(i, Event{Kind: CheckerWait, Reason: "checker lan failed", Now: s.now})
	case r < 8:
		s.step(i, Event{Kind: CheckerWait, Now: s.now})
	case r < 9:
		s.step(i, Event{Kind: MaintenanceCmd, Maint: MaintChange{Checkers: toggle(), Failover: toggle(), BootStart: toggle()}})
	default:
		s.step(i, Event{Kind: ResetLoopCmd})
	}
}
