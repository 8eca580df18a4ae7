// Package demo is `tandem demo`: a complete two-node cluster on this one
// machine (hosts alpha and beta plus a client, as network and mount
// namespaces on private bridges), a small application writing durable
// records to a replicated directory through the VIP, a kill -9 of the
// primary, the failover, the resync of the returning node, the failback,
// and the proof that no acknowledged write was lost. It also holds the
// application (`tandem demo-app`), so the demo needs only the tandem binary.
package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// Options configure Run.
type Options struct {
	// Binary is the tandem binary the agents and the application run;
	// default os.Executable().
	Binary string
	// Out receives the timeline as it happens; nil discards it.
	Out io.Writer
	// Keep keeps the bed's directory (configs, logs, both copies of the
	// data, the client's ack log) after the run.
	Keep bool
	// Every is the client's pace, one record per Every; default 5ms.
	Every time.Duration
}

// Event is one line of the timeline.
type Event struct {
	AtMS int64  `json:"t_ms"` // since the start of the demo
	Text string `json:"event"`
}

// Result is what `tandem demo --json` prints. Durations are milliseconds.
type Result struct {
	OK bool `json:"ok"`
	// FailoverMS: kill -9 of alpha -> the VIP on beta (detection + VIP
	// move, the application start excluded).
	FailoverMS int64 `json:"failover_ms"`
	// TakeoverMS: kill -9 -> beta ALONE with the application running.
	TakeoverMS int64 `json:"takeover_ms"`
	// ClientGapMS: the client's last acknowledgement before the kill -> its
	// first one from beta.
	ClientGapMS   int64 `json:"client_gap_ms"`
	AckedWrites   int   `json:"acked_writes"`
	PresentWrites int   `json:"present_writes"` // acknowledged and intact on the serving node
	LostWrites    int   `json:"lost_writes"`
	// LostOnSecondary: acknowledged writes missing on the synced SECOND at
	// the end (what a failover at that moment would lose).
	LostOnSecondary int `json:"lost_on_secondary"`
	// ResyncMS: alpha's agent restarted -> alpha SECOND, synced.
	ResyncMS int64 `json:"resync_ms"`
	// FailbackMS: swap asked -> alpha PRIM and beta SECOND, synced.
	FailbackMS int64 `json:"failback_ms"`
	// FailbackGapMS: the client without acknowledgement during the swap.
	FailbackGapMS int64 `json:"failback_gap_ms"`
	// CopiesIdentical: alpha's and beta's copies of the directory are equal
	// at the end.
	CopiesIdentical bool    `json:"copies_identical"`
	DurationMS      int64   `json:"duration_ms"`
	Bed             string  `json:"bed"`           // the test bed's id (namespaces tbXXXXX-*)
	Dir             string  `json:"dir,omitempty"` // the bed's directory, when kept
	Interrupted     bool    `json:"interrupted,omitempty"`
	Error           string  `json:"error,omitempty"`
	Timeline        []Event `json:"timeline"`
}

// Module is the demo module's name; VIP its address.
const Module = tcluster.Module

var vip = netip.MustParseAddr("192.0.2.100")

// Run runs the demo and returns its result; the error is for a demo that
// could not start (what is missing on this machine). Everything it built
// is removed before it returns, also when ctx ends (Ctrl-C) or a step
// fails; with Options.Keep, or after a failure, the bed's directory stays.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("tandem demo: find the tandem binary: %w", err)
		}
		o.Binary = exe
	}
	if fi, err := os.Stat(o.Binary); err != nil || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("tandem demo: the tandem binary %s is not an executable file (%v): build it with go build -o tandem ./cmd/tandem", o.Binary, err)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Every <= 0 {
		o.Every = 5 * time.Millisecond
	}
	d := &driver{o: o, start: time.Now(), tb: &recorder{}, res: &Result{}, missing: missingPaths(DataDir)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.steps(ctx)
		d.completed.Store(true)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		// Every step watches ctx; the bound is for one stuck in a call.
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	}
	return d.finish(ctx), nil
}

// driver runs the steps and keeps the result.
type driver struct {
	o     Options
	start time.Time
	tb    *recorder
	c     *tcluster.Cluster

	mu  sync.Mutex // res.Timeline
	res *Result

	missing []string // DataDir and parents absent before the run, deepest first

	cl        *client
	clStop    context.CancelFunc
	clDone    chan struct{}
	clOnce    sync.Once
	completed atomic.Bool
}

func (d *driver) event(format string, args ...any) {
	text := fmt.Sprintf(format, args...)
	at := time.Since(d.start)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.res.Timeline = append(d.res.Timeline, Event{AtMS: at.Milliseconds(), Text: text})
	fmt.Fprintf(d.o.Out, "%7.2fs  %s\n", at.Seconds(), text)
}

// interrupted ends the steps when ctx ended (Ctrl-C).
func (d *driver) interrupted(ctx context.Context) {
	if ctx.Err() != nil {
		runtime.Goexit()
	}
}

// sleep waits d or ends the steps on Ctrl-C.
func (d *driver) sleep(ctx context.Context, dur time.Duration) {
	if !sleepCtx(ctx, dur) {
		runtime.Goexit()
	}
}

// waitUntil polls cond every 5 ms for at most within; cond returns whether
// it holds and what it saw (for the failure message).
func (d *driver) waitUntil(ctx context.Context, within time.Duration, what string, cond func() (bool, string)) {
	deadline := time.Now().Add(within)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			d.tb.Fatalf("%s: not within %s; last seen: %s", what, within, saw)
		}
		d.sleep(ctx, 5*time.Millisecond)
	}
}

// status is the module's status on node, and a one-line summary of it.
func (d *driver) status(node string) (api.ModuleStatus, string) {
	st, err := d.c.Status(node)
	if err != nil {
		return st, fmt.Sprintf("%s: %v", node, err)
	}
	s := node + " " + st.State
	if st.Target != "" {
		s += "->" + st.Target
	}
	s += " sync=" + st.Sync
	if st.Reason != "" {
		s += fmt.Sprintf(" reason=%q", st.Reason)
	}
	return st, s
}

// settled reports whether node is in state with no transition running
// (and, for a SECOND, synced).
func (d *driver) settled(node, state string) (bool, string) {
	st, s := d.status(node)
	ok := st.State == state && st.Target == ""
	if state == "SECOND" {
		ok = ok && st.Sync == "synced"
	}
	return ok, s
}

func both(a, b func() (bool, string)) func() (bool, string) {
	return func() (bool, string) {
		okA, sA := a()
		okB, sB := b()
		return okA && okB, sA + "; " + sB
	}
}

func (d *driver) settledFn(node, state string) func() (bool, string) {
	return func() (bool, string) { return d.settled(node, state) }
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

func (d *driver) steps(ctx context.Context) {
	d.event("building hosts alpha, beta and client: network and mount namespaces on two private bridges")
	c := tcluster.New(d.tb, tcluster.Binaries{Tandem: d.o.Binary}, tcluster.Options{
		Name:        "demo",
		Directories: []string{DataDir},
		Scripts:     appScripts(d.o.Binary),
	})
	d.c = c
	d.res.Bed = c.Bed().ID()
	alpha, beta, cl := c.Node("alpha").Host, c.Node("beta").Host, c.Client
	d.event("bed %s: alpha %s, beta %s, client %s (namespaces %s-*, files in %s)",
		c.Bed().ID(), alpha.Addr("lan"), beta.Addr("lan"), cl.Addr("lan"), c.Bed().ID(), c.Dir())
	d.interrupted(ctx)

	c.Start("alpha")
	c.Start("beta")
	for _, n := range []string{"alpha", "beta"} {
		d.waitUntil(ctx, 15*time.Second, "agent "+n+" answering on its control socket", func() (bool, string) {
			_, err := c.Status(n)
			return err == nil, fmt.Sprint(err)
		})
		if _, err := c.Command(n, "start", api.CommandOptions{}); err != nil {
			d.tb.Fatalf("start module %s on %s: %v", Module, n, err)
		}
	}
	d.event("agents running; module %q started on both: VIP %s, replicated directory %s, application `tandem demo-app`", Module, vip, DataDir)
	d.waitUntil(ctx, 20*time.Second, "alpha PRIM and beta SECOND (synced)", both(d.settledFn("alpha", "PRIM"), d.settledFn("beta", "SECOND")))
	d.event("alpha is PRIM, beta SECOND (synced): an fdatasync on alpha returns once beta has the data too")

	d.startClient(ctx)
	d.waitUntil(ctx, 10*time.Second, "the first write acknowledged through the VIP", func() (bool, string) {
		return d.cl.servedBy("alpha") > 0, fmt.Sprintf("%d acks", len(d.cl.snapshot()))
	})
	d.event("client writing through %s:%d: one record every %s, acknowledged after its fdatasync", vip, AppPort, d.o.Every)
	d.sleep(ctx, 3*time.Second)
	d.event("%d writes acknowledged by alpha", d.cl.servedBy("alpha"))

	// The crash.
	d.event("kill -9 alpha (agent + application), as if its server crashed")
	t0 := time.Now()
	c.Kill9("alpha")
	var vipAt, aloneAt time.Time
	d.waitUntil(ctx, 10*time.Second, "beta taking over and serving the client", func() (bool, string) {
		now := time.Now()
		if vipAt.IsZero() {
			if ok, _ := beta.HasAddr(vip); ok {
				vipAt = now
			}
		}
		st, s := d.status("beta")
		if aloneAt.IsZero() && st.State == "ALONE" && st.Target == "" {
			aloneAt = now
		}
		_, _, served := outage(d.cl.snapshot(), t0, "beta")
		return !vipAt.IsZero() && !aloneAt.IsZero() && served, s
	})
	before, after, _ := outage(d.cl.snapshot(), t0, "beta")
	d.res.FailoverMS, d.res.TakeoverMS = ms(vipAt.Sub(t0)), ms(aloneAt.Sub(t0))
	d.res.ClientGapMS = ms(after.Sub(before))
	d.event("beta took over: VIP after %d ms, ALONE with the application running after %d ms", d.res.FailoverMS, d.res.TakeoverMS)
	d.event("client served again by beta: %d ms without an acknowledgement", d.res.ClientGapMS)
	ids := d.cl.ids()
	if chk := d.verify("beta", ids); len(chk.Lost) > 0 {
		d.tb.Errorf("after the failover, %d acknowledged writes are missing or damaged on beta: ids %s", len(chk.Lost), idRanges(chk.Lost))
		d.event("LOSS: %d of %d acknowledged writes missing on beta: %s", len(chk.Lost), len(ids), idRanges(chk.Lost))
	} else {
		d.event("checked on beta's disk: all %d writes acknowledged so far are there, intact", chk.Present)
	}

	d.sleep(ctx, 2*time.Second)
	d.event("beta ALONE: %d writes acknowledged by beta while alpha is down", d.cl.servedBy("beta"))

	// The return.
	t1 := time.Now()
	c.Start("alpha")
	d.event("alpha's agent restarted")
	resyncing := false
	d.waitUntil(ctx, 30*time.Second, "alpha SECOND (synced), beta PRIM", func() (bool, string) {
		st, s := d.status("alpha")
		if !resyncing && st.Sync == "resyncing" {
			resyncing = true
			d.event("alpha back: SECOND, resyncing (%.0f%%)", st.ResyncPercent)
		}
		ok, sb := d.settled("beta", "PRIM")
		return ok && st.State == "SECOND" && st.Target == "" && st.Sync == "synced", s + "; " + sb
	})
	d.res.ResyncMS = ms(time.Since(t1))
	if !resyncing {
		d.event("alpha back: SECOND")
	}
	d.event("alpha synced %d ms after its restart (agent start, pairing, resync); beta PRIM", d.res.ResyncMS)
	if msg := d.lastEvent("beta", t1, "resynchronisation"); msg != "" {
		d.event("beta's log: %s", msg)
	}
	d.sleep(ctx, time.Second)

	// The failback.
	t2 := time.Now()
	d.event("failback: tandem swap %s (stop_prim on beta, final sync, start_prim on alpha)", Module)
	if _, err := c.Command("beta", "swap", api.CommandOptions{}); err != nil {
		// An automatic failback may have started on its own: wait for it.
		d.event("swap refused (%v); waiting for alpha to become PRIM anyway", err)
	}
	var primAt time.Time
	d.waitUntil(ctx, 20*time.Second, "alpha PRIM and beta SECOND (synced) after the swap, client served by alpha", func() (bool, string) {
		ok, s := both(d.settledFn("alpha", "PRIM"), d.settledFn("beta", "SECOND"))()
		if ok && primAt.IsZero() {
			primAt = time.Now()
		}
		_, _, served := outage(d.cl.snapshot(), t2, "alpha")
		return !primAt.IsZero() && served, s
	})
	before, after, _ = outage(d.cl.snapshot(), t2, "alpha")
	d.res.FailbackMS, d.res.FailbackGapMS = ms(primAt.Sub(t2)), ms(after.Sub(before))
	d.event("alpha PRIM again after %d ms, beta SECOND (synced); the client waited %d ms", d.res.FailbackMS, d.res.FailbackGapMS)
	d.sleep(ctx, 2*time.Second)

	// The proof.
	d.stopClient()
	ids = d.cl.ids()
	d.res.AckedWrites = len(ids)
	d.event("client stopped: %d writes acknowledged (alpha %d, beta %d)", len(ids), d.cl.servedBy("alpha"), d.cl.servedBy("beta"))
	same, diffs := d.sameCopies(ctx) // waits for the last ops to land
	d.res.CopiesIdentical = same
	chk := d.verify("alpha", ids)
	d.res.PresentWrites, d.res.LostWrites = chk.Present, len(chk.Lost)
	if len(chk.Lost) > 0 {
		d.tb.Errorf("%d acknowledged writes missing or damaged on alpha: ids %s", len(chk.Lost), idRanges(chk.Lost))
	}
	d.event("verifying: %d acked, %d present on alpha, %d lost", len(ids), chk.Present, len(chk.Lost))
	sec := d.verify("beta", ids)
	d.res.LostOnSecondary = len(sec.Lost)
	switch {
	case len(sec.Lost) > 0:
		d.tb.Errorf("beta (SECOND, synced) lacks %d acknowledged writes (ids %s): a failover now would lose them", len(sec.Lost), idRanges(sec.Lost))
		d.event("beta (SECOND, synced) LACKS %d acknowledged writes (ids %s): a failover now would lose them", len(sec.Lost), idRanges(sec.Lost))
	case !same:
		d.tb.Errorf("alpha's and beta's copies of %s differ: %s", DataDir, diffs)
		d.event("beta holds every acknowledged write, but its copy DIFFERS from alpha's: %s", diffs)
	default:
		d.event("beta (SECOND) holds all %d too: both copies identical", sec.Present)
	}
	c.StopSampler() // fails the run if the VIP was ever on both nodes
	if !d.tb.Failed() {
		d.event("the VIP was never on both nodes (checked every 5 ms)")
	}
}

// lastEvent returns the message of node's last module event since t that
// contains sub, or "".
func (d *driver) lastEvent(node string, t time.Time, sub string) string {
	evs, err := d.c.Events(node)
	if err != nil {
		return ""
	}
	for i := len(evs) - 1; i >= 0 && !evs[i].Time.Before(t); i-- {
		if strings.Contains(evs[i].Msg, sub) {
			return evs[i].Msg
		}
	}
	return ""
}

// startClient starts the writer on the client host.
func (d *driver) startClient(ctx context.Context) {
	addr := netip.AddrPortFrom(vip, AppPort).String()
	dial := func(ctx context.Context) (net.Conn, error) { return d.c.Client.Dial(ctx, "tcp", addr) }
	cl, err := newClient(dial, d.o.Every, filepath.Join(d.c.Dir(), "acks.log"), d.event)
	if err != nil {
		d.tb.Fatalf("%v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	d.cl, d.clStop, d.clDone = cl, cancel, make(chan struct{})
	go func() {
		defer close(d.clDone)
		cl.run(cctx)
	}()
}

// stopClient stops the writer and waits for it; safe to call twice or
// before startClient.
func (d *driver) stopClient() {
	d.clOnce.Do(func() {
		if d.clStop == nil {
			return
		}
		d.clStop()
		<-d.clDone
	})
}

// verify checks node's copy of the data file (read below any mount, from
// the bed's backing directory) against the acknowledged ids.
func (d *driver) verify(node string, ids []uint64) Verdict {
	path := filepath.Join(d.c.BackingDir(node, DataDir), DataFile)
	data, err := os.ReadFile(path)
	if err != nil {
		d.tb.Fatalf("read %s's copy of the data %s: %v", node, path, err)
	}
	return verifyData(data, ids)
}

// sameCopies waits (a few seconds at most) until both copies of the
// directory hold the same tree and bytes; if they never do, it says how
// they differ.
func (d *driver) sameCopies(ctx context.Context) (bool, string) {
	a, b := d.c.BackingDir("alpha", DataDir), d.c.BackingDir("beta", DataDir)
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Data, sizes, modes, owners, links; not mtimes: the demo's claim
		// is about the data.
		diffs, err := treecmp.Compare(a, b, treecmp.Options{IgnoreMtime: true, MaxDiffs: 5})
		if err == nil && len(diffs) == 0 {
			return true, ""
		}
		if time.Now().After(deadline) {
			if err != nil {
				return false, err.Error()
			}
			return false, fmt.Sprint(diffs)
		}
		d.sleep(ctx, 50*time.Millisecond)
	}
}

// finish stops everything, removes the bed and completes the result.
func (d *driver) finish(ctx context.Context) *Result {
	r := d.res
	completed := d.completed.Load()
	r.Interrupted = !completed && ctx.Err() != nil
	if r.Interrupted {
		d.event("interrupted: cleaning up")
	}
	d.stopClient()
	failed := d.tb.Failed()
	keep := d.o.Keep || failed && !r.Interrupted
	if keep {
		if prev, had := os.LookupEnv(testbed.KeepEnv); !had || prev != "1" {
			os.Setenv(testbed.KeepEnv, "1")
			defer func() {
				if had {
					os.Setenv(testbed.KeepEnv, prev)
				} else {
					os.Unsetenv(testbed.KeepEnv)
				}
			}()
		}
	}
	d.tb.runCleanups()
	// The bed removes the mount points it created only when nothing else
	// is stacked on them; the agents' FUSE mount may be: finish the job.
	for _, p := range d.missing {
		_ = os.Remove(p) // empty directories only
	}
	failed = d.tb.Failed()
	r.Error = d.tb.errors()
	if !completed && !r.Interrupted && r.Error == "" {
		r.Error = "the demo stopped before its end"
	}
	r.OK = completed && !failed && r.LostWrites == 0 && r.LostOnSecondary == 0 && r.CopiesIdentical
	dir := ""
	if d.c != nil {
		dir = d.c.Dir()
	}
	if keep && dir != "" {
		r.Dir = dir
		if failed {
			_ = os.WriteFile(filepath.Join(dir, "demo-failure.log"), []byte(d.tb.details()), 0o644)
		}
	}
	where := "nothing left behind"
	if r.Bed != "" {
		where = "namespaces, mounts and processes of bed " + r.Bed + " removed"
	}
	d.event("cleaned up: %s", where)
	r.DurationMS = ms(time.Since(d.start))
	d.summary(r)
	return r
}

// summary prints the final lines.
func (d *driver) summary(r *Result) {
	w := d.o.Out
	fmt.Fprintln(w)
	switch {
	case r.Interrupted:
		fmt.Fprintln(w, "demo interrupted; everything it built is removed.")
	case r.OK:
		fmt.Fprintf(w, "OK: failover %d ms (VIP on beta), client gap %d ms, %d writes acknowledged, %d lost; resync %d ms, failback %d ms\n",
			r.FailoverMS, r.ClientGapMS, r.AckedWrites, r.LostWrites, r.ResyncMS, r.FailbackMS)
	default:
		fmt.Fprintf(w, "FAILED: %s\n", firstLine(r.Error))
		if r.LostWrites > 0 {
			fmt.Fprintf(w, "%d of %d acknowledged writes are lost\n", r.LostWrites, r.AckedWrites)
		}
	}
	if r.Dir != "" {
		fmt.Fprintf(w, "kept %s: cluster and module files, agent and application logs (*.log, state-*/), both copies of the data (data-alpha, data-beta), the client's acks.log", r.Dir)
		if !r.OK && !r.Interrupted {
			fmt.Fprint(w, ", and demo-failure.log")
		}
		fmt.Fprintln(w)
	}
}

// missingPaths lists p and its parents that do not exist, deepest first.
func missingPaths(p string) []string {
	var out []string
	for ; p != "/" && p != "."; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		out = append(out, p)
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
