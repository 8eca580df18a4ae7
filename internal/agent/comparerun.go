package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/compare"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/wire"
)

// senderStream is a wire.Sender as the compare engine sees it.
type senderStream struct{ s *wire.Sender }

func (a senderStream) Submit(o *op.Op) uint64 { return a.s.Submit(o) }

func (a senderStream) Query(q *op.Op) <-chan compare.Reply {
	_, ch := a.s.Query(q)
	out := make(chan compare.Reply, 1)
	go func() {
		r := <-ch
		out <- compare.Reply{Data: r.Data, Err: r.Err}
	}()
	return out
}

func blockSize(full bool, zone int64) int64 {
	if full || zone <= 0 {
		return compare.DefaultBlockSize
	}
	return min(zone, compare.DefaultBlockSize)
}

// runCompare runs the compare engine over sc and waits until its final
// marker (op.ResyncDone) is durable on the SECOND.
func (x *replica) runCompare(ctx context.Context, d *replDir, s *wire.Sender, sc *compareScope, run *resyncRun) error {
	cfg := x.r.cfg.Replication
	var warnOnce sync.Once
	eng, err := compare.New(senderStream{s}, compare.Options{
		RootFd: d.mount.RootFd(),
		Freeze: func(fn func()) {
			thaw := d.mount.Freeze()
			defer thaw()
			fn()
		},
		// A file's fixes stop only that file's changes (and renames and
		// removals), not the application's writes elsewhere.
		FreezeFile: func(fd int, fn func()) {
			thaw, err := d.mount.FreezeFile(fd)
			if err != nil {
				warnOnce.Do(func() {
					x.r.a.log.Warn("resync: freezing one file failed; freezing every change instead", "dir", d.path, "err", err)
				})
				thaw = d.mount.Freeze()
			}
			defer thaw()
			fn()
		},
		// A full compare hashes 64 KiB blocks; an incremental one works
		// at the records' zone size, so a 4 KiB change costs 4 KiB.
		BlockSize:  blockSize(sc.full, cfg.ZoneSize),
		Parallel:   cfg.ResyncParallel,
		Bandwidth:  cfg.ResyncBandwidth,
		TrustZones: sc.trust,
		// The records' generation when the copies became identical: what
		// they hold up to it is on the SECOND.
		BeforeDone: func() { sc.doneGen = d.changes.Gen() },
		Sums:       x.loadSums(d, d.mount.RootFd()),
		Logger:     x.r.a.log.With("module", x.r.cfg.Name, "dir", d.path),
	})
	if err != nil {
		return err
	}
	scope := compare.Scope{Full: sc.full, Dirs: sc.dirs, From: sc.from}
	if len(sc.entries) > 0 {
		scope.Files = make(map[string][]compare.Zone, len(sc.entries))
		for _, e := range sc.entries {
			zs := scope.Files[e.Path]
			for _, z := range e.Zones {
				zs = append(zs, compare.Zone{Off: z[0], Len: z[1]})
			}
			scope.Files[e.Path] = zs
		}
	}
	d.rep.observe(eng)
	defer d.rep.observe(nil)
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(done)
		wg.Wait() // no resume point written after the caller dropped it
	}()
	if sc.resume != nil {
		wg.Go(func() { x.checkpoints(d, s, eng, *sc.resume, done) })
	}
	progressDone := make(chan struct{})
	var progress sync.WaitGroup
	progress.Go(func() { // progress for status, here and (through the heartbeat) on the SECOND
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			p := eng.Progress()
			run.total.Store(p.Total)
			// Trusted zones are read at once and sent at the bandwidth cap:
			// their progress is what was sent.
			if sc.trust {
				run.done.Store(p.Sent)
			} else {
				run.done.Store(p.Examined)
			}
			run.sent.Store(p.Sent)
			run.files.Store(p.Files)
			if i%5 == 0 {
				x.r.a.publish()
			}
			select {
			case <-progressDone:
				return
			case <-t.C:
			}
		}
	})
	st, err := eng.Run(ctx, scope)
	// Stopped first: a last tick must not overwrite the final figures.
	close(progressDone)
	progress.Wait()
	// What was examined, not the estimate (zones of files that turned
	// out equal at the probe, or gone, are not read).
	run.total.Store(st.Examined)
	run.done.Store(st.Examined)
	run.sent.Store(st.BytesSent)
	run.files.Store(st.Files)
	if err != nil {
		return err
	}
	if st.DoneSeq == 0 {
		return fmt.Errorf("the compare ended without its final marker")
	}
	if err := s.Wait(st.DoneSeq, true); err != nil {
		return err
	}
	return s.Failed()
}
