package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/changelog"
	"github.com/tandem-ha/tandem/internal/replica/inopath"
	"github.com/tandem-ha/tandem/internal/replica/op"
)

// Change records and the resynchronisation's starting point.
//
// While a node serves, every change is recorded by inode before it is made
// (internal/replica/changelog): what the peer did not acknowledge, and
// everything changed while it was away. Both nodes persist the epoch at
// which their copies were last identical (syncedEpoch, written when a
// resynchronisation completes). When the peer returns as SECOND, the
// primary asks it (a query op, queryResyncBase) for its syncedEpoch and
// for the zones its own records say it may have changed without us (a
// crashed primary's in-flight writes, or changes it made serving alone).
// Equal syncedEpochs and complete records on both sides: only the zones
// and directories in either record are compared. Otherwise: everything.

// queryResyncBase is the Flags of the agent's own query op: "what is your
// starting point?". The compare package's queries use small numbers.
const queryResyncBase = 0xB45E

// maxBaseEntries bounds the entries a SECOND lists in its answer; more
// and it asks for a full compare instead.
const maxBaseEntries = 200_000

// resyncBase is a SECOND's answer to queryResyncBase.
type resyncBase struct {
	SyncedEpoch uint64      `json:"synced_epoch"`
	NeedFull    bool        `json:"need_full"`
	Why         string      `json:"why,omitempty"`
	Entries     []baseEntry `json:"entries,omitempty"`
	Zone        int64       `json:"zone,omitempty"`
	Dirs        []string    `json:"dirs,omitempty"`
	// Resume is the id of the full compare this copy received last and
	// has not completed (queryResumeMark).
	Resume string `json:"resume,omitempty"`
}

// baseEntry is a file the SECOND may have changed: zones (byte offset,
// length) and whether its attributes may differ.
type baseEntry struct {
	Path  string     `json:"path"`
	Meta  bool       `json:"meta,omitempty"`
	Zones [][2]int64 `json:"zones,omitempty"`
}

func changesDir(stateDir, module string, idx int) string {
	return filepath.Join(modDir(stateDir, module), "changes", strconv.Itoa(idx))
}

// openChanges opens a directory's change records. Damaged records are set
// aside: the log then asks for a full compare of the peer.
func (x *replica) openChanges(d *replDir) (*changelog.Log, error) {
	dir := changesDir(x.r.a.settings.StateDir, x.r.cfg.Name, d.idx)
	// The activity log works in 4 MiB extents (one journal sync per new
	// extent), the records of what changed alone in zone_size zones.
	opt := changelog.Options{ZoneSize: x.r.cfg.Replication.ZoneSize,
		Logger: x.r.a.log.With("module", x.r.cfg.Name, "dir", d.path)}
	l, err := changelog.Open(dir, opt)
	if errors.Is(err, changelog.ErrLost) {
		x.r.log.Add("warn", "change records of "+d.path+" unusable ("+err.Error()+"): the peer gets a full compare")
		x.dropResume(d) // the records no longer cover the changes since that run began
		l, err = changelog.Recreate(dir, opt)
	}
	if err != nil {
		return nil, fmt.Errorf("change records of %s in %s: %w", d.path, dir, err)
	}
	return l, nil
}

// checkpointEvery is how often the records drop the zones the peer made
// durable (otherwise they leave lazily, and a crash would report them
// all in flight).
const checkpointEvery = 2 * time.Second

func (x *replica) checkpointLoop(l *changelog.Log, stop chan struct{}) {
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if err := l.Checkpoint(); err != nil && !errors.Is(err, changelog.ErrClosed) {
				x.r.log.Add("warn", "change records checkpoint: "+err.Error())
			}
		}
	}
}

// syncedEpochPath is where a module's syncedEpoch lives.
func (x *replica) syncedEpochPath() string {
	return filepath.Join(modDir(x.r.a.settings.StateDir, x.r.cfg.Name), "synced-epoch")
}

// syncedEpoch is the epoch at which this node's copy was last identical to
// its peer's (0: never, or unknown).
func (x *replica) syncedEpoch() uint64 {
	b, err := os.ReadFile(x.syncedEpochPath())
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// setSyncedEpoch persists e (durably: a crash right after a completed
// resynchronisation must not forget it).
func (x *replica) setSyncedEpoch(e uint64) error {
	return writeFileSync(x.syncedEpochPath(), []byte(strconv.FormatUint(e, 10)+"\n"))
}

// writeFileSync replaces path with data: temp file, fsync, rename, fsync dir.
func writeFileSync(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	df, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer df.Close()
	return df.Sync()
}

// snapshotPaths turns a change snapshot into the entries and directories
// they name now in the tree below rootFd. Inodes no longer in the tree are
// dropped: their parent directory's record covers their removal.
func snapshotPaths(rootFd int, s *changelog.Snapshot) (entries []baseEntry, dirs []string, err error) {
	want := make(map[inopath.Key]bool, len(s.Files)+len(s.Dirs))
	for _, f := range s.Files {
		want[inopath.Key(f.Key)] = true
	}
	for _, d := range s.Dirs {
		want[inopath.Key(d.Key)] = true
	}
	names, err := inopath.Find(rootFd, want)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range s.Dirs {
		dirs = append(dirs, names[inopath.Key(d.Key)]...)
	}
	for _, f := range s.Files {
		var zones [][2]int64
		for _, r := range f.Zones {
			off, n := s.Bytes(r)
			zones = append(zones, [2]int64{off, n})
		}
		for _, p := range names[inopath.Key(f.Key)] {
			entries = append(entries, baseEntry{Path: p, Meta: f.Meta, Zones: zones})
		}
	}
	return entries, dirs, nil
}

// fullRequestPath flags a `second --full` until the resynchronisation it
// asked for completes.
func (x *replica) fullRequestPath() string {
	return filepath.Join(modDir(x.r.a.settings.StateDir, x.r.cfg.Name), "full-compare-requested")
}

// requestFull makes the next resynchronisation of this node's copy a full
// compare (second --full).
func (x *replica) requestFull() error {
	for _, d := range x.dirs {
		d.baseMu.Lock()
		d.base = nil // not answered yet, or answered for another stream
		d.baseMu.Unlock()
		x.dropToken(d) // a full compare from the start
	}
	return writeFileSync(x.fullRequestPath(), []byte("second --full\n"))
}

// secondBase computes a SECOND's answer for one directory from its own
// records (d.changes, opened by startReceiver): its syncedEpoch and what it
// may have changed without the new primary.
func (x *replica) secondBase(d *replDir) resyncBase {
	b := resyncBase{SyncedEpoch: x.syncedEpoch()}
	if _, err := os.Stat(x.fullRequestPath()); err == nil {
		return resyncBase{NeedFull: true, Why: "requested on " + x.r.a.node + " (second --full)"}
	}
	if d.changes == nil {
		return b
	}
	if d.changes.NeedFull() {
		return resyncBase{NeedFull: true, Why: "this node's change records are incomplete"}
	}
	snap := d.changes.InFlight()
	dirty := d.changes.Dirty()
	snap.Files = append(snap.Files, dirty.Files...)
	snap.Dirs = append(snap.Dirs, dirty.Dirs...)
	if len(snap.Files)+len(snap.Dirs) > maxBaseEntries {
		return resyncBase{NeedFull: true, Why: fmt.Sprintf("this node changed %d entries on its own", len(snap.Files)+len(snap.Dirs))}
	}
	entries, dirs, err := snapshotPaths(d.rootFd, snap)
	if err != nil {
		return resyncBase{NeedFull: true, Why: "could not name this node's changes: " + err.Error()}
	}
	b.Entries, b.Dirs, b.Zone = entries, dirs, snap.ZoneSize
	return b
}

// answerBase answers queryResyncBase (on the SECOND).
func (x *replica) answerBase(d *replDir, q *op.Op) ([]byte, error) {
	d.baseMu.Lock()
	defer d.baseMu.Unlock()
	if d.base == nil {
		b := x.secondBase(d)
		d.base = &b
	}
	b := *d.base
	// Not cached: a full compare marked since the last answer counts.
	b.Resume = x.resumeToken(d)
	return json.Marshal(&b)
}

// parseBase decodes a SECOND's answer.
func parseBase(data []byte) (*resyncBase, error) {
	var b resyncBase
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("the secondary's resynchronisation base: %w", err)
	}
	return &b, nil
}

// finishSecondRecords, on a SECOND whose copy is now identical to the
// primary's, drops its own records: what it changed alone was taken back.
func (x *replica) finishSecondRecords(d *replDir) error {
	d.baseMu.Lock()
	d.base = nil
	d.baseMu.Unlock()
	if d.changes == nil {
		return nil
	}
	if err := d.changes.ReleaseInFlight(false); err != nil {
		return err
	}
	return d.changes.Reset(d.changes.Gen())
}
