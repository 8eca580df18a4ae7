package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// The proof of no loss (issue 3, point 5): a writer logs every durable
// record it got acknowledged in an ack log outside the cluster; the
// primary is killed (agent and application, kill -9) or cut off (both
// cables pulled) at random moments, and after each failover every
// acknowledged record must be present and intact on the new primary. The
// pair is then healed, must resynchronise to identical copies, and the
// next writer resumes the same ack log on the new primary.
//
// TANDEM_SEED replays a run; TANDEM_FAULTS changes the number of faults
// (default 20, 6 with -short).
func TestNoLossFaultLoop(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	seed := testSeed(t)
	faults := faultCount(t, 20, 6)
	rng := rand.New(rand.NewPCG(seed, 0x7a6d))
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)

	ack := filepath.Join(c.Dir(), "acks.log")
	prim, sec := "alpha", "beta"
	began := time.Now()
	kinds := map[string]int{}
	for i := 1; i <= faults; i++ {
		w := startWriter(t, c.Node(prim).Host, ack)
		delay := 200*time.Millisecond + time.Duration(rng.Int64N(int64(1800*time.Millisecond)))
		kind := "kill9"
		if rng.IntN(2) == 1 {
			kind = "linkcut"
		}
		kinds[kind]++
		time.Sleep(delay)
		select {
		case <-w.Done():
			log, _ := w.Log()
			t.Fatalf("fault %d (seed %d): the writer on %s exited before the fault:\n%s", i, seed, prim, tail(log, 20))
		default:
		}

		// Inject the fault.
		t0 := time.Now()
		h := c.Node(prim).Host
		switch kind {
		case "kill9":
			c.Kill9(prim, w)
		case "linkcut":
			for _, n := range []string{"lan", "backup"} {
				must(t, h.LinkDown(n))
			}
		}
		failover := waitServing(t, c, sec, seed, 15*time.Second).Sub(t0)
		if kind == "linkcut" {
			// The cut-off node stops serving on its own (isolation): its
			// writer must get an error rather than an acknowledgement.
			// Only once it is gone is the ack log final.
			select {
			case <-w.Done():
			case <-time.After(15 * time.Second):
				t.Errorf("fault %d (seed %d): the writer on the cut-off %s still runs 15s after the cut", i, seed, prim)
				must(t, w.Kill9())
			}
		}

		// Every acknowledged record is on the survivor.
		rep, out := verifyOn(t, c.Node(sec).Host, ack)
		if !rep.OK {
			st, _ := c.Status(sec)
			t.Fatalf("fault %d (%s after %v, seed %d): acknowledged writes lost on %s (%s, %q):\n%s",
				i, kind, delay.Round(time.Millisecond), seed, sec, st.State, st.Reason, out)
		}

		// Heal and wait for a synced pair with identical copies.
		t1 := time.Now()
		switch kind {
		case "kill9":
			c.Start(prim)
		case "linkcut":
			for _, n := range []string{"lan", "backup"} {
				must(t, h.LinkUp(n))
			}
		}
		waitPair(t, c, sec, prim, 60*time.Second)
		resync := time.Since(t1)
		compareCopies(t, c, 5*time.Second)
		t.Logf("fault %2d: %-7s after %4dms: %s ALONE in %4dms; %6d acked records intact (%d checkpoints); healed and resynced in %5dms",
			i, kind, delay.Milliseconds(), sec, failover.Milliseconds(), rep.Acked, rep.Checkpoints.Present, resync.Milliseconds())
		prim, sec = sec, prim
	}
	t.Logf("%d faults (%d kill -9, %d link cuts) in %s, seed %d", faults, kinds["kill9"], kinds["linkcut"], time.Since(began).Round(time.Second), seed)
}

// faultCount is TANDEM_FAULTS, or def (short with -short).
func faultCount(t *testing.T, def, short int) int {
	t.Helper()
	n := def
	if testing.Short() {
		n = short
	}
	if s := os.Getenv("TANDEM_FAULTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("TANDEM_FAULTS=%q: want a positive number of faults", s)
		}
		n = v
	}
	return n
}

// testSeed returns TANDEM_SEED or a seed from the clock, logs it, and logs
// it again if the test fails.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TANDEM_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TANDEM_SEED=%q: want an unsigned integer", s)
		}
		seed = v
	}
	t.Logf("seed %d (TANDEM_SEED=%d replays it)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with TANDEM_SEED=%d", seed)
		}
	})
	return seed
}

// startWriter starts the no-loss workload in host, writing into the
// replicated directory and logging acknowledgements to ack (outside the
// cluster); extra flags are appended. It fails the test if the writer
// exits within 100 ms (a refused resume, a bad flag).
func startWriter(t *testing.T, h *testbed.Host, ack string, extra ...string) *testbed.Proc {
	t.Helper()
	args := append([]string{"run", "--dir", dataDir, "--ack-log", ack, "--size", "512"}, extra...)
	w, err := h.Start(bins.Writer, args...)
	if err != nil {
		t.Fatalf("start the writer on %s: %v", h.Name, err)
	}
	t.Cleanup(func() { _ = w.Kill9() })
	select {
	case <-w.Done():
		log, _ := w.Log()
		t.Fatalf("the writer on %s exited at once:\n%s", h.Name, log)
	case <-time.After(100 * time.Millisecond):
	}
	return w
}

// verifyReport is the part of `writer verify --json` the tests read.
type verifyReport struct {
	OK          bool     `json:"ok"`
	Acked       int      `json:"acked"`
	Present     int      `json:"present"`
	Lost        []uint64 `json:"lost"`
	Problems    []string `json:"problems"`
	Records     int      `json:"records"`
	Checkpoints struct {
		Acked   int `json:"acked"`
		Present int `json:"present"`
	} `json:"checkpoints"`
}

// verifyOn runs `writer verify` on the replicated directory as host sees
// it and returns the report and the human-readable output (for messages).
func verifyOn(t *testing.T, h *testbed.Host, ack string) (verifyReport, string) {
	t.Helper()
	return verifyDir(t, h, dataDir, ack)
}

func verifyDir(t *testing.T, h *testbed.Host, dir, ack string) (verifyReport, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := h.CommandContext(ctx, bins.Writer, "verify", "--dir", dir, "--ack-log", ack, "--json")
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		t.Fatalf("writer verify on %s could not run: %v: %s", h.Name, err, errb.String())
	}
	var r verifyReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("writer verify on %s: %v in %q", h.Name, err, out.String())
	}
	text, _ := h.Run(bins.Writer, "verify", "--dir", dir, "--ack-log", ack)
	if r.OK && err != nil {
		t.Fatalf("writer verify on %s: exit 1 but ok in the report:\n%s", h.Name, text)
	}
	return r, text
}

// waitServing waits until node serves (PRIM or ALONE, no transition) and
// returns when it was first seen serving.
func waitServing(t *testing.T, c *tcluster.Cluster, node string, seed uint64, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	var last api.ModuleStatus
	var err error
	for time.Now().Before(deadline) {
		last, err = c.Status(node)
		if err == nil && (last.State == "ALONE" || last.State == "PRIM") && last.Target == "" {
			return time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s did not take over within %s (seed %d): last %s target %q reason %q err=%v", node, within, seed, last.State, last.Target, last.Reason, err)
	return time.Time{}
}

// waitPair waits until prim is PRIM and sec a SECOND whose copy is synced.
func waitPair(t *testing.T, c *tcluster.Cluster, prim, sec string, within time.Duration) {
	t.Helper()
	waitModulePair(t, c, tcluster.Module, prim, sec, within)
}

// compareCopies checks that both backing copies of the replicated
// directory are identical (file mtimes included, directory mtimes not),
// retrying for a little while.
func compareCopies(t *testing.T, c *tcluster.Cluster, within time.Duration) {
	t.Helper()
	compareTrees(t, c.BackingDir("alpha", dataDir), c.BackingDir("beta", dataDir), within)
}

func compareTrees(t *testing.T, a, b string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		diffs, err := treecmp.Compare(a, b, treecmp.Options{IgnoreDirMtime: true, MaxDiffs: 10})
		if err == nil && len(diffs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, d := range diffs {
				fmt.Fprintf(&b, "\n  %s", d)
			}
			t.Fatalf("the two copies differ after %s (err %v):%s", within, err, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// An application that retries a failed fsync on a primary cut off from
// its peer: once the node stopped serving, no retry may be acknowledged
// either (the peer serves now and lacks the data).
func TestNoLossIsolatedPrimaryRetries(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	ack := filepath.Join(c.Dir(), "acks.log")
	w := startWriter(t, c.Node("alpha").Host, ack, "--retry", "8s")
	time.Sleep(time.Second)
	h := c.Node("alpha").Host
	for _, n := range []string{"lan", "backup"} {
		must(t, h.LinkDown(n))
	}
	waitServing(t, c, "beta", 0, 10*time.Second)
	select {
	case <-w.Done():
	case <-time.After(20 * time.Second):
		t.Errorf("the writer on the cut-off alpha still runs 20s after the cut")
		must(t, w.Kill9())
	}
	log, _ := w.Log()
	t.Logf("writer on alpha:\n%s", tail(log, 6))
	if rep, out := verifyOn(t, c.Node("beta").Host, ack); !rep.OK {
		t.Fatalf("writes acknowledged on the cut-off alpha are missing on beta, which serves:\n%s", out)
	}
}
