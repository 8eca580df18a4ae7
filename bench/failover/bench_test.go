package failover

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// Knobs (environment).
const (
	envRun    = "TANDEM_BENCH"        // 1 runs the benchmark
	envFaults = "TANDEM_BENCH_FAULTS" // faults per case, default 20
	envSeed   = "TANDEM_BENCH_SEED"   // seed of the pre-fault jitter
	envOut    = "TANDEM_BENCH_OUT"    // also write the markdown report here
)

// Timing of one fault.
const (
	defaultFaults = 20
	probeEvery    = 5 * time.Millisecond   // a new client connection this often
	probeTimeout  = 150 * time.Millisecond // connect + answer bound of one probe
	settle        = 300 * time.Millisecond // steady pair before a fault (+ jitter)
	hold          = 300 * time.Millisecond // after the takeover, before repair
	takeoverMax   = 15 * time.Second       // bound on one failover
	repairMax     = 30 * time.Second       // bound on bringing the pair back
)

var vip = netip.MustParseAddr("192.0.2.100")

var (
	bins     tcluster.Binaries
	buildErr error
)

func TestMain(m *testing.M) {
	if os.Getenv(envRun) != "1" || os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tandem-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, buildErr = tcluster.Build(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestFailoverBench runs every selected case and prints a markdown table.
func TestFailoverBench(t *testing.T) {
	if os.Getenv(envRun) != "1" {
		t.Skipf("benchmark: set %s=1 to run it (needs root, takes minutes)", envRun)
	}
	if os.Geteuid() != 0 {
		t.Skip("benchmark needs root (network namespaces)")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	faults := defaultFaults
	if v := os.Getenv(envFaults); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number of faults per case", envFaults, v)
		}
		faults = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(envSeed); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned integer", envSeed, v)
		}
		seed = s
	}
	cases := DefaultCases()
	t.Logf("%d faults per case, seed %d (%s=%d replays the jitter)", faults, seed, envSeed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	start, load := time.Now(), loadAvg()
	var results []Result
	for _, c := range cases {
		r := Result{Case: c}
		ran := false
		t.Run(c.Name, func(t *testing.T) {
			ran = true
			defer func() {
				if t.Failed() && r.Err == "" {
					r.Err = "failed, see the log"
				}
				if t.Skipped() && r.Err == "" {
					r.Err = "skipped"
				}
			}()
			switch c.Product {
			case Tandem:
				runTandem(t, c, faults, rng, &r)
			case Keepalived:
				runKeepalived(t, c, faults, rng, &r)
			}
		})
		if ran { // not filtered out by -run
			results = append(results, r)
		}
	}
	report := header(faults, seed, time.Since(start), load) + "\n" + Table(results)
	fmt.Println("\n" + report)
	if p := os.Getenv(envOut); p != "" {
		if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
			t.Errorf("write %s=%s: %v", envOut, p, err)
		}
	}
}

// loadAvg is the 1-minute load average: other work on the machine skews
// the figures, so the report shows it.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

// header names the machine and the run.
func header(faults int, seed uint64, took time.Duration, load string) string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	ka := "not installed"
	if out, err := exec.Command("keepalived", "--version").CombinedOutput(); err == nil || len(out) > 0 {
		if l := strings.SplitN(string(out), "\n", 2)[0]; strings.HasPrefix(l, "Keepalived") {
			ka = l
		}
	}
	commit := "unknown"
	if out, err := exec.Command("git", "-C", tcluster.RepoRoot(), "rev-parse", "--short", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("Run %s, commit %s, %d CPUs, kernel %s, %s, %s; %d faults per case, seed %d, took %s; load average %s at the start, %s at the end.\n",
		time.Now().Format("2006-01-02 15:04 MST"), commit, runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version(), ka,
		faults, seed, took.Round(time.Second), load, loadAvg())
}

// pair is a two-node bed under test: fault one node, repair it, and say
// when it is back as the backup of the other.
type pair interface {
	fault(t *testing.T, node string)
	repair(t *testing.T, node, primary string)
	// appStart is how long node's service took to start in the failover
	// that followed since (false when the product does not start it).
	appStart(node string, since time.Time) (time.Duration, bool)
}

// measure runs the fault loop: fault the primary, time the first answer
// from the other node, repair, swap roles.
func measure(t *testing.T, c Case, faults int, rng *rand.Rand, p pair, client *testbed.Host, w *vipWatch, r *Result) {
	prim, back := "alpha", "beta"
	if _, err := firstAnswer(client, prim, 10*time.Second); err != nil {
		t.Fatalf("before the first fault: %v", err)
	}
	for i := range faults {
		time.Sleep(settle + time.Duration(rng.Int64N(int64(c.Interval))))
		if _, err := firstAnswer(client, prim, 5*time.Second); err != nil {
			t.Fatalf("fault %d: the pair is not serving from %s: %v", i+1, prim, err)
		}
		if h := w.holders(); h != prim {
			t.Fatalf("fault %d: VIP on %q before the fault, want only %s", i+1, h, prim)
		}
		t0 := time.Now()
		p.fault(t, prim)
		at, st, err := firstAnswerStats(client, back, takeoverMax)
		if err != nil {
			t.Fatalf("fault %d (%s of %s): %v", i+1, c.Fault, prim, err)
		}
		took := at.Sub(t0)
		moved, ok := w.firstOn(back, t0)
		if !ok { // on and off between two samples: bound it by the answer
			moved = at
		}
		time.Sleep(hold)
		if h := w.holders(); strings.Contains(h, prim) {
			r.Stale++
		}
		p.repair(t, prim, back)
		dual := w.dual(t0, time.Now())
		app := ""
		if d, ok := p.appStart(back, t0); ok {
			r.App = append(r.App, d)
			app = fmt.Sprintf("start_prim took %s; ", d)
		}
		t.Logf("fault %2d: %s of %s -> %s answered after %s (VIP on %s after %s; on both nodes %s; %sfailed probes: %s)", i+1, c.Fault, prim, back,
			took.Round(100*time.Microsecond), back, moved.Sub(t0).Round(time.Millisecond), dual.Round(time.Millisecond), app, st)
		r.Took = append(r.Took, took)
		r.Moved = append(r.Moved, moved.Sub(t0))
		r.Dual = append(r.Dual, dual)
		prim, back = back, prim
	}
	s := Summarize(r.Took)
	t.Logf("%s: n %d p50 %s p95 %s min %s max %s", c.Name, s.N, s.P50, s.P95, s.Min, s.Max)
}

// ---- Tandem ----

type tandemPair struct {
	c    *tcluster.Cluster
	kind Fault
}

func runTandem(t *testing.T, c Case, faults int, rng *rand.Rand, r *Result) {
	cl := tcluster.New(t, bins, tcluster.Options{Interval: c.Interval.String(), Timeout: c.Timeout.String()})
	w := watchVIP(t, cl.Node("alpha").Host, cl.Node("beta").Host)
	cl.StartPair()
	measure(t, c, faults, rng, &tandemPair{c: cl, kind: c.Fault}, cl.Client, w, r)
}

func (p *tandemPair) fault(t *testing.T, node string) {
	if p.kind == Kill9 {
		p.c.Kill9(node)
		return
	}
	linkAll(t, p.c.Node(node).Host, false)
}

func (p *tandemPair) repair(t *testing.T, node, primary string) {
	if p.kind == Kill9 {
		p.c.Start(node)
	} else {
		linkAll(t, p.c.Node(node).Host, true)
	}
	p.c.WaitState(node, "SECOND", repairMax)
	p.c.WaitState(primary, "PRIM", repairMax)
}

// appStart reads the last start_prim run after since in node's module log.
func (p *tandemPair) appStart(node string, since time.Time) (time.Duration, bool) {
	f, err := os.Open(filepath.Join(p.c.Dir(), "state-"+node, "modules", tcluster.Module, "events.log"))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var took time.Duration
	var found bool
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Time   time.Time      `json:"time"`
			Msg    string         `json:"msg"`
			Fields map[string]any `json:"fields"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Time.Before(since) || !strings.HasPrefix(e.Msg, "start_prim exited") {
			continue
		}
		if v, ok := e.Fields["duration"].(string); ok {
			if d, err := time.ParseDuration(v); err == nil {
				took, found = d, true
			}
		}
	}
	return took, found
}

func linkAll(t *testing.T, h *testbed.Host, up bool) {
	for _, n := range h.Bed().Networks() {
		var err error
		if up {
			err = h.LinkUp(n.Name)
		} else {
			err = h.LinkDown(n.Name)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// ---- keepalived ----

// kaNode is keepalived (VRRP only) plus the always-running test service on
// one host.
type kaNode struct {
	h        *testbed.Host
	args     []string
	pidFiles []string
	proc     *testbed.Proc
}

type kaPair struct {
	kind  Fault
	nodes map[string]*kaNode
}

const kaConf = `global_defs {
  router_id %s
  vrrp_version 3
}
vrrp_instance VI_1 {
  state BACKUP
  interface %s
  virtual_router_id 51
  priority %d
  advert_int %s
  nopreempt
  virtual_ipaddress {
    %s/24 dev %s
  }
}
`

func runKeepalived(t *testing.T, c Case, faults int, rng *rand.Rand, r *Result) {
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Skip("keepalived not installed: apt-get install -y keepalived")
	}
	bed := testbed.NewT(t, testbed.Options{})
	p := &kaPair{kind: c.Fault, nodes: map[string]*kaNode{}}
	var hosts []*testbed.Host
	for _, name := range []string{"alpha", "beta"} {
		h, err := bed.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	client, err := bed.AddHost("client")
	if err != nil {
		t.Fatal(err)
	}
	w := watchVIP(t, hosts[0], hosts[1])
	for i, h := range hosts {
		// The service runs on both nodes all the time: keepalived moves
		// only the address.
		if _, err := h.Start(bins.Nameserver, "-listen", fmt.Sprintf(":%d", tcluster.AppPort), "-name", h.Name); err != nil {
			t.Fatal(err)
		}
		prio := PrioAlpha
		if i == 1 {
			prio = PrioBeta
		}
		ifc := h.Ifaces["lan"]
		conf := filepath.Join(bed.Dir(), "keepalived-"+h.Name+".conf")
		body := fmt.Sprintf(kaConf, h.Name, ifc, prio, strings.TrimSuffix(secs(c.Interval), "s"), vip, ifc)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		pid, vpid := filepath.Join(bed.Dir(), "keepalived-"+h.Name+".pid"), filepath.Join(bed.Dir(), "keepalived-"+h.Name+".vrrp.pid")
		n := &kaNode{h: h, pidFiles: []string{pid, vpid}, args: []string{
			"--dont-fork", "--log-console", "--log-detail", "--vrrp", "--dont-respawn",
			"--use-file", conf, "--pid", pid, "--vrrp_pid", vpid,
		}}
		p.nodes[h.Name] = n
		n.start(t)
		// alpha first, so it is the master whatever the start-up timing.
		if i == 0 {
			n.waitState(t, "MASTER", 10*time.Second)
		} else {
			n.waitState(t, "BACKUP", 10*time.Second)
		}
	}
	measure(t, c, faults, rng, p, client, w, r)
}

func (n *kaNode) start(t *testing.T) {
	p, err := n.h.Start("keepalived", n.args...)
	if err != nil {
		t.Fatalf("start keepalived on %s: %v", n.h.Name, err)
	}
	n.proc = p
}

var kaStateRE = regexp.MustCompile(`Entering ([A-Z]+) STATE`)

// state is the last VRRP state the running keepalived logged.
func (n *kaNode) state() string {
	log, err := n.proc.Log()
	if err != nil {
		return ""
	}
	m := kaStateRE.FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1][1]
}

func (n *kaNode) waitState(t *testing.T, want string, within time.Duration) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if n.state() == want {
			return
		}
		select {
		case <-n.proc.Done():
			t.Fatalf("keepalived on %s exited, see %s", n.h.Name, n.proc.LogPath)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("keepalived on %s not %s within %s (last state %q), see %s", n.h.Name, want, within, n.state(), n.proc.LogPath)
}

func (p *kaPair) appStart(string, time.Time) (time.Duration, bool) { return 0, false }

// fault: kill -9 of keepalived (parent and VRRP child: one process group);
// the service keeps running, and the VIP stays on the interface because
// nothing removes it.
func (p *kaPair) fault(t *testing.T, node string) {
	n := p.nodes[node]
	if p.kind == Kill9 {
		if err := n.proc.Kill9(); err != nil {
			t.Fatal(err)
		}
		return
	}
	linkAll(t, n.h, false)
}

func (p *kaPair) repair(t *testing.T, node, primary string) {
	n := p.nodes[node]
	if p.kind == Kill9 {
		// The killed VRRP child is an orphan zombie until pid 1 reaps it,
		// and keepalived refuses to start while its pid file names a
		// live pid: drop the files (Kill9 saw the whole group die).
		for _, f := range n.pidFiles {
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
		n.start(t) // removes the stale VIP, then BACKUP (nopreempt)
	} else {
		linkAll(t, n.h, true) // FAULT -> BACKUP
	}
	n.waitState(t, "BACKUP", repairMax)
	p.nodes[primary].waitState(t, "MASTER", repairMax)
}

// ---- client probes ----

// reach connects from the client to the VIP and returns the answer.
func reach(client *testbed.Host, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := client.Dial(ctx, "tcp", netip.AddrPortFrom(vip, tcluster.AppPort).String())
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// firstAnswer opens a new connection to the VIP every probeEvery (each
// bounded by probeTimeout, so several overlap while the VIP is unreachable)
// until one is answered by node want; it returns when that answer arrived.
func firstAnswer(client *testbed.Host, want string, within time.Duration) (time.Time, error) {
	at, _, err := firstAnswerStats(client, want, within)
	return at, err
}

// probeStats counts the failed probes of one firstAnswer by cause.
type probeStats struct {
	refused, timeout, other, wrong int
}

func (s probeStats) String() string {
	return fmt.Sprintf("refused %d, timed out %d, other errors %d, answered by the old node %d", s.refused, s.timeout, s.other, s.wrong)
}

func firstAnswerStats(client *testbed.Host, want string, within time.Duration) (time.Time, probeStats, error) {
	var st probeStats
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	found := make(chan time.Time, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	var last string
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	sem := make(chan struct{}, 64)
	for {
		select {
		case at := <-found:
			cancel()
			wg.Wait()
			return at, st, nil
		case <-ctx.Done():
			wg.Wait()
			return time.Time{}, st, fmt.Errorf("client got no answer from %s through %s within %s (last probe: %s)", want, vip, within, last)
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // too many probes in flight already
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			got, err := reach(client, probeTimeout)
			at := time.Now()
			if err == nil && got == want {
				select {
				case found <- at:
				default:
				}
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if ctx.Err() != nil {
				return // cut short by the end of the search
			}
			switch {
			case err == nil:
				last = "answered by " + got
				st.wrong++
			case errors.Is(err, syscall.ECONNREFUSED):
				st.refused++
			case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
				st.timeout++
			default:
				st.other++
			}
			if err != nil {
				last = err.Error()
			}
		}()
	}
}

// ---- VIP watch ----

// vipWatch samples which node holds the VIP every few milliseconds and
// keeps the transitions.
type vipWatch struct {
	hosts [2]*testbed.Host
	mu    sync.Mutex
	trans []vipState
	last  time.Time // time of the latest sample
}

type vipState struct {
	at   time.Time
	held [2]bool
}

const watchEvery = 5 * time.Millisecond

func watchVIP(t *testing.T, a, b *testbed.Host) *vipWatch {
	w := &vipWatch{hosts: [2]*testbed.Host{a, b}}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(watchEvery)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			var s vipState
			for i, h := range w.hosts {
				s.held[i], _ = h.HasAddr(vip)
			}
			s.at = time.Now()
			w.mu.Lock()
			if len(w.trans) == 0 || w.trans[len(w.trans)-1].held != s.held {
				w.trans = append(w.trans, s)
			}
			w.last = s.at
			w.mu.Unlock()
		}
	}()
	// Registered after the bed's cleanup, so it runs before it.
	t.Cleanup(func() { close(stop); <-done })
	return w
}

func (w *vipWatch) index(name string) int {
	if w.hosts[0].Name == name {
		return 0
	}
	return 1
}

// holders names the nodes holding the VIP at the latest sample.
func (w *vipWatch) holders() string {
	deadline := time.Now().Add(2 * watchEvery)
	for time.Now().Before(deadline) { // let a fresh sample in
		time.Sleep(watchEvery)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.trans) == 0 {
		return ""
	}
	var out []string
	for i, h := range w.trans[len(w.trans)-1].held {
		if h {
			out = append(out, w.hosts[i].Name)
		}
	}
	return strings.Join(out, ",")
}

// firstOn is the first sample at or after since showing the VIP on name.
func (w *vipWatch) firstOn(name string, since time.Time) (time.Time, bool) {
	i := w.index(name)
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, s := range w.trans {
		if !s.held[i] {
			continue
		}
		if !s.at.Before(since) {
			return s.at, true
		}
		if k+1 == len(w.trans) || !w.trans[k+1].at.Before(since) {
			return since, true // already held at since
		}
	}
	return time.Time{}, false
}

// dual is how long, between from and to, the VIP was seen on both nodes.
func (w *vipWatch) dual(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var sum time.Duration
	for k, s := range w.trans {
		if !s.held[0] || !s.held[1] {
			continue
		}
		end := w.last
		if k+1 < len(w.trans) {
			end = w.trans[k+1].at
		}
		a, b := maxTime(s.at, from), minTime(end, to)
		if b.After(a) {
			sum += b.Sub(a)
		}
	}
	return sum
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
