package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/wire"
)

// baseTimeout bounds the SECOND's answer to queryResyncBase (it may walk
// its tree to name its own changes).
const baseTimeout = 10 * time.Minute

// resyncRun is the resynchronisation of one directory, for status.
type resyncRun struct {
	kind, reason string
	dir          string
	started      time.Time
	total        atomic.Int64 // bytes to examine
	done         atomic.Int64 // bytes examined
	sent         atomic.Int64 // bytes sent
	files        atomic.Int64 // files examined
}

// compareScope is what a resynchronisation examines: everything, or the
// entries and directories the records of either side name.
type compareScope struct {
	full    bool
	trust   bool // send the zones without comparing them
	entries []baseEntry
	dirs    []string
	from    string       // resuming a full compare from there (compare.Scope.From)
	resume  *resumePoint // the full compare's id and position, checkpointed; nil: none
	doneGen uint64       // the records' generation at the final marker
}

// progressStatus is the running resynchronisation, nil when none runs.
func (x *replica) progressStatus() *api.ResyncStatus {
	if x == nil {
		return nil
	}
	run := x.running.Load()
	if run == nil {
		return nil
	}
	st := &api.ResyncStatus{Kind: run.kind, Reason: run.reason, BytesTotal: run.total.Load(), BytesDone: run.done.Load(),
		BytesSent: run.sent.Load(), Files: run.files.Load(), Started: run.started}
	st.BytesLeft = max(0, st.BytesTotal-st.BytesDone)
	if el := time.Since(run.started).Seconds(); el > 0.5 && st.BytesDone > 0 {
		st.RateBps = float64(st.BytesDone) / el
		st.ETASeconds = float64(st.BytesLeft) / st.RateBps
	}
	return st
}

// resyncDir brings the SECOND's copy of d to the primary's while the
// application keeps writing: it asks the SECOND where its copy stands,
// compares what needs comparing (incremental when both sides' records
// cover every difference, else everything), marks the end (ResyncDone,
// durable), then drops the records the resynchronisation covered.
func (x *replica) resyncDir(d *replDir, s *wire.Sender) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	_, ch := s.Query(&op.Op{Kind: op.Query, Flags: queryResyncBase})
	var base *resyncBase
	select {
	case rep := <-ch:
		if rep.Err != nil {
			return fmt.Errorf("ask the secondary where its copy stands: %w", rep.Err)
		}
		b, err := parseBase(rep.Data)
		if err != nil {
			return err
		}
		base = b
	case <-time.After(baseTimeout):
		return fmt.Errorf("the secondary did not say where its copy stands within %s", baseTimeout)
	}

	// The records stay in their "alone" mode until the run completes
	// (connect did not leave it): what they held is in DIRTY after this
	// checkpoint, or named by Dirty while an op still pins it, and every
	// change from here on will be, acknowledged or not.
	if err := d.changes.Checkpoint(); err != nil {
		return fmt.Errorf("change records of %s: %w", d.path, err)
	}
	sc := &compareScope{}
	mine := x.syncedEpoch()
	rp := x.loadResume(d)
	switch {
	case rp != nil && base.Resume == rp.ID && d.changes.Alone():
		// The SECOND holds the copy that run reached: the full compare
		// goes on from there, and the records cover the rest.
		sc.full, sc.from, sc.resume = true, rp.From, rp
		base.Why = fmt.Sprintf("resuming the full compare interrupted at %q", rp.From)
	case base.NeedFull:
		sc.full = true
		x.r.log.Add("info", "full compare of "+d.path+": "+base.Why)
	case d.changes.NeedFull():
		sc.full = true
		base.Why = "this node's change records do not cover everything (first start, or records lost)"
	case mine == 0 || base.SyncedEpoch != mine:
		sc.full = true
		base.Why = fmt.Sprintf("the copies were last identical at different epochs (here %d, on %s %d)", mine, x.r.peer, base.SyncedEpoch)
	}
	if !sc.full || sc.from != "" {
		snap := d.changes.Dirty()
		entries, dirs, err := snapshotPaths(d.mount.RootFd(), snap)
		if err != nil {
			return fmt.Errorf("name the recorded changes: %w", err)
		}
		sc.entries, sc.dirs = entries, dirs
		if sc.from == "" {
			sc.entries = append(sc.entries, base.Entries...)
			sc.dirs = append(sc.dirs, base.Dirs...)
		}
	}
	if sc.full && sc.resume == nil {
		sc.resume = x.markRun(d, s)
	}
	run := &resyncRun{kind: "incremental", dir: d.path, started: time.Now()}
	if sc.full {
		run.kind, run.reason = "full", base.Why
	}
	x.running.Store(run)
	defer func() {
		x.running.Store(nil)
		x.r.a.publish()
	}()
	// Zones this node recorded alone changed: sending them is cheaper than
	// hashing both sides. Zones the SECOND may have changed (a crashed
	// primary's writes in flight) are compared.
	sc.trust = !sc.full && len(base.Entries) == 0
	fields := []any{"dir", d.path, "kind", run.kind, "reason", run.reason, "entries", len(sc.entries), "dirs", len(sc.dirs), "result", "started"}
	if sc.from != "" {
		fields = append(fields, "resumed_from", sc.from)
	}
	x.r.log.Add("resync", run.kind+" resynchronisation of "+d.path+" to "+x.r.peer+" started", fields...)

	sums0 := x.sums(d).Stats()
	if err := x.runCompare(ctx, d, s, sc, run); err != nil {
		x.r.log.Add("resync", run.kind+" resynchronisation of "+d.path+" failed: "+err.Error(), "dir", d.path, "kind", run.kind, "result", "failed")
		return err
	}
	x.dropResume(d)
	// The copies were identical at the marker: the records up to it are
	// covered (cleared first, so that a failure below costs the next
	// resynchronisation only what changed since); from here on the
	// peer's acknowledgements clear them.
	if err := d.changes.Reset(sc.doneGen); err != nil {
		x.r.log.Add("warn", "change records of "+d.path+" not cleared: "+err.Error()+" (the next resynchronisation compares them again)")
	}
	if err := d.changes.SetAlone(false); err != nil {
		return fmt.Errorf("change records of %s: %w", d.path, err)
	}
	el := time.Since(run.started)
	// Files whose content this node did not read: their hashes were
	// remembered (replication.resync_hash_cache).
	reused := x.sums(d).Stats().SumHits - sums0.SumHits
	x.r.log.Add("resync", fmt.Sprintf("%s resynchronisation of %s complete: %d bytes examined (%d files' hashes remembered), %d sent, %d files, in %s",
		run.kind, d.path, run.done.Load(), reused, run.sent.Load(), run.files.Load(), el.Round(time.Millisecond)),
		"dir", d.path, "kind", run.kind, "reason", run.reason, "result", "complete", "bytes_examined", run.done.Load(),
		"hashes_reused", reused, "bytes_sent", run.sent.Load(), "files", run.files.Load(), "seconds", el.Seconds())
	x.saveSumsAfterResync(d, d.mount.RootFd())
	return nil
}
