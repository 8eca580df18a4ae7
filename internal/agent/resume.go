package agent

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/compare"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/wire"
)

// Resuming an interrupted full compare.
//
// A full compare walks the tree in depth-first path order; the engine
// tells which position every entry before was compared and fixed at
// (compare.Engine.Checkpoint). Every resumeEvery the primary waits until
// everything it sent so far is durable on the SECOND and persists that
// position. The next resynchronisation then compares in full only from
// there on, and before it only what the change records name: while a
// resynchronisation runs, the records stay in their "alone" mode, so
// every change since the run began is in them, whatever the SECOND
// acknowledged (it may have skipped an op on a part it did not have
// yet).
//
// The position is only valid against the copy that received that run.
// The run's random id is stored on the SECOND first (queryResumeMark) and
// it answers it back in queryResyncBase; it drops the id as soon as its
// copy can change otherwise (it serves, or a second --full is asked) and
// when the resynchronisation completes. The primary drops its position
// when its records are recreated (they no longer cover the changes) or
// when it becomes SECOND.

// queryResumeMark is the Flags of the agent's query "this full compare is
// run <Data>": the SECOND keeps the id until the run completes.
const queryResumeMark = 0xB45F

// resumeEvery is how often a full compare's position is made durable.
const resumeEvery = 2 * time.Second

// resumePoint is a primary's record of an interrupted full compare.
type resumePoint struct {
	ID   string `json:"id"`
	From string `json:"from"` // compare.Scope.From
}

func (x *replica) resumePath(d *replDir) string {
	return filepath.Join(changesDir(x.r.a.settings.StateDir, x.r.cfg.Name, d.idx), "resume")
}

func (x *replica) tokenPath(d *replDir) string {
	return filepath.Join(changesDir(x.r.a.settings.StateDir, x.r.cfg.Name, d.idx), "resume-token")
}

// loadResume returns the primary's resume point of d, nil when none (or
// unreadable: a full compare from the start is always correct).
func (x *replica) loadResume(d *replDir) *resumePoint {
	b, err := os.ReadFile(x.resumePath(d))
	if err != nil {
		return nil
	}
	var rp resumePoint
	if json.Unmarshal(b, &rp) != nil || rp.ID == "" || op.CleanPath(rp.From) != nil {
		x.r.log.Add("warn", "resume point of "+d.path+" unreadable: the next full compare starts from the beginning")
		return nil
	}
	return &rp
}

func (x *replica) saveResume(d *replDir, rp resumePoint) error {
	b, err := json.Marshal(rp)
	if err != nil {
		return err
	}
	return writeFileSync(x.resumePath(d), append(b, '\n'))
}

// dropResume forgets the primary's resume point of d.
func (x *replica) dropResume(d *replDir) {
	if err := os.Remove(x.resumePath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
		x.r.log.Add("warn", "could not remove the resume point of "+d.path+": "+err.Error())
	}
}

// resumeToken is the run id a SECOND keeps ("" when none).
func (x *replica) resumeToken(d *replDir) string {
	b, err := os.ReadFile(x.tokenPath(d))
	if err != nil {
		return ""
	}
	return string(b)
}

// dropToken makes a SECOND forget its run id: its copy may now change
// otherwise than through that run's stream.
func (x *replica) dropToken(d *replDir) {
	if err := os.Remove(x.tokenPath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
		x.r.log.Add("warn", "could not remove the resume mark of "+d.path+": "+err.Error())
	}
}

// answerMark (on the SECOND) keeps the id of the full compare that
// begins, durably, before the primary records any position of it.
func (x *replica) answerMark(d *replDir, q *op.Op) ([]byte, error) {
	id := string(q.Data)
	if _, err := hex.DecodeString(id); err != nil || len(id) != 32 {
		return nil, fmt.Errorf("resume mark %q: not a run id", id)
	}
	if err := writeFileSync(x.tokenPath(d), q.Data); err != nil {
		return nil, fmt.Errorf("keep the resume mark of %s: %w", d.path, err)
	}
	return nil, nil
}

// markRun gives a fresh full compare of d an id and stores it on the
// SECOND. Nil when the SECOND cannot keep it (an older version): the
// compare then runs without checkpoints.
func (x *replica) markRun(d *replDir, s *wire.Sender) *resumePoint {
	x.dropResume(d)
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil
	}
	rp := &resumePoint{ID: hex.EncodeToString(raw[:])}
	_, ch := s.Query(&op.Op{Kind: op.Query, Flags: queryResumeMark, Data: []byte(rp.ID)})
	select {
	case rep := <-ch:
		if rep.Err != nil {
			x.r.log.Add("warn", "the full compare of "+d.path+" cannot be resumed if interrupted: "+rep.Err.Error())
			return nil
		}
	case <-time.After(30 * time.Second):
		x.r.log.Add("warn", "the full compare of "+d.path+" cannot be resumed if interrupted: "+x.r.peer+" did not keep its mark within 30s")
		return nil
	}
	return rp
}

// checkpoints persists, every resumeEvery until done closes, the position
// a later run could resume eng's full compare from, once everything sent
// before it is durable on the SECOND.
func (x *replica) checkpoints(d *replDir, s *wire.Sender, eng *compare.Engine, rp resumePoint, done <-chan struct{}) {
	t := time.NewTicker(resumeEvery)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		from, ok := eng.Checkpoint()
		if !ok || from == rp.From {
			continue
		}
		if err := s.Wait(s.Submit(&op.Op{Kind: op.SyncAll}), true); err != nil {
			return
		}
		rp.From = from
		if err := x.saveResume(d, rp); err != nil {
			x.r.log.Add("warn", "could not record how far the full compare of "+d.path+" went: "+err.Error())
		}
	}
}
