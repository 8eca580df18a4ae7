package changelog

import (
	"math"
)

// Range is a half-open range of zone indices [First, End).
type Range struct{ First, End uint64 }

// File is what changed in one file.
type File struct {
	Key Key
	// Gen is the generation of the entry's last change; ClearDirty drops
	// the entry only if it is unchanged since.
	Gen uint64
	// Meta: attributes (size, mode, owner, times, xattrs) may differ.
	Meta bool
	// Zones may differ; sorted, disjoint, not adjacent.
	Zones []Range
}

// Dir is a directory whose entries may differ.
type Dir struct {
	Key Key
	Gen uint64
}

// Snapshot is a copy of a set of changes, sorted by Key.
type Snapshot struct {
	ZoneSize int64
	Files    []File
	Dirs     []Dir
}

// Bytes converts a zone range to a byte range, clamped to the largest file
// offset.
func (s *Snapshot) Bytes(r Range) (off, n int64) {
	z := uint64(s.ZoneSize)
	lo, hi := r.First*z, r.End*z
	if r.First > math.MaxInt64/z {
		lo = math.MaxInt64
	}
	if r.End > math.MaxInt64/z {
		hi = math.MaxInt64
	}
	return int64(lo), int64(hi - lo)
}

// Zones counts the zones of the snapshot.
func (s *Snapshot) Zones() uint64 {
	var n uint64
	for _, f := range s.Files {
		for _, r := range f.Zones {
			n += r.End - r.First
		}
	}
	return n
}

func (l *Log) snapshot(s *set) *Snapshot {
	out := &Snapshot{ZoneSize: l.opt.ZoneSize, Files: make([]File, 0, len(s.files)), Dirs: make([]Dir, 0, len(s.dirs))}
	for _, k := range sortedKeys(s.files) {
		f := s.files[k]
		var tmp [1]run
		rs := f.ranges(&tmp)
		zs := make([]Range, len(rs))
		for i, r := range rs {
			zs[i] = Range{r.lo, r.hi}
		}
		out.Files = append(out.Files, File{Key: k, Gen: f.gen, Meta: f.meta, Zones: zs})
	}
	for _, k := range sortedKeys(s.dirs) {
		out.Dirs = append(out.Dirs, Dir{Key: k, Gen: s.dirs[k]})
	}
	return out
}

// Dirty returns what the peer may lack because it changed while this node
// ran without it: a copy of the DIRTY set, plus the slots changed alone
// still in the active set. Checkpoint moves those to DIRTY unless an op
// under way pins them: a steady writer keeps the extent at a file's end
// pinned much of the time, and its zones changed alone must not be left
// out of a resynchronisation. Entries from the active set only carry the
// current generation (ClearDirty cannot drop what they later add to
// DIRTY). Memory: about 80 bytes per file plus 16 per range.
func (l *Log) Dirty() *Snapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.snapshot(&l.dirty)
	alone := newSet()
	for e := l.lru.next; e != &l.lru; e = e.next {
		if e.alone {
			alone.addEntry(e, l.gen)
		}
	}
	if alone.len() == 0 {
		return out
	}
	return mergeSnapshots(out, l.snapshot(&alone))
}

// mergeSnapshots is the union of a and b, sorted by Key; an entry in both
// keeps a's generation.
func mergeSnapshots(a, b *Snapshot) *Snapshot {
	files := mergeByKey(a.Files, b.Files, func(f File) Key { return f.Key }, func(f, g File) File {
		rs := make([]run, 0, len(f.Zones)+len(g.Zones))
		for _, z := range f.Zones {
			rs = append(rs, run{z.First, z.End})
		}
		for _, z := range g.Zones {
			rs, _ = runsAdd(rs, z.First, z.End)
		}
		f.Zones = make([]Range, len(rs))
		for k, r := range rs {
			f.Zones[k] = Range{r.lo, r.hi}
		}
		f.Meta = f.Meta || g.Meta
		return f
	})
	dirs := mergeByKey(a.Dirs, b.Dirs, func(d Dir) Key { return d.Key }, func(d, _ Dir) Dir { return d })
	return &Snapshot{ZoneSize: a.ZoneSize, Files: files, Dirs: dirs}
}

// mergeByKey merges two slices sorted by key; both combines the entries
// of a key present in each.
func mergeByKey[T any](a, b []T, key func(T) Key, both func(x, y T) T) []T {
	out := make([]T, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		c := 0
		switch {
		case j == len(b):
			c = -1
		case i == len(a):
			c = 1
		default:
			c = cmpKey(key(a[i]), key(b[j]))
		}
		switch {
		case c < 0:
			out = append(out, a[i])
			i++
		case c > 0:
			out = append(out, b[j])
			j++
		default:
			out = append(out, both(a[i], b[j]))
			i, j = i+1, j+1
		}
	}
	return out
}

// ClearDirty drops from DIRTY the entries a completed resync covered: each
// file or directory whose generation is still the one in the snapshot.
// Entries changed since (a later Gen) stay whole. Durable on return.
func (l *Log) ClearDirty(files []File, dirs []Dir) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	for _, f := range files {
		if cur, ok := l.dirty.files[f.Key]; ok && cur.gen == f.Gen {
			l.dirty.dropFile(f.Key)
			l.appendKeyRec(recClearFile, f.Key)
		}
	}
	for _, d := range dirs {
		if g, ok := l.dirty.dirs[d.Key]; ok && g == d.Gen {
			delete(l.dirty.dirs, d.Key)
			l.appendKeyRec(recClearDir, d.Key)
		}
	}
	return l.waitDurable(l.lsn)
}

// Gen returns the current generation: every later change to DIRTY has a
// higher one. Take it before a full resync and give it to Reset after.
func (l *Log) Gen() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gen
}

// Reset ends a full resync that started at generation gen (from Gen): it
// drops every DIRTY entry not changed since, and clears NeedFull. Durable
// on return.
func (l *Log) Reset(gen uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	for k, f := range l.dirty.files {
		if f.gen <= gen {
			l.dirty.dropFile(k)
			l.appendKeyRec(recClearFile, k)
		}
	}
	for k, g := range l.dirty.dirs {
		if g <= gen {
			delete(l.dirty.dirs, k)
			l.appendKeyRec(recClearDir, k)
		}
	}
	if l.needFull {
		l.needFull = false
		l.appendFlag(recNeedFull, false)
	}
	return l.waitDurable(l.lsn)
}

// InFlight returns what was in the active set when the node last stopped
// without a checkpoint (crash, power cut), accumulated until
// ReleaseInFlight: zones and entries this node may have changed without
// its peer acknowledging them. A node that comes back as the peer of a new
// primary must take them back from it before it serves again.
func (l *Log) InFlight() *Snapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.snapshot(&l.inflight)
}

// ReleaseInFlight empties the in-flight set once it was dealt with:
// toDirty=false after the zones were taken back from the peer (or a full
// resync replaced this copy), toDirty=true when this node serves on and the
// peer must receive them (they join DIRTY). Durable on return.
func (l *Log) ReleaseInFlight(toDirty bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	if l.inflight.len() == 0 {
		return nil
	}
	if toDirty {
		l.gen++
		for k, f := range l.inflight.files {
			var tmp [1]run
			rs := f.ranges(&tmp)
			if f.meta {
				l.dirty.addMeta(k, l.gen)
			}
			for _, r := range rs {
				l.dirty.addZones(k, r.lo, r.hi, l.gen)
			}
			l.appendRuns(recDirtyFile, k, f.meta, rs)
		}
		for k := range l.inflight.dirs {
			l.dirty.addDir(k, l.gen)
			l.appendKeyRec(recDirtyDir, k)
		}
	}
	l.inflight = newSet()
	b, start := l.begin(recInflightDrop)
	l.finish(b, start)
	return l.waitDurable(l.lsn)
}

// Stats describe the record for status.
type Stats struct {
	ZoneSize   int64
	DirtyFiles int
	DirtyDirs  int
	DirtyZones uint64
	// DirtyBytes is DirtyZones times the zone size (an upper bound).
	DirtyBytes uint64
	// PendingZones: zones (and attribute or directory slots) changed
	// alone, not yet moved to DIRTY.
	PendingZones int
	// Active counts the slots of the active set (extents, attribute and
	// directory slots); ExtentSize is the size of an extent.
	Active        int
	ExtentSize    int64
	InFlightFiles int
	InFlightDirs  int
	InFlightZones uint64
	Alone         bool
	NeedFull      bool
	JournalBytes  int64
	// Syncs counts journal writes made durable; Spills counts slots moved
	// to DIRTY because the active set stayed full of unacknowledged ones.
	Syncs, Spills uint64
}

// Stats returns counters (cheap: no walk of DIRTY).
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := Stats{
		ZoneSize: l.opt.ZoneSize, ExtentSize: l.opt.ExtentSize, DirtyFiles: len(l.dirty.files), DirtyDirs: len(l.dirty.dirs),
		DirtyZones: l.dirty.zones, DirtyBytes: l.dirty.zones * uint64(l.opt.ZoneSize),
		Active: len(l.active), InFlightFiles: len(l.inflight.files), InFlightDirs: len(l.inflight.dirs),
		InFlightZones: l.inflight.zones, Alone: l.alone, NeedFull: l.needFull,
		JournalBytes: l.size, Syncs: l.syncs, Spills: l.spills,
	}
	if l.alone {
		for e := l.lru.next; e != &l.lru; e = e.next {
			switch {
			case !e.alone:
			case e.sk.slot < slotExtent:
				st.PendingZones += int(e.fine.n)
			default:
				st.PendingZones++
			}
		}
	}
	return st
}
