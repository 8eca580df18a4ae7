package replication

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// Knobs (environment).
const (
	envRun       = "TANDEM_BENCH"           // 1 runs the benchmark
	envRuns      = "TANDEM_BENCH_RUNS"      // runs per product and workload, default 3
	envQuick     = "TANDEM_BENCH_QUICK"     // 1: small sizes (a smoke run of a minute or two)
	envSeqMB     = "TANDEM_BENCH_SEQ_MB"    // sequential MiB, default 1024
	envDSyncN    = "TANDEM_BENCH_DSYNC_N"   // O_DSYNC writes, default 2000
	envBufMB     = "TANDEM_BENCH_BUF_MB"    // buffered MiB, default 256
	envFiles     = "TANDEM_BENCH_FILES"     // small files, default 10000
	envFileKB    = "TANDEM_BENCH_FILE_KB"   // KiB per small file, default 4
	envStorm     = "TANDEM_BENCH_STORM"     // storm rounds (6 ops each), default 2000
	envProducts  = "TANDEM_BENCH_PRODUCTS"  // comma list of local1,local2,tandem,gluster
	envWorkloads = "TANDEM_BENCH_WORKLOADS" // comma list of seq,dsync,buf,files,storm
	envOut       = "TANDEM_BENCH_OUT"       // also write the markdown report here
	envPerf      = "TANDEM_BENCH_PERF"      // directory: system-wide perf profiles of Tandem's first run of each workload
)

// dataDir is the module's replicated directory inside the hosts.
const dataDir = "/srv/tandem-data"

// runTimeout bounds one workload run (GlusterFS's small files are slow).
const runTimeout = 15 * time.Minute

var (
	bins     tcluster.Binaries
	replwork string
	buildErr error
)

func TestMain(m *testing.M) {
	if os.Getenv(envRun) != "1" || os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	// The agents inherit this: the shipped unit's LimitNOFILE (each inode
	// the kernel caches in a replicated directory holds one fd in the
	// agent, and a round keeps its small files until the next round).
	if err := raiseNofile(nofile); err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v; the agents keep the current limit\n", err)
	}
	dir, err := os.MkdirTemp("", "tandem-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, buildErr = tcluster.Build(dir)
	if buildErr == nil {
		replwork = filepath.Join(dir, "replwork")
		cmd := exec.Command("go", "build", "-o", replwork, "./bench/replication/cmd/replwork")
		cmd.Dir = tcluster.RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build replwork: %v\n%s", err, out)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// nofile is dist/tandem.service's LimitNOFILE.
const nofile = 65536

// raiseNofile sets RLIMIT_NOFILE to at least n (soft and hard; root may
// raise the hard limit).
func raiseNofile(n uint64) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("read the open file limit: %w", err)
	}
	if rl.Cur >= n && rl.Max >= n {
		return nil
	}
	rl.Cur, rl.Max = max(rl.Cur, n), max(rl.Max, n)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("raise the open file limit to %d (as the unit's LimitNOFILE) for the agents: %w", n, err)
	}
	return nil
}

// sizes of one run of each workload.
type sizes struct {
	runs                  int
	seqMB, bufMB          int64
	dsyncN, files, fileKB int
	storm                 int
}

func loadSizes() (sizes, error) {
	s := sizes{runs: 3, seqMB: 1024, bufMB: 256, dsyncN: 2000, files: 10000, fileKB: 4, storm: 2000}
	if os.Getenv(envQuick) == "1" {
		s = sizes{runs: 1, seqMB: 64, bufMB: 16, dsyncN: 200, files: 500, fileKB: 4, storm: 100}
	}
	for _, k := range []struct {
		env string
		min int
		set func(int)
	}{
		{envRuns, 1, func(v int) { s.runs = v }},
		{envSeqMB, 1, func(v int) { s.seqMB = int64(v) }},
		{envBufMB, 1, func(v int) { s.bufMB = int64(v) }},
		{envDSyncN, 1, func(v int) { s.dsyncN = v }},
		{envFiles, 1, func(v int) { s.files = v }},
		{envFileKB, 0, func(v int) { s.fileKB = v }},
		{envStorm, 1, func(v int) { s.storm = v }},
	} {
		v := os.Getenv(k.env)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < k.min {
			return s, fmt.Errorf("%s=%q: want an integer ≥ %d", k.env, v, k.min)
		}
		k.set(n)
	}
	return s, nil
}

func (s sizes) String() string {
	return fmt.Sprintf("%d runs; sequential %d MiB; %d O_DSYNC writes; buffered %d MiB; %d files of %d KiB; storm %d rounds × %d ops",
		s.runs, s.seqMB, s.dsyncN, s.bufMB, s.files, s.fileKB, s.storm, stormOps)
}

// stormOps matches replwork's operations per storm round.
const stormOps = 6

// pick filters all by a comma-separated list in env (empty: all).
func pick(env string, all []string) ([]string, error) {
	v := os.Getenv(env)
	if v == "" {
		return all, nil
	}
	var out []string
	for _, x := range strings.Split(v, ",") {
		x = strings.TrimSpace(x)
		found := false
		for _, a := range all {
			if a == x {
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: unknown name %q (have %s)", env, x, strings.Join(all, ","))
		}
		out = append(out, x)
	}
	return out, nil
}

func has(list []string, x string) bool {
	for _, v := range list {
		if v == x {
			return true
		}
	}
	return false
}

// target is where one product's workload runs: a host and its
// directories (two for the limit).
type target struct {
	product string
	host    *testbed.Host
	dirs    []string
}

func (tg *target) replwork(args ...string) (string, error) {
	for _, d := range tg.dirs {
		args = append(args, "-dir", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := tg.host.CommandContext(ctx, replwork, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s on %s: replwork %s: %w: %s", tg.product, tg.host.Name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// clean empties the target's directories; purge also deletes what
// earlier cleans put aside (see replwork's clean).
func (tg *target) clean(purge bool) error {
	args := []string{"-w", "clean"}
	if purge {
		args = append(args, "-purge")
	}
	_, err := tg.replwork(args...)
	return err
}

func (tg *target) run(w string, s sizes) (Run, error) {
	args := []string{"-w", w}
	switch w {
	case Seq:
		args = append(args, "-mb", fmt.Sprint(s.seqMB))
	case Buf:
		args = append(args, "-mb", fmt.Sprint(s.bufMB))
	case DSync:
		args = append(args, "-n", fmt.Sprint(s.dsyncN))
	case Files:
		args = append(args, "-n", fmt.Sprint(s.files), "-kb", fmt.Sprint(s.fileKB))
	case Storm:
		args = append(args, "-n", fmt.Sprint(s.storm))
	}
	out, err := tg.replwork(args...)
	if err != nil {
		return Run{}, err
	}
	var r Run
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		return Run{}, fmt.Errorf("%s: replwork %s printed %q: %w", tg.product, w, out, err)
	}
	return r, nil
}

// TestReplicationBench runs every workload on every product, interleaved
// (each round runs each workload on each product), and prints the table.
func TestReplicationBench(t *testing.T) {
	if os.Getenv(envRun) != "1" {
		t.Skipf("benchmark: set %s=1 to run it (needs root, takes minutes)", envRun)
	}
	if os.Geteuid() != 0 {
		t.Skip("benchmark needs root (namespaces, FUSE)")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	sz, err := loadSizes()
	if err != nil {
		t.Fatal(err)
	}
	products, err := pick(envProducts, Products)
	if err != nil {
		t.Fatal(err)
	}
	workloads, err := pick(envWorkloads, Workloads)
	if err != nil {
		t.Fatal(err)
	}
	perfDir := os.Getenv(envPerf)
	t.Logf("%s; products %s; workloads %s", sz, strings.Join(products, ","), strings.Join(workloads, ","))
	start, load := time.Now(), loadAvg()
	res := NewResults()

	// Tandem's bed; the local directories live in its alpha host too, on
	// the same disk as both nodes' copies.
	c := tcluster.New(t, bins, tcluster.Options{Directories: []string{dataDir}})
	c.StartPair()
	waitReplicating(t, c)
	// The VIP sampler polls netlink every 5 ms (several % of a CPU): not
	// wanted while measuring, and no failover happens here.
	c.StopSampler()
	alpha := c.Node("alpha").Host
	for _, d := range []string{"local-a/w", "local-b/w"} {
		if err := os.MkdirAll(filepath.Join(c.Dir(), d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alpha.Run("mkdir", "-p", dataDir+"/w"); err != nil {
		t.Fatal(err)
	}
	all := map[string]*target{
		Local1: {product: Local1, host: alpha, dirs: []string{filepath.Join(c.Dir(), "local-a/w")}},
		Local2: {product: Local2, host: alpha, dirs: []string{filepath.Join(c.Dir(), "local-a/w"), filepath.Join(c.Dir(), "local-b/w")}},
		Tandem: {product: Tandem, host: alpha, dirs: []string{dataDir + "/w"}},
	}
	gver := ""
	if has(products, Gluster) {
		g, err := startGluster(t)
		if err != nil {
			res.Errs[Gluster] = "not measured: " + err.Error()
			t.Logf("GlusterFS reference unavailable: %v", err)
		} else {
			all[Gluster] = g
			gver = glusterVersion()
		}
	}
	agents := map[string]int{}
	for _, n := range []string{"alpha", "beta"} {
		pid := c.Node(n).Proc().Pid()
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "tandem" {
			t.Fatalf("agent %s: pid %d is %q, not the tandem agent", n, pid, strings.TrimSpace(string(comm)))
		}
		agents[n] = pid
		if kb, ok := procStatus(pid, "VmRSS"); ok {
			res.RSSIdle[n] = kb
		}
	}

	for round := 1; round <= sz.runs; round++ {
		for _, w := range workloads {
			for _, p := range products {
				tg := all[p]
				if tg == nil {
					continue
				}
				// The previous round's small files go at the start of a
				// round, long (> 30 s) before this round's small files.
				if err := tg.clean(w == workloads[0]); err != nil {
					fail(t, res, p, err)
					continue
				}
				measureRSS := p == Tandem && w == Seq
				if measureRSS {
					for _, pid := range agents {
						resetPeakRSS(t, pid)
					}
				}
				var prof *perfRec
				if perfDir != "" && round == 1 && p == Tandem {
					prof = startPerf(t, perfDir, "tandem-"+w)
				}
				r, err := tg.run(w, sz)
				if prof != nil {
					prof.stop(t)
				}
				if err != nil {
					fail(t, res, p, err)
					continue
				}
				res.Add(p, r)
				rss := ""
				if measureRSS {
					for n, pid := range agents {
						if kb, ok := procStatus(pid, "VmHWM"); ok {
							res.RSS[n] = max(res.RSS[n], kb)
							rss += fmt.Sprintf(", agent %s peak RSS %.1f MiB", n, float64(kb)/1024)
						}
					}
				}
				t.Logf("round %d %-5s %-7s %s%s", round, w, p, describe(r), rss)
			}
		}
	}
	for _, tg := range all {
		tg.clean(true)
	}
	report := header(sz, gver, time.Since(start), load) + "\n" + res.Table()
	fmt.Println("\n" + report)
	if p := os.Getenv(envOut); p != "" {
		if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
			t.Errorf("write %s=%s: %v", envOut, p, err)
		}
	}
}

// fail records a product's failure: Tandem's and the local ones fail the
// benchmark; GlusterFS's are reported in the table.
func fail(t *testing.T, res *Results, product string, err error) {
	t.Helper()
	if res.Errs[product] == "" {
		res.Errs[product] = strings.ReplaceAll(err.Error(), "\n", " ")
	}
	if product == Gluster {
		t.Logf("GlusterFS: %v", err)
		return
	}
	t.Errorf("%v", err)
}

func describe(r Run) string {
	switch r.Workload {
	case DSync:
		return fmt.Sprintf("%d writes in %.2fs: p50 %.0f µs, p99 %.0f µs", r.Ops, r.Seconds, r.P50us, r.P99us)
	case Seq, Buf:
		return fmt.Sprintf("%d MiB in %.2fs: %.0f MB/s", r.Bytes>>20, r.Seconds, float64(r.Bytes)/1e6/r.Seconds)
	default:
		return fmt.Sprintf("%d ops in %.2fs: %.0f/s", r.Ops, r.Seconds, float64(r.Ops)/r.Seconds)
	}
}

// waitReplicating waits until alpha streams to beta and beta is synced.
func waitReplicating(t *testing.T, c *tcluster.Cluster) {
	t.Helper()
	err := waitFor(30*time.Second, "alpha replicating to a synced beta", func() error {
		st, err := c.Status("beta")
		if err != nil {
			return err
		}
		if st.Sync != "synced" {
			return fmt.Errorf("beta sync %q", st.Sync)
		}
		evs, err := c.Events("alpha")
		if err != nil {
			return err
		}
		for _, e := range evs {
			if strings.HasPrefix(e.Msg, "replicating to") {
				return nil
			}
		}
		return fmt.Errorf("no \"replicating to\" event on alpha")
	})
	if err != nil {
		t.Fatal(err)
	}
}

// procStatus reads a "Vm...: N kB" field of /proc/PID/status.
func procStatus(pid int, field string) (int64, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// resetPeakRSS makes VmHWM start again from the current RSS (clear_refs 5).
func resetPeakRSS(t *testing.T, pid int) {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Logf("reset peak RSS of pid %d: %v (the peak then counts since the agent started)", pid, err)
	}
}

// perfRec is a system-wide `perf record` running during one workload run.
type perfRec struct {
	cmd  *exec.Cmd
	data string
	txt  string
}

func startPerf(t *testing.T, dir, name string) *perfRec {
	if _, err := exec.LookPath("perf"); err != nil {
		t.Logf("%s set but perf is not installed (apt-get install linux-perf): no profile", envPerf)
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("perf: %v", err)
		return nil
	}
	p := &perfRec{data: filepath.Join(dir, name+".data"), txt: filepath.Join(dir, name+".txt")}
	p.cmd = exec.Command("perf", "record", "-a", "-g", "-F", "499", "-o", p.data)
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Logf("perf: %v", err)
		return nil
	}
	defer logf.Close()
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Logf("perf record: %v", err)
		return nil
	}
	time.Sleep(500 * time.Millisecond) // let it attach to every CPU
	return p
}

func (p *perfRec) stop(t *testing.T) {
	p.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
	out, err := exec.Command("perf", "report", "-i", p.data, "--stdio", "--no-children", "--sort", "comm,dso,symbol", "--percent-limit", "0.7", "-g", "none").CombinedOutput()
	if err != nil {
		t.Logf("perf report %s: %v", p.data, err)
	}
	os.WriteFile(p.txt, out, 0o644)
	t.Logf("perf profile %s (report in %s)", p.data, p.txt)
}

// loadAvg is the 1-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

// header names the machine and the run.
func header(s sizes, gver string, took time.Duration, load string) string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	commit := "unknown"
	if out, err := exec.Command("git", "-C", tcluster.RepoRoot(), "rev-parse", "--short", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	if gver == "" {
		gver = "GlusterFS not measured"
	}
	return fmt.Sprintf("Run %s, commit %s, %d CPUs, kernel %s, %s, %s; %s; took %s; load average %s at the start, %s at the end. Figures are medians over the runs.\n",
		time.Now().Format("2006-01-02 15:04 MST"), commit, runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version(), gver,
		s, took.Round(time.Second), load, loadAvg())
}
