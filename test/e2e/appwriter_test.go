package e2e

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// Helpers of the resynchronisation tests (swap, failback, active-active,
// fault loop): the no-loss writer runs as the module's application,
// started by start_prim on whichever node serves and stopped by stop_prim,
// so the cluster moves it like a real application and the tests need not
// chase it.

// writerAppStart starts the test service (ns.pid) and the writer (app.pid:
// tcluster's Kill9 kills it with the agent), which resumes the module's
// ack log in the bed's directory ($TANDEM_STATE_DIR is
// BED/state-NODE/modules/MODULE). The writer's output goes to writer.log
// in the state directory.
const writerAppStart = `#!/bin/sh
# the module's applications: the test service and the no-loss writer
d="$TANDEM_STATE_DIR"
setsid %[1]s -listen :%[2]d -name "$TANDEM_NODE" -pidfile "$d/ns.pid" >/dev/null 2>&1 </dev/null &
setsid %[3]s run --dir %[4]s --ack-log "$d/../../../acks-%[5]s.log" --size 512 %[6]s >>"$d/writer.log" 2>&1 </dev/null &
echo $! >"$d/app.pid"
i=0
while [ ! -s "$d/ns.pid" ] && [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done
echo "service and writer started on $TANDEM_NODE ($1 -> $2)"
`

// writerAppStop stops the writer (SIGTERM: it ends after its current
// record; SIGKILL after a grace period, in hundredths of a second, the
// format argument) and the service.
const writerAppStop = `#!/bin/sh
d="$TANDEM_STATE_DIR"
if [ -s "$d/app.pid" ]; then
  p=$(cat "$d/app.pid")
  # a pid left by a crash may belong to another process by now
  if grep -q writer "/proc/$p/cmdline" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null; kill -CONT "$p" 2>/dev/null
    i=0
    while [ $i -lt %[1]d ] && [ -e "/proc/$p" ] && [ "$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null)" != Z ]; do sleep 0.01; i=$((i+1)); done
    kill -9 "$p" 2>/dev/null
  fi
  rm -f "$d/app.pid"
fi
if [ -s "$d/ns.pid" ]; then
  p=$(cat "$d/ns.pid")
  grep -q nameserver "/proc/$p/cmdline" 2>/dev/null && kill -9 "$p" 2>/dev/null
  rm -f "$d/ns.pid"
fi
echo "service and writer stopped on $TANDEM_NODE ($3)"
`

// writerApp returns start_prim and stop_prim running the writer into dir
// for module, and its service on port; extra are more `writer run` flags.
// stop_prim lets the writer finish its record (up to 2 s).
func writerApp(module, dir string, port uint16, extra string) map[string]string {
	return map[string]string{
		"start_prim": fmt.Sprintf(writerAppStart, bins.Nameserver, port, bins.Writer, dir, module, extra),
		"stop_prim":  fmt.Sprintf(writerAppStop, 200),
	}
}

// writerAppKill is writerApp whose stop_prim kills the writer at once
// (SIGKILL), as a crash would: see TestIsolationSlowStopPrim for why the
// fault loop does not wait for the writer.
func writerAppKill(module, dir string, port uint16, extra string) map[string]string {
	s := writerApp(module, dir, port, extra)
	s["stop_prim"] = fmt.Sprintf(writerAppStop, 0)
	return s
}

// ackLogOf is the ack log of module's writer app.
func ackLogOf(c *tcluster.Cluster, module string) string {
	return filepath.Join(c.Dir(), "acks-"+module+".log")
}

// writerPid is the pid of module's writer on node (0 if none runs).
func writerPid(c *tcluster.Cluster, node, module string) int {
	b, err := os.ReadFile(filepath.Join(c.ModuleStateDirOf(node, module), "app.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmd), bins.Writer) {
		return 0
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "Z" {
			return 0
		}
	}
	return pid
}

// writerLog is the tail of module's writer output on node.
func writerLog(c *tcluster.Cluster, node, module string) string {
	b, _ := os.ReadFile(filepath.Join(c.ModuleStateDirOf(node, module), "writer.log"))
	return tail(string(b), 8)
}

// checkWriter pauses module's writer on node (the serving node), checks
// with `writer verify` that every acknowledged record is there, checks
// that both copies are identical when same is set (the SECOND being
// synced), and lets the writer go on. It returns the verify report.
func checkWriter(t *testing.T, c *tcluster.Cluster, node, module, dir string, same bool, what string) verifyReport {
	t.Helper()
	pid := writerPid(c, node, module)
	if pid == 0 {
		evs, _ := c.ModuleEvents(node, module)
		t.Fatalf("%s: module %s's writer does not run on %s, which serves; its output:\n%s\nmodule log of %s (last 20 events):\n%s",
			what, module, node, writerLog(c, node, module), node, formatEvents(evs, 20))
	}
	must(t, syscall.Kill(pid, syscall.SIGSTOP))
	defer syscall.Kill(pid, syscall.SIGCONT)
	rep, out := verifyDir(t, c.Node(node).Host, dir, ackLogOf(c, module))
	if !rep.OK {
		st, _ := c.ModuleStatus(node, module)
		t.Fatalf("%s: acknowledged writes of module %s lost on %s (%s, %q):\n%s", what, module, node, st.State, st.Reason, out)
	}
	if same {
		compareTreesContent(t, c.BackingDir("alpha", dir), c.BackingDir("beta", dir), 10*time.Second, what+": module "+module)
	}
	return rep
}

// compareTreesContent is compareTrees for copies under a paused writer:
// its data files are open, and a file's mtime travels when its handle
// closes, so their mtimes are not compared; everything else is (the
// writer's checkpoints, closed files, with their mtimes).
func compareTreesContent(t *testing.T, a, b string, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		diffs, err := treecmp.Compare(a, b, treecmp.Options{IgnoreMtime: true, MaxDiffs: 10})
		if err == nil && len(diffs) == 0 {
			diffs, err = treecmp.Compare(a, b, treecmp.Options{IgnoreDirMtime: true, Exclude: []string{"data-*.log"}, MaxDiffs: 10})
		}
		if err == nil && len(diffs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var sb strings.Builder
			for _, d := range diffs {
				fmt.Fprintf(&sb, "\n  %s", d)
				if d.What == treecmp.Content {
					sb.WriteString(describeContentDiff(filepath.Join(a, d.Path), filepath.Join(b, d.Path)))
				}
			}
			t.Fatalf("%s: the two copies differ after %s (err %v):%s", what, within, err, sb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// describeContentDiff says where two copies of a file differ: their
// sizes, each run of differing bytes (the first 8), and for the writer's
// data files the record ids each side holds where a run begins, so a
// failure tells a stale zone from a torn or misplaced write.
func describeContentDiff(pa, pb string) string {
	a, errA := os.ReadFile(pa)
	b, errB := os.ReadFile(pb)
	if errA != nil || errB != nil {
		return fmt.Sprintf("\n    (cannot read both copies: %v %v)", errA, errB)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n    sizes: a %d, b %d", len(a), len(b))
	// The writer's records all have the length of the first (header 20
	// bytes, payload length at 12, little endian).
	recordLen := 0
	if len(a) >= 16 && string(a[:4]) == "TWR1" {
		recordLen = 20 + int(binary.LittleEndian.Uint32(a[12:]))
	}
	idAt := func(buf []byte, off int) string {
		allZero := true
		for _, c := range buf[off:min(off+32, len(buf))] {
			allZero = allZero && c == 0
		}
		what := "not a writer's data file"
		if recordLen > 0 {
			start := off / recordLen * recordLen
			what = fmt.Sprintf("no record header at %d", start)
			if start+12 <= len(buf) && string(buf[start:start+4]) == "TWR1" {
				what = fmt.Sprintf("record %d at %d", binary.LittleEndian.Uint64(buf[start+4:]), start)
			}
		}
		return fmt.Sprintf("%s, zeros from the difference on: %v", what, allZero)
	}
	runs, n := 0, min(len(a), len(b))
	for i := 0; i < n && runs < 8; {
		if a[i] == b[i] {
			i++
			continue
		}
		// A run ends after 64 equal bytes: random payloads match by
		// chance one byte in 256.
		last := i
		for j := i; j < n && j-last < 64; j++ {
			if a[j] != b[j] {
				last = j
			}
		}
		fmt.Fprintf(&sb, "\n    bytes %d-%d (%d) differ: a %s; b %s", i, last, last-i+1, idAt(a, i), idAt(b, i))
		runs++
		i = last + 1
	}
	return sb.String()
}

// ackWatch follows an ack log from outside and notes when acknowledgements
// arrive, to measure how long the application could not write.
type ackWatch struct {
	path string
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	acks  int
	times []time.Time // when new acknowledgements were seen (2 ms polls)
}

func watchAcks(t *testing.T, path string) *ackWatch {
	w := &ackWatch{path: path, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	t.Cleanup(w.Stop)
	return w
}

func (w *ackWatch) run() {
	defer close(w.done)
	var off int64
	var partial string
	tk := time.NewTicker(2 * time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-tk.C:
		}
		f, err := os.Open(w.path)
		if err != nil {
			continue
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			continue
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if len(b) == 0 {
			continue
		}
		now := time.Now()
		off += int64(len(b))
		s := partial + string(b)
		lines := strings.Split(s, "\n")
		partial = lines[len(lines)-1]
		n := 0
		for _, l := range lines[:len(lines)-1] {
			if strings.HasPrefix(l, "r ") {
				n++
			}
		}
		if n > 0 {
			w.mu.Lock()
			w.acks += n
			w.times = append(w.times, now)
			w.mu.Unlock()
		}
	}
}

func (w *ackWatch) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// Acks is how many acknowledgements were seen so far.
func (w *ackWatch) Acks() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acks
}

// waitWriting waits for n new acknowledgements of module's writer, which
// runs on node; on failure it says whether the writer runs and shows its
// output.
func waitWriting(t *testing.T, c *tcluster.Cluster, w *ackWatch, node, module string, n int, within time.Duration, what string) {
	t.Helper()
	base := w.Acks()
	deadline := time.Now().Add(within)
	for w.Acks() < base+n {
		if time.Now().After(deadline) {
			st, err := c.ModuleStatus(node, module)
			pid := writerPid(c, node, module)
			if pid != 0 {
				stack, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stack", pid))
				wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid))
				t.Logf("writer pid %d on %s: wchan %s, kernel stack:\n%s", pid, node, wchan, stack)
			}
			t.Fatalf("%s: %d new acknowledgements of module %s in %s, want %d: its writer on %s (pid %d; module %s target %q %q, err %v) cannot write; its output:\n%s",
				what, w.Acks()-base, module, within, n, node, pid, st.State, st.Target, st.Reason, err, writerLog(c, node, module))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// LongestGap is the longest time without a new acknowledgement within
// [from, to], and when it began.
func (w *ackWatch) LongestGap(from, to time.Time) (time.Duration, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return longestGap(w.times, from, to)
}

// longestGap: times are increasing; the gap before the first time in the
// window counts from the last time before it (or from).
func longestGap(times []time.Time, from, to time.Time) (time.Duration, time.Time) {
	var best time.Duration
	var at time.Time
	prev := from
	for _, tm := range times {
		if tm.Before(from) {
			prev = tm
			continue
		}
		if tm.After(to) {
			break
		}
		if g := tm.Sub(prev); g > best {
			best, at = g, prev
		}
		prev = tm
	}
	return best, at
}

// vipProbe connects to a module's service through its VIP from the client
// host every few milliseconds and notes each answer.
type vipProbe struct {
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	times []time.Time
	who   []string
}

func probeVIP(t *testing.T, c *tcluster.Cluster, module string) *vipProbe {
	p := &vipProbe{stop: make(chan struct{}), done: make(chan struct{})}
	vip, port := c.ModuleVIP(module), c.ModulePort(module)
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			who, err := c.ReachPort(vip, port, 100*time.Millisecond)
			if err == nil && who != "" {
				p.mu.Lock()
				p.times = append(p.times, time.Now())
				p.who = append(p.who, who)
				p.mu.Unlock()
			}
			time.Sleep(3 * time.Millisecond)
		}
	}()
	t.Cleanup(p.Stop)
	return p
}

func (p *vipProbe) Stop() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// LongestGap is the longest time the VIP did not answer within [from, to].
func (p *vipProbe) LongestGap(from, to time.Time) (time.Duration, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return longestGap(p.times, from, to)
}

// primWatch polls both nodes' status of every module and records a module
// seen primary on both nodes at once: a node counts as primary when it is
// PRIM or ALONE with no transition, or entering one of them. Samples go
// A, B, A, so a node that changed role between two reads is not blamed.
//
// A restarted agent shows its old role on its way out until its boot step
// ran (module.New), so it never counts as primary then.
type primWatch struct {
	stop chan struct{}
	done chan struct{}

	mu         sync.Mutex
	samples    int
	violations []string
}

func isPrim(st api.ModuleStatus, err error) bool {
	if err != nil {
		return false
	}
	serving := func(s string) bool { return s == "PRIM" || s == "ALONE" }
	return (serving(st.State) && st.Target == "") || serving(st.Target)
}

func watchPrims(t *testing.T, c *tcluster.Cluster) *primWatch {
	w := &primWatch{stop: make(chan struct{}), done: make(chan struct{})}
	mods := c.Modules()
	go func() {
		defer close(w.done)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tk.C:
			}
			for _, m := range mods {
				w.sample(c, m)
			}
		}
	}()
	t.Cleanup(func() {
		w.Stop()
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.violations) > 0 {
			t.Errorf("a module was primary on both nodes at once in %d samples; first: %s", len(w.violations), w.violations[0])
		} else {
			t.Logf("primary watch: %d samples, never two primaries", w.samples)
		}
	})
	return w
}

// sample reads module's status on one node, the other, and the first
// again, and notes two primaries.
func (w *primWatch) sample(c *tcluster.Cluster, m string) {
	first, second := "alpha", "beta"
	s1, e1 := c.ModuleStatus(first, m)
	if !isPrim(s1, e1) {
		first, second = second, first
		if s1, e1 = c.ModuleStatus(first, m); !isPrim(s1, e1) {
			w.count()
			return
		}
	}
	s2, e2 := c.ModuleStatus(second, m)
	s3, e3 := c.ModuleStatus(first, m)
	w.count()
	if !isPrim(s2, e2) || !isPrim(s3, e3) {
		return
	}
	at := time.Now()
	desc := fmt.Sprintf("module %s at %s: %s %s->%q (%q), %s %s->%q (%q), %s again %s->%q",
		m, at.Format("15:04:05.000"), first, s1.State, s1.Target, s1.Reason, second, s2.State, s2.Target, s2.Reason, first, s3.State, s3.Target)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.violations = append(w.violations, desc)
}

func (w *primWatch) count() {
	w.mu.Lock()
	w.samples++
	w.mu.Unlock()
}

func (w *primWatch) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// Violations is how many samples found two primaries so far.
func (w *primWatch) Violations() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.violations)
}

// waitModulePair waits until module is PRIM on prim and a synced SECOND
// on sec, and returns when that was first seen.
func waitModulePair(t *testing.T, c *tcluster.Cluster, module, prim, sec string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	var p, s api.ModuleStatus
	var perr, serr error
	for time.Now().Before(deadline) {
		p, perr = c.ModuleStatus(prim, module)
		s, serr = c.ModuleStatus(sec, module)
		if perr == nil && serr == nil && p.State == "PRIM" && p.Target == "" &&
			s.State == "SECOND" && s.Target == "" && s.Sync == "synced" {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	logModuleEvents(t, c, module, 15)
	t.Fatalf("module %s: no synced pair within %s: %s is %s (target %q, %q, err %v), %s is %s (target %q, sync %s, %q, err %v)",
		module, within, prim, p.State, p.Target, p.Reason, perr, sec, s.State, s.Target, s.Sync, s.Reason, serr)
	return time.Time{}
}

// waitModuleServing waits until module serves on node (PRIM or ALONE, no
// transition) and returns when that was first seen.
func waitModuleServing(t *testing.T, c *tcluster.Cluster, module, node string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	var last api.ModuleStatus
	var err error
	for time.Now().Before(deadline) {
		last, err = c.ModuleStatus(node, module)
		if err == nil && (last.State == "ALONE" || last.State == "PRIM") && last.Target == "" {
			return time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
	logModuleEvents(t, c, module, 15)
	t.Fatalf("module %s does not serve on %s after %s: last %s target %q reason %q err=%v", module, node, within, last.State, last.Target, last.Reason, err)
	return time.Time{}
}

func logModuleEvents(t *testing.T, c *tcluster.Cluster, module string, last int) {
	t.Helper()
	for _, n := range []string{"alpha", "beta"} {
		evs, _ := c.ModuleEvents(n, module)
		t.Logf("module %s, log of %s (last %d events):\n%s", module, n, last, formatEvents(evs, last))
	}
}

// resyncEvents returns module's "resync" events on node at or after since
// (the primary logs them).
func resyncEvents(c *tcluster.Cluster, node, module string, since time.Time) []eventlog.Event {
	evs, _ := c.ModuleEvents(node, module)
	var out []eventlog.Event
	for _, e := range evs {
		if e.Kind == "resync" && !e.Time.Before(since) {
			out = append(out, e)
		}
	}
	return out
}

// waitResync waits for module's "resync" event with result on node after
// since and returns it.
func waitResync(t *testing.T, c *tcluster.Cluster, node, module, result string, since time.Time, within time.Duration) eventlog.Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, e := range resyncEvents(c, node, module, since) {
			if e.Fields["result"] == result {
				return e
			}
		}
		if time.Now().After(deadline) {
			logModuleEvents(t, c, module, 15)
			t.Fatalf("module %s: no \"resync %s\" event on %s within %s", module, result, node, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// resyncSummary formats a resync event's numbers.
func resyncSummary(e eventlog.Event) string {
	f := e.Fields
	s := fmt.Sprintf("%v resync: %.0f bytes examined, %.0f sent, %.3fs", f["kind"], num(f["bytes_examined"]), num(f["bytes_sent"]), num(f["seconds"]))
	if r, _ := f["reason"].(string); r != "" {
		s += " (" + r + ")"
	}
	return s
}
