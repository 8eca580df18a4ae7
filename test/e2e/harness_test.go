// Package e2e holds scenario tests across test hosts: real agents in network
// namespaces, real scripts, a real TCP service reached through the VIP.
// They need root (CI runs as root) and skip otherwise.
package e2e

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
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/testbed"
)

var (
	tandemBin     string
	nameserverBin string
	buildErr      error
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "tandem-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		tandemBin = filepath.Join(dir, "tandem")
		nameserverBin = filepath.Join(dir, "nameserver")
		buildErr = build(tandemBin, "./cmd/tandem")
		if buildErr == nil {
			buildErr = build(nameserverBin, "./test/apps/nameserver")
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func build(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

func repoRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "../.."
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

const (
	moduleName = "web"
	appPort    = 7000
)

type clusterOpts struct {
	interval, timeout string
	vips              []string          // default 192.0.2.100/24
	scripts           map[string]string // extra or replacing scripts in bin/
	healthListen      string
	extraCluster      string // appended to the cluster file
}

type node struct {
	name string
	host *testbed.Host
	proc *testbed.Proc
	api  *api.Client
	cfg  string
	app  string // pid file of the test service
}

type cluster struct {
	t      *testing.T
	bed    *testbed.Bed
	dir    string
	nodes  map[string]*node
	client *testbed.Host
	vips   []netip.Prefix

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

func newCluster(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces); CI runs them as root")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if o.interval == "" {
		o.interval = "100ms"
	}
	if o.timeout == "" {
		o.timeout = "600ms"
	}
	if len(o.vips) == 0 {
		o.vips = []string{"192.0.2.100/24"}
	}
	bed := testbed.NewT(t, testbed.Options{})
	c := &cluster{t: t, bed: bed, dir: bed.Dir(), nodes: map[string]*node{}}
	for _, name := range []string{"alpha", "beta"} {
		h, err := bed.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes[name] = &node{name: name, host: h}
	}
	client, err := bed.AddHost("client")
	if err != nil {
		t.Fatal(err)
	}
	c.client = client
	for _, v := range o.vips {
		c.vips = append(c.vips, netip.MustParsePrefix(v))
	}

	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(c.dir, "cluster.key")
	must(t, os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600))
	var b strings.Builder
	fmt.Fprintf(&b, "name: e2e\nkey_file: %s\nmodules_dir: %s\nnetworks: [lan, backup]\n", keyFile, filepath.Join(c.dir, "modules"))
	fmt.Fprintf(&b, "heartbeat:\n  interval: %s\n  timeout: %s\n", o.interval, o.timeout)
	if o.healthListen != "" {
		fmt.Fprintf(&b, "health_listen: %q\n", o.healthListen)
	}
	b.WriteString("nodes:\n")
	for _, name := range []string{"alpha", "beta"} {
		n := c.nodes[name]
		fmt.Fprintf(&b, "  - name: %s\n    addresses: {lan: %s, backup: %s}\n    socket: %s\n    state_dir: %s\n",
			name, n.host.Addr("lan"), n.host.Addr("backup"), filepath.Join(c.dir, name+".sock"), filepath.Join(c.dir, "state-"+name))
	}
	b.WriteString(o.extraCluster)
	cfg := filepath.Join(c.dir, "cluster.yaml")
	must(t, os.WriteFile(cfg, []byte(b.String()), 0o644))

	mdir := filepath.Join(c.dir, "modules", moduleName)
	must(t, os.MkdirAll(filepath.Join(mdir, "bin"), 0o755))
	var m strings.Builder
	m.WriteString("kind: mirror\nnodes: [alpha, beta]\ndefault_primary: alpha\nvips:\n")
	for _, v := range o.vips {
		fmt.Fprintf(&m, "  - address: %s\n", v)
	}
	m.WriteString("scripts:\n  timeout: 10s\n  stop_timeout: 5s\n")
	must(t, os.WriteFile(filepath.Join(mdir, "module.yaml"), []byte(m.String()), 0o644))
	scripts := map[string]string{
		"start_prim": fmt.Sprintf(startPrim, nameserverBin, appPort),
		"stop_prim":  stopPrim,
	}
	for k, v := range o.scripts {
		scripts[k] = v
	}
	for name, body := range scripts {
		must(t, os.WriteFile(filepath.Join(mdir, "bin", name), []byte(body), 0o755))
	}
	for _, n := range c.nodes {
		n.cfg = cfg
		n.api = &api.Client{Socket: filepath.Join(c.dir, n.name+".sock"), Timeout: 3 * time.Second}
		n.app = filepath.Join(c.dir, "state-"+n.name, "modules", moduleName, "app.pid")
	}
	c.startSampler()
	t.Cleanup(c.stopSampler)
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) node(name string) *node { return c.nodes[name] }

func (c *cluster) start(name string) {
	c.t.Helper()
	n := c.nodes[name]
	p, err := n.host.Start(tandemBin, "agent", "--config", n.cfg, "--node", name)
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

// kill9 kills the node's agent and its application with SIGKILL, like a
// crash of the server's processes.
func (c *cluster) kill9(name string) {
	c.t.Helper()
	n := c.nodes[name]
	if n.proc != nil {
		if err := n.proc.Kill9(); err != nil {
			c.t.Fatalf("kill -9 agent %s: %v", name, err)
		}
	}
	if b, err := os.ReadFile(n.app); err == nil {
		exec.Command("kill", "-9", strings.TrimSpace(string(b))).Run()
	}
}

// sigterm stops the agent cleanly and waits for it to exit.
func (c *cluster) sigterm(name string) {
	c.t.Helper()
	n := c.nodes[name]
	must(c.t, n.proc.Signal(os.Interrupt))
	if err := n.proc.Wait(30 * time.Second); err != nil {
		c.t.Logf("agent %s exit: %v", name, err)
	}
}

func (c *cluster) status(name string) (api.ModuleStatus, error) {
	st, err := c.nodes[name].api.Status(moduleName)
	if err != nil {
		return api.ModuleStatus{}, err
	}
	if len(st.Modules) != 1 {
		return api.ModuleStatus{}, fmt.Errorf("status of %s: %d modules", name, len(st.Modules))
	}
	return st.Modules[0], nil
}

// waitState waits until node name reports state (and no transition).
func (c *cluster) waitState(name, state string, within time.Duration) api.ModuleStatus {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var last api.ModuleStatus
	var lastErr error
	for time.Now().Before(deadline) {
		last, lastErr = c.status(name)
		if lastErr == nil && last.State == state && last.Target == "" {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("%s did not reach %s within %s: last %s (target %q, reason %q) err=%v", name, state, within, last.State, last.Target, last.Reason, lastErr)
	return last
}

func (c *cluster) command(name, verb string, opts api.CommandOptions) (string, error) {
	return c.nodes[name].api.Command(moduleName, verb, opts)
}

// reach connects from the client host to the VIP and returns the node name
// the service answered with.
func (c *cluster) reach(vip netip.Addr, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := c.client.Dial(ctx, "tcp", netip.AddrPortFrom(vip, appPort).String())
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
func (c *cluster) waitReach(vip netip.Addr, want string, within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var got string
	var err error
	for time.Since(start) < within {
		got, err = c.reach(vip, 200*time.Millisecond)
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
func (c *cluster) startSampler() {
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
			for _, v := range c.vips {
				holders := []string{}
				for _, n := range c.nodes {
					if ok, err := n.host.HasAddr(v.Addr()); err == nil && ok {
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
		}
	}()
}

var stopOnce sync.Mutex

func (c *cluster) stopSampler() {
	stopOnce.Lock()
	defer stopOnce.Unlock()
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
func (c *cluster) holder(v netip.Addr) string {
	var out []string
	for _, n := range c.nodes {
		if ok, _ := n.host.HasAddr(v); ok {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ",")
}

// startPair starts both agents and waits for alpha PRIM, beta SECOND.
func (c *cluster) startPair() {
	c.t.Helper()
	c.start("alpha")
	c.start("beta")
	for _, n := range []string{"alpha", "beta"} {
		c.waitAgent(n)
		if _, err := c.command(n, "start", api.CommandOptions{}); err != nil {
			c.t.Fatalf("start module on %s: %v", n, err)
		}
	}
	c.waitState("alpha", "PRIM", 15*time.Second)
	c.waitState("beta", "SECOND", 15*time.Second)
}

func (c *cluster) waitAgent(name string) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.status(name); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("agent %s did not answer on its socket within 15s", name)
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// waitReason waits until node name is in state with a reason containing sub.
func (c *cluster) waitReason(name, state, sub string, within time.Duration) api.ModuleStatus {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var last api.ModuleStatus
	for time.Now().Before(deadline) {
		last, _ = c.status(name)
		if last.State == state && strings.Contains(last.Reason, sub) {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("%s: want %s with a reason containing %q, last %s (%q)", name, state, sub, last.State, last.Reason)
	return last
}
