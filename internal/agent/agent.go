// Package agent is the node process: it loads the modules of this node, feeds
// their state machines with heartbeats, commands and outcomes, carries out
// the actions they return, and serves the control API.
package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/farm"
	"github.com/tandem-ha/tandem/internal/membership"
	"github.com/tandem-ha/tandem/internal/module"
	"github.com/tandem-ha/tandem/internal/netvip"
)

// Options configure one agent.
type Options struct {
	ConfigPath string
	Node       string // empty: the node whose address is configured here
	Logger     *slog.Logger
}

// Agent is one running node.
type Agent struct {
	log      *slog.Logger
	cluster  *config.Cluster
	node     string
	settings config.NodeSettings
	mods     []*modRunner
	farms    []*farmRunner // farm modules (farm.go)
	byName   map[string]*modRunner
	mem      *membership.Membership
	guard    *guard
	key      []byte
	mux      *replMux

	clusterFields []config.Field
	clusterDigest string

	mu        sync.Mutex
	peerViews map[string]peerInfo // node name -> last decoded view
	isolated  bool
	netIfaces []string

	vipMu sync.Mutex // VIP additions and removals of every module
}

// isIsolated: every cluster network's interface lost its carrier.
func (a *Agent) isIsolated() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.isolated
}

type peerInfo struct {
	view    membership.PeerView
	payload *payload
	bad     string // undecodable payload
}

// Run runs the agent until ctx is cancelled, then stops every module
// cleanly (stop scripts, VIPs removed) before returning.
func Run(ctx context.Context, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	c, err := config.LoadCluster(opts.ConfigPath)
	if err != nil {
		return err
	}
	node := opts.Node
	if node == "" {
		if node, err = c.LocalNode(); err != nil {
			return fmt.Errorf("%w (or pass --node NAME)", err)
		}
	}
	self, ok := c.Node(node)
	if !ok {
		return fmt.Errorf("%s: node %q is not in the cluster file (nodes: %v)", c.File, node, c.NodeNames())
	}
	key, err := config.LoadKey(c.KeyFile)
	if err != nil {
		return err
	}
	mods, err := config.LoadModules(c, node)
	if err != nil {
		return err
	}
	a := &Agent{
		log: log.With("node", node), cluster: c, node: node, settings: c.Resolved(node),
		byName: map[string]*modRunner{}, peerViews: map[string]peerInfo{}, key: key,
	}
	a.mux = newReplMux(a.log)
	a.clusterFields = c.Fields()
	a.clusterDigest = digestHex(a.clusterFields)
	if err := os.MkdirAll(a.settings.StateDir, 0o700); err != nil {
		return fmt.Errorf("state directory %s: %w", a.settings.StateDir, err)
	}

	nets := make([]membership.Network, len(c.Networks))
	for i, n := range c.Networks {
		nets[i] = membership.Network{Name: n, Local: self.Addresses[n]}
		if ifname, err := netvip.InterfaceForAddr(self.Addresses[n]); err == nil {
			a.netIfaces = append(a.netIfaces, ifname)
		} else {
			a.log.Warn("cluster network address not found on any interface; isolation detection ignores it",
				"network", n, "address", self.Addresses[n], "err", err)
		}
	}
	var peers []membership.Peer
	for _, n := range c.Nodes {
		if n.Name == node {
			continue
		}
		addrs := make([]netip.Addr, len(c.Networks))
		for i, net := range c.Networks {
			addrs[i] = n.Addresses[net]
		}
		peers = append(peers, membership.Peer{Name: n.Name, Addrs: addrs})
	}
	a.mem, err = membership.New(membership.Config{
		Cluster: c.Name, Self: node, Networks: nets, Peers: peers, Port: c.Heartbeat.Port,
		Key: key, Interval: c.Heartbeat.Interval, Timeout: c.Heartbeat.Timeout,
		StateDir: a.settings.StateDir, Logger: a.log,
	})
	if err != nil {
		return err
	}
	defer a.mem.Close()

	a.guard = newGuard(a.log, guardDelay, guardCommand)
	defer a.guard.close()

	for _, m := range mods {
		if m.Kind == config.KindFarm {
			f, err := newFarmRunner(a, m)
			if err != nil {
				return err
			}
			a.farms = append(a.farms, f)
			continue
		}
		r, err := newModRunner(a, m)
		if err != nil {
			return err
		}
		a.mods = append(a.mods, r)
		a.byName[m.Name] = r
	}

	runCtx, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	var wg sync.WaitGroup
	goRun := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }

	apiErr := make(chan error, 2)
	goRun(func() {
		if err := api.Serve(runCtx, a.settings.Socket, a); err != nil {
			apiErr <- fmt.Errorf("control API on %s: %w", a.settings.Socket, err)
		}
	})
	if a.settings.HealthListen != "" {
		goRun(func() {
			if err := api.ServeHealth(runCtx, a.settings.HealthListen, a); err != nil {
				apiErr <- fmt.Errorf("health listener %s: %w", a.settings.HealthListen, err)
			}
		})
	}
	goRun(func() { a.mem.Run(runCtx) })
	if a.replicates() {
		addr := netip.AddrPortFrom(self.Addresses[c.Replication.Network], uint16(c.Replication.Port))
		ln, err := net.Listen("tcp", addr.String())
		if err != nil {
			stopAll()
			wg.Wait()
			return fmt.Errorf("replication listener %s: %w (is another agent using replication.port %d?)", addr, err, c.Replication.Port)
		}
		goRun(func() { a.mux.serve(runCtx, ln) })
	}
	for _, r := range a.mods {
		goRun(func() { r.loop(runCtx) })
		r.post(module.Event{Kind: module.Boot})
	}
	for _, f := range a.farms {
		goRun(func() { f.loop(runCtx) })
		f.boot()
	}
	if len(a.netIfaces) > 0 {
		goRun(func() { a.watchCarrier(runCtx) })
	}
	goRun(func() { a.watchPeers(runCtx) })
	goRun(func() { a.watchVIPs(runCtx) })
	a.publish()
	a.log.Info("agent started", "modules", len(a.mods), "socket", a.settings.Socket,
		"interval", c.Heartbeat.Interval, "timeout", c.Heartbeat.Timeout)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-apiErr:
		a.log.Error("stopping the agent", "err", runErr)
	}
	a.shutdown()
	stopAll()
	a.mem.Close()
	wg.Wait()
	a.saveSums()
	for _, r := range a.mods {
		r.checks.close()
	}
	for _, f := range a.farms {
		f.checks.close()
	}
	a.log.Info("agent stopped")
	return runErr
}

// replicates reports whether a module of this node replicates directories.
func (a *Agent) replicates() bool {
	for _, r := range a.mods {
		if len(r.cfg.Directories) > 0 {
			return true
		}
	}
	return false
}

// shutdown stops every module (scripts, VIPs) and waits, bounded by the
// stop timeouts, until none runs.
func (a *Agent) shutdown() {
	var limit time.Duration
	for _, r := range a.mods {
		r.post(module.Event{Kind: module.Shutdown})
		limit = max(limit, 3*r.cfg.Scripts.StopTimeout+5*time.Second)
	}
	for _, f := range a.farms {
		f.post(farm.Event{Kind: farm.Shutdown})
		limit = max(limit, 3*f.cfg.Scripts.StopTimeout+5*time.Second)
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		busy := a.farmsBusy()
		for _, r := range a.mods {
			m := r.machine()
			if m.State.Running() || m.Target != "" {
				busy = true
			}
		}
		if !busy {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Let the peers see our final states before we go silent.
	a.publish()
	time.Sleep(50 * time.Millisecond)
}

// publish sends this node's view to the peers with the next heartbeat, at once.
func (a *Agent) publish() {
	b, err := json.Marshal(a.payloadNow())
	if err != nil {
		a.log.Error("encode heartbeat payload", "err", err)
		return
	}
	a.mem.SetPayload(b)
}

// payloadNow is this node's view for its peers.
func (a *Agent) payloadNow() payload {
	p := payload{ClusterDigest: a.clusterDigest, Modules: map[string]modView{}}
	a.mu.Lock()
	for _, pi := range a.peerViews {
		if pi.payload != nil && pi.payload.ClusterDigest != a.clusterDigest {
			p.ClusterFields = a.clusterFields
		}
	}
	views := a.peerViews
	a.mu.Unlock()
	for _, r := range a.mods {
		v := r.view()
		if pi, ok := views[r.peer]; ok && pi.payload != nil {
			if pv, ok := pi.payload.Modules[r.cfg.Name]; ok && pv.Digest != v.Digest {
				v.Fields = r.fields
			}
		}
		p.Modules[r.cfg.Name] = v
	}
	for _, f := range a.farms {
		p.Modules[f.cfg.Name] = f.view()
	}
	return p
}

// watchPeers turns membership changes into per-module peer views.
func (a *Agent) watchPeers(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.mem.Changed():
		}
		views := a.mem.Peers()
		a.mu.Lock()
		republish := false
		for _, v := range views {
			pi := peerInfo{view: v}
			if v.Alive {
				p, err := decodePayload(v.Payload)
				if err != nil {
					pi.bad = err.Error()
				} else {
					pi.payload = p
					old := a.peerViews[v.Name].payload
					if p.ClusterDigest != a.clusterDigest && (old == nil || old.ClusterDigest == a.clusterDigest) {
						republish = true // start sending our field list
					}
				}
			}
			a.peerViews[v.Name] = pi
		}
		a.mu.Unlock()
		for _, r := range a.mods {
			r.post(module.Event{Kind: module.PeerChanged, Peer: a.peerFor(r)})
		}
		for _, f := range a.farms {
			f.poke()
		}
		if republish {
			a.publish()
		}
	}
}

// peerFor derives the state machine's view of a module's peer.
func (a *Agent) peerFor(r *modRunner) module.Peer {
	a.mu.Lock()
	pi, ok := a.peerViews[r.peer]
	a.mu.Unlock()
	if !ok || !pi.view.Alive {
		return module.Peer{}
	}
	p := module.Peer{Alive: true}
	switch {
	case pi.bad != "":
		p.Incompatible = "its heartbeat payload is unreadable (" + pi.bad + "): are both nodes running the same tandem version?"
		return p
	case pi.payload.ClusterDigest != a.clusterDigest:
		p.Incompatible = diffSummary("cluster file", a.clusterFields, pi.payload.ClusterFields)
		return p
	}
	v, ok := pi.payload.Modules[r.cfg.Name]
	if !ok {
		return p
	}
	p.Known = true
	if v.Digest != r.digest {
		p.Incompatible = diffSummary("module.yaml of "+r.cfg.Name, r.fields, v.Fields)
	}
	p.State, p.Target, p.Epoch, p.UpToDate = v.State, v.Target, v.Epoch, v.UpToDate
	p.Started, p.Handover, p.SwapRequest = v.Started, v.Handover, v.SwapReq
	p.Claim, p.Ack = v.Claim, v.Ack
	p.FailoverOff = v.FailoverOff
	return p
}

// peerModView is the raw view of a module on its peer, for status.
func (a *Agent) peerModView(r *modRunner) (membership.PeerView, modView, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	pi, ok := a.peerViews[r.peer]
	if !ok || pi.payload == nil {
		return pi.view, modView{}, false
	}
	v, ok := pi.payload.Modules[r.cfg.Name]
	return pi.view, v, ok
}

// watchCarrier marks the node isolated when every cluster network's
// interface lost its carrier: it then stops serving at once, before the
// peer's timeout lets the peer take over.
func (a *Agent) watchCarrier(ctx context.Context) {
	up := map[string]bool{}
	err := netvip.WatchCarrier(ctx, a.netIfaces, func(ifname string, isUp bool) {
		a.mu.Lock()
		up[ifname] = isUp
		isolated := len(up) == len(a.netIfaces)
		for _, v := range up {
			if v {
				isolated = false
			}
		}
		changed := isolated != a.isolated
		a.isolated = isolated
		a.mu.Unlock()
		if changed {
			a.log.Warn("cluster network carrier changed", "interface", ifname, "up", isUp, "isolated", isolated)
			for _, r := range a.mods {
				r.post(module.Event{Kind: module.IsolationChanged, Isolated: isolated})
			}
			for _, f := range a.farms {
				f.post(farm.Event{Kind: farm.IsolationChanged, Isolated: isolated})
			}
		}
	})
	if err != nil && ctx.Err() == nil {
		a.log.Error("carrier watch failed; isolation detection is off", "err", err)
	}
}

// watchVIPs publishes which VIPs are present here and reports a VIP present
// on two nodes at once.
func (a *Agent) watchVIPs(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastWarn := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed := false
		for _, r := range a.mods {
			// Retry a replication stream that failed (after its backoff).
			r.repl.reconcile(r.machine())
			if r.refreshHeld() {
				changed = true
			}
			_, pv, ok := a.peerModView(r)
			if !ok {
				continue
			}
			for _, h := range r.heldNow() {
				if slices.Contains(pv.Held, h) && time.Since(lastWarn[h]) > time.Minute {
					lastWarn[h] = time.Now()
					r.log.Add("error", "VIP "+h+" is present on both "+a.node+" and "+r.peer+" at once",
						"vip", h, "state", string(r.machine().State))
				}
			}
		}
		if changed {
			a.publish()
		}
	}
}

// Status implements api.Backend.
func (a *Agent) Status(name string) (api.Status, error) {
	st := api.Status{Cluster: a.cluster.Name, Node: a.node, Modules: []api.ModuleStatus{}}
	for _, r := range a.mods {
		if name != "" && r.cfg.Name != name {
			continue
		}
		st.Modules = append(st.Modules, r.status())
	}
	for _, f := range a.farms {
		if name == "" || f.cfg.Name == name {
			st.Modules = append(st.Modules, f.status())
		}
	}
	if name != "" && len(st.Modules) == 0 {
		return st, a.unknown(name)
	}
	return st, nil
}

func (a *Agent) unknown(name string) error {
	names := make([]string, 0, len(a.mods))
	for _, r := range a.mods {
		names = append(names, r.cfg.Name)
	}
	for _, f := range a.farms {
		names = append(names, f.cfg.Name)
	}
	return fmt.Errorf("%w %q on %s (modules here: %v)", api.ErrUnknownModule, name, a.node, names)
}

// Command implements api.Backend.
func (a *Agent) Command(name, verb string, opts api.CommandOptions) (string, error) {
	if f := a.farmByName(name); f != nil {
		return a.farmCommand(f, verb)
	}
	r, ok := a.byName[name]
	if !ok {
		return "", a.unknown(name)
	}
	ev := module.Event{}
	switch verb {
	case "start":
		ev.Kind = module.Start
	case "stop":
		ev.Kind = module.StopCmd
	case "restart":
		ev.Kind = module.Restart
	case "prim":
		ev.Kind, ev.Force = module.PrimCmd, opts.Force
	case "second":
		ev.Kind = module.SecondCmd
		if opts.Full && len(r.cfg.Directories) > 0 {
			// Before the SECOND answers the primary's first question.
			if err := r.repl.requestFull(); err != nil {
				return "", fmt.Errorf("second --full %s on %s: %w", name, a.node, err)
			}
		}
	case "swap":
		ev.Kind = module.SwapCmd
	case "maintenance":
		var err error
		if ev, err = maintenanceEvent(opts); err != nil {
			return "", err
		}
	case "reset-loop":
		ev.Kind = module.ResetLoopCmd
	default:
		return "", fmt.Errorf("unknown command %q (start, stop, restart, prim, second, swap, maintenance, reset-loop)", verb)
	}
	if err := r.command(ev); err != nil {
		return "", fmt.Errorf("%s %s on %s refused: %w", verb, name, a.node, err)
	}
	m := r.machine()
	switch verb {
	case "maintenance":
		_, _, mt := r.checks.status(m, time.Now())
		return fmt.Sprintf("maintenance of %s on %s: checkers %s, failover %s, boot start %s", name, a.node, mt.Checkers, mt.Failover, mt.BootStart), nil
	case "reset-loop":
		return fmt.Sprintf("reset-loop %s on %s: checker restarts and failovers counted from zero (module %s)", name, a.node, m.State), nil
	}
	msg := fmt.Sprintf("%s %s on %s: %s", verb, name, a.node, m.State)
	if m.Target != "" {
		msg += " -> " + string(m.Target)
	}
	if m.Reason != "" {
		msg += " (" + m.Reason + ")"
	}
	if verb == "second" && opts.Full {
		if len(r.cfg.Directories) > 0 {
			msg += "; --full: the primary compares every file of this copy with its own"
		} else {
			msg += "; --full: this module replicates no directory, there is nothing to resynchronise"
		}
	}
	return msg, nil
}

// LogPath implements api.Backend.
func (a *Agent) LogPath(name string) (string, error) {
	if f := a.farmByName(name); f != nil {
		return f.log.Path(), nil
	}
	r, ok := a.byName[name]
	if !ok {
		return "", a.unknown(name)
	}
	return r.log.Path(), nil
}

func modDir(stateDir, name string) string { return filepath.Join(stateDir, "modules", name) }
