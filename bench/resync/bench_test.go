package resync

import (
	"bytes"
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

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// Knobs (environment).
const (
	envRun       = "TANDEM_BENCH"             // 1 runs the benchmark
	envQuick     = "TANDEM_BENCH_QUICK"       // 1: small sizes, one run
	envRuns      = "TANDEM_BENCH_RUNS"        // runs per case, default 3
	envCases     = "TANDEM_BENCH_CASES"       // comma list of incremental,full,compare
	envFiles     = "TANDEM_BENCH_FILES"       // files of the tree, default 2000
	envFileKB    = "TANDEM_BENCH_FILE_KB"     // their mean size, KiB, default 512
	envBigMB     = "TANDEM_BENCH_BIG_MB"      // the big file, MiB, default 1024
	envPct       = "TANDEM_BENCH_CHANGE_PCT"  // percent of 4 KiB blocks rewritten, default 1
	envCreate    = "TANDEM_BENCH_CREATE"      // files created while beta is down, default 20
	envRemove    = "TANDEM_BENCH_REMOVE"      // files removed while beta is down, default 20
	envSmall     = "TANDEM_BENCH_SMALL_FILES" // files of the compare case, default 1000000
	envSmallDirs = "TANDEM_BENCH_SMALL_DIRS"  // their directories, default 1000
	envSmallKB   = "TANDEM_BENCH_SMALL_KB"    // their mean size, KiB, default 1
	envZone      = "TANDEM_BENCH_ZONE"        // module replication.zone_size (default: Tandem's)
	envHashCache = "TANDEM_BENCH_HASH_CACHE"  // 0: module replication.resync_hash_cache: false
	envCold      = "TANDEM_BENCH_COLD"        // 0: keep the page cache between steps (default 1: drop it)
	envDelta     = "TANDEM_BENCH_DELTA"       // 0: skip the rsync --no-whole-file row
	envVerify    = "TANDEM_BENCH_VERIFY"      // 0: do not compare the copies after the resyncs
	envLive      = "TANDEM_BENCH_LIVE"        // 1: an application writes on alpha during (a)'s resyncs
	envSeed      = "TANDEM_BENCH_SEED"        // seed of the trees and changes
	envPause     = "TANDEM_BENCH_PAUSE"       // wait after a bed's setup before its first round, default 60s (see pauseAfterSetup)
	envOut       = "TANDEM_BENCH_OUT"         // also write the markdown report here
)

// dataDir is the module's replicated directory inside the hosts.
const dataDir = "/srv/tandem-data"

var (
	bins       tcluster.Binaries
	resyncwork string
	buildErr   error
)

func TestMain(m *testing.M) {
	if os.Getenv(envRun) != "1" || os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	// The agents inherit this: the shipped unit's LimitNOFILE.
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
		resyncwork = filepath.Join(dir, "resyncwork")
		cmd := exec.Command("go", "build", "-o", resyncwork, "./bench/resync/cmd/resyncwork")
		cmd.Dir = tcluster.RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build resyncwork: %v\n%s", err, out)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// nofile is dist/tandem.service's LimitNOFILE.
const nofile = 65536

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

// sizes of the benchmark.
type sizes struct {
	runs                       int
	files, fileKB, bigMB       int
	pct                        float64
	create, remove             int
	small, smallDirs, smallKB  int
	zone                       string
	noHashCache                bool
	cold, delta, verify, quick bool
	live                       bool
	pause                      time.Duration
	seed                       uint64
	cases                      []string
}

func loadSizes() (sizes, error) {
	s := sizes{runs: 3, files: 2000, fileKB: 512, bigMB: 1024, pct: 1, create: 20, remove: 20,
		small: 1000000, smallDirs: 1000, smallKB: 1, cold: true, delta: true, verify: true, pause: time.Minute, seed: uint64(time.Now().UnixNano())}
	if os.Getenv(envQuick) == "1" {
		s.quick = true
		s.pause = 0
		s.runs, s.files, s.fileKB, s.bigMB, s.create, s.remove = 1, 200, 256, 64, 5, 5
		s.small, s.smallDirs = 20000, 100
	}
	for _, k := range []struct {
		env string
		min int
		set func(int)
	}{
		{envRuns, 1, func(v int) { s.runs = v }},
		{envFiles, 1, func(v int) { s.files = v }},
		{envFileKB, 1, func(v int) { s.fileKB = v }},
		{envBigMB, 0, func(v int) { s.bigMB = v }},
		{envCreate, 0, func(v int) { s.create = v }},
		{envRemove, 0, func(v int) { s.remove = v }},
		{envSmall, 1, func(v int) { s.small = v }},
		{envSmallDirs, 1, func(v int) { s.smallDirs = v }},
		{envSmallKB, 1, func(v int) { s.smallKB = v }},
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
	if v := os.Getenv(envPct); v != "" {
		p, err := strconv.ParseFloat(v, 64)
		if err != nil || p <= 0 || p > 50 {
			return s, fmt.Errorf("%s=%q: want a percentage in (0, 50]", envPct, v)
		}
		s.pct = p
	}
	if s.remove > s.files {
		return s, fmt.Errorf("%s=%d: more than the %d files of the tree", envRemove, s.remove, s.files)
	}
	if v := os.Getenv(envPause); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return s, fmt.Errorf("%s=%q: want a duration such as 60s (0: no pause)", envPause, v)
		}
		s.pause = d
	}
	if v := os.Getenv(envSeed); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return s, fmt.Errorf("%s=%q: want an unsigned integer", envSeed, v)
		}
		s.seed = n
	}
	s.zone = os.Getenv(envZone)
	s.noHashCache = os.Getenv(envHashCache) == "0"
	s.cold = os.Getenv(envCold) != "0"
	s.delta = os.Getenv(envDelta) != "0"
	s.verify = os.Getenv(envVerify) != "0"
	s.live = os.Getenv(envLive) == "1"
	s.cases = Cases
	if v := os.Getenv(envCases); v != "" {
		s.cases = nil
		for _, x := range strings.Split(v, ",") {
			x = strings.TrimSpace(x)
			if !has(Cases, x) {
				return s, fmt.Errorf("%s: unknown case %q (have %s)", envCases, x, strings.Join(Cases, ","))
			}
			s.cases = append(s.cases, x)
		}
	}
	return s, nil
}

func has(list []string, x string) bool {
	for _, v := range list {
		if v == x {
			return true
		}
	}
	return false
}

// treeBytes is the tree's expected size (files of fileKB on average).
func (s sizes) treeBytes() int64 { return int64(s.files)*int64(s.fileKB)<<10 + int64(s.bigMB)<<20 }

func (s sizes) moduleExtra() string {
	var b strings.Builder
	if s.zone != "" {
		b.WriteString("  zone_size: " + s.zone + "\n")
	}
	if s.noHashCache {
		b.WriteString("  resync_hash_cache: false\n")
	}
	if b.Len() == 0 {
		return ""
	}
	return "replication:\n" + b.String()
}

func (s sizes) String() string {
	zone := "zone size Tandem's default"
	if s.zone != "" {
		zone = "zone size " + s.zone
	}
	cache := "page cache dropped before each timed step"
	if !s.cold {
		cache = "page cache kept (warm)"
	}
	hashes := "resync hash cache on"
	if s.noHashCache {
		hashes = "resync hash cache off"
	}
	return fmt.Sprintf("%d runs; cases %s; tree %d files of %d KiB + %d MiB; %.3g %% of blocks rewritten, %d files created, %d removed; compare %d files of %d KiB in %d directories; %s; %s; %s; pause after the setup %s; seed %d",
		s.runs, strings.Join(s.cases, ","), s.files, s.fileKB, s.bigMB, s.pct, s.create, s.remove, s.small, s.smallKB, s.smallDirs, zone, hashes, cache, s.pause, s.seed)
}

// TestResyncBench runs the cases and prints the report.
func TestResyncBench(t *testing.T) {
	if os.Getenv(envRun) != "1" {
		t.Skipf("benchmark: set %s=1 to run it (needs root, takes long)", envRun)
	}
	if os.Geteuid() != 0 {
		t.Skip("benchmark needs root (namespaces, FUSE, drop_caches)")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	sz, err := loadSizes()
	if err != nil {
		t.Fatal(err)
	}
	if err := ensureRsync(t); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", sz)
	start, load := time.Now(), loadAvg()
	res := NewResults()
	if has(sz.cases, Incremental) || has(sz.cases, Full) {
		t.Run("tree", func(t *testing.T) { treeCases(t, sz, res) })
	}
	if has(sz.cases, Compare) {
		t.Run("smallfiles", func(t *testing.T) { compareCase(t, sz, res) })
	}
	report := header(sz, time.Since(start), load) + "\n" + res.Table()
	fmt.Println("\n" + report)
	if p := os.Getenv(envOut); p != "" {
		if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
			t.Errorf("write %s=%s: %v", envOut, p, err)
		}
	}
}

// newCluster builds the bed; the trees it holds are deleted at the end
// even with KEEP_TESTBED=1 (they are gigabytes), after the bed stopped.
func newCluster(t *testing.T, sz sizes, extra ...string) *tcluster.Cluster {
	var c *tcluster.Cluster
	// Registered before the bed's own cleanup, so it runs after it.
	t.Cleanup(func() {
		if c == nil {
			return
		}
		dirs := []string{c.BackingDir("alpha", dataDir), c.BackingDir("beta", dataDir)}
		for _, d := range extra {
			dirs = append(dirs, filepath.Join(c.Dir(), d))
		}
		for _, d := range dirs {
			os.RemoveAll(d)
		}
	})
	c = tcluster.New(t, bins, tcluster.Options{Directories: []string{dataDir}, ModuleExtra: sz.moduleExtra()})
	// The VIP sampler polls netlink every 5 ms: not wanted while measuring.
	c.StopSampler()
	return c
}

// treeCases runs (a) and (b) on one tree, interleaved round by round.
func treeCases(t *testing.T, sz sizes, res *Results) {
	c := newCluster(t, sz, "ref")
	alphaB, betaB := c.BackingDir("alpha", dataDir), c.BackingDir("beta", dataDir)
	ref := filepath.Join(c.Dir(), "ref")
	src, lim, inpl, delta, empty := filepath.Join(ref, "src"), filepath.Join(ref, "limit"), filepath.Join(ref, "inplace"), filepath.Join(ref, "delta"), filepath.Join(ref, "empty")
	copies := []string{alphaB, src, lim, inpl}
	if sz.delta {
		copies = append(copies, delta)
	}
	for _, d := range copies {
		must(t, os.MkdirAll(d, 0o755))
	}
	// The tree: written directly into alpha's copy (before the agents
	// start) and the references'; the first resync copies it to beta.
	var g struct {
		Files   int64   `json:"files"`
		Bytes   int64   `json:"bytes"`
		Seconds float64 `json:"seconds"`
	}
	args := []string{"gen", "-seed", fmt.Sprint(sz.seed), "-files", fmt.Sprint(sz.files), "-file-kb", fmt.Sprint(sz.fileKB),
		"-big-mb", fmt.Sprint(sz.bigMB), "-dirs", fmt.Sprint(max(1, sz.files/100)), "-jobs", "2"}
	for _, d := range copies {
		args = append(args, "-dir", d)
	}
	work(t, nil, &g, args...)
	t.Logf("tree: %d files, %s, written %d times in %.1fs", g.Files, gib(g.Bytes), len(copies), g.Seconds)
	settle(t, sz)

	// Not StartPair: it wants the pair synced within 10 s, and the first
	// resync of a big tree (or compare of a million files) takes longer.
	since := time.Now()
	c.StartModules()
	first := tandemWait(t, c, since, resyncTimeout(g.Bytes, g.Files))
	t.Logf("first resync after the start (beta empty): %s", first.describe())
	res.Notes = append(res.Notes, "(a, b) setup, not in the figures: the first resync after the agents' start, into an empty beta: "+first.describe())
	if sz.verify {
		verify(t, alphaB, betaB, "alpha's and beta's copies after the first resync")
	}
	treeDesc := fmt.Sprintf("%s in %d files", gib(g.Bytes), g.Files)

	pauseAfterSetup(t, sz)
	for round := 1; round <= sz.runs; round++ {
		if has(sz.cases, Incremental) {
			incrementalRound(t, c, sz, res, round, treeDesc, src, lim, inpl, delta)
		}
		if has(sz.cases, Full) {
			fullRound(t, c, sz, res, round, treeDesc, g.Bytes, g.Files, src, empty)
		}
	}
}

// incrementalRound is one run of (a).
func incrementalRound(t *testing.T, c *tcluster.Cluster, sz sizes, res *Results, round int, treeDesc, src, lim, inpl, delta string) {
	alpha := c.Node("alpha").Host
	seed := sz.seed + uint64(round)
	c.Sigterm("beta")
	c.WaitState("alpha", "ALONE", 15*time.Second)

	// The same change through alpha's mount and on the references' source.
	listT, listR := filepath.Join(c.Dir(), fmt.Sprintf("change-%d-tandem.json", round)), filepath.Join(c.Dir(), fmt.Sprintf("change-%d-ref.json", round))
	chArgs := []string{"change", "-seed", fmt.Sprint(seed), "-pct", fmt.Sprint(sz.pct), "-create", fmt.Sprint(sz.create),
		"-create-kb", fmt.Sprint(sz.fileKB), "-remove", fmt.Sprint(sz.remove)}
	var ch, chR changeResult
	work(t, alpha, &ch, append(chArgs, "-dir", dataDir, "-list", listT)...)
	work(t, nil, &chR, append(chArgs, "-dir", src, "-list", listR)...)
	a, _ := os.ReadFile(listT)
	b, _ := os.ReadFile(listR)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("round %d: the change through alpha's mount (%s) differs from the one on the references' copy (%s): the trees were not identical", round, listT, listR)
	}
	changed := ch.BytesRewritten + ch.CreatedBytes
	t.Logf("round %d: change through alpha's mount in %.1fs: %d blocks rewritten in %d files (%s), %d files created (%s), %d removed",
		round, ch.Seconds, ch.Blocks, ch.FilesRewritten, mib(ch.BytesRewritten), ch.Created, mib(ch.CreatedBytes), ch.Removed)
	if round == 1 {
		res.Desc[Incremental] = fmt.Sprintf("%.3g %% of the 4 KiB blocks rewritten at random (%d blocks in %d files), %d files created, %d removed; %s changed in a tree of %s",
			sz.pct, ch.Blocks, ch.FilesRewritten, ch.Created, ch.Removed, mib(changed), treeDesc)
	}

	settle(t, sz)
	var live *liveWriter
	if sz.live {
		live = startLive(t, c, round)
	}
	run := tandemResync(t, c, false, func() { c.Start("beta") }, resyncTimeout(sz.treeBytes(), int64(sz.files)))
	t.Logf("round %d incremental Tandem: %s", round, run.describe())
	if live != nil {
		lr := live.stop(t)
		note := fmt.Sprintf("(a) round %d: the application's 4 KiB writes on alpha (one per ms) from beta's start to its resync's end: %d writes, p50 %.0f µs, p99 %.0f µs, max %.0f µs",
			round, lr.Writes, lr.P50us, lr.P99us, lr.MaxUs)
		t.Log(note)
		res.Notes = append(res.Notes, note)
	}
	if run.Kind != "incremental" {
		res.Notes = append(res.Notes, fmt.Sprintf("(a) round %d: Tandem's resync was %s, not incremental", round, run.Kind))
	}
	res.Add(Incremental, Tandem, run.Run)
	if sz.verify {
		verify(t, c.BackingDir("alpha", dataDir), c.BackingDir("beta", dataDir), fmt.Sprintf("alpha's and beta's copies after incremental round %d", round))
	}

	settle(t, sz)
	var l limitResult
	work(t, nil, &l, "limit", "-list", listR, "-src", src, "-dst", lim)
	t.Logf("round %d limit: %s copied (%d extents, %d files) in %.3fs", round, mib(l.Bytes), l.Extents, l.Files, l.Seconds)
	res.Add(Incremental, Limit, Run{Seconds: l.Seconds, Bytes: l.Bytes})

	settle(t, sz)
	r := rsync(t, inpl, "-a", "--inplace", "--delete", src+"/", inpl+"/")
	t.Logf("round %d rsync -a --inplace --delete: %.2fs", round, r.Seconds)
	res.Add(Incremental, RsyncInplace, r)
	if sz.delta {
		settle(t, sz)
		r := rsync(t, delta, "-a", "--inplace", "--no-whole-file", "--delete", src+"/", delta+"/")
		t.Logf("round %d rsync -a --inplace --no-whole-file --delete: %.2fs", round, r.Seconds)
		res.Add(Incremental, RsyncDelta, r)
	}
	if sz.verify && round == 1 {
		verify(t, src, lim, "the limit's copy")
		verify(t, src, inpl, "rsync --inplace's copy")
		if sz.delta {
			verify(t, src, delta, "rsync --no-whole-file's copy")
		}
	}
	os.Remove(listT)
	os.Remove(listR)
}

// fullRound is one run of (b).
func fullRound(t *testing.T, c *tcluster.Cluster, sz sizes, res *Results, round int, treeDesc string, treeBytes, files int64, src, empty string) {
	c.Sigterm("beta")
	c.WaitState("alpha", "ALONE", 15*time.Second)
	betaB := c.BackingDir("beta", dataDir)
	must(t, emptyDir(betaB))
	// beta's record of when its copy was last identical now lies.
	if err := os.Remove(filepath.Join(c.ModuleStateDir("beta"), "synced-epoch")); err != nil {
		t.Logf("remove beta's synced-epoch: %v", err)
	}
	res.Desc[Full] = treeDesc

	settle(t, sz)
	run := tandemResync(t, c, false, func() { c.Start("beta") }, resyncTimeout(treeBytes, files))
	t.Logf("round %d full Tandem: %s", round, run.describe())
	if run.Kind != "full" {
		res.Notes = append(res.Notes, fmt.Sprintf("(b) round %d: Tandem's resync into an empty secondary was %s, not full", round, run.Kind))
	}
	res.Add(Full, Tandem, run.Run)
	if sz.verify {
		verify(t, c.BackingDir("alpha", dataDir), betaB, fmt.Sprintf("alpha's and beta's copies after full round %d", round))
	}

	// The previous round's copy goes just before, as beta's did.
	must(t, os.RemoveAll(empty))
	must(t, os.MkdirAll(empty, 0o755))
	settle(t, sz)
	r := rsync(t, empty, "-a", "-W", src+"/", empty+"/")
	t.Logf("round %d rsync -a -W: %.2fs", round, r.Seconds)
	res.Add(Full, RsyncW, r)
	if sz.verify && round == 1 {
		verify(t, src, empty, "rsync -W's copy")
	}
	if round == sz.runs {
		os.RemoveAll(empty)
	}
}

// compareCase is (c): many small files, identical on both sides.
func compareCase(t *testing.T, sz sizes, res *Results) {
	c := newCluster(t, sz)
	alphaB, betaB := c.BackingDir("alpha", dataDir), c.BackingDir("beta", dataDir)
	var g struct {
		Files   int64   `json:"files"`
		Bytes   int64   `json:"bytes"`
		Seconds float64 `json:"seconds"`
	}
	work(t, nil, &g, "gen", "-seed", fmt.Sprint(sz.seed), "-files", fmt.Sprint(sz.small), "-file-kb", fmt.Sprint(sz.smallKB),
		"-big-mb", "0", "-dirs", fmt.Sprint(sz.smallDirs), "-jobs", "4", "-dir", alphaB, "-dir", betaB)
	t.Logf("small files: %d files, %s, both copies written in %.1fs", g.Files, mib(g.Bytes), g.Seconds)
	res.Desc[Compare] = fmt.Sprintf("%d files of %d KiB on average (%s) in %d directories", g.Files, sz.smallKB, mib(g.Bytes), sz.smallDirs)
	settle(t, sz)

	// Both copies are identical but no node knows it yet: the first
	// start compares everything; the measured runs are the next ones.
	since := time.Now()
	c.StartModules() // not StartPair: see treeCases
	first := tandemWait(t, c, since, resyncTimeout(g.Bytes, g.Files))
	t.Logf("first full compare after the start: %s", first.describe())
	res.Notes = append(res.Notes, "(c) setup, not in the figures: the first compare after the agents' start, both copies already identical: "+first.describe())
	if first.Sent > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("(c) the first compare after the start sent %d bytes although both copies were written identical", first.Sent))
	}

	pauseAfterSetup(t, sz)
	for round := 1; round <= sz.runs; round++ {
		if _, err := c.Command("beta", "stop", api.CommandOptions{}); err != nil {
			t.Fatalf("stop the module on beta: %v", err)
		}
		c.WaitState("beta", "STOP", 30*time.Second)
		c.WaitState("alpha", "ALONE", 15*time.Second)
		settle(t, sz)
		run := tandemResync(t, c, true, func() {
			if _, err := c.Command("beta", "second", api.CommandOptions{Full: true}); err != nil {
				t.Fatalf("second --full on beta: %v", err)
			}
		}, resyncTimeout(g.Bytes, g.Files))
		t.Logf("round %d compare Tandem: %s", round, run.describe())
		if run.Kind != "full" {
			res.Notes = append(res.Notes, fmt.Sprintf("(c) round %d: Tandem's resync after second --full was %s, not full", round, run.Kind))
		}
		if run.Sent > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("(c) round %d: Tandem sent %d bytes between identical copies", round, run.Sent))
		}
		res.Add(Compare, Tandem, run.Run)

		settle(t, sz)
		r := rsync(t, "", "-a", "-n", "-i", alphaB+"/", betaB+"/")
		t.Logf("round %d rsync -a -n: %.2fs, %d differences listed, peak RSS %s", round, r.Seconds, r.Files, mibs(r.RSS["rsync"]))
		if r.Files > 0 && round == 1 {
			res.Notes = append(res.Notes, fmt.Sprintf("(c) rsync -a -n listed %d differences between the two copies after Tandem's compare (metadata: it does not read contents)", r.Files))
		}
		res.Add(Compare, RsyncN, r)
	}
	if sz.verify {
		verify(t, alphaB, betaB, "alpha's and beta's copies of the small files")
	}
}

// tandemRun is one of Tandem's resyncs.
type tandemRun struct {
	Run
	reason string
	reused int64 // files whose hash alpha remembered (not read)
}

func (r tandemRun) describe() string {
	s := fmt.Sprintf("%s resync complete %.2fs after the start (own %.2fs, \"started\" after %.2fs, beta synced after %.2fs): %s examined (%d files' hashes remembered on alpha), %s sent, %d files",
		r.Kind, r.Seconds, r.Own, r.Started, r.SyncedAfter, mib(r.Examined), r.reused, mib(r.Sent), r.Files)
	if r.reason != "" {
		s += "; reason: " + r.reason
	}
	for _, n := range []string{"alpha", "beta"} {
		if v, ok := r.RSS[n]; ok {
			s += fmt.Sprintf("; %s peak RSS %s", n, mibs(v))
		}
	}
	return s
}

// tandemResync resets the running agents' peak RSS (both when resetBeta),
// runs start, and waits for alpha's resync to complete and beta to be a
// synced SECOND.
func tandemResync(t *testing.T, c *tcluster.Cluster, resetBeta bool, start func(), within time.Duration) tandemRun {
	t.Helper()
	resetPeakRSS(t, c.Node("alpha").Proc().Pid())
	if resetBeta {
		resetPeakRSS(t, c.Node("beta").Proc().Pid())
	}
	since := time.Now()
	start()
	run := tandemWait(t, c, since, within)
	run.RSS = map[string]int64{}
	for _, n := range []string{"alpha", "beta"} {
		if kb, ok := procStatus(c.Node(n).Proc().Pid(), "VmHWM"); ok {
			run.RSS[n] = kb
		}
	}
	return run
}

// tandemWait waits for alpha's first resync complete at or after since,
// then for beta to be a synced SECOND.
func tandemWait(t *testing.T, c *tcluster.Cluster, since time.Time, within time.Duration) tandemRun {
	t.Helper()
	deadline := time.Now().Add(within)
	lastLog := time.Now()
	var run tandemRun
	var started *eventlog.Event
	for {
		evs, err := c.Events("alpha")
		if err != nil {
			t.Fatalf("read alpha's module log: %v", err)
		}
		var done *eventlog.Event
		for i := range evs {
			e := &evs[i]
			if e.Kind != "resync" || e.Time.Before(since) {
				continue
			}
			switch e.Fields["result"] {
			case "started":
				if started == nil {
					started = e
				}
			case "failed":
				t.Fatalf("Tandem's resync failed: %s (fields %v)", e.Msg, e.Fields)
			case "complete":
				if done == nil {
					done = e
				}
			}
		}
		if done != nil {
			run.Seconds = done.Time.Sub(since).Seconds()
			run.Kind, _ = done.Fields["kind"].(string)
			run.Own = fnum(done.Fields["seconds"])
			run.Examined, run.Sent, run.Files = int64(fnum(done.Fields["bytes_examined"])), int64(fnum(done.Fields["bytes_sent"])), int64(fnum(done.Fields["files"]))
			run.reused = int64(fnum(done.Fields["hashes_reused"]))
			if started != nil {
				run.Started = started.Time.Sub(since).Seconds()
				run.reason, _ = started.Fields["reason"].(string)
			}
			break
		}
		if time.Now().After(deadline) {
			st, err := c.Status("alpha")
			t.Fatalf("no \"resync complete\" event on alpha within %s (started: %v); alpha %s (%s), resync %+v, err %v; last events:\n%s",
				within, started != nil, st.State, st.Reason, st.Resync, err, lastEvents(evs, 10))
		}
		if time.Since(lastLog) > 30*time.Second {
			lastLog = time.Now()
			if st, err := c.Status("alpha"); err == nil && st.Resync != nil {
				r := st.Resync
				t.Logf("resync running for %s: %s %s of %s examined, %s sent, %d files, %.0f MB/s",
					time.Since(since).Round(time.Second), r.Kind, mib(r.BytesDone), mib(r.BytesTotal), mib(r.BytesSent), r.Files, r.RateBps/1e6)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	// beta then says synced.
	for {
		st, err := c.Status("beta")
		if err == nil && st.State == "SECOND" && st.Target == "" && st.Sync == "synced" {
			run.SyncedAfter = time.Since(since).Seconds()
			return run
		}
		if time.Now().After(deadline.Add(time.Minute)) {
			t.Fatalf("beta not a synced SECOND after the resync completed: %s sync %q (%s), err %v", st.State, st.Sync, st.Reason, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lastEvents(evs []eventlog.Event, n int) string {
	var b strings.Builder
	for _, e := range evs[max(0, len(evs)-n):] {
		fmt.Fprintf(&b, "  %s %s %s %v\n", e.Time.Format("15:04:05.000"), e.Kind, e.Msg, e.Fields)
	}
	return b.String()
}

// resyncTimeout bounds one resync generously (a slow machine, a slow
// Tandem): 10 minutes plus 5 MB/s and 200 files/s.
func resyncTimeout(bytes, files int64) time.Duration {
	return 10*time.Minute + time.Duration(bytes/5e6)*time.Second + time.Duration(files/200)*time.Second
}

func fnum(v any) float64 {
	f, _ := v.(float64)
	return f
}

// liveWriter is resyncwork live running in alpha: an application that
// writes during a resync (TANDEM_BENCH_LIVE=1).
type liveWriter struct {
	alpha *testbed.Host
	p     *testbed.Proc
	out   string
}

func startLive(t *testing.T, c *tcluster.Cluster, round int) *liveWriter {
	t.Helper()
	out := filepath.Join(c.Dir(), fmt.Sprintf("live-%d.json", round))
	p, err := c.Node("alpha").Host.Start(resyncwork, "live", "-file", dataDir+"/live/f", "-out", out)
	if err != nil {
		t.Fatalf("start the live writer: %v", err)
	}
	return &liveWriter{alpha: c.Node("alpha").Host, p: p, out: out}
}

// stop ends the writer, removes its file (the next round's change must
// find the tree the references have) and returns its latencies.
func (l *liveWriter) stop(t *testing.T) liveResult {
	t.Helper()
	if err := l.p.Signal(unix.SIGTERM); err != nil {
		t.Fatalf("stop the live writer: %v", err)
	}
	select {
	case <-l.p.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("the live writer did not stop within 30s")
	}
	var r liveResult
	b, err := os.ReadFile(l.out)
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil || r.Writes == 0 {
		log, _ := l.p.Log()
		t.Fatalf("the live writer's result %s: %v (%d writes); its log:\n%s", l.out, err, r.Writes, log)
	}
	// The directory's fsync returns once beta applied the removal: the
	// copies are compared next.
	if _, err := l.alpha.Run("sh", "-c", "rm -rf "+dataDir+"/live && sync "+dataDir); err != nil {
		t.Fatalf("remove the live writer's file: %v", err)
	}
	return r
}

// changeResult, limitResult and liveResult are resyncwork's outputs (see
// its package).
type changeResult struct {
	Blocks         int64   `json:"blocks"`
	BytesRewritten int64   `json:"bytes_rewritten"`
	FilesRewritten int64   `json:"files_rewritten"`
	Created        int64   `json:"created"`
	CreatedBytes   int64   `json:"created_bytes"`
	Removed        int64   `json:"removed"`
	Seconds        float64 `json:"seconds"`
}

type limitResult struct {
	Bytes   int64   `json:"bytes"`
	Extents int64   `json:"extents"`
	Files   int64   `json:"files"`
	Seconds float64 `json:"seconds"`
}

type liveResult struct {
	Writes int64   `json:"writes"`
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
	MaxUs  float64 `json:"max_us"`
}

// work runs resyncwork (inside host, or here when host is nil) and
// decodes its JSON into out.
func work(t *testing.T, host *testbed.Host, out any, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	var cmd *exec.Cmd
	if host != nil {
		cmd = host.CommandContext(ctx, resyncwork, args...)
	} else {
		cmd = exec.CommandContext(ctx, resyncwork, args...)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("resyncwork %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(bytes.TrimSpace(b), out); err != nil {
		t.Fatalf("resyncwork %s printed %q: %v", strings.Join(args, " "), b, err)
	}
}

// rsync runs rsync with args, then syncfs on dst (when set), and times
// both; Files counts the lines it printed (-i: one per difference).
func rsync(t *testing.T, dst string, args ...string) Run {
	t.Helper()
	start := time.Now()
	cmd := exec.Command("rsync", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rsync %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if dst != "" {
		if out, err := exec.Command("sync", "-f", dst).CombinedOutput(); err != nil {
			t.Fatalf("sync -f %s: %v: %s", dst, err, out)
		}
	}
	r := Run{Seconds: time.Since(start).Seconds(), RSS: map[string]int64{}}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.RSS["rsync"] = ru.Maxrss // KiB; the largest of rsync and its reaped children
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		r.Files = int64(strings.Count(s, "\n") + 1)
	}
	return r
}

// ensureRsync installs Debian's rsync when it is missing.
func ensureRsync(t *testing.T) error {
	if _, err := exec.LookPath("rsync"); err == nil {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("rsync is missing and there is no apt-get to install it: install rsync by hand")
	}
	t.Logf("rsync missing: installing the Debian package rsync for the benchmark's references (apt-get update && apt-get install -y rsync)...")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "rsync"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w: %s (install rsync by hand)", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func rsyncVersion() string {
	out, err := exec.Command("rsync", "--version").Output()
	if err != nil {
		return "rsync ?"
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	if len(f) >= 3 {
		return "rsync " + f[2]
	}
	return "rsync ?"
}

var dropWarned bool

// settle flushes dirty data (so no step pays for the previous one's) and,
// in cold mode, drops the page cache, dentries and inodes.
// pauseAfterSetup waits sz.pause before a bed's first round. A setup
// writes about 10 GiB (the trees, the references' copies, a first full
// resync), and the first run right after it was slower for Tandem, which
// runs first in a round: 0.69-0.80 s against 0.46-0.59 s for the later
// runs of the same invocations (3 invocations of 3 runs of (a)), and in
// varying places (the exec, the compare, the final syncfs). After a
// minute's pause the first run was like the others (0.47-0.66 against
// 0.40-0.65 s). The limit, a step later, was not slower in either. A
// returning server's resync does not come a few seconds after another
// 2 GiB resync on the same disk.
func pauseAfterSetup(t *testing.T, sz sizes) {
	t.Helper()
	if sz.pause <= 0 {
		return
	}
	t.Logf("pause of %s after the setup (%s)", sz.pause, envPause)
	time.Sleep(sz.pause)
}

func settle(t *testing.T, sz sizes) {
	t.Helper()
	unix.Sync()
	if !sz.cold {
		return
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil && !dropWarned {
		dropWarned = true
		t.Logf("drop the page cache: %v (the figures are then warm-cache ones)", err)
	}
}

// emptyDir removes what dir holds, keeping dir (a bind mount source).
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func gib(b int64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }
func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// procStatus reads a "Vm...: N kB" field of /proc/PID/status.
func procStatus(pid int, field string) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
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

// loadAvg is the 1-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

// header names the machine and the run.
func header(s sizes, took time.Duration, load string) string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	commit := "unknown"
	if out, err := exec.Command("git", "-C", tcluster.RepoRoot(), "rev-parse", "--short", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("Run %s, commit %s, %d CPUs, kernel %s, %s, %s; %s; took %s; load average %s at the start, %s at the end. Figures are medians over the runs.\n",
		time.Now().Format("2006-01-02 15:04 MST"), commit, runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version(), rsyncVersion(),
		s, took.Round(time.Second), load, loadAvg())
}
