package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/replica/changelog"
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

	sc := compareScope{}
	mine := x.syncedEpoch()
	switch {
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
	gen := d.changes.Gen()
	var snap *changelog.Snapshot
	if !sc.full {
		snap = d.changes.Dirty()
		entries, dirs, err := snapshotPaths(d.mount.RootFd(), snap)
		if err != nil {
			return fmt.Errorf("name the recorded changes: %w", err)
		}
		sc.entries = append(entries, base.Entries...)
		sc.dirs = append(dirs, base.Dirs...)
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
	x.r.log.Add("resync", run.kind+" resynchronisation of "+d.path+" to "+x.r.peer+" started",
		"dir", d.path, "kind", run.kind, "reason", run.reason, "entries", len(sc.entries), "dirs", len(sc.dirs), "result", "started")

	if err := x.runCompare(ctx, d, s, sc, run); err != nil {
		x.r.log.Add("resync", run.kind+" resynchronisation of "+d.path+" failed: "+err.Error(), "dir", d.path, "kind", run.kind, "result", "failed")
		return err
	}
	var err error
	if sc.full {
		err = d.changes.Reset(gen)
	} else {
		err = d.changes.ClearDirty(snap.Files, snap.Dirs)
	}
	if err != nil {
		x.r.log.Add("warn", "change records of "+d.path+" not cleared: "+err.Error()+" (the next resynchronisation compares them again)")
	}
	el := time.Since(run.started)
	x.r.log.Add("resync", fmt.Sprintf("%s resynchronisation of %s complete: %d bytes examined, %d sent, %d files, in %s",
		run.kind, d.path, run.done.Load(), run.sent.Load(), run.files.Load(), el.Round(time.Millisecond)),
		"dir", d.path, "kind", run.kind, "result", "complete", "bytes_examined", run.done.Load(),
		"bytes_sent", run.sent.Load(), "files", run.files.Load(), "seconds", el.Seconds())
	return nil
}
