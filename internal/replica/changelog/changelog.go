package changelog

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Key names a file or directory by its identity on the backing filesystem,
// which survives renames.
type Key struct{ Dev, Ino uint64 }

// ErrLost says the change records cannot be trusted (damaged or unreadable
// journal): the peer needs a full resync. Test with errors.Is.
var ErrLost = errors.New("change records lost: a full resync of the peer is needed")

// ErrClosed is returned by calls on a closed Log.
var ErrClosed = errors.New("changelog closed")

// Options configure a Log; zero values take the defaults.
type Options struct {
	// ZoneSize is the granularity of data changes, a power of two between
	// 4 KiB and 1 GiB (default 64 KiB). It may change between two Opens:
	// recorded zones are converted (rounded outwards).
	ZoneSize int64
	// ExtentSize is the granularity of the active set (crash safety), a
	// power of two up to 64 GiB (default 4 MiB), raised to ZoneSize if
	// smaller. Touching a new extent costs a journal sync; the zones
	// touched inside an active extent are kept in memory only, and reach
	// DIRTY at zone granularity when the extent leaves the active set
	// unacknowledged. After a crash the extents still active count whole.
	ExtentSize int64
	// MaxActive bounds the active set: the extents (and attribute or
	// directory slots) that may hold changes the peer has not
	// acknowledged, all reported in flight after a crash (default 1024,
	// at least 64).
	MaxActive int
	// ReadAhead is how many extents past the one it touches a sequential
	// writer activates with the same journal sync (default 15, negative:
	// none). The extents activated ahead count as in flight after a
	// crash, like any active extent.
	ReadAhead int
	// FullWait is how long a Touch that finds the active set full of
	// unacknowledged zones waits for acknowledgements before it moves the
	// oldest of them to DIRTY (default 2s).
	FullWait time.Duration
	// JournalBytes is the journal size past which it is rewritten as a
	// checkpoint (default 16 MiB; it also grows to twice the checkpoint).
	JournalBytes int64
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

const (
	defaultZoneSize   = 64 << 10
	defaultExtentSize = 4 << 20
	maxExtentShift    = 36
	defaultActive     = 1024
	defaultReadAhead  = 15
	minActive         = 64
	maxActive         = 1 << 20
	// maxTouchZones: a Touch spanning more extents is recorded as one
	// hull per file, so the active set never needs more than this many
	// slots for one call.
	maxTouchZones = 1024
)

// growBytes: the journal is extended with zeros by this much at a time (a
// variable for tests).
var growBytes int64 = 2 << 20

// openTail: the zeros after the checkpoint written by Open. A node opens
// its records on its way to SECOND, where it appends nearly nothing: a
// short tail keeps that step short (2 MiB of zeros and their fsync took
// ~30 ms here); a primary's first appends past it extend by growBytes.
const openTail = 64 << 10

// Slots of the active set beside extent indices (< 2^51).
const (
	slotDir    = ^uint64(0)
	slotMeta   = ^uint64(0) - 1
	slotExtent = ^uint64(0) - 2
)

type slotKey struct {
	k    Key
	slot uint64
}

// entry is one slot of the active set.
type entry struct {
	sk     slotKey
	lo, hi uint64 // hull (slotExtent)
	// fine: the zones touched in an extent slot (memory only).
	fine zoneSet
	seq  uint64 // highest seq of an op on it (0: acknowledged)
	lsn  uint64 // logical number of its latest activation record
	pins int32  // Touches whose Done has not come
	// alone: changed while running without peer, or not acknowledged when
	// that began: it leaves the active set only into DIRTY.
	alone bool
	// unacked: an op on it was sent nowhere while a peer was expected; it
	// is never acknowledged (leaves via DIRTY).
	unacked    bool
	prev, next *entry
}

// Log is the change record of one replicated directory. Its methods are
// safe for concurrent use.
type Log struct {
	dir, path string
	shift     uint // zone size
	xshift    uint // zones per extent
	opt       Options
	log       *slog.Logger
	lock      *os.File

	mu       sync.Mutex
	cond     sync.Cond
	active   map[slotKey]*entry
	lru      entry // sentinel: lru.next is the least recently touched
	alone    bool
	needFull bool
	acked    uint64
	dirty    set
	inflight set
	gen      uint64
	waiters  int // Touches waiting for room
	// Pins held, by phase: SetAlone(false) starts a phase and waits only
	// for the pins of earlier ones.
	phase               uint32
	pinsNow, pinsBefore int

	// journal
	f        *os.File
	enc      encoder
	pend     [][]byte // records not written yet, in chunks of <= maxBatch
	lsn      uint64   // logical number of the last record appended
	synced   uint64   // logical number of the last durable record
	size     int64    // bytes of records in the file
	alloc    int64    // file size (zeros after size)
	ckpt     int64    // size of the last checkpoint
	flushing bool
	err      error // sticky: the journal can no longer be written
	closed   bool
	// aheadLSN: the last activation a Touch appended ahead of a
	// sequential writer and left a goroutine to make durable.
	aheadLSN uint64

	syncs, spills uint64
	// Activations a Touch waited for, and those appended ahead (tests).
	touchActs, aheadActs uint64
}

// Open opens (or creates) the change record kept in dir. After a crash it
// recovers: every slot of the active set is reported by InFlight and, when
// the node was running without peer, added to DIRTY. A damaged journal
// makes Open fail with an error wrapping ErrLost; Recreate then starts an
// empty record marked NeedFull.
func Open(dir string, opt Options) (*Log, error) {
	return open(dir, opt, false)
}

// Recreate moves a damaged journal aside (journal.lost) and starts an empty
// record marked NeedFull: the peer needs a full resync, and until Reset the
// node must not take back zones from the peer by InFlight.
func Recreate(dir string, opt Options) (*Log, error) {
	return open(dir, opt, true)
}

func open(dir string, opt Options, recreate bool) (*Log, error) {
	if opt.ZoneSize == 0 {
		opt.ZoneSize = defaultZoneSize
	}
	if opt.ZoneSize < 1<<minZoneShift || opt.ZoneSize > 1<<maxZoneShift || opt.ZoneSize&(opt.ZoneSize-1) != 0 {
		return nil, fmt.Errorf("changelog %s: zone size %d: must be a power of two from 4 KiB to 1 GiB", dir, opt.ZoneSize)
	}
	if opt.ExtentSize == 0 {
		opt.ExtentSize = defaultExtentSize
	}
	if opt.ExtentSize > 1<<maxExtentShift || opt.ExtentSize&(opt.ExtentSize-1) != 0 || opt.ExtentSize <= 0 {
		return nil, fmt.Errorf("changelog %s: extent size %d: must be a power of two up to 64 GiB", dir, opt.ExtentSize)
	}
	opt.ExtentSize = max(opt.ExtentSize, opt.ZoneSize)
	if opt.MaxActive == 0 {
		opt.MaxActive = defaultActive
	}
	if opt.MaxActive < minActive || opt.MaxActive > maxActive {
		return nil, fmt.Errorf("changelog %s: max active zones %d: must be between %d and %d", dir, opt.MaxActive, minActive, maxActive)
	}
	if opt.ReadAhead == 0 {
		opt.ReadAhead = defaultReadAhead
	}
	if opt.FullWait <= 0 {
		opt.FullWait = 2 * time.Second
	}
	if opt.JournalBytes <= 0 {
		opt.JournalBytes = 16 << 20
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	l := &Log{
		dir: dir, path: filepath.Join(dir, "journal"), opt: opt,
		shift:  uint(bits.TrailingZeros64(uint64(opt.ZoneSize))),
		xshift: uint(bits.TrailingZeros64(uint64(opt.ExtentSize)) - bits.TrailingZeros64(uint64(opt.ZoneSize))),
		log:    opt.Logger.With("changelog", dir),
		active: map[slotKey]*entry{}, dirty: newSet(), inflight: newSet(),
	}
	l.cond.L = &l.mu
	l.lru.next, l.lru.prev = &l.lru, &l.lru
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("changelog: create directory %s: %w", dir, err)
	}
	lk, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("changelog %s: open lock file: %w", dir, err)
	}
	if err := unix.Flock(int(lk.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lk.Close()
		return nil, fmt.Errorf("changelog %s: in use by another process (lock: %v): stop it first", dir, err)
	}
	l.lock = lk
	if err := l.load(recreate); err != nil {
		lk.Close()
		return nil, err
	}
	return l, nil
}

// load reads the journal, recovers, and writes a fresh checkpoint.
func (l *Log) load(recreate bool) error {
	_ = os.Remove(l.path + ".tmp") // an interrupted checkpoint
	if recreate {
		if err := os.Rename(l.path, l.path+".lost"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("changelog: move damaged journal %s aside: %w", l.path, err)
		}
		l.needFull = true
		l.log.Warn("change records recreated empty: the peer needs a full resync", "kept", l.path+".lost")
	} else {
		data, err := os.ReadFile(l.path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// First start: nothing says what differs from the peer.
			l.needFull = true
		case err != nil:
			return fmt.Errorf("changelog: read %s: %v: %w (after fixing the cause, retry; or use Recreate)", l.path, err, ErrLost)
		default:
			r, err := decode(data)
			if err != nil {
				return fmt.Errorf("changelog: %s: %w (Recreate moves it aside and starts empty)", l.path, err)
			}
			l.recover(r)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.checkpointLocked(min(growBytes, openTail))
}

// recover installs a replayed state: the active slots become in flight
// (and DIRTY when the node ran without peer).
func (l *Log) recover(r *replay) {
	l.gen++
	l.needFull, l.alone = r.needFull, r.alone
	conv := func(lo, hi uint64) (uint64, uint64) { return convert(lo, hi, r.zoneShift, l.shift) }
	copyInto := func(dst *set, src *set) {
		for k, f := range src.files {
			if f.meta {
				dst.addMeta(k, l.gen)
			}
			var tmp [1]run
			for _, x := range f.ranges(&tmp) {
				lo, hi := conv(x.lo, x.hi)
				dst.addZones(k, lo, hi, l.gen)
			}
		}
		for k := range src.dirs {
			dst.addDir(k, l.gen)
		}
	}
	if r.zoneShift == l.shift {
		// Same zones: take the replayed sets as they are (generation 0 is
		// below every later one).
		l.dirty, l.inflight = r.dirty, r.inflight
	} else {
		copyInto(&l.dirty, &r.dirty)
		copyInto(&l.inflight, &r.inflight)
	}
	n := 0
	for sk, x := range r.active {
		n++
		lo, hi := x.lo, x.hi
		if sk.slot < slotExtent {
			lo, hi = sk.slot, sk.slot+1
		}
		slot := sk.slot
		if slot < slotExtent {
			slot = slotExtent
		}
		lo, hi = conv(lo, hi)
		l.inflight.addSlot(sk.k, slot, lo, hi, l.gen)
		if r.alone {
			l.dirty.addSlot(sk.k, slot, lo, hi, l.gen)
		}
	}
	// Extents: their fine zones died with the process; count them whole.
	for sk, x := range r.ext {
		n++
		lo, hi := conv(x.lo, x.hi)
		l.inflight.addZones(sk.k, lo, hi, l.gen)
		if r.alone {
			l.dirty.addZones(sk.k, lo, hi, l.gen)
		}
	}
	if n > 0 || r.tornAt >= 0 {
		l.log.Info("change records recovered", "in_flight_slots", n, "alone", r.alone,
			"torn_tail_at", r.tornAt, "dirty_files", len(l.dirty.files), "dirty_dirs", len(l.dirty.dirs))
	}
}

// convert maps zone range [lo, hi) of size 2^from to zones of size 2^to,
// rounding outwards.
func convert(lo, hi uint64, from, to uint) (uint64, uint64) {
	switch {
	case from == to:
		return lo, hi
	case from < to:
		d := to - from
		return lo >> d, (hi + 1<<d - 1) >> d
	default:
		d := from - to
		return lo << d, hi << d
	}
}

// ZoneSize is the size of a zone in bytes.
func (l *Log) ZoneSize() int64 { return l.opt.ZoneSize }

// ExtentSize is the size of an extent of the active set in bytes.
func (l *Log) ExtentSize() int64 { return l.opt.ExtentSize }

// A Pin holds the slots of one Touch in the active set until Done (or
// Cancel) gives the op's sequence number. The zero Pin is valid and does
// nothing.
type Pin struct {
	k      Key
	kind   uint8
	lo, hi uint64 // extents (pinZones), zones (pinExtent)
	zl, zh uint64 // zones (pinZones)
	phase  uint32 // Log.phase when taken
}

const (
	pinNone = iota
	pinZones
	pinExtent
	pinMeta
	pinDir
)

// Touch records that bytes [off, off+n) of file k are about to change. It
// returns once the zones are durably in the active set (fdatasync of the
// journal, shared by concurrent callers); an already active zone costs no
// I/O. Call it before changing the file and give the op's sequence number
// to Done afterwards. It may wait while the active set is full of zones the
// peer has not acknowledged. An error means the change must not be made
// (the record could not be written).
func (l *Log) Touch(k Key, off, n int64) (Pin, error) {
	if off < 0 || n < 0 || off > 1<<62 || n > 1<<62 {
		return Pin{}, fmt.Errorf("changelog %s: touch %v: bad range %d+%d", l.dir, k, off, n)
	}
	if n == 0 {
		return Pin{}, nil
	}
	lo := uint64(off) >> l.shift
	hi := (uint64(off+n) + uint64(l.opt.ZoneSize) - 1) >> l.shift
	xlo, xhi := lo>>l.xshift, (hi+1<<l.xshift-1)>>l.xshift
	p := Pin{k: k, kind: pinZones, lo: xlo, hi: xhi, zl: lo, zh: hi}
	if xhi-xlo > l.touchZones() {
		p = Pin{k: k, kind: pinExtent, lo: lo, hi: hi}
	}
	return l.touch(p)
}

// TouchMeta records that the attributes of file k (size, mode, owner,
// times, xattrs) are about to change. A truncate also touches the range
// between the old and the new size.
func (l *Log) TouchMeta(k Key) (Pin, error) {
	return l.touch(Pin{k: k, kind: pinMeta})
}

// TouchDir records that the entries of directory k are about to change
// (create, mkdir, mknod, symlink, link, unlink, rmdir, rename: both
// parents).
func (l *Log) TouchDir(k Key) (Pin, error) {
	return l.touch(Pin{k: k, kind: pinDir})
}

func (l *Log) touchZones() uint64 {
	return uint64(min(maxTouchZones, l.opt.MaxActive/16))
}

// covers says whether slot sk is one of p's.
func (p Pin) covers(sk slotKey) bool {
	if p.kind == pinNone || sk.k != p.k {
		return false
	}
	if p.kind == pinZones {
		return sk.slot >= p.lo && sk.slot < p.hi
	}
	return sk.slot == p.slot()
}

func (p Pin) slot() uint64 {
	switch p.kind {
	case pinMeta:
		return slotMeta
	case pinDir:
		return slotDir
	case pinExtent:
		return slotExtent
	}
	return p.lo
}

// pinFast pins p's slots if all are active and durable. mu held.
func (l *Log) pinFast(p Pin) bool {
	if p.kind == pinZones {
		// One map lookup per zone for the usual small writes.
		var buf [16]*entry
		for z := p.lo; z < p.hi; z++ {
			e := l.active[slotKey{p.k, z}]
			if e == nil || e.lsn > l.synced {
				return false
			}
			if i := z - p.lo; i < uint64(len(buf)) {
				buf[i] = e
			}
		}
		for z := p.lo; z < p.hi; z++ {
			var e *entry
			if i := z - p.lo; i < uint64(len(buf)) {
				e = buf[i]
			} else {
				e = l.active[slotKey{p.k, z}]
			}
			l.pinEntry(e)
			l.addFine(e, p)
		}
		return true
	}
	e := l.active[slotKey{p.k, p.slot()}]
	if e == nil || e.lsn > l.synced || (p.kind == pinExtent && (p.lo < e.lo || p.hi > e.hi)) {
		return false
	}
	l.pinEntry(e)
	return true
}

func (l *Log) pinEntry(e *entry) {
	if e.pins == 0 && l.acknowledged(e) && e.fine.n > 0 {
		// Everything recorded so far reached the peer.
		e.fine = zoneSet{}
	}
	e.pins++
	if l.alone {
		e.alone = true
	}
	// Move to the back of the LRU list.
	if l.lru.prev != e {
		e.prev.next, e.next.prev = e.next, e.prev
		e.prev, e.next = l.lru.prev, &l.lru
		l.lru.prev.next, l.lru.prev = e, e
	}
}

// addFine records the zones of p inside extent slot e. mu held.
func (l *Log) addFine(e *entry, p Pin) {
	lo, hi := e.sk.slot<<l.xshift, (e.sk.slot+1)<<l.xshift
	e.fine.add(max(lo, p.zl), min(hi, p.zh))
}

func (l *Log) touch(p Pin) (Pin, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return Pin{}, err
	}
	if !l.pinFast(p) {
		if err := l.touchSlow(p); err != nil {
			return Pin{}, err
		}
	}
	if p.kind == pinZones {
		l.prefetch(p)
	}
	p.phase = l.phase
	l.pinsNow++
	return p, nil
}

// release counts the end of Pin p (Done or Cancel). mu held.
func (l *Log) release(p Pin) {
	if p.phase == l.phase {
		l.pinsNow--
		return
	}
	l.pinsBefore--
	if l.pinsBefore == 0 && l.waiters > 0 {
		l.cond.Broadcast()
	}
}

func (l *Log) usable() error {
	if l.closed {
		return fmt.Errorf("changelog %s: %w", l.dir, ErrClosed)
	}
	return l.err
}

// touchSlow activates what p lacks and waits until it is durable. mu held.
func (l *Log) touchSlow(p Pin) error {
	// Make room for the missing slots, all at once (no hold and wait).
	var timer *time.Timer
	deadline := time.Now().Add(l.opt.FullWait)
	for {
		need := l.missing(p)
		if len(l.active)+need <= l.opt.MaxActive {
			break
		}
		want := len(l.active) + need - l.opt.MaxActive
		want -= l.evict(want, false, p)
		if want <= 0 {
			break
		}
		if time.Now().After(deadline) {
			if n := l.evict(want, true, p); n > 0 {
				l.spills += uint64(n)
				l.log.Warn("active set full of unacknowledged zones: moved to DIRTY",
					"zones", n, "waited", l.opt.FullWait.String(), "acked", l.acked)
				continue
			}
		}
		if timer == nil {
			timer = time.AfterFunc(l.opt.FullWait/4, l.wake)
		} else {
			timer.Reset(l.opt.FullWait / 4)
		}
		l.waiters++
		l.cond.Wait()
		l.waiters--
		if err := l.usable(); err != nil {
			timer.Stop()
			return err
		}
		if l.pinFast(p) {
			timer.Stop()
			return nil
		}
	}
	if timer != nil {
		timer.Stop()
	}
	// Activate and pin.
	var wait uint64
	switch p.kind {
	case pinZones:
		for z := p.lo; z < p.hi; {
			if e := l.active[slotKey{p.k, z}]; e != nil {
				l.pinEntry(e)
				l.addFine(e, p)
				wait = max(wait, e.lsn)
				z++
				continue
			}
			start := z
			for z < p.hi && l.active[slotKey{p.k, z}] == nil {
				z++
			}
			end := l.readAhead(p, start, z)
			lsn := l.appendActiveExt(p.k, start, end-start)
			l.touchActs++
			for y := start; y < end; y++ {
				e := l.newEntry(slotKey{p.k, y}, lsn)
				if y < z {
					l.pinEntry(e)
					l.addFine(e, p)
				}
			}
			wait = lsn
		}
	default:
		sk := slotKey{p.k, p.slot()}
		e := l.active[sk]
		if p.kind == pinExtent {
			lo, hi := p.lo, p.hi
			if e != nil {
				lo, hi = min(lo, e.lo), max(hi, e.hi)
			}
			if e == nil || lo < e.lo || hi > e.hi {
				lsn := l.appendExtent(p.k, lo, hi)
				if e == nil {
					e = l.newEntry(sk, lsn)
				}
				e.lo, e.hi, e.lsn = lo, hi, lsn
			}
		} else if e == nil {
			e = l.newEntry(sk, l.appendSlot(recActive, p.k, sk.slot))
		}
		l.pinEntry(e)
		wait = e.lsn
	}
	if err := l.waitDurable(wait); err != nil {
		l.unpin(p, 0, true)
		return err
	}
	return nil
}

// readAhead extends the missing run [start, z) of p past the Touch when
// the file is written sequentially (the run ends the Touch and follows an
// active extent of the file), while the active set has room: a stream then
// costs one journal sync per ReadAhead+1 extents instead of one per extent. Extents
// activated ahead and never touched hold no zones; they leave the active
// set like acknowledged ones, and after a crash they count as in flight
// like any active extent (a few more MiB to compare). mu held.
func (l *Log) readAhead(p Pin, start, z uint64) uint64 {
	if l.opt.ReadAhead <= 0 || z != p.hi || start == 0 || l.active[slotKey{p.k, start - 1}] == nil {
		return z
	}
	// Bounds: the room in the active set (acknowledged slots leave to
	// make it, as for any Touch), one record's extent count, the
	// journal's extent indices.
	n := min(l.opt.ReadAhead, l.opt.MaxActive/4, maxTouchZones-int(z-start))
	if free := l.opt.MaxActive - len(l.active) - int(z-start); free < n {
		n = free + l.evict(n-free, false, p)
	}
	limit := uint64(1) << (63 - l.shift) >> l.xshift
	end := z
	for ; n > 0 && end < limit && l.active[slotKey{p.k, end}] == nil; n-- {
		end++
	}
	return end
}

// prefetch keeps a sequential writer from waiting for the journal: once
// it has used half of the extents activated ahead of it (by readAhead or
// an earlier prefetch), the next ReadAhead+1 are activated and made
// durable by a goroutine while it writes, instead of by its next Touch
// past them. Only for a file written sequentially: p's extents run into
// extents already active ahead of it. mu held.
func (l *Log) prefetch(p Pin) {
	if l.opt.ReadAhead <= 0 {
		return
	}
	// Every write of a stream comes here: look no further than needed.
	ahead := uint64(0)
	window := uint64(l.opt.ReadAhead) + 1
	for ahead <= window/2 && l.active[slotKey{p.k, p.hi + ahead}] != nil {
		ahead++
	}
	if ahead == 0 || ahead > window/2 {
		return
	}
	start := p.hi + ahead
	n := min(window, uint64(l.opt.MaxActive/4), uint64(maxTouchZones))
	if free := l.opt.MaxActive - len(l.active); free < int(n) {
		n = uint64(free + l.evict(int(n)-free, false, p))
	}
	limit := uint64(1) << (63 - l.shift) >> l.xshift
	end := start
	for ; n > 0 && end < limit && l.active[slotKey{p.k, end}] == nil; n-- {
		end++
	}
	if end == start {
		return
	}
	lsn := l.appendActiveExt(p.k, start, end-start)
	for x := start; x < end; x++ {
		l.newEntry(slotKey{p.k, x}, lsn)
	}
	l.aheadActs++
	running := l.aheadLSN != 0
	l.aheadLSN = lsn
	if running {
		return // the goroutine under way syncs this record too
	}
	go func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for l.synced < l.aheadLSN {
			if l.waitDurable(l.aheadLSN) != nil {
				break // sticky in l.err: the next Touch reports it
			}
		}
		l.aheadLSN = 0
	}()
}

func (l *Log) wake() {
	l.mu.Lock()
	l.cond.Broadcast()
	l.mu.Unlock()
}

// missing counts the slots p needs that are not active. mu held.
func (l *Log) missing(p Pin) int {
	if p.kind != pinZones {
		if l.active[slotKey{p.k, p.slot()}] == nil {
			return 1
		}
		return 0
	}
	n := 0
	for z := p.lo; z < p.hi; z++ {
		if l.active[slotKey{p.k, z}] == nil {
			n++
		}
	}
	return n
}

func (l *Log) newEntry(sk slotKey, lsn uint64) *entry {
	e := &entry{sk: sk, lsn: lsn}
	e.prev, e.next = l.lru.prev, &l.lru
	l.lru.prev.next, l.lru.prev = e, e
	l.active[sk] = e
	return e
}

func (l *Log) removeEntry(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	delete(l.active, e.sk)
}

// acknowledged says whether e may leave the active set without going to
// DIRTY.
func (l *Log) acknowledged(e *entry) bool {
	return !e.alone && !e.unacked && e.seq <= l.acked
}

// evict removes up to n unpinned slots, least recently touched first:
// acknowledged ones, and those changed alone (into DIRTY). spill also
// moves unacknowledged ones into DIRTY. Slots of keep stay (the Touch
// making room counts them as present). n < 0: no limit. mu held.
func (l *Log) evict(n int, spill bool, keep Pin) int {
	done := 0
	for e := l.lru.next; e != &l.lru && (n < 0 || done < n); {
		next := e.next
		if e.pins == 0 && !keep.covers(e.sk) {
			switch {
			case l.acknowledged(e):
				l.appendEvict(e)
				l.removeEntry(e)
				done++
			case e.alone || spill:
				l.toDirty(e)
				done++
			}
		}
		e = next
	}
	return done
}

// addEntry adds to s what active slot e stands for: an extent's touched
// zones (returned), or the slot itself.
func (s *set) addEntry(e *entry, gen uint64) []run {
	if e.sk.slot < slotExtent {
		rs := e.fine.ranges()
		for _, r := range rs {
			s.addZones(e.sk.k, r.lo, r.hi, gen)
		}
		return rs
	}
	s.addSlot(e.sk.k, e.sk.slot, e.lo, e.hi, gen)
	return nil
}

// toDirty moves e from the active set into DIRTY. mu held.
func (l *Log) toDirty(e *entry) {
	l.gen++
	rs := l.dirty.addEntry(e, l.gen)
	if e.sk.slot < slotExtent {
		// An extent: its touched zones, then its eviction (a torn tail
		// keeps the extent active, counted whole).
		if len(rs) > 0 {
			l.appendRuns(recDirtyFile, e.sk.k, false, rs)
		}
		l.appendEvict(e)
		l.removeEntry(e)
		return
	}
	lo, hi := e.lo, e.hi
	b, start := l.begin(recToDirty)
	b = appendKey(b, e.sk.k)
	b = binary.AppendUvarint(b, e.sk.slot)
	if e.sk.slot == slotExtent {
		b = binary.AppendUvarint(b, lo)
		b = binary.AppendUvarint(b, hi-lo)
	}
	l.finish(b, start)
	l.removeEntry(e)
}

// Done ends a Touch: seq is the stream sequence number of the op that
// made the change, 0 when it was sent to no peer. Call it after the op was
// handed to the replicator.
func (l *Log) Done(p Pin, seq uint64) {
	if p.kind == pinNone {
		return
	}
	l.mu.Lock()
	l.unpin(p, seq, false)
	l.release(p)
	l.mu.Unlock()
}

// Cancel ends a Touch whose change was not made (the local apply failed
// without changing anything).
func (l *Log) Cancel(p Pin) {
	if p.kind == pinNone {
		return
	}
	l.mu.Lock()
	l.unpin(p, 0, true)
	l.release(p)
	l.mu.Unlock()
}

// unpin releases p's slots. mu held.
func (l *Log) unpin(p Pin, seq uint64, cancel bool) {
	wake := false
	do := func(e *entry) {
		if e == nil || e.pins == 0 {
			return // released by a failed Touch, or the log was closed
		}
		e.pins--
		if l.alone {
			e.alone = true
		}
		switch {
		case cancel:
		case seq == 0 && !l.alone:
			e.unacked = true
		case seq > e.seq:
			e.seq = seq
		}
		if e.pins == 0 {
			wake = true
		}
	}
	if p.kind == pinZones {
		for z := p.lo; z < p.hi; z++ {
			do(l.active[slotKey{p.k, z}])
		}
	} else {
		do(l.active[slotKey{p.k, p.slot()}])
	}
	if wake && l.waiters > 0 {
		l.cond.Broadcast()
	}
}

// Acked says the peer durably applied every op up to seq. Ignored while
// running without peer.
func (l *Log) Acked(seq uint64) {
	l.mu.Lock()
	if !l.alone && seq > l.acked {
		l.acked = seq
		if l.waiters > 0 {
			l.cond.Broadcast()
		}
	}
	l.mu.Unlock()
}

// SetAlone(true) says the node serves without peer from now on: nothing is
// acknowledged any more, and every change, including those in the active
// set the peer did not acknowledge, ends up in DIRTY. It returns once that
// is durable. SetAlone(false) says a peer follows again (call it when the
// stream is attached, before its first op and before taking Dirty for the
// resync): it waits until no op started before it is still between Touch
// and Done (ops that start meanwhile do not hold it up), moves every change
// made alone into DIRTY, durably. The sequence
// numbers of the new stream may start again from anywhere.
func (l *Log) SetAlone(alone bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	if alone == l.alone {
		return nil
	}
	if alone {
		l.markAlone()
		l.appendFlag(recAlone, true)
		return l.waitDurable(l.lsn)
	}
	// The ops under way now started alone (or before: their changes may
	// not have reached the peer); they must end before their slots move to
	// DIRTY. Ops from now on are the stream's: they start a new phase, so
	// that a steady flow of them (always one under way) cannot hold this
	// up. Bounded: they hold no lock we hold, and a FUSE op ends within
	// the peer timeout.
	l.alone, l.acked = false, 0
	l.phase++
	l.pinsBefore += l.pinsNow
	l.pinsNow = 0
	deadline := time.Now().Add(30 * time.Second)
	for l.pinsBefore > 0 {
		if time.Now().After(deadline) {
			l.markAlone()
			return fmt.Errorf("changelog %s: %d changes made without peer are still in progress after 30s: still running alone; retry", l.dir, l.pinsBefore)
		}
		t := time.AfterFunc(100*time.Millisecond, l.wake)
		l.waiters++
		l.cond.Wait()
		l.waiters--
		t.Stop()
		if err := l.usable(); err != nil {
			return err
		}
	}
	// A slot changed alone and pinned again since stays alone (no ack
	// clears it) and goes to DIRTY once unpinned, when evicted.
	for e := l.lru.next; e != &l.lru; {
		next := e.next
		if e.alone && e.pins == 0 {
			l.toDirty(e)
		}
		e = next
	}
	l.appendFlag(recAlone, false)
	return l.waitDurable(l.lsn)
}

// markAlone enters alone mode in memory: acknowledged slots stay so
// whatever the next stream's numbers, the others are alone (into DIRTY
// once unpinned). mu held.
func (l *Log) markAlone() {
	for e := l.lru.next; e != &l.lru; e = e.next {
		if e.pins == 0 && l.acknowledged(e) {
			e.seq = 0 // stays acknowledged whatever the next stream's numbers
			continue
		}
		e.alone = true
	}
	l.alone, l.acked = true, 0
}

// Alone says whether the node runs without peer (persisted).
func (l *Log) Alone() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.alone
}

// NeedFull says the records do not cover every difference with the peer
// (first start, records lost): only a full resync makes the peer up to
// date. Reset clears it.
func (l *Log) NeedFull() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.needFull
}

// Checkpoint empties the active set of every slot that may leave it
// (acknowledged, or changed alone: into DIRTY), makes the journal durable,
// and rewrites it when it has grown past its bound. Close calls it.
func (l *Log) Checkpoint() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	l.evict(-1, false, Pin{})
	if err := l.waitDurable(l.lsn); err != nil {
		return err
	}
	if l.size <= l.bound() {
		return nil
	}
	for l.flushing {
		l.cond.Wait()
	}
	if err := l.usable(); err != nil {
		return err
	}
	l.flushing = true
	err := l.checkpointLocked(growBytes)
	l.flushing = false
	l.cond.Broadcast()
	return err
}

// Close checkpoints and releases the directory. Slots still active (not
// acknowledged) are reported in flight by the next Open.
func (l *Log) Close() error {
	err := l.Checkpoint()
	l.mu.Lock()
	for l.flushing {
		l.cond.Wait()
	}
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.cond.Broadcast()
	f := l.f
	l.f = nil
	l.mu.Unlock()
	if f != nil {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("changelog: close %s: %w", l.path, cerr)
		}
	}
	l.lock.Close()
	if errors.Is(err, ErrClosed) {
		err = nil
	}
	return err
}

// --- records ---

func (l *Log) begin(t byte) ([]byte, int) {
	var b []byte
	if n := len(l.pend); n > 0 && len(l.pend[n-1]) < maxBatch-maxRecord-recHdrSize {
		b = l.pend[n-1]
		l.pend = l.pend[:n-1]
	} else {
		b = make([]byte, 0, 4096)
	}
	return l.enc.begin(b, t)
}

// finish completes a record and returns its logical number.
func (l *Log) finish(b []byte, start int) uint64 {
	b = l.enc.finish(b, start)
	l.pend = append(l.pend, b)
	l.lsn++
	return l.lsn
}

func (l *Log) appendSlot(t byte, k Key, slot uint64) uint64 {
	b, start := l.begin(t)
	b = appendKey(b, k)
	b = binary.AppendUvarint(b, slot)
	return l.finish(b, start)
}

// appendActiveExt records extents [x, x+n) of k as active.
func (l *Log) appendActiveExt(k Key, x, n uint64) uint64 {
	b, start := l.begin(recActiveExt)
	b = appendKey(b, k)
	b = binary.AppendUvarint(b, uint64(l.xshift))
	b = binary.AppendUvarint(b, x)
	b = binary.AppendUvarint(b, n)
	return l.finish(b, start)
}

// appendEvict records that e left the active set (acknowledged, or after
// its DIRTY record).
func (l *Log) appendEvict(e *entry) uint64 {
	if e.sk.slot < slotExtent {
		b, start := l.begin(recEvictExt)
		b = appendKey(b, e.sk.k)
		b = binary.AppendUvarint(b, e.sk.slot<<l.xshift)
		return l.finish(b, start)
	}
	return l.appendSlot(recEvict, e.sk.k, e.sk.slot)
}

func (l *Log) appendExtent(k Key, lo, hi uint64) uint64 {
	b, start := l.begin(recActive)
	b = appendKey(b, k)
	b = binary.AppendUvarint(b, slotExtent)
	b = binary.AppendUvarint(b, lo)
	b = binary.AppendUvarint(b, hi-lo)
	return l.finish(b, start)
}

// appendRuns adds records of type t for a file's runs.
func (l *Log) appendRuns(t byte, k Key, meta bool, rs []run) {
	for first := true; first || len(rs) > 0; first, meta = false, false {
		b, start := l.begin(t)
		b, rs = runsBody(b, start+recHdrSize+1, k, meta, rs)
		l.finish(b, start)
	}
}

func (l *Log) appendFlag(t byte, v bool) uint64 {
	b, start := l.begin(t)
	x := byte(0)
	if v {
		x = 1
	}
	b = append(b, x)
	return l.finish(b, start)
}

func (l *Log) appendKeyRec(t byte, k Key) uint64 {
	b, start := l.begin(t)
	b = appendKey(b, k)
	return l.finish(b, start)
}

// bound is the journal size past which it is rewritten.
func (l *Log) bound() int64 { return max(l.opt.JournalBytes, 2*l.ckpt) }

// waitDurable returns once record lsn is on disk: the first waiter writes
// and syncs everything pending while later ones queue behind it, so
// concurrent callers share one fdatasync. mu held (released during I/O).
func (l *Log) waitDurable(lsn uint64) error {
	for l.synced < lsn {
		if err := l.usable(); err != nil {
			return err
		}
		if l.flushing {
			l.cond.Wait()
			continue
		}
		l.flushing = true
		err := l.flushLocked()
		if err == nil && l.size > l.bound() {
			err = l.checkpointLocked(growBytes)
		}
		l.flushing = false
		if err != nil && l.err == nil {
			l.err = err
			l.log.Error("change records can no longer be written", "err", err)
		}
		l.cond.Broadcast()
	}
	return nil
}

// flushLocked writes and syncs the pending records, one batch of at most
// maxBatch bytes at a time. mu held, released during I/O.
func (l *Log) flushLocked() error {
	bufs, upto := l.pend, l.lsn
	l.pend = nil
	off, alloc := l.size, l.alloc
	f := l.f
	l.mu.Unlock()
	if flushHook != nil {
		flushHook()
	}
	err := func() error {
		for _, b := range bufs {
			if off+int64(len(b)) > alloc {
				// Extend with zeros first, so that the fdatasync after an
				// append needs no metadata update (several times faster).
				n := max(growBytes, int64(len(b)))
				if err := writeZeros(f, alloc, n); err != nil {
					return fmt.Errorf("changelog: extend %s: %w", l.path, cause(err))
				}
				if err := unix.Fsync(int(f.Fd())); err != nil {
					return fmt.Errorf("changelog: fsync %s: %w", l.path, err)
				}
				alloc += n
			}
			if _, err := f.WriteAt(b, off); err != nil {
				return fmt.Errorf("changelog: write %s at %d: %w", l.path, off, cause(err))
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				return fmt.Errorf("changelog: fdatasync %s: %w", l.path, err)
			}
			off += int64(len(b))
		}
		return nil
	}()
	l.mu.Lock()
	l.alloc = alloc
	if err != nil {
		return fmt.Errorf("%w (disk full or failing?): changes can no longer be recorded; fix the cause and restart the agent (Open recovers what was durable)", err)
	}
	l.syncs += uint64(len(bufs))
	l.size, l.synced = off, upto
	return nil
}

// cause drops the *PathError wrapper (its name may be the temporary one
// the journal was created under).
func cause(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// flushHook, when set (tests), runs before each journal write.
var flushHook func()

func writeZeros(f *os.File, off, n int64) error {
	z := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(z)))
		if _, err := f.WriteAt(z[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// checkpointLocked writes the whole state into a new journal (temporary
// file, fsync, rename, directory fsync). The caller holds flushing (or is
// Open); mu held, released during I/O.
func (l *Log) checkpointLocked(tail int64) error {
	var idb [8]byte
	if _, err := io.ReadFull(rand.Reader, idb[:]); err != nil {
		return fmt.Errorf("changelog: random journal id: %w", err)
	}
	l.enc = encoder{id: binary.LittleEndian.Uint64(idb[:])}
	buf := encodeHeader(l.shift, l.enc.id)
	buf = l.encodeState(buf)
	// Records appended from now on follow the checkpoint in the new file.
	upto := l.lsn
	l.pend = nil
	tmp := l.path + ".tmp"
	l.mu.Unlock()
	f, size, alloc, err := writeCheckpoint(tmp, l.path, l.dir, buf, tail)
	l.mu.Lock()
	if err != nil {
		return err
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.size, l.alloc, l.ckpt, l.synced = f, size, alloc, size, upto
	l.syncs++
	return nil
}

func writeCheckpoint(tmp, path, dir string, buf []byte, tail int64) (*os.File, int64, int64, error) {
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("changelog: create %s: %w", tmp, err)
	}
	fail := func(what string, err error) (*os.File, int64, int64, error) {
		f.Close()
		os.Remove(tmp)
		return nil, 0, 0, fmt.Errorf("changelog: %s %s: %w (is the disk full or failing?)", what, tmp, err)
	}
	size := int64(len(buf))
	alloc := size + tail
	if _, err := f.WriteAt(buf, 0); err != nil {
		return fail("write", err)
	}
	if err := writeZeros(f, size, tail); err != nil {
		return fail("write", err)
	}
	if err := unix.Fsync(int(f.Fd())); err != nil {
		return fail("fsync", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail("rename to journal", err)
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, 0, 0, err
	}
	return f, size, alloc, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("changelog: open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("changelog: fsync directory %s: %w", dir, err)
	}
	return nil
}

// encodeState appends the whole state as checkpoint records. mu held.
func (l *Log) encodeState(b []byte) []byte {
	e := &l.enc
	b = slices.Grow(b, 64+24*(l.dirty.len()+l.inflight.len())+20*len(l.active))
	flag := func(t byte, v bool) {
		var s int
		b, s = e.begin(b, t)
		x := byte(0)
		if v {
			x = 1
		}
		b = append(b, x)
		b = e.finish(b, s)
	}
	var s int
	b, s = e.begin(b, recSizes)
	for _, n := range []int{len(l.dirty.files), len(l.dirty.dirs), len(l.inflight.files), len(l.inflight.dirs)} {
		b = binary.AppendUvarint(b, uint64(n))
	}
	b = e.finish(b, s)
	flag(recNeedFull, l.needFull)
	flag(recAlone, l.alone)
	sets := []struct {
		s         *set
		file, dir byte
	}{{&l.dirty, recDirtyFile, recDirtyDir}, {&l.inflight, recInflightFile, recInflightDir}}
	for _, x := range sets {
		// Map order: the checkpoint needs no sorting (mu is held).
		for k, f := range x.s.files {
			var tmp [1]run
			rs, meta := f.ranges(&tmp), f.meta
			for first := true; first || len(rs) > 0; first, meta = false, false {
				var s int
				b, s = e.begin(b, x.file)
				b, rs = runsBody(b, s+recHdrSize+1, k, meta, rs)
				b = e.finish(b, s)
			}
		}
		for k := range x.s.dirs {
			var s int
			b, s = e.begin(b, x.dir)
			b = appendKey(b, k)
			b = e.finish(b, s)
		}
	}
	for en := l.lru.next; en != &l.lru; en = en.next {
		var s int
		if en.sk.slot < slotExtent {
			b, s = e.begin(b, recActiveExt)
			b = appendKey(b, en.sk.k)
			b = binary.AppendUvarint(b, uint64(l.xshift))
			b = binary.AppendUvarint(b, en.sk.slot)
			b = binary.AppendUvarint(b, 1)
			b = e.finish(b, s)
			continue
		}
		b, s = e.begin(b, recActive)
		b = appendKey(b, en.sk.k)
		b = binary.AppendUvarint(b, en.sk.slot)
		switch {
		case en.sk.slot == slotExtent:
			b = binary.AppendUvarint(b, en.lo)
			b = binary.AppendUvarint(b, en.hi-en.lo)
		}
		b = e.finish(b, s)
	}
	b, s = e.begin(b, recCheckpoint)
	return e.finish(b, s)
}

func sortedKeys[V any](m map[Key]V) []Key {
	ks := make([]Key, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, cmpKey)
	return ks
}

func cmpKey(a, b Key) int {
	switch {
	case a.Dev != b.Dev:
		if a.Dev < b.Dev {
			return -1
		}
		return 1
	case a.Ino < b.Ino:
		return -1
	case a.Ino > b.Ino:
		return 1
	}
	return 0
}
