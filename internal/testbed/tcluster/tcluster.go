// Package tcluster runs a two-node Tandem cluster in the test bed: real
// agents, a mirror module whose start_prim runs a TCP service answering with
// the node name, and a client host that reaches it through the VIP. Shared
// by the end-to-end tests, the benchmarks and the demo.
package tcluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed"
	"golang.org/x/sys/unix"
)

// Binaries are the programs a cluster runs. Only Tandem is always needed:
// Nameserver only for the default start_prim (not when Options.Scripts
// replaces it), Writer only for the tests that run it.
type Binaries struct {
	Tandem     string // the tandem binary
	Nameserver string // test/apps/nameserver
	Writer     string // test/apps/writer (the no-loss workload)
	// SQLiteWriter is test/apps/sqlitewriter (a real SQLite application).
	SQLiteWriter string
}

// Build compiles tandem and the test service into dir (CGO off: static).
func Build(dir string) (Binaries, error) {
	b := Binaries{Tandem: filepath.Join(dir, "tandem"), Nameserver: filepath.Join(dir, "nameserver"), Writer: filepath.Join(dir, "writer"),
		SQLiteWriter: filepath.Join(dir, "sqlitewriter")}
	if err := build(b.Tandem, "./cmd/tandem"); err != nil {
		return b, err
	}
	if err := build(b.Writer, "./test/apps/writer"); err != nil {
		return b, err
	}
	if err := build(b.SQLiteWriter, "./test/apps/sqlitewriter"); err != nil {
		return b, err
	}
	return b, build(b.Nameserver, "./test/apps/nameserver")
}

func build(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// RepoRoot is the module root (where go.mod is).
func RepoRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return "."
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// Module is the test module's name; AppPort the service's TCP port.
const (
	Module  = "web"
	AppPort = 7000
)

// Options shape the cluster and its module.
type Options struct {
	Name              string            // cluster name; default e2e
	Interval, Timeout string            // heartbeat; default 100ms / 600ms
	VIPs              []string          // default 192.0.2.100/24
	Scripts           map[string]string // extra or replacing scripts in bin/
	HealthListen      string
	ExtraCluster      string // appended to the cluster file
	// ScriptTimeout and StopTimeout go to module.yaml's scripts section;
	// default 10s / 5s.
	ScriptTimeout, StopTimeout string
	// Directories are replicated by the module. Each host gets its own
	// backing directory (bind-mounted at the same path inside the host), so
	// the two copies are distinct although the hosts share one disk.
	Directories []string
	// ModuleExtra is appended to module.yaml (e.g. "sync: write\n").
	ModuleExtra string
	// DefaultPrimary is the test module's default_primary: "" and
	// NoDefaultPrimary write none (alpha, listed first, wins ties; the
	// module stays where it runs).
	DefaultPrimary string
	// Modules are extra mirror modules beside Module (see ModuleSpec).
	Modules []ModuleSpec
}

// Node is one cluster node of the bed.
type Node struct {
	name string
	Host *testbed.Host
	proc *testbed.Proc
	api  *api.Client
	cfg  string
	app  string // pid file of the test service
}

// Cluster is a running two-node test cluster.
type Cluster struct {
	t      testbed.TB
	bins   Binaries
	bed    *testbed.Bed
	dir    string
	nodes  map[string]*Node
	Client *testbed.Host
	vips   []netip.Prefix
	extra  []ModuleSpec // Options.Modules, defaults filled in

	stopOnce    sync.Mutex
	sampleMu    sync.Mutex // held during one sample; Pause/Resume take it
	paused      bool       // guarded by sampleMu
	samplerStop chan struct{}
	samplerDone chan struct{}
	samples     atomic.Int64
	violations  atomic.Int64
	violation   atomic.Value // string
}

const startPrim = `#!/bin/sh
# start the test service (answers with the node name)
setsid %s -listen :%d -name "$TANDEM_NODE" -pidfile "$TANDEM_STATE_DIR/app.pid" >/dev/null 2>&1 </dev/null &
i=0
while [ ! -s "$TANDEM_STATE_DIR/app.pid" ] && [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done
echo "service started on $TANDEM_NODE ($1 -> $2)"
`

const stopPrim = `#!/bin/sh
if [ -s "$TANDEM_STATE_DIR/app.pid" ]; then
  kill -9 "$(cat "$TANDEM_STATE_DIR/app.pid")" 2>/dev/null
  rm -f "$TANDEM_STATE_DIR/app.pid"
fi
echo "service stopped on $TANDEM_NODE ($3)"
`

// ServiceScripts are the module's default start_prim (starts the test
// service, answering with the node name) and stop_prim (kills it), for
// tests that wrap them in scripts of their own.
func ServiceScripts(b Binaries) map[string]string {
	return map[string]string{
		"start_prim": fmt.Sprintf(startPrim, b.Nameserver, AppPort),
		"stop_prim":  stopPrim,
	}
}

// New builds the bed (alpha, beta, client), the cluster file, key and the
// test module; agents are started with Start or StartPair.
func New(t testbed.TB, bins Binaries, o Options) *Cluster {
	t.Helper()
	if bins.Tandem == "" {
		t.Fatalf("tcluster: Binaries.Tandem is empty: give the path of a tandem binary (tcluster.Build makes one)")
	}
	if _, ok := o.Scripts["start_prim"]; !ok && bins.Nameserver == "" {
		t.Fatalf("tcluster: Binaries.Nameserver is empty and Options.Scripts has no start_prim: build it (tcluster.Build) or give a start_prim")
	}
	if o.Name == "" {
		o.Name = "e2e"
	}
	if o.Interval == "" {
		o.Interval = "100ms"
	}
	if o.Timeout == "" {
		o.Timeout = "600ms"
	}
	if len(o.VIPs) == 0 {
		o.VIPs = []string{"192.0.2.100/24"}
	}
	if o.ScriptTimeout == "" {
		o.ScriptTimeout = "10s"
	}
	if o.StopTimeout == "" {
		o.StopTimeout = "5s"
	}
	bed := testbed.NewT(t, testbed.Options{})
	c := &Cluster{t: t, bins: bins, bed: bed, dir: bed.Dir(), nodes: map[string]*Node{}}
	for _, name := range []string{"alpha", "beta"} {
		h, err := bed.AddHost(name)
		if err != nil {
			t.Fatalf("%v", err)
		}
		c.nodes[name] = &Node{name: name, Host: h}
	}
	client, err := bed.AddHost("client")
	if err != nil {
		t.Fatalf("%v", err)
	}
	c.Client = client
	for _, v := range o.VIPs {
		c.vips = append(c.vips, netip.MustParsePrefix(v))
	}

	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(c.dir, "cluster.key")
	must(t, os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600))
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nkey_file: %s\nmodules_dir: %s\nnetworks: [lan, backup]\n", o.Name, keyFile, filepath.Join(c.dir, "modules"))
	fmt.Fprintf(&b, "heartbeat:\n  interval: %s\n  timeout: %s\n", o.Interval, o.Timeout)
	if o.HealthListen != "" {
		fmt.Fprintf(&b, "health_listen: %q\n", o.HealthListen)
	}
	b.WriteString("nodes:\n")
	for _, name := range []string{"alpha", "beta"} {
		n := c.nodes[name]
		fmt.Fprintf(&b, "  - name: %s\n    addresses: {lan: %s, backup: %s}\n    socket: %s\n    state_dir: %s\n",
			name, n.Host.Addr("lan"), n.Host.Addr("backup"), filepath.Join(c.dir, name+".sock"), filepath.Join(c.dir, "state-"+name))
	}
	b.WriteString(o.ExtraCluster)
	cfg := filepath.Join(c.dir, "cluster.yaml")
	must(t, os.WriteFile(cfg, []byte(b.String()), 0o644))

	mdir := filepath.Join(c.dir, "modules", Module)
	must(t, os.MkdirAll(filepath.Join(mdir, "bin"), 0o755))
	var m strings.Builder
	m.WriteString("kind: mirror\nnodes: [alpha, beta]\n")
	// No default_primary unless asked: alpha, listed first, still wins
	// ties, and no automatic failback moves the module under a test.
	switch o.DefaultPrimary {
	case "", NoDefaultPrimary:
	default:
		fmt.Fprintf(&m, "default_primary: %s\n", o.DefaultPrimary)
	}
	m.WriteString("vips:\n")
	for _, v := range o.VIPs {
		fmt.Fprintf(&m, "  - address: %s\n", v)
	}
	fmt.Fprintf(&m, "scripts:\n  timeout: %s\n  stop_timeout: %s\n", o.ScriptTimeout, o.StopTimeout)
	if len(o.Directories) > 0 {
		m.WriteString("directories:\n")
		for _, d := range o.Directories {
			fmt.Fprintf(&m, "  - %s\n", d)
			for _, n := range c.nodes {
				backing := filepath.Join(c.dir, "data-"+n.name, strings.ReplaceAll(strings.Trim(d, "/"), "/", "_"))
				must(t, os.MkdirAll(backing, 0o755))
				must(t, n.Host.BindMount(backing, d))
			}
		}
	}
	m.WriteString(o.ModuleExtra)
	must(t, os.WriteFile(filepath.Join(mdir, "module.yaml"), []byte(m.String()), 0o644))
	scripts := map[string]string{}
	for k, v := range ServiceScripts(bins) {
		if _, ok := o.Scripts[k]; !ok {
			scripts[k] = v
		}
	}
	for k, v := range o.Scripts {
		scripts[k] = v
	}
	for name, body := range scripts {
		must(t, os.WriteFile(filepath.Join(mdir, "bin", name), []byte(body), 0o755))
	}
	for _, n := range c.nodes {
		n.cfg = cfg
		n.api = &api.Client{Socket: filepath.Join(c.dir, n.name+".sock"), Timeout: 3 * time.Second}
		n.app = filepath.Join(c.dir, "state-"+n.name, "modules", Module, "app.pid")
	}
	c.addModules(o)
	c.startSampler()
	t.Cleanup(c.StopSampler)
	return c
}

func must(t testbed.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%v", err)
	}
}

func (c *Cluster) Node(name string) *Node { return c.nodes[name] }

func (c *Cluster) Start(name string) {
	c.t.Helper()
	n := c.nodes[name]
	p, err := n.Host.Start(c.bins.Tandem, "agent", "--config", n.cfg, "--node", name)
	if err != nil {
		c.t.Fatalf("start agent %s: %v", name, err)
	}
	n.proc = p
	c.t.Cleanup(func() {
		if c.t.Failed() {
			if log, err := p.Log(); err == nil {
				c.t.Logf("agent %s log:\n%s", name, tail(log, 60))
			}
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Kill9 crashes node name's processes: its agent, its modules'
// applications and the given processes started on it (a test's workload).
// All are frozen (SIGSTOP) first, the agent first, then SIGKILLed, the
// applications first, so that nothing runs between the agent's death and
// theirs. (An application whose FUSE request the agent already read waits
// for the answer uninterruptibly: it dies only once the agent is dead,
// with the SIGKILL pending, so it runs none of its own code.) Killing
// them one after the other instead lets an application see the dead
// agent's mount fail (ENOTCONN) and go on: SQLite, for one, counts a
// directory it cannot open as synced and acknowledges a COMMIT whose
// journal unlink never reached the peer. A real crash stops everything
// at once.
func (c *Cluster) Kill9(name string, apps ...*testbed.Proc) {
	c.t.Helper()
	n := c.nodes[name]
	if n.proc != nil {
		n.proc.Freeze()
	}
	pids := c.appPids(name)
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGSTOP)
	}
	for _, p := range apps {
		p.Freeze()
	}
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	for _, p := range apps {
		p.SignalGroup(unix.SIGKILL)
	}
	if n.proc != nil {
		if err := n.proc.Kill9(); err != nil {
			c.t.Fatalf("kill -9 agent %s: %v", name, err)
		}
	}
	for _, p := range apps {
		if err := p.Kill9(); err != nil {
			c.t.Fatalf("kill -9 application on %s: %v", name, err)
		}
	}
}

// sigterm stops the agent cleanly and waits for it to exit.
func (c *Cluster) Sigterm(name string) {
	c.t.Helper()
	n := c.nodes[name]
	must(c.t, n.proc.Signal(os.Interrupt))
	if err := n.proc.Wait(30 * time.Second); err != nil {
		c.t.Logf("agent %s exit: %v", name, err)
	}
}

func (c *Cluster) Status(name string) (api.ModuleStatus, error) {
	st, err := c.nodes[name].api.Status(Module)
	if err != nil {
		return api.ModuleStatus{}, err
	}
	if len(st.Modules) != 1 {
		return api.ModuleStatus{}, fmt.Errorf("status of %s: %d modules", name, len(st.Modules))
	}
	return st.Modules[0], nil
}

// waitState waits until node name reports state (and no transition).
func (c *Cluster) WaitState(name, state string, within time.Duration) api.ModuleStatus {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var last api.ModuleStatus
	var lastErr error
	for time.Now().Before(deadline) {
		last, lastErr = c.Status(name)
		if lastErr == nil && last.State == state && last.Target == "" {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("%s did not reach %s within %s: last %s (target %q, reason %q) err=%v", name, state, within, last.State, last.Target, last.Reason, lastErr)
	return last
}

func (c *Cluster) Command(name, verb string, opts api.CommandOptions) (string, error) {
	return c.nodes[name].api.Command(Module, verb, opts)
}

// reach connects from the client host to the VIP and returns the node name
// the service answered with.
func (c *Cluster) Reach(vip netip.Addr, timeout time.Duration) (string, error) {
	return c.ReachPort(vip, AppPort, timeout)
}

// ReachPort is Reach for a service on another port (an extra module's).
func (c *Cluster) ReachPort(vip netip.Addr, port uint16, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := c.Client.Dial(ctx, "tcp", netip.AddrPortFrom(vip, port).String())
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// waitReach retries until the service answers from node want; it returns
// the time taken.
func (c *Cluster) WaitReach(vip netip.Addr, want string, within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var got string
	var err error
	for time.Since(start) < within {
		got, err = c.Reach(vip, 200*time.Millisecond)
		if err == nil && got == want {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.t.Fatalf("client did not reach the service on %s through %s within %s: last answer %q err=%v", want, vip, within, got, err)
	return 0
}

// startSampler checks every few milliseconds that no VIP is held by two
// nodes at once.
func (c *Cluster) startSampler() {
	c.samplerStop = make(chan struct{})
	c.samplerDone = make(chan struct{})
	go func() {
		defer close(c.samplerDone)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-c.samplerStop:
				return
			case <-t.C:
			}
			c.sampleMu.Lock()
			if c.paused {
				c.sampleMu.Unlock()
				continue
			}
			for _, v := range c.vips {
				holders := []string{}
				for _, n := range c.nodes {
					if ok, err := n.Host.HasAddr(v.Addr()); err == nil && ok {
						holders = append(holders, n.name)
					}
				}
				c.samples.Add(1)
				if len(holders) > 1 {
					if c.violations.Add(1) == 1 {
						c.violation.Store(fmt.Sprintf("%s held by %v at %s", v, holders, time.Now().Format("15:04:05.000")))
					}
				}
			}
			c.sampleMu.Unlock()
		}
	}()
}

// PauseSampler stops the VIP sampler from checking until ResumeSampler, for
// a test that puts a VIP on a second node on purpose. When it returns, no
// sample is in progress.
func (c *Cluster) PauseSampler() {
	c.sampleMu.Lock()
	c.paused = true
	c.sampleMu.Unlock()
}

// ResumeSampler makes the sampler check again; samples taken after it
// returns see the addresses as they are then.
func (c *Cluster) ResumeSampler() {
	c.sampleMu.Lock()
	c.paused = false
	c.sampleMu.Unlock()
}

// StopSampler ends the VIP sampler and fails the test if a VIP was ever
// seen on two nodes at once. It runs at cleanup; calling it earlier is fine.
func (c *Cluster) StopSampler() {
	c.stopOnce.Lock()
	defer c.stopOnce.Unlock()
	select {
	case <-c.samplerStop:
		return
	default:
	}
	close(c.samplerStop)
	<-c.samplerDone
	if n := c.violations.Load(); n > 0 {
		c.t.Errorf("VIP held by two nodes at once in %d of %d samples; first: %v", n, c.samples.Load(), c.violation.Load())
	} else {
		c.t.Logf("VIP sampler: %d samples, never on two nodes", c.samples.Load())
	}
}

// holder names the node that has the VIP now ("" if none).
func (c *Cluster) Holder(v netip.Addr) string {
	var out []string
	for _, n := range c.nodes {
		if ok, _ := n.Host.HasAddr(v); ok {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ",")
}

// startPair starts both agents and waits for alpha PRIM, beta SECOND.
func (c *Cluster) StartPair() {
	c.t.Helper()
	c.StartModules()
	c.WaitState("alpha", "PRIM", 15*time.Second)
	c.WaitState("beta", "SECOND", 15*time.Second)
	// Each node's view of the other follows by a heartbeat: a command
	// given on beta right now would still see alpha becoming PRIM.
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, aerr := c.Status("alpha")
		b, berr := c.Status("beta")
		if aerr == nil && berr == nil && a.PeerState == "SECOND" && b.PeerState == "PRIM" && b.Sync == "synced" {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the pair did not settle within 10s: alpha %s (peer %s), beta %s (peer %s, %s)", a.State, a.PeerState, b.State, b.PeerState, b.Sync)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StartModules starts both agents and the module on each, without
// waiting for the pair to form (a first resync of a big tree may run).
func (c *Cluster) StartModules() {
	c.t.Helper()
	c.Start("alpha")
	c.Start("beta")
	for _, n := range []string{"alpha", "beta"} {
		c.WaitAgent(n)
		if _, err := c.Command(n, "start", api.CommandOptions{}); err != nil {
			c.t.Fatalf("start module on %s: %v", n, err)
		}
	}
}

func (c *Cluster) WaitAgent(name string) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.Status(name); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("agent %s did not answer on its socket within 15s", name)
}

// waitReason waits until node name is in state with a reason containing sub.
func (c *Cluster) WaitReason(name, state, sub string, within time.Duration) api.ModuleStatus {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var last api.ModuleStatus
	for time.Now().Before(deadline) {
		last, _ = c.Status(name)
		if last.State == state && strings.Contains(last.Reason, sub) {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("%s: want %s with a reason containing %q, last %s (%q)", name, state, sub, last.State, last.Reason)
	return last
}

// Dir is the bed's directory (configs, sockets, state, logs).
func (c *Cluster) Dir() string { return c.dir }

// Bed is the underlying test bed.
func (c *Cluster) Bed() *testbed.Bed { return c.bed }

// ConfigPath is the cluster file shared by both nodes.
func (c *Cluster) ConfigPath() string { return filepath.Join(c.dir, "cluster.yaml") }

// ModuleDir is the test module's directory.
func (c *Cluster) ModuleDir() string { return filepath.Join(c.dir, "modules", Module) }

// Name is the node's name.
func (n *Node) Name() string { return n.name }

// API is the node's control API client.
func (n *Node) API() *api.Client { return n.api }

// ConfigPath is the cluster file the node's agent is started with.
func (n *Node) ConfigPath() string { return n.cfg }

// SetConfig makes the next Start of the node use another cluster file
// (e.g. a copy differing in one field).
func (n *Node) SetConfig(path string) { n.cfg = path }

// ModuleStateDir is the test module's state directory on node name
// ($TANDEM_STATE_DIR of its scripts).
func (c *Cluster) ModuleStateDir(name string) string {
	return filepath.Join(c.dir, "state-"+name, "modules", Module)
}

// EventLogPath is the test module's event log on node name.
func (c *Cluster) EventLogPath(name string) string {
	return filepath.Join(c.ModuleStateDir(name), "events.log")
}

// Events reads every event of the test module's log on node name.
func (c *Cluster) Events(name string) ([]eventlog.Event, error) {
	return eventlog.Read(c.EventLogPath(name), -1)
}

// Binaries are the programs the cluster runs.
func (c *Cluster) Binaries() Binaries { return c.bins }

// Proc is the node's running agent (nil before Start).
func (n *Node) Proc() *testbed.Proc { return n.proc }

// BackingDir is where node's copy of a replicated directory really lives,
// seen from outside the hosts (below any FUSE or read-only mount).
func (c *Cluster) BackingDir(node, dir string) string {
	return filepath.Join(c.dir, "data-"+node, strings.ReplaceAll(strings.Trim(dir, "/"), "/", "_"))
}
