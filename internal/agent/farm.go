package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/farm"
	"github.com/tandem-ha/tandem/internal/module"
	"github.com/tandem-ha/tandem/internal/netvip"
	"github.com/tandem-ha/tandem/internal/runner"
)

// farmView is a farm module's part of the heartbeat payload: what the
// other nodes need to compute the same assignment and hand buckets over.
type farmView struct {
	Eligible bool     `json:"el,omitempty"` // UP and healthy: counts in the assignment
	Held     farm.Set `json:"h"`            // buckets whose new packets it accepts
	Drain    farm.Set `json:"dr"`           // buckets it drains
	Target   farm.Set `json:"t"`            // buckets the assignment gives it, as it sees the farm
	Reason   string   `json:"r,omitempty"`  // why it is not UP
}

// farmDataplane is what the runner needs of farm.Dataplane (tests replace
// it: the real one needs root).
type farmDataplane interface {
	Update(v [farm.Buckets]farm.Verdict) error
	Teardown() error
}

// farmRunner runs one farm module: a goroutine applies events to the
// farm.Machine in order; transitions (scripts, dataplane) run in another
// and report back; after every event and peer change the buckets are
// reconciled with the assignment computed from the nodes seen UP.
type farmRunner struct {
	a         *Agent
	cfg       *config.Module
	log       *eventlog.Log
	run       *runner.Runner
	statePath string
	fields    []config.Field
	digest    string
	table     *farm.Table
	peers     []string // the other nodes of the module
	inbox     chan farmReq
	checks    *farmCheckers
	persisted farm.Persistent // read at start, handed to Booted
	// newDP installs the dataplane, cleanup removes what a crashed agent
	// left (farm.Setup and farm.Cleanup; tests replace them).
	newDP   func(farm.DataplaneConfig) (farmDataplane, error)
	cleanup func(module string, vip netip.Addr, ifname string) error

	mu           sync.Mutex
	m            farm.Machine
	since        time.Time
	hold         farm.Holdings
	plan         farm.Plan
	assign       farm.Assignment
	ifname       string // the farm interface once known
	dpUp         bool   // the dataplane is installed (r.dp != nil), under mu
	dpErr        string // last dataplane update failure
	applied      [farm.Buckets]farm.Verdict
	target       farm.Set            // what the assignment gives this node now
	servingSince time.Time           // when it became eligible (zero: not eligible)
	lastHeld     map[string]farm.Set // each peer's holdings when last heard
	incompat     map[string]bool     // peers whose definition differs (logged once)

	dpMu      sync.Mutex // serialises dataplane calls (reconcile runs under it)
	dp        farmDataplane
	timer     *time.Timer // next drain end or settle time
	published farm.Set    // the target last published
	pubHeld   farm.Set    // the holdings last published
	pubDrain  farm.Set    // the drained buckets last published
}

type farmReq struct {
	ev        *farm.Event
	reconcile bool
	reply     chan error
}

func newFarmRunner(a *Agent, m *config.Module) (*farmRunner, error) {
	dir := modDir(a.settings.StateDir, m.Name)
	log, err := eventlog.Open(filepath.Join(dir, "events.log"), m.Name, a.node)
	if err != nil {
		return nil, err
	}
	log.SetMirror(a.log.With("module", m.Name))
	members := make([]farm.Member, len(m.Nodes))
	var peers []string
	for i, n := range m.Nodes {
		members[i] = farm.Member{Name: n, Weight: m.Farm.Weight(n)}
		if n != a.node {
			peers = append(peers, n)
		}
	}
	table, err := farm.NewTable(members)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", m.Name, err)
	}
	r := &farmRunner{
		a: a, cfg: m, log: log, statePath: filepath.Join(dir, "farm.json"), fields: m.Fields(),
		table: table, peers: peers, inbox: make(chan farmReq, 256), since: time.Now(), m: farm.New(), lastHeld: map[string]farm.Set{}, incompat: map[string]bool{},
		newDP:   func(c farm.DataplaneConfig) (farmDataplane, error) { return farm.Setup(c) },
		cleanup: farm.Cleanup,
	}
	r.digest = digestHex(r.fields)
	r.run = &runner.Runner{
		BinDir: filepath.Join(m.Dir, "bin"),
		Env: []string{
			"TANDEM_MODULE=" + m.Name, "TANDEM_NODE=" + a.node, "TANDEM_PEER=",
			"TANDEM_PEERS=" + strings.Join(peers, " "),
			"TANDEM_MODULE_DIR=" + m.Dir, "TANDEM_VIPS=" + m.Farm.VIP.String(),
			"TANDEM_STATE_DIR=" + dir,
		},
		Log: log,
	}
	if r.checks, err = newFarmCheckers(r, dir); err != nil {
		return nil, err
	}
	if r.persisted, err = loadFarmPersistent(r.statePath); err != nil {
		return nil, err
	}
	return r, nil
}

func loadFarmPersistent(path string) (farm.Persistent, error) {
	var p farm.Persistent
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("read farm module state %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("farm module state %s is corrupt (%v): move it aside to start this module as never run here", path, err)
	}
	return p, nil
}

func saveFarmPersistent(path string, p farm.Persistent) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save farm module state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".farm-*")
	if err != nil {
		return fmt.Errorf("save farm module state: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("save farm module state %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func (r *farmRunner) machine() farm.Machine {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m
}

// post queues an event; it never blocks the caller for long.
func (r *farmRunner) post(ev farm.Event) {
	select {
	case r.inbox <- farmReq{ev: &ev}:
	case <-time.After(5 * time.Second):
		r.log.Add(eventlog.KindError, "event queue full, dropped "+ev.Kind.String())
	}
}

// poke asks for a reconciliation of the buckets (peer views changed).
func (r *farmRunner) poke() {
	select {
	case r.inbox <- farmReq{reconcile: true}:
	default: // one is queued already, or the loop is busy: it reconciles after every event
	}
}

// command applies an administrator command and returns its refusal.
func (r *farmRunner) command(ev farm.Event) error {
	reply := make(chan error, 1)
	select {
	case r.inbox <- farmReq{ev: &ev, reply: reply}:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("the module's event queue is stuck; see `tandem logs %s`", r.cfg.Name)
	}
	select {
	case err := <-reply:
		return err
	case <-time.After(10 * time.Second):
		return fmt.Errorf("no answer from the module within 10s; see `tandem logs %s`", r.cfg.Name)
	}
}

// boot posts the first event with the persisted record.
func (r *farmRunner) boot() {
	r.post(farm.Event{Kind: farm.Booted, Persisted: r.persisted})
	// Until a heartbeat timeout has passed, a peer not heard yet may be
	// alive and hold buckets: take none before.
	hb := r.a.cluster.Heartbeat
	time.AfterFunc(hb.Timeout+hb.Interval, func() { r.post(farm.Event{Kind: farm.DiscoveryDone}) })
}

func (r *farmRunner) loop(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			r.reconcile()
		case req := <-r.inbox:
			var err error
			if req.ev != nil {
				err = r.apply(ctx, *req.ev)
			}
			if req.reply != nil {
				req.reply <- err
			}
			r.reconcile()
		}
	}
}

func isFarmAdmin(k farm.EventKind) bool {
	return k == farm.StartCmd || k == farm.StopCmd || k == farm.RestartCmd
}

func (r *farmRunner) apply(ctx context.Context, ev farm.Event) error {
	r.mu.Lock()
	prev := r.m
	next, acts, err := farm.Step(prev, ev)
	if err != nil {
		r.mu.Unlock()
		r.log.Add(eventlog.KindAdmin, fmt.Sprintf("%s refused: %v", ev.Kind, err))
		return err
	}
	r.m = next
	if next.State != prev.State {
		r.since = time.Now()
	}
	r.mu.Unlock()
	r.checks.sync(next)

	if isFarmAdmin(ev.Kind) {
		r.log.Add(eventlog.KindAdmin, ev.Kind.String()+" requested")
	}
	if next.State != prev.State {
		kv := []any{}
		if next.Reason != "" {
			kv = append(kv, "reason", next.Reason)
		}
		r.log.Add(eventlog.KindState, fmt.Sprintf("%s -> %s", prev.State, next.State), kv...)
	}
	if next.Persistent != prev.Persistent {
		if err := saveFarmPersistent(r.statePath, next.Persistent); err != nil {
			r.log.Add(eventlog.KindError, err.Error())
		}
	}
	if len(acts) > 0 {
		go r.execute(ctx, acts, next.State)
	}
	if next.State != prev.State || next.Target != prev.Target || next.Started != prev.Started || next.Reason != prev.Reason {
		r.publish()
	}
	return nil
}

// execute carries out a transition's actions in order; a failed start
// script or dataplane setup ends it with TransitionDone{OK: false}.
func (r *farmRunner) execute(ctx context.Context, acts []farm.Action, _ farm.State) {
	sctx := context.WithoutCancel(ctx) // scripts finish even while the agent stops
	for _, act := range acts {
		switch act.Kind {
		case farm.RunScript:
			if act.Stop {
				if res := r.run.RunStop(sctx, act.Script, act.Args, r.cfg.Scripts.StopTimeout); !res.OK() {
					r.log.Add(eventlog.KindError, res.Reason()+" (going on: a stop never blocks the module)")
				}
				continue
			}
			if res := r.run.Run(sctx, act.Script, act.Args, r.cfg.Scripts.Timeout); !res.OK() {
				r.post(farm.Event{Kind: farm.TransitionDone, OK: false, Reason: res.Reason()})
				return
			}
		case farm.SetupFilter:
			if err := r.setup(); err != nil {
				r.log.Add(eventlog.KindError, err.Error())
				r.post(farm.Event{Kind: farm.TransitionDone, OK: false, Reason: err.Error()})
				return
			}
		case farm.TeardownFilter:
			r.teardown()
		case farm.Done:
			r.post(farm.Event{Kind: farm.TransitionDone, OK: true})
		}
	}
}

// iface is the farm interface: configured, or the one holding an address
// in the VIP's subnet.
func (r *farmRunner) iface() (string, error) {
	if r.cfg.Farm.Interface != "" {
		return r.cfg.Farm.Interface, nil
	}
	ifname, err := netvip.InterfaceFor(r.cfg.Farm.VIP)
	if err != nil {
		return "", fmt.Errorf("farm %s: VIP %s: %w (or set interface: in module.yaml)", r.cfg.Name, r.cfg.Farm.VIP, err)
	}
	return ifname, nil
}

func (r *farmRunner) vipHost() netip.Prefix {
	a := r.cfg.Farm.VIP.Addr()
	return netip.PrefixFrom(a, a.BitLen())
}

// setup installs the dataplane with no bucket; the reconciliation that
// follows the transition's end takes them.
func (r *farmRunner) setup() error {
	ifname, err := r.iface()
	if err != nil {
		return err
	}
	r.dpMu.Lock()
	defer r.dpMu.Unlock()
	if r.dp != nil {
		return nil
	}
	// The guard removes the VIP from lo if the agent dies, so a killed
	// agent's node stops answering (its nftables rules stay, harmless
	// without the VIP) and the others take its buckets.
	if err := r.a.guard.send("add", r.vipHost(), "lo"); err != nil {
		return err
	}
	dp, err := r.newDP(farm.DataplaneConfig{
		Module: r.cfg.Name, VIP: r.cfg.Farm.VIP.Addr(), Interface: ifname, Mode: r.cfg.Farm.Hash,
		Handover: r.cfg.Farm.Drain > 0, Log: r.a.log.With("module", r.cfg.Name),
	})
	if err != nil {
		r.a.guard.send("del", r.vipHost(), "lo")
		return err
	}
	r.dp = dp
	r.mu.Lock()
	r.ifname, r.applied, r.dpErr, r.dpUp = ifname, [farm.Buckets]farm.Verdict{}, "", true
	r.mu.Unlock()
	r.log.Add("farm", fmt.Sprintf("VIP %s on lo, answered with %s on %s; no bucket yet", r.cfg.Farm.VIP.Addr(), farm.SharedMAC(r.cfg.Farm.VIP.Addr()), ifname),
		"vip", r.cfg.Farm.VIP.String(), "interface", ifname)
	return nil
}

// teardown gives every bucket away and removes the dataplane (or what a
// crashed agent left of it).
func (r *farmRunner) teardown() {
	r.dpMu.Lock()
	dp := r.dp
	r.dp = nil
	r.dpMu.Unlock()
	r.mu.Lock()
	r.dpUp = false
	released := r.hold.Held.Count()
	r.hold = farm.Holdings{}
	r.plan = farm.Plan{}
	r.applied = [farm.Buckets]farm.Verdict{}
	ifname := r.ifname
	r.mu.Unlock()
	if released > 0 {
		r.publish() // the others may take them at once
	}
	var err error
	if dp != nil {
		err = dp.Teardown()
	} else {
		if ifname == "" {
			ifname, _ = r.iface()
		}
		err = r.cleanup(r.cfg.Name, r.cfg.Farm.VIP.Addr(), ifname)
	}
	r.a.guard.send("del", r.vipHost(), "lo")
	if err != nil {
		r.log.Add(eventlog.KindError, "farm teardown: "+err.Error())
	} else if dp != nil {
		r.log.Add("farm", fmt.Sprintf("gave away %d buckets, removed the VIP and the filter", released))
	}
}

// peerHolds reads what every other node of the farm publishes. A dead
// peer is listed with what it held when last heard: those buckets can be
// taken at once.
func (r *farmRunner) peerHolds() (holds []farm.PeerHold, eligible []string, states map[string]farmPeer) {
	states = map[string]farmPeer{}
	seen := map[string]farm.Set{}
	r.a.mu.Lock()
	for _, n := range r.peers {
		pi, ok := r.a.peerViews[n]
		fp := farmPeer{state: "DOWN"}
		if ok && pi.view.Alive {
			fp.state = "UNKNOWN"
			if pi.payload != nil {
				if v, ok := pi.payload.Modules[r.cfg.Name]; ok && v.Farm != nil {
					fp.state, fp.reason, fp.view = string(v.State), v.Farm.Reason, v.Farm
					fp.compatible = v.Digest == r.digest && pi.payload.ClusterDigest == r.a.clusterDigest
					// Its holdings count even when it is incompatible:
					// never accept what a live node accepts.
					holds = append(holds, farm.PeerHold{Name: n, Alive: true, Held: v.Farm.Held, Drain: v.Farm.Drain, Target: v.Farm.Target})
					seen[n] = v.Farm.Held
					if v.Farm.Eligible && fp.compatible {
						eligible = append(eligible, n)
					}
				}
			}
		}
		states[n] = fp
	}
	r.a.mu.Unlock()
	r.mu.Lock()
	for _, n := range r.peers {
		p := states[n]
		bad := p.view != nil && !p.compatible
		if bad != r.incompat[n] {
			r.incompat[n] = bad
			if bad {
				r.log.Add(eventlog.KindPeer, fmt.Sprintf("%s runs a different cluster file or module.yaml of %s: it does not count as UP here (its buckets are respected); compare them with `tandem module check` on both", n, r.cfg.Name), "peer", n)
			}
		}
		if h, ok := seen[n]; ok {
			r.lastHeld[n] = h
		} else if states[n].state == "DOWN" {
			holds = append(holds, farm.PeerHold{Name: n, Alive: false, Held: r.lastHeld[n]})
			delete(r.lastHeld, n)
		}
	}
	r.mu.Unlock()
	return holds, eligible, states
}

type farmPeer struct {
	state, reason string
	view          *farmView
	compatible    bool
}

// reconcile moves the buckets toward the assignment for the nodes seen UP
// and loads the verdicts into the dataplane.
func (r *farmRunner) reconcile() {
	now := time.Now()
	holds, live, _ := r.peerHolds()
	r.dpMu.Lock()
	defer r.dpMu.Unlock()
	r.mu.Lock()
	m := r.m
	eligible := m.Eligible() && r.dp != nil
	if eligible {
		live = append(live, r.a.node)
	}
	asg := r.table.Assign(live)
	var target farm.Set
	if eligible {
		target = asg.Of(r.a.node)
	}
	if !eligible {
		r.servingSince = time.Time{}
	} else if r.servingSince.IsZero() {
		r.servingSince = now
	}
	before := r.hold
	self := r.a.node
	plan := farm.Reconcile(r.hold, farm.PlanInput{Target: target, Serving: eligible, DrainFor: r.cfg.Farm.Drain, Now: now, Peers: holds,
		Settle: r.settle(), ServingSince: r.servingSince, Before: func(b int, peer string) bool { return r.table.Before(b, peer, self) }})
	r.hold, r.plan, r.assign, r.target = plan.Holdings, plan, asg, target
	verdicts := plan.Verdicts(now)
	changed := verdicts != r.applied
	r.mu.Unlock()

	if r.dp != nil && changed {
		if err := r.dp.Update(verdicts); err != nil {
			r.mu.Lock()
			first := r.dpErr == ""
			r.dpErr = err.Error()
			// Not applied: the filter keeps the previous verdicts; publish
			// what the kernel really does.
			r.hold = before
			r.mu.Unlock()
			if first {
				r.log.Add(eventlog.KindError, "farm: "+err.Error()+" (retrying every second)")
			}
			return
		}
		r.mu.Lock()
		r.applied, r.dpErr = verdicts, ""
		r.mu.Unlock()
	}
	if !plan.Taken.Empty() || !plan.Released.Empty() {
		msg := fmt.Sprintf("buckets: now %d of %d", plan.Held.Count(), farm.Buckets)
		if n := plan.Taken.Count(); n > 0 {
			msg += fmt.Sprintf(", took %d", n)
		}
		if n := plan.Released.Count(); n > 0 {
			msg += fmt.Sprintf(", gave away %d", n)
			if d := plan.Draining(now).Count(); d > 0 {
				msg += fmt.Sprintf(" (draining %d for %s)", d, r.cfg.Farm.Drain)
			}
		}
		if n := plan.Blocked.Count(); n > 0 {
			msg += fmt.Sprintf(", waiting for %d still held by a peer", n)
		}
		slices.Sort(live)
		r.log.Add("farm", msg, "held", plan.Held.Count(), "up", strings.Join(live, ","))
	}
	// Compare with what was published: a drain that ends changes the view
	// although nothing was taken or released.
	if drain := plan.Draining(now); plan.Held != r.pubHeld || drain != r.pubDrain || target != r.published {
		r.published, r.pubHeld, r.pubDrain = target, plan.Held, drain
		r.publish()
	}
	next := plan.NextDrainEnd(now)
	if s := plan.NextSettle(r.settle()); !s.IsZero() && (next.IsZero() || s.Before(next)) {
		next = s
	}
	if !next.IsZero() {
		if r.timer != nil {
			r.timer.Stop()
		}
		r.timer = time.AfterFunc(time.Until(next)+time.Millisecond, r.poke)
	}
}

// settle is how long a bucket is wanted before it is taken from a live
// peer's release (farm.PlanInput.Settle): a few heartbeats, so that every
// node sees the others' targets first.
func (r *farmRunner) settle() time.Duration { return 3 * r.a.cluster.Heartbeat.Interval }

// publish sends this node's views to the peers at once (no membership in
// unit tests).
func (r *farmRunner) publish() {
	if r.a.mem != nil {
		r.a.publish()
	}
}

// view is this module's public state for the heartbeat payload.
func (r *farmRunner) view() modView {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	m := r.m
	return modView{
		State: moduleState(m.State), Target: moduleState(m.Target), Started: m.Started, Digest: r.digest,
		Farm: &farmView{Eligible: m.Eligible() && r.dpUp, Held: r.hold.Held, Drain: r.hold.Draining(now), Target: r.target, Reason: m.Reason},
	}
}

// status is `tandem status` for the module.
func (r *farmRunner) status() api.ModuleStatus {
	_, _, peers := r.peerHolds()
	r.mu.Lock()
	m, since, plan, asg, ifname, dpErr := r.m, r.since, r.plan, r.assign, r.ifname, r.dpErr
	r.mu.Unlock()
	now := time.Now()
	vip := r.cfg.Farm.VIP
	st := api.ModuleStatus{
		Module: r.cfg.Name, Mode: r.cfg.Kind, Node: r.a.node, State: string(m.State), Reason: m.Reason,
		Target: string(m.Target), Peer: strings.Join(r.peers, ","), Sync: "none", UpToDate: true,
		VIPs: []string{vip.String()}, Started: m.Started, Since: since, Networks: map[string]bool{},
	}
	if dpErr != "" && st.Reason == "" {
		st.Reason = "filter update failing: " + dpErr
	}
	counts := asg.Counts()
	fs := &api.FarmStatus{
		VIP: vip.String(), Interface: ifname, MAC: farm.SharedMAC(vip.Addr()).String(), Hash: r.cfg.Farm.Hash,
		Buckets: farm.Buckets, Held: plan.Held.Count(), Draining: plan.Draining(now).Count(), Blocked: plan.Blocked.Count(),
	}
	var peerStates, holders []string
	alive := 0
	for _, n := range r.table.Names() {
		fn := api.FarmNode{Node: n, Weight: r.cfg.Farm.Weight(n), Assigned: counts[n]}
		if n == r.a.node {
			fn.State, fn.Reason, fn.Held = string(m.State), m.Reason, plan.Held.Count()
		} else {
			p := peers[n]
			fn.State, fn.Reason = p.state, p.reason
			if p.view != nil {
				fn.Held = p.view.Held.Count()
			}
			if p.state != "DOWN" {
				alive++
			}
			peerStates = append(peerStates, p.state)
		}
		fn.Share = float64(fn.Held) * 100 / farm.Buckets
		if fn.Held > 0 {
			holders = append(holders, n)
		}
		fs.Nodes = append(fs.Nodes, fn)
	}
	st.Farm = fs
	st.PeerState = strings.Join(peerStates, ",")
	st.PeerAlive = alive == len(r.peers)
	st.VIPHolder = strings.Join(holders, ",")
	st.Checkers = r.checks.status()
	return st
}

// SetAppHealth is the hook for application checkers: a farm node whose
// application is unhealthy leaves the assignment (WAIT, its buckets go to
// the others) until it is healthy again. ok=true with an empty reason
// clears it. Mirror modules have their own checker actions: an error.
func (a *Agent) SetAppHealth(module string, ok bool, reason string) error {
	for _, f := range a.farms {
		if f.cfg.Name == module {
			f.post(farm.Event{Kind: farm.HealthChanged, OK: ok, Reason: reason})
			return nil
		}
	}
	if _, ok := a.byName[module]; ok {
		return fmt.Errorf("module %s is a mirror module: its checkers act through the mirror state machine", module)
	}
	return a.unknown(module)
}

func (a *Agent) farmByName(name string) *farmRunner {
	for _, f := range a.farms {
		if f.cfg.Name == name {
			return f
		}
	}
	return nil
}

// farmCommand runs an administrator command on a farm module.
func (a *Agent) farmCommand(f *farmRunner, verb string) (string, error) {
	var ev farm.Event
	switch verb {
	case "start":
		ev.Kind = farm.StartCmd
	case "stop":
		ev.Kind = farm.StopCmd
	case "restart":
		ev.Kind = farm.RestartCmd
	default:
		return "", fmt.Errorf("%s is a farm module: %s does not apply (start, stop, restart)", f.cfg.Name, verb)
	}
	if err := f.command(ev); err != nil {
		return "", fmt.Errorf("%s %s on %s refused: %w", verb, f.cfg.Name, a.node, err)
	}
	m := f.machine()
	msg := fmt.Sprintf("%s %s on %s: %s", verb, f.cfg.Name, a.node, m.State)
	if m.Target != "" {
		msg += " -> " + string(m.Target)
	}
	if m.Reason != "" {
		msg += " (" + m.Reason + ")"
	}
	return msg, nil
}

// farmsBusy reports whether a farm module still runs or is in a transition.
func (a *Agent) farmsBusy() bool {
	for _, f := range a.farms {
		m := f.machine()
		if m.Running || m.Target != "" {
			return true
		}
	}
	return false
}

func moduleState(s farm.State) module.State { return module.State(s) }
