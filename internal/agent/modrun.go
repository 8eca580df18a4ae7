package agent

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/module"
	"github.com/tandem-ha/tandem/internal/netvip"
	"github.com/tandem-ha/tandem/internal/runner"
)

// modRunner owns one module's state machine: a single goroutine applies
// events in order; transitions (scripts, VIPs) run in a second goroutine and
// report back with a TransitionDone event.
type modRunner struct {
	a         *Agent
	cfg       *config.Module
	peer      string
	log       *eventlog.Log
	run       *runner.Runner
	statePath string
	saved     module.Persistent // the record on disk
	fields    []config.Field
	digest    string
	inbox     chan request
	repl      *replica
	checks    *modCheckers

	mu    sync.Mutex
	m     module.Machine
	since time.Time
	held  []string // VIPs present on this node, refreshed periodically
}

type request struct {
	ev    module.Event
	reply chan error // nil for internal events
}

func newModRunner(a *Agent, m *config.Module) (*modRunner, error) {
	dir := modDir(a.settings.StateDir, m.Name)
	log, err := eventlog.Open(filepath.Join(dir, "events.log"), m.Name, a.node)
	if err != nil {
		return nil, err
	}
	log.SetMirror(a.log.With("module", m.Name))
	r := &modRunner{
		a: a, cfg: m, peer: m.Peer(a.node), log: log,
		statePath: filepath.Join(dir, "state.json"),
		fields:    m.Fields(), inbox: make(chan request, 256), since: time.Now(),
	}
	r.digest = digestHex(r.fields)
	r.repl = newReplica(r)
	vips := make([]string, len(m.VIPs))
	for i, v := range m.VIPs {
		vips[i] = v.Address.String()
	}
	r.run = &runner.Runner{
		BinDir: filepath.Join(m.Dir, "bin"),
		Env: []string{
			"TANDEM_MODULE=" + m.Name, "TANDEM_NODE=" + a.node, "TANDEM_PEER=" + r.peer,
			"TANDEM_MODULE_DIR=" + m.Dir, "TANDEM_VIPS=" + strings.Join(vips, " "),
			"TANDEM_STATE_DIR=" + dir,
		},
		Log: log,
	}
	p, err := loadPersistent(r.statePath)
	if err != nil {
		return nil, err
	}
	r.saved = p
	// The node that wins ties: default_primary, the last primary with
	// "lastprim", else the first listed node.
	preferred := m.DefaultPrimary == a.node || (m.DefaultPrimary == "" && m.Nodes[0] == a.node) ||
		(m.DefaultPrimary == config.LastPrim && p.State.Serving())
	r.m = module.New(a.node, r.peer, preferred, p)
	l := m.Loop()
	r.m.Loop = module.LoopPolicy{Restarts: l.Restarts, Failovers: l.Failovers, Window: l.Window}
	if r.checks, err = newModCheckers(r, dir); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *modRunner) machine() module.Machine {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m
}

// post queues an internal event; it never blocks the caller for long.
func (r *modRunner) post(ev module.Event) {
	select {
	case r.inbox <- request{ev: ev}:
	case <-time.After(5 * time.Second):
		r.log.Add("error", "event queue full, dropped "+ev.Kind.String())
	}
}

// command applies an administrator command and returns its refusal, if any.
func (r *modRunner) command(ev module.Event) error {
	reply := make(chan error, 1)
	select {
	case r.inbox <- request{ev: ev, reply: reply}:
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

func (r *modRunner) loop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-r.inbox:
			err := r.apply(ctx, req.ev)
			if req.reply != nil {
				req.reply <- err
			}
		}
	}
}

func (r *modRunner) apply(ctx context.Context, ev module.Event) error {
	r.mu.Lock()
	prev := r.m
	next, acts, err := module.Step(prev, ev)
	if err != nil {
		r.mu.Unlock()
		if ev.Kind != module.PeerChanged {
			r.log.Add("admin", fmt.Sprintf("%s refused: %v", ev.Kind, err))
		}
		return err
	}
	r.m = next
	if next.State != prev.State {
		r.since = time.Now()
	}
	r.mu.Unlock()
	r.checks.sync(next)

	if isAdmin(ev.Kind) {
		msg := ev.Kind.String()
		if ev.Force {
			msg += " --force"
		}
		r.log.Add("admin", msg+" requested")
	}
	if next.State != prev.State {
		kv := []any{"epoch", next.Epoch}
		if next.Reason != "" {
			kv = append(kv, "reason", next.Reason)
		}
		r.log.Add("state", fmt.Sprintf("%s -> %s", prev.State, next.State), kv...)
	}
	if !r.saved.SameRecovery(next.Persistent) {
		if err := savePersistent(r.statePath, next.Persistent); err != nil {
			r.log.Add("error", err.Error())
		} else {
			r.saved = next.Persistent
		}
	}
	if next.Peer.Incompatible != "" && next.Peer.Incompatible != prev.Peer.Incompatible {
		r.log.Add("peer", "refusing to pair with "+r.peer+": "+next.Peer.Incompatible)
	}
	if next.Peer.Alive != prev.Peer.Alive {
		r.log.Add("peer", fmt.Sprintf("peer %s is %s", r.peer, map[bool]string{true: "up", false: "down"}[next.Peer.Alive]))
	}

	var transition []module.Action
	for _, act := range acts {
		switch act.Kind {
		case module.Log:
			kind := "info"
			if act.Level == "error" || act.Level == "warn" {
				kind = act.Level
			}
			r.log.Add(kind, act.Msg)
		case module.ArmDiscovery:
			hb := r.a.cluster.Heartbeat
			time.AfterFunc(hb.Timeout+hb.Interval, func() { r.post(module.Event{Kind: module.DiscoveryDone}) })
		default:
			transition = append(transition, act)
		}
	}
	switch {
	case prev.State.Serving() && next.Target != "" && !next.Target.Serving():
		// Leaving the serving role: an unacknowledged durable write fails.
		for _, d := range r.repl.dirs {
			d.rep.demoting.Store(true)
		}
	case next.State.Serving() && next.Target == "":
		// Serving on (a fence during a transition the node did not leave
		// by): the data here is the reference again.
		for _, d := range r.repl.dirs {
			d.rep.demoting.Store(false)
		}
	}
	if len(transition) > 0 {
		if transition[len(transition)-1].Kind == module.Done {
			go r.execute(ctx, transition, next.State)
		} else {
			r.execute(ctx, transition, next.State)
		}
	}
	// Without directories there is nothing to copy: a new SECOND is in sync.
	if len(r.cfg.Directories) == 0 && next.State == module.Second && next.Target == "" && next.Sync == module.SyncResyncing {
		go r.post(module.Event{Kind: module.SyncDone})
	}
	r.repl.reconcile(next)
	if next.State != prev.State || next.Target != prev.Target || next.Epoch != prev.Epoch ||
		next.UpToDate != prev.UpToDate || next.Started != prev.Started || next.Handover != prev.Handover ||
		next.SwapRequest != prev.SwapRequest || next.Sync != prev.Sync || next.Claim != prev.Claim || next.Ack != prev.Ack ||
		next.Maint != prev.Maint {
		r.a.publish()
	}
	return nil
}

func isAdmin(k module.EventKind) bool {
	switch k {
	case module.Start, module.StopCmd, module.Restart, module.PrimCmd, module.SecondCmd, module.SwapCmd,
		module.MaintenanceCmd, module.ResetLoopCmd:
		return true
	}
	return false
}

// execute carries out a transition's actions in order. A failed start
// script or VIP addition ends it with TransitionDone{OK: false}.
func (r *modRunner) execute(ctx context.Context, acts []module.Action, from module.State) {
	// Scripts must finish even while the agent shuts down.
	sctx := context.WithoutCancel(ctx)
	for _, act := range acts {
		switch act.Kind {
		case module.RunScript:
			var res runner.Result
			if act.Stop {
				res = r.run.RunStop(sctx, act.Script, act.Args, r.cfg.Scripts.StopTimeout)
				if !res.OK() {
					r.log.Add("error", res.Reason()+" (going on: a stop never blocks the module)")
				}
				continue
			}
			res = r.run.Run(sctx, act.Script, act.Args, r.cfg.Scripts.Timeout)
			if !res.OK() {
				r.post(module.Event{Kind: module.TransitionDone, OK: false, Reason: res.Reason()})
				return
			}
		case module.AddVIPs:
			if err := r.addVIPs(); err != nil {
				r.post(module.Event{Kind: module.TransitionDone, OK: false, Reason: err.Error()})
				return
			}
		case module.RemoveVIPs:
			r.removeVIPs()
		case module.FenceData:
			if len(r.cfg.Directories) > 0 {
				r.repl.fence()
			}
		case module.MountData, module.UnmountData, module.StartReceiver, module.StopReceiver:
			if err := r.replica(act.Kind); err != nil {
				r.post(module.Event{Kind: module.TransitionDone, OK: false, Reason: err.Error()})
				return
			}
		case module.Done:
			r.post(module.Event{Kind: module.TransitionDone, OK: true})
		}
	}
}

func (r *modRunner) vipIface(v config.VIP) (string, error) {
	if v.Interface != "" {
		return v.Interface, nil
	}
	return netvip.InterfaceFor(v.Address)
}

func (r *modRunner) addVIPs() error {
	// An isolated node must not take an address its peer may hold: a
	// transition toward service that was under way when every cluster
	// network went down adds nothing, and the node leaves the service when
	// it ends. vipMu orders this check against the removal the isolation
	// triggers.
	r.a.vipMu.Lock()
	defer r.a.vipMu.Unlock()
	if r.a.isIsolated() {
		r.log.Add("warn", "VIPs not added: every cluster network of this node is down (isolated)")
		return nil
	}
	for _, v := range r.cfg.VIPs {
		ifname, err := r.vipIface(v)
		if err != nil {
			return fmt.Errorf("VIP %s: %w", v.Address, err)
		}
		// Tell the guard first: a crash right after the add must not leak it.
		if err := r.a.guard.send("add", v.Address, ifname); err != nil {
			return fmt.Errorf("VIP %s: %w", v.Address, err)
		}
		if err := netvip.Add(v.Address, ifname); err != nil {
			return fmt.Errorf("add VIP %s on %s: %w", v.Address, ifname, err)
		}
		r.log.Add("vip", "added "+v.Address.String()+" on "+ifname+" and announced it", "vip", v.Address.String(), "interface", ifname)
	}
	r.refreshHeld()
	return nil
}

func (r *modRunner) removeVIPs() {
	r.a.vipMu.Lock()
	defer r.a.vipMu.Unlock()
	for _, v := range r.cfg.VIPs {
		ifname, err := r.vipIface(v)
		if err != nil {
			// The interface may be gone; remove the address wherever it is.
			ifname = ""
		}
		present, _ := netvip.Present(v.Address, ifname)
		if err := netvip.Remove(v.Address, ifname); err != nil {
			r.log.Add("error", fmt.Sprintf("remove VIP %s from %s: %v", v.Address, ifname, err))
			continue
		}
		if ifname != "" {
			r.a.guard.send("del", v.Address, ifname)
		}
		if present {
			r.log.Add("vip", "removed "+v.Address.String(), "vip", v.Address.String(), "interface", ifname)
		}
	}
	r.refreshHeld()
}

// refreshHeld re-reads which VIPs are present here; reports a change.
func (r *modRunner) refreshHeld() bool {
	prefixes := make([]netip.Prefix, len(r.cfg.VIPs))
	for i, v := range r.cfg.VIPs {
		prefixes[i] = v.Address
	}
	held := netvip.Held(prefixes)
	var now []string
	for _, p := range prefixes {
		if held[p] {
			now = append(now, p.String())
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := !slices.Equal(now, r.held)
	r.held = now
	return changed
}

func (r *modRunner) heldNow() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.held)
}

// view is this module's public state for the heartbeat payload.
func (r *modRunner) view() modView {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.m
	return modView{
		State: m.State, Target: m.Target, Epoch: m.Epoch, UpToDate: m.UpToDate, Started: m.Started,
		Handover: m.Handover, SwapReq: m.SwapRequest, Sync: m.Sync, Digest: r.digest, Held: slices.Clone(r.held),
		Claim: m.Claim, Ack: m.Ack, FailoverOff: m.Maint.FailoverOff,
		Resync: r.repl.progressStatus(),
	}
}

func (r *modRunner) status() api.ModuleStatus {
	r.mu.Lock()
	m, since := r.m, r.since
	r.mu.Unlock()
	pv, peerMod, known := r.a.peerModView(r)
	vips := make([]string, len(r.cfg.VIPs))
	for i, v := range r.cfg.VIPs {
		vips[i] = v.Address.String()
	}
	st := api.ModuleStatus{
		Module: r.cfg.Name, Mode: r.cfg.Kind, Node: r.a.node, State: string(m.State), Reason: m.Reason,
		Target: string(m.Target), Peer: r.peer, PeerAlive: pv.Alive, Sync: string(m.Sync),
		UpToDate: m.UpToDate, DefaultPrimary: r.cfg.DefaultPrimary, VIPs: vips, Epoch: m.Epoch,
		Started: m.Started, Since: since, Networks: map[string]bool{},
	}
	if st.Sync == "" {
		st.Sync = string(module.SyncNone)
	}
	st.Checkers, st.Loop, st.Maintenance = r.checks.status(m, time.Now())
	if m.Sync == module.SyncSynced {
		st.ResyncPercent = 100
	}
	if len(r.cfg.Directories) > 0 {
		st.Directories, st.SyncMode, st.MaxLagBytes = r.cfg.Directories, r.cfg.Sync, r.cfg.Replication.MaxLag
		ops, bytes := r.repl.lag()
		st.LagOps, st.LagBytes = int64(ops), int64(bytes)
	}
	// On the primary, sync describes its SECOND's copy.
	if m.State == module.Prim && known && pv.Alive && peerMod.Sync != "" {
		st.Sync = string(peerMod.Sync)
		if peerMod.Sync == module.SyncSynced {
			st.ResyncPercent = 100
		}
	}
	// The resynchronisation runs on the primary; the SECOND shows it too.
	st.Resync = r.repl.progressStatus()
	if st.Resync == nil && m.State == module.Second && known && pv.Alive {
		st.Resync = peerMod.Resync
	}
	if rs := st.Resync; rs != nil && st.Sync == string(module.SyncResyncing) && rs.BytesTotal > 0 {
		st.ResyncPercent = min(99.9, 100*float64(rs.BytesDone)/float64(rs.BytesTotal))
	}
	switch {
	case !pv.Alive:
		st.PeerState = "DOWN"
	case !known:
		st.PeerState = "UNKNOWN"
	default:
		st.PeerState = string(peerMod.State)
	}
	for i, n := range r.a.cluster.Networks {
		st.Networks[n] = i < len(pv.Networks) && pv.Networks[i]
	}
	switch {
	case m.State.Serving():
		st.VIPHolder = r.a.node
	case known && pv.Alive && peerMod.State.Serving():
		st.VIPHolder = r.peer
	}
	return st
}

// replica carries out the replication actions of a transition; a module
// without directories has nothing to do.
func (r *modRunner) replica(kind module.ActionKind) error {
	if len(r.cfg.Directories) == 0 {
		return nil
	}
	switch kind {
	case module.MountData:
		return r.repl.mount(r.machine())
	case module.UnmountData:
		r.repl.unmount()
	case module.StartReceiver:
		return r.repl.startReceiver(r.machine())
	case module.StopReceiver:
		r.repl.stopReceiver()
	}
	return nil
}
