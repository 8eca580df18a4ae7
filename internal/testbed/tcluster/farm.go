package tcluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/farm"
	"github.com/tandem-ha/tandem/internal/testbed"
)

// FarmBinaries are the programs a farm bed runs.
type FarmBinaries struct {
	Tandem   string
	NameHTTP string // test/apps/namehttp
}

// BuildNameHTTP compiles the farm test service into dir.
func BuildNameHTTP(dir string) (string, error) {
	out := filepath.Join(dir, "namehttp")
	return out, build(out, "./test/apps/namehttp")
}

// BuildFarm compiles tandem and the farm test service into dir.
func BuildFarm(dir string) (FarmBinaries, error) {
	b := FarmBinaries{Tandem: filepath.Join(dir, "tandem"), NameHTTP: filepath.Join(dir, "namehttp")}
	if err := build(b.Tandem, "./cmd/tandem"); err != nil {
		return b, err
	}
	return b, build(b.NameHTTP, "./test/apps/namehttp")
}

// Farm bed defaults.
const (
	FarmModule = "web"
	FarmPort   = 8080
)

// FarmVIP is the farm's virtual IP in every farm bed.
var FarmVIP = netip.MustParsePrefix("192.0.2.100/24")

// FarmOptions shape a farm bed.
type FarmOptions struct {
	Nodes       []string // default alpha, beta, gamma
	Clients     int      // client hosts; default 2
	ClientAddrs int      // extra source addresses per client host; default 50
	Hash        string   // default addr+port
	Drain       string   // module drain; default 3s
	// Interval and Timeout of the heartbeats; default 100ms / 600ms.
	Interval, Timeout string
	// Scripts replace or add scripts in the module's bin/ (default:
	// start_both and stop_both run the test service on FarmPort).
	Scripts map[string]string
	// ModuleExtra is appended to module.yaml (checkers, weights...).
	ModuleExtra string
	// Template, when set, creates the module with `tandem module new
	// --template T` instead (its scripts and settings), then applies
	// ModuleExtra; vip and nodes come from the template with the bed's
	// nodes written in.
	Template string
}

// FarmNode is one node of a farm bed.
type FarmNode struct {
	Name string
	Host *testbed.Host
	API  *api.Client
	proc *testbed.Proc
	app  string // pid file of the test service
}

// Farm is a running farm bed: N nodes with the farm module, client hosts
// with many source addresses.
type Farm struct {
	t       testbed.TB
	bins    FarmBinaries
	bed     *testbed.Bed
	dir     string
	cfg     string
	Nodes   []*FarmNode
	byName  map[string]*FarmNode
	Clients []*testbed.Host
	// Sources are each client host's source addresses (its own first).
	Sources map[string][]netip.Addr
	Hash    string
	Table   *farm.Table
}

const farmStart = `#!/bin/sh
setsid %s -listen :%d -name "$TANDEM_NODE" -pidfile "$TANDEM_STATE_DIR/app.pid" >/dev/null 2>&1 </dev/null &
i=0
while [ ! -s "$TANDEM_STATE_DIR/app.pid" ] && [ $i -lt 300 ]; do sleep 0.01; i=$((i+1)); done
echo "service started on $TANDEM_NODE ($1 -> $2)"
`

const farmStop = `#!/bin/sh
if [ -s "$TANDEM_STATE_DIR/app.pid" ]; then
  kill -9 "$(cat "$TANDEM_STATE_DIR/app.pid")" 2>/dev/null
  rm -f "$TANDEM_STATE_DIR/app.pid"
fi
echo "service stopped on $TANDEM_NODE ($3)"
`

// NewFarm builds the bed, the cluster and the farm module; agents start
// with Start or StartAll.
func NewFarm(t testbed.TB, bins FarmBinaries, o FarmOptions) *Farm {
	t.Helper()
	if len(o.Nodes) == 0 {
		o.Nodes = []string{"alpha", "beta", "gamma"}
	}
	if o.Clients == 0 {
		o.Clients = 2
	}
	if o.ClientAddrs == 0 {
		o.ClientAddrs = 50
	}
	if o.Hash == "" {
		o.Hash = farm.HashAddrPort
	}
	if o.Drain == "" {
		o.Drain = "3s"
	}
	if o.Interval == "" {
		o.Interval = "100ms"
	}
	if o.Timeout == "" {
		o.Timeout = "600ms"
	}
	bed := testbed.NewT(t, testbed.Options{})
	f := &Farm{t: t, bins: bins, bed: bed, dir: bed.Dir(), byName: map[string]*FarmNode{}, Sources: map[string][]netip.Addr{}, Hash: o.Hash}
	var members []farm.Member
	for _, n := range o.Nodes {
		h, err := bed.AddHost(n)
		if err != nil {
			t.Fatalf("%v", err)
		}
		fn := &FarmNode{Name: n, Host: h}
		f.Nodes = append(f.Nodes, fn)
		f.byName[n] = fn
		members = append(members, farm.Member{Name: n, Weight: 1})
	}
	var err error
	if f.Table, err = farm.NewTable(members); err != nil {
		t.Fatalf("%v", err)
	}
	for i := range o.Clients {
		h, err := bed.AddHost(fmt.Sprintf("client%d", i+1))
		if err != nil {
			t.Fatalf("%v", err)
		}
		f.Clients = append(f.Clients, h)
		srcs := []netip.Addr{h.Addr("lan")}
		var batch strings.Builder
		for j := range o.ClientAddrs {
			a := netip.AddrFrom4([4]byte{192, 0, 2, byte(120 + i*o.ClientAddrs + j)})
			if a == FarmVIP.Addr() || 120+i*o.ClientAddrs+j > 250 {
				t.Fatalf("tcluster: too many client addresses (%d hosts x %d)", o.Clients, o.ClientAddrs)
			}
			srcs = append(srcs, a)
			fmt.Fprintf(&batch, "addr add %s/24 dev %s\n", a, h.Ifaces["lan"])
		}
		if o.ClientAddrs > 0 {
			cmd := h.Command("ip", "-batch", "-")
			cmd.Stdin = strings.NewReader(batch.String())
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("client %s addresses: %v: %s", h.Name, err, out)
			}
		}
		f.Sources[h.Name] = srcs
	}

	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(f.dir, "cluster.key")
	must(t, os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600))
	var b strings.Builder
	fmt.Fprintf(&b, "name: farm\nkey_file: %s\nmodules_dir: %s\nnetworks: [lan, backup]\n", keyFile, filepath.Join(f.dir, "modules"))
	fmt.Fprintf(&b, "heartbeat:\n  interval: %s\n  timeout: %s\nnodes:\n", o.Interval, o.Timeout)
	for _, n := range f.Nodes {
		fmt.Fprintf(&b, "  - name: %s\n    addresses: {lan: %s, backup: %s}\n    socket: %s\n    state_dir: %s\n",
			n.Name, n.Host.Addr("lan"), n.Host.Addr("backup"), filepath.Join(f.dir, n.Name+".sock"), filepath.Join(f.dir, "state-"+n.Name))
	}
	f.cfg = filepath.Join(f.dir, "cluster.yaml")
	must(t, os.WriteFile(f.cfg, []byte(b.String()), 0o644))

	mdir := filepath.Join(f.dir, "modules", FarmModule)
	if o.Template != "" {
		out, err := exec.Command(bins.Tandem, "module", "new", FarmModule, "--template", o.Template, "--config", f.cfg,
			"--node", f.Nodes[0].Name).CombinedOutput()
		if err != nil {
			t.Fatalf("tandem module new --template %s: %v: %s", o.Template, err, out)
		}
		if o.ModuleExtra != "" {
			y, err := os.ReadFile(filepath.Join(mdir, "module.yaml"))
			must(t, err)
			must(t, os.WriteFile(filepath.Join(mdir, "module.yaml"), append(y, o.ModuleExtra...), 0o644))
		}
	} else {
		must(t, os.MkdirAll(filepath.Join(mdir, "bin"), 0o755))
		var m strings.Builder
		fmt.Fprintf(&m, "kind: farm\nnodes: [%s]\nvip: %s\nhash: %s\ndrain: %s\nscripts:\n  timeout: 10s\n  stop_timeout: 5s\n",
			strings.Join(o.Nodes, ", "), FarmVIP, o.Hash, o.Drain)
		m.WriteString(o.ModuleExtra)
		must(t, os.WriteFile(filepath.Join(mdir, "module.yaml"), []byte(m.String()), 0o644))
		scripts := map[string]string{
			"start_both": fmt.Sprintf(farmStart, bins.NameHTTP, FarmPort),
			"stop_both":  farmStop,
		}
		for k, v := range o.Scripts {
			scripts[k] = v
		}
		for name, body := range scripts {
			must(t, os.WriteFile(filepath.Join(mdir, "bin", name), []byte(body), 0o755))
		}
	}
	for _, n := range f.Nodes {
		n.API = &api.Client{Socket: filepath.Join(f.dir, n.Name+".sock"), Timeout: 3 * time.Second}
		n.app = filepath.Join(f.StateDir(n.Name), "app.pid")
	}
	return f
}

// StateDir is the farm module's state directory on node.
func (f *Farm) StateDir(node string) string {
	return filepath.Join(f.dir, "state-"+node, "modules", FarmModule)
}

// Dir is the bed's directory.
func (f *Farm) Dir() string { return f.dir }

// Bed is the underlying test bed.
func (f *Farm) Bed() *testbed.Bed { return f.bed }

// Node returns a node by name.
func (f *Farm) Node(name string) *FarmNode { return f.byName[name] }

// Start starts node's agent.
func (f *Farm) Start(name string) {
	f.t.Helper()
	n := f.byName[name]
	p, err := n.Host.Start(f.bins.Tandem, "agent", "--config", f.cfg, "--node", name)
	if err != nil {
		f.t.Fatalf("start agent %s: %v", name, err)
	}
	n.proc = p
	f.t.Cleanup(func() {
		if f.t.Failed() {
			if log, err := p.Log(); err == nil {
				f.t.Logf("agent %s log:\n%s", name, tail(log, 40))
			}
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := f.Status(name); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.t.Fatalf("agent %s did not answer on its socket within 15s", name)
}

// StartAll starts every agent and the module on every node, and waits
// until every node is UP and the buckets are split as assigned.
func (f *Farm) StartAll() {
	f.t.Helper()
	for _, n := range f.Nodes {
		f.Start(n.Name)
	}
	for _, n := range f.Nodes {
		if _, err := n.API.Command(FarmModule, "start", api.CommandOptions{}); err != nil {
			f.t.Fatalf("start %s on %s: %v", FarmModule, n.Name, err)
		}
	}
	f.WaitSplit(f.Names(), 20*time.Second)
}

// Names are the nodes' names.
func (f *Farm) Names() []string {
	var out []string
	for _, n := range f.Nodes {
		out = append(out, n.Name)
	}
	return out
}

// Status is the module's status on node.
func (f *Farm) Status(node string) (api.ModuleStatus, error) {
	st, err := f.byName[node].API.Status(FarmModule)
	if err != nil {
		return api.ModuleStatus{}, err
	}
	if len(st.Modules) != 1 {
		return api.ModuleStatus{}, fmt.Errorf("status of %s: %d modules", node, len(st.Modules))
	}
	return st.Modules[0], nil
}

// WaitSplit waits until the nodes of live are UP and each holds exactly
// the buckets the assignment for live gives it (as each says itself), and
// returns how long it took.
func (f *Farm) WaitSplit(live []string, within time.Duration) time.Duration {
	f.t.Helper()
	start := time.Now()
	asg := f.Table.Assign(live)
	want := asg.Counts()
	var last []string
	for time.Since(start) < within {
		last = last[:0]
		ok := true
		for _, n := range live {
			st, err := f.Status(n)
			switch {
			case err != nil:
				ok = false
				last = append(last, fmt.Sprintf("%s: %v", n, err))
			case st.State != "UP" || st.Target != "" || st.Farm == nil || st.Farm.Held != want[n] || st.Farm.Blocked != 0:
				ok = false
				held := -1
				if st.Farm != nil {
					held = st.Farm.Held
				}
				last = append(last, fmt.Sprintf("%s %s held %d want %d (%s)", n, st.State, held, want[n], st.Reason))
			}
		}
		if ok {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.t.Fatalf("buckets not split over %v within %s: %s", live, within, strings.Join(last, "; "))
	return 0
}

// Kill9 kills node's agent and its application with SIGKILL.
func (f *Farm) Kill9(name string) {
	f.t.Helper()
	n := f.byName[name]
	if n.proc != nil {
		if err := n.proc.Kill9(); err != nil {
			f.t.Fatalf("kill -9 agent %s: %v", name, err)
		}
	}
	if b, err := os.ReadFile(n.app); err == nil {
		exec.Command("kill", "-9", strings.TrimSpace(string(b))).Run()
	}
}

// Owner predicts which node serves a client when the nodes of live are UP.
func (f *Farm) Owner(src netip.AddrPort, live []string) string {
	b := farm.BucketOf(f.Hash, farm.Seed(FarmVIP.Addr()), farm.Client{Addr: src.Addr(), Port: src.Port()})
	return f.Table.Assign(live)[b]
}

// Bucket is a client's bucket.
func (f *Farm) Bucket(src netip.AddrPort) int {
	return farm.BucketOf(f.Hash, farm.Seed(FarmVIP.Addr()), farm.Client{Addr: src.Addr(), Port: src.Port()})
}

// Dial opens a TCP connection from client to the VIP, from src (port 0:
// any), in the client's namespace.
func (f *Farm) Dial(ctx context.Context, client *testbed.Host, src netip.AddrPort, port int) (net.Conn, error) {
	var c net.Conn
	err := client.Do(func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(src)}
		var err error
		c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(FarmVIP.Addr(), uint16(port)).String())
		return err
	})
	return c, err
}

// Get sends one HTTP request on c and returns the first word of the body
// (the node name).
func Get(c net.Conn, r *bufio.Reader, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: farm\r\n\r\n")); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body := make([]byte, 256)
	n, _ := resp.Body.Read(body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	w := strings.Fields(string(body[:n]))
	if len(w) == 0 {
		return "", fmt.Errorf("empty answer")
	}
	return w[0], nil
}

// Request opens a connection from src, sends one request and closes it;
// it returns the name of the node that answered and the local address used.
func (f *Farm) Request(client *testbed.Host, src netip.Addr, port int, timeout time.Duration) (string, netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := f.Dial(ctx, client, netip.AddrPortFrom(src, 0), port)
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	defer c.Close()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	name, err := Get(c, bufio.NewReader(c), timeout)
	return name, netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), err
}

// counterRe reads "packets N bytes M" of an nft counter.
var counterRe = regexp.MustCompile(`packets (\d+)`)

// CountReplies installs, on every client host, counters of the SYN-ACKs
// and resets that arrive from the VIP (see Replies).
func (f *Farm) CountReplies() {
	f.t.Helper()
	for _, c := range f.Clients {
		script := fmt.Sprintf(`table inet farmtest {
	chain in {
		type filter hook input priority 0; policy accept;
		ip saddr %s tcp flags & (syn|ack) == syn|ack counter name synack
		ip saddr %s tcp flags & rst == rst counter name rst
	}
	counter synack {}
	counter rst {}
}
`, FarmVIP.Addr(), FarmVIP.Addr())
		cmd := c.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader("table inet farmtest\ndelete table inet farmtest\n" + script)
		if out, err := cmd.CombinedOutput(); err != nil {
			f.t.Fatalf("client %s: nft counters: %v: %s", c.Name, err, out)
		}
	}
}

// Replies sums the SYN-ACKs and resets the clients received from the VIP
// since CountReplies.
func (f *Farm) Replies() (synacks, resets int) {
	f.t.Helper()
	for _, c := range f.Clients {
		for _, name := range []string{"synack", "rst"} {
			out, err := c.Run("nft", "list", "counter", "inet", "farmtest", name)
			if err != nil {
				f.t.Fatalf("%v", err)
			}
			m := counterRe.FindStringSubmatch(out)
			if m == nil {
				f.t.Fatalf("client %s: no counter in %q", c.Name, out)
			}
			n, _ := strconv.Atoi(m[1])
			if name == "synack" {
				synacks += n
			} else {
				resets += n
			}
		}
	}
	return synacks, resets
}

// Live returns the nodes that say they are UP, by name.
func (f *Farm) Live() []string {
	var live []string
	for _, n := range f.Nodes {
		if st, err := f.Status(n.Name); err == nil && st.State == "UP" {
			live = append(live, n.Name)
		}
	}
	slices.Sort(live)
	return live
}
