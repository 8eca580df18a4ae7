package compare

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"golang.org/x/sys/unix"
)

// Stream is the replication stream as the engine uses it. Submit appends
// an op (it must copy what it keeps: the engine reuses Data buffers) and
// returns its sequence number. Query appends a query op and returns the
// channel its one Reply will arrive on; replies may come in any order.
// Both are ordered with every other op submitted, live ones included.
type Stream interface {
	Submit(o *op.Op) uint64
	Query(q *op.Op) <-chan Reply
}

// Reply is the secondary's answer to a query.
type Reply struct {
	Data []byte
	Err  error
}

// Zone is a byte range of a file.
type Zone struct{ Off, Len int64 }

// Scope says what to compare.
type Scope struct {
	// Full compares every directory and every block of every file.
	Full bool
	// Dirs (incremental) are directories whose entries changed: their
	// listings are compared (missing, extra, replaced entries, link
	// groups, attributes of every entry). A new or replaced entry is sent
	// whole, a new directory with its whole subtree.
	Dirs []string
	// Files (incremental) are files whose listed zones changed: those
	// zones are compared (or sent, Options.TrustZones), with the size and
	// attributes. A file whose first or last block also differs is
	// compared whole (it was replaced, e.g. renamed over). Nil zones
	// compare the attributes and size only.
	Files map[string][]Zone
	// Whole (incremental) are files to compare whole.
	Whole []string
	// Ino optionally gives, for paths of Files and Whole, the primary's
	// inode number the records named (they key files by inode): should
	// the name change before or during the run, the inode's other names
	// are found. Absent: the inode is looked up when the run starts.
	Ino map[string]uint64
	// From (Full only) resumes an interrupted full compare at a position
	// an earlier Run's Checkpoint gave: the entries from it on, in
	// depth-first path order, are compared as a full compare does; those
	// before it were compared then, and only Dirs, Files and Whole (the
	// changes recorded since that run began) and what the listings of
	// From's ancestors show differs are compared there.
	From string
}

// Options configure an Engine.
type Options struct {
	// RootFd is the primary's replicated directory (O_PATH is enough),
	// opened before the FUSE mount hid it. The caller keeps it open.
	RootFd int
	// Freeze runs fn while no application mutation is in progress or can
	// start (the FUSE layer's namespace lock); each fn is short (at most
	// about 1 MiB of reads, or a batch of entries). Nil: the caller
	// guarantees nothing else writes (tests, a stopped application).
	Freeze func(fn func())
	// FreezeFile, when set, runs fn while no application change of the
	// regular file open at fd (its data and attributes under any name) and
	// no rename, unlink or rmdir is in progress or can start; other files'
	// changes go on. The file's data fixes use it instead of Freeze, so
	// that the workers' fixes of different files, and the application's
	// writes to other files, do not wait for one another.
	FreezeFile func(fd int, fn func())
	// BlockSize is the unit of comparison (default 64 KiB).
	BlockSize int64
	// Parallel is how many files are compared at once (default 4).
	Parallel int
	// Bandwidth caps the file data submitted, in bytes per second (0: no
	// cap).
	Bandwidth int64
	// TrustZones sends an incremental scope's zones without hashing them
	// on both sides first. Hashing costs a read of each zone on both
	// nodes and a round trip, and saves the transfer of zones whose
	// content went back to the peer's (rewritten with the same bytes);
	// when zones are known to have changed, sending is cheaper.
	TrustZones bool
	// PollInterval is how often the secondary is asked for the ops it
	// skipped (default 500 ms).
	PollInterval time.Duration
	// FinalWait bounds the last check, made while mutations are frozen
	// (default 5 s): past it the freeze is released and the check
	// repeated.
	FinalWait time.Duration
	// BeforeDone, if set, runs with mutations frozen just before the final
	// SyncAll (op.ResyncDone) is submitted: the caller's records of what
	// changed up to there are covered by the run.
	BeforeDone func()
	// Sums, if not nil, keeps the hashes of the primary's files a listing
	// read, and spares later listings the reads of those unchanged since
	// (their ctime tells). Nil: every listing reads every small file.
	Sums   *sumcache.Cache
	Logger *slog.Logger
}

// Stats tell what a Run did.
type Stats struct {
	Dirs        int64         // directory listings compared
	Files       int64         // regular files compared or sent
	Created     int64         // entries created on the secondary
	Removed     int64         // entries removed there
	Linked      int64         // hard links made there
	MetaFixed   int64         // entries whose attributes were sent
	Examined    int64         // bytes of the primary's files hashed or read to send
	BytesSent   int64         // file data sent (Write ops)
	Holes       int64         // bytes of holes punched
	Ops         int64         // ops submitted
	Queries     int64         // queries asked
	AnswerBytes int64         // bytes of answers received
	Retries     int64         // listings asked again: the namespace changed meanwhile
	Locked      int64         // listings compared under one freeze after repeated retries
	Rechecks    int64         // entries compared again (renamed or linked into place, skipped by the secondary)
	Freezes     int64         // times mutations were frozen
	FrozenMax   time.Duration // longest freeze
	FrozenTotal time.Duration
	DoneSeq     uint64 // sequence number of the final SyncAll (op.ResyncDone)
	Duration    time.Duration
}

// Progress is a snapshot of a Run's advance.
type Progress struct {
	Running  bool
	Total    int64 // bytes to examine (grows while the scope is discovered)
	Examined int64
	Sent     int64 // file data submitted
	Files    int64 // regular files compared or sent
	Rate     float64
	ETA      time.Duration // 0 when unknown
	Percent  float64
}

// Engine converges the secondary's copy to the primary's, online. See the
// package comment for why it is correct.
type Engine struct {
	st  Stream
	opt Options
	log *slog.Logger
	cur atomic.Pointer[run]
	// Renames and links observed while no Run is in progress: their
	// targets are compared by the next Run.
	obsMu    sync.Mutex
	pending  []string
	overflow bool
	// The hard-linked inodes data and attribute ops changed, by the name
	// they went through (see Touch).
	touched      map[string][]inoKey
	touchedLimit bool // more names than maxPending: not all remembered
	ns           nsLog
	lim          *limiter
	prog         struct {
		start    atomic.Int64 // unix nanoseconds
		total    atomic.Int64
		examined atomic.Int64
		sent     atomic.Int64
		files    atomic.Int64
		running  atomic.Bool
	}
}

// Defaults.
const (
	DefaultBlockSize = 64 << 10
	DefaultParallel  = 4
	sendChunk        = 1 << 20  // bytes read and sent under one freeze
	pieceBytes       = 16 << 20 // bytes hashed per query
	pipeline         = 4        // queries in flight per file
	batchEntries     = 256      // entries fixed under one freeze
	maxRetries       = 4        // listing retries before the locked compare
	lockedPage       = 256      // entries of a locked compare's page
)

// New checks the options and returns an Engine.
func New(st Stream, opt Options) (*Engine, error) {
	if st == nil {
		return nil, errors.New("compare: no stream")
	}
	if opt.BlockSize == 0 {
		opt.BlockSize = DefaultBlockSize
	}
	if opt.BlockSize < minBlockSize || opt.BlockSize > maxBlockSize {
		return nil, fmt.Errorf("compare: block size %d out of range %d..%d", opt.BlockSize, minBlockSize, maxBlockSize)
	}
	if opt.Parallel <= 0 {
		opt.Parallel = DefaultParallel
	}
	if opt.Bandwidth < 0 {
		return nil, fmt.Errorf("compare: negative bandwidth %d", opt.Bandwidth)
	}
	if opt.PollInterval <= 0 {
		opt.PollInterval = 500 * time.Millisecond
	}
	if opt.FinalWait <= 0 {
		opt.FinalWait = 5 * time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	var st0 unix.Stat_t
	if err := unix.Fstat(opt.RootFd, &st0); err != nil || st0.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("compare: RootFd %d is not an open directory (%v)", opt.RootFd, err)
	}
	e := &Engine{st: st, opt: opt, log: opt.Logger}
	if opt.Bandwidth > 0 {
		e.lim = newLimiter(opt.Bandwidth)
	}
	return e, nil
}

// Observe must be called with every live op after it was submitted to the
// stream, in the same critical section as its local apply and submission
// (the one Freeze excludes); it is cheap for data ops. The engine learns
// from it which answers a namespace change made stale, and which entries
// a rename or link moved into place without their content having been
// compared: those are compared again. It works from New on: the caller
// registers it before it computes an incremental scope, so that a rename
// between that computation and Run is not missed.
func (e *Engine) Observe(o *op.Op) {
	ev, ok := event(o)
	if !ok {
		return
	}
	e.ns.add(ev)
	var moved []string
	switch o.Kind {
	case op.Rename:
		// The source too: renaming a name over another name of the same
		// inode does nothing (rename(2)), where the secondary, whose names
		// may not be linked yet, moves it.
		moved = append(moved, o.Path2, o.Path)
	case op.Link:
		moved = append(moved, o.Path2)
	default:
		return
	}
	e.obsMu.Lock()
	r := e.cur.Load()
	if r == nil {
		if len(e.pending)+len(moved) > maxPending {
			e.overflow = true
		} else {
			e.pending = append(e.pending, moved...)
		}
	}
	e.obsMu.Unlock()
	if r != nil {
		for _, p := range moved {
			r.recheck(p)
		}
	}
}

// maxPending bounds the renames remembered between runs; past it the
// next Run compares everything. It bounds the names Touch remembers too.
const maxPending = 100000

// changesInode: an op of this kind changes the data or attributes of the
// inode its path names, whatever other names that inode has.
func changesInode(k op.Kind) bool {
	switch k {
	case op.Write, op.Truncate, op.Fallocate, op.Chmod, op.Chown, op.Utimens, op.SetXattr, op.RemoveXattr:
		return true
	}
	return false
}

// Touch must be called with every live op after its local apply and
// before its submission, in the same critical section; for an op that
// changes a file's data or attributes it costs a stat of the path.
//
// If the secondary skips such an op (its path is not there yet), the path
// is compared again; but when the op changed an inode with other names,
// the path may name nothing by then (a rename of its directory skipped
// too, then an unlink), and the other names, perhaps compared before the
// op, would keep the old content on the secondary. So Touch notes the
// inode of a path with several names, and every current name of an inode
// changed through a skipped path is compared again. Noted before the
// submission, the inode is known by the time the skip is reported.
func (e *Engine) Touch(o *op.Op) {
	if !changesInode(o.Kind) || o.Path == "" {
		return
	}
	var st unix.Stat_t
	if unix.Fstatat(e.opt.RootFd, o.Path, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Nlink < 2 || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return
	}
	k := inoKey{st.Dev, st.Ino}
	e.obsMu.Lock()
	defer e.obsMu.Unlock()
	if slices.Contains(e.touched[o.Path], k) {
		return
	}
	if e.touched == nil {
		e.touched = make(map[string][]inoKey)
	}
	if len(e.touched) >= maxPending {
		e.touchedLimit = true
		return
	}
	e.touched[o.Path] = append(e.touched[o.Path], k)
}

// linkedTouches returns the hard-linked inodes changed through the paths
// of skipped ops (see Touch), each once, or all: Touch could not remember
// every one, so everything must be compared again.
func (e *Engine) linkedTouches(skipped []string) (keys []inoKey, all bool) {
	e.obsMu.Lock()
	defer e.obsMu.Unlock()
	if e.touchedLimit && len(skipped) > 0 {
		// The walk queued now compares every name after these ops.
		e.touchedLimit = false
		clear(e.touched)
		return nil, true
	}
	for _, p := range skipped {
		keys = append(keys, e.touched[p]...)
		delete(e.touched, p)
	}
	return keys, false
}

// Progress returns the current (or last) Run's progress.
func (e *Engine) Progress() Progress {
	p := Progress{
		Running:  e.prog.running.Load(),
		Total:    e.prog.total.Load(),
		Examined: e.prog.examined.Load(),
		Sent:     e.prog.sent.Load(),
		Files:    e.prog.files.Load(),
	}
	if p.Total < p.Examined {
		p.Total = p.Examined
	}
	if p.Total > 0 {
		p.Percent = 100 * float64(p.Examined) / float64(p.Total)
	} else if !p.Running {
		p.Percent = 100
	}
	if s := e.prog.start.Load(); s > 0 {
		if el := time.Since(time.Unix(0, s)).Seconds(); el > 0 {
			p.Rate = float64(p.Examined) / el
		}
	}
	if p.Running && p.Rate > 0 {
		p.ETA = time.Duration(float64(p.Total-p.Examined) / p.Rate * float64(time.Second))
	}
	return p
}

// task is one unit of work: a directory listing (or one entry of it) or a
// file's data.
type task struct {
	id   uint64
	dir  bool
	path string

	// directory tasks
	recurse  bool   // compare the subtree, files whole
	from     string // with recurse: only from this position on (Scope.From)
	only     string // just this entry (a recheck)
	fresh    bool   // the engine created the directory empty at freshGen
	freshGen uint64
	late     bool // queued after the walk (a further name of a hard-linked inode)
	metaPass bool // the attributes of a hard-linked inode, once all its names are linked
	// findIno: find the secondary's other names of this inode (one of
	// its names, which the primary did not share, was just replaced)
	// and compare them again.
	findIno uint64

	// file tasks
	how    fileHow
	zones  []Zone
	pKey   inoKey
	s      *Entry    // the secondary's entry when planned (nil: unknown)
	since  uint64    // ns generation from which s is valid
	rec    *linkRec  // the file is the first name of this hard-linked inode
	scoped bool      // a scope file, pKey its inode at the start
	probe  *preProbe // trusted zones: its probe, asked when the run began
}

type fileHow int

const (
	howWhole     fileHow = iota // hash compare of every block
	howZones                    // hash compare (or send) of the zones, probe of the ends
	howFresh                    // created empty by the engine: send the data
	howOverwrite                // small file known different: send it all
)

type inoKey struct{ dev, ino uint64 }

// run is the state of one Run.
type run struct {
	e      *Engine
	ctx    context.Context
	cancel context.CancelCauseFunc
	scope  Scope
	root   int

	mu          sync.Mutex
	cond        sync.Cond
	dirQ        taskHeap
	fileQ       fileHeap
	deferred    []*task // further names of hard-linked inodes, after the walk
	deferData   []*task // hard-linked inodes' data and attributes, once all names are linked
	running     int
	fileRunning int
	nextID      uint64
	queued      map[string]bool // rechecks queued, not started
	runningIDs  map[uint64]*task
	scopeFiles  map[string]*task
	scopeKeys   map[inoKey]*task
	scopeDone   map[inoKey]bool   // inodes whose scope task was queued
	scopeDirs   []string          // directories the scope lists, sorted (set before any task runs)
	lostKeys    []inoKey          // scope files whose name moved: searched for
	recreate    map[string]inoKey // entries whose secondary inode has more names than ours
	failed      error

	dlMu     sync.Mutex
	dirLocks map[string]*dirLock
	// fileFreezes runs the FreezeFile holders, maxFileFreezes at once: a
	// whole Freeze (and, behind it, the application's next change) waits
	// for all of them.
	fileFreezes *freezeQueue

	lmu       sync.Mutex
	links     map[inoKey]*linkRec
	sOwner    map[uint64]inoKey
	freshDirs map[string]uint64 // directories created empty, and when

	st    statsAtomic
	ahead sync.WaitGroup // readAheadScope
	est   estimate       // a full compare's progress total (progress.go)
	batch batcher        // probes of trusted zone files (batch.go)
}

type dirLock struct {
	ch   chan struct{}
	refs int
}

type statsAtomic struct {
	dirs, files, created, removed, linked, metaFixed       atomic.Int64
	examined, sent, holes, ops, queries, answerBytes       atomic.Int64
	retries, locked, rechecks, freezes, frozenMax, frozenT atomic.Int64
	readAhead                                              atomic.Int64 // zone bytes advised by readAheadScope
	doneSeq                                                atomic.Uint64
}

// Run compares the scope and sends what differs, while the application
// goes on writing; it ends with a SyncAll op flagged op.ResyncDone, made
// while mutations are frozen and after the secondary reported no op
// skipped since its last check: from that op on the copies are identical
// and every later op applies on equal trees. The caller waits for that
// op to be durable (Stats.DoneSeq) before declaring the secondary up to
// date.
//
// Cancelling ctx stops it (the secondary is then not up to date). A Run
// may be repeated: a full compare sends only what still differs, so an
// interrupted resynchronisation costs, when restarted, the reading of what
// was compared already, not its transfer.
func (e *Engine) Run(ctx context.Context, scope Scope) (Stats, error) {
	start := time.Now()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	root, err := openNoatime(e.opt.RootFd, "", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return Stats{}, fmt.Errorf("compare: open the replicated directory: %w", err)
	}
	defer unix.Close(root)
	r := &run{
		e: e, ctx: ctx, cancel: cancel, scope: scope, root: root,
		queued:      make(map[string]bool),
		runningIDs:  make(map[uint64]*task),
		scopeFiles:  make(map[string]*task),
		scopeKeys:   make(map[inoKey]*task),
		scopeDone:   make(map[inoKey]bool),
		recreate:    make(map[string]inoKey),
		dirLocks:    make(map[string]*dirLock),
		fileFreezes: newFreezeQueue(maxFileFreezes),
		links:       make(map[inoKey]*linkRec),
		sOwner:      make(map[uint64]inoKey),
		freshDirs:   make(map[string]uint64),
	}
	r.cond.L = &r.mu
	r.fileQ.byPath = scope.Full
	e.obsMu.Lock()
	if !e.cur.CompareAndSwap(nil, r) {
		e.obsMu.Unlock()
		return Stats{}, errors.New("compare: a Run is in progress already")
	}
	pending, overflow := e.pending, e.overflow
	e.pending, e.overflow = nil, false
	e.obsMu.Unlock()
	defer e.cur.Store(nil)
	if overflow && (!r.scope.Full || r.scope.From != "") {
		e.log.Warn("resync compare: too many renames before the run to remember; comparing everything")
		r.scope = Scope{Full: true}
	}
	e.prog.start.Store(start.UnixNano())
	e.prog.total.Store(0)
	e.prog.examined.Store(0)
	e.prog.sent.Store(0)
	e.prog.files.Store(0)
	e.prog.running.Store(true)
	defer e.prog.running.Store(false)
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop()

	var wg sync.WaitGroup
	for range e.opt.Parallel + 2 {
		wg.Go(r.worker)
	}
	wg.Go(r.poller)
	if scope.Full {
		wg.Go(r.prescan)
	}
	for _, p := range pending {
		if op.CleanPath(p) == nil {
			r.recheck(p)
		}
	}
	err = r.main()
	cancel(errDone)
	wg.Wait()
	r.ahead.Wait()
	if err == nil {
		if cerr := context.Cause(ctx); cerr != errDone && cerr != nil {
			err = cerr
		}
	}
	if err == nil {
		// No op before the end marker was skipped, none after it can be.
		e.obsMu.Lock()
		clear(e.touched)
		e.obsMu.Unlock()
	}
	s := r.stats()
	s.Duration = time.Since(start)
	if err != nil {
		e.log.Warn("resync compare stopped", "err", err, "sent", s.BytesSent, "examined", s.Examined)
		return s, err
	}
	e.log.Info("resync compare done", "dirs", s.Dirs, "files", s.Files, "examined", s.Examined,
		"sent", s.BytesSent, "created", s.Created, "removed", s.Removed, "meta", s.MetaFixed,
		"rechecks", s.Rechecks, "retries", s.Retries, "freezes", s.Freezes, "frozen_total", s.FrozenTotal,
		"frozen_max", s.FrozenMax, "read_ahead", r.st.readAhead.Load(), "took", s.Duration)
	return s, nil
}

var errDone = errors.New("compare: run finished")

func (r *run) stats() Stats {
	a := &r.st
	return Stats{
		Dirs: a.dirs.Load(), Files: a.files.Load(), Created: a.created.Load(), Removed: a.removed.Load(),
		Linked: a.linked.Load(), MetaFixed: a.metaFixed.Load(), Examined: a.examined.Load(),
		BytesSent: a.sent.Load(), Holes: a.holes.Load(), Ops: a.ops.Load(), Queries: a.queries.Load(),
		AnswerBytes: a.answerBytes.Load(), Retries: a.retries.Load(), Locked: a.locked.Load(),
		Rechecks: a.rechecks.Load(), Freezes: a.freezes.Load(), FrozenMax: time.Duration(a.frozenMax.Load()),
		FrozenTotal: time.Duration(a.frozenT.Load()), DoneSeq: a.doneSeq.Load(),
	}
}

// main seeds the scope and runs the phases until the final check passes.
func (r *run) main() error {
	if r.scope.Full {
		r.push(&task{dir: true, path: "", recurse: true, from: r.scope.From})
	}
	if !r.scope.Full || r.scope.From != "" {
		if err := r.seedIncremental(); err != nil {
			return err
		}
	}
	for {
		if err := r.waitIdle(); err != nil {
			return err
		}
		if r.nextPhase() {
			continue
		}
		// Everything compared: ask the secondary for ops it skipped
		// meanwhile (their paths are compared again), then once more
		// with mutations frozen, and end.
		n, err := r.pollSkipped(r.ctx)
		if err != nil {
			return err
		}
		if n > 0 {
			continue
		}
		done, err := r.finish()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// seedIncremental checks the scope, notes its files by their primary
// inodes, then queues its directories.
func (r *run) seedIncremental() error {
	for _, d := range r.scope.Dirs {
		if err := op.CleanPath(d); err != nil {
			return fmt.Errorf("compare: scope directory: %w", err)
		}
	}
	files := make(map[string]*task)
	for f, z := range r.scope.Files {
		if err := op.CleanPath(f); err != nil || f == "" {
			return fmt.Errorf("compare: scope file %q: not a clean file path", f)
		}
		files[f] = &task{path: f, how: howZones, zones: z}
	}
	for _, f := range r.scope.Whole {
		if err := op.CleanPath(f); err != nil || f == "" {
			return fmt.Errorf("compare: scope file %q: not a clean file path", f)
		}
		files[f] = &task{path: f, how: howWhole}
	}
	keys := make(map[inoKey]*task)
	var total int64
	var rst unix.Stat_t
	if err := unix.Fstat(r.root, &rst); err != nil {
		return fmt.Errorf("compare: stat the replicated directory: %w", err)
	}
	sizes := make(map[*task]int64)  // for the progress total
	singles := make(map[*task]bool) // regular files of one name, that name
	for _, p := range slices.Sorted(maps.Keys(files)) {
		t := files[p]
		var st unix.Stat_t
		statErr := unix.Fstatat(r.root, t.path, &st, unix.AT_SYMLINK_NOFOLLOW)
		if statErr == nil {
			sizes[t] = st.Size
		}
		found := inoKey{st.Dev, st.Ino}
		single := statErr == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1
		if ino := r.scope.Ino[p]; ino != 0 {
			st.Dev, st.Ino = rst.Dev, ino
		} else if statErr != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		t.pKey, t.scoped = inoKey{st.Dev, st.Ino}, true
		if single && found == t.pKey {
			singles[t] = true
		}
		r.e.log.Debug("resync compare: scope file", "path", p, "ino", st.Ino, "how", t.how)
		if o := keys[t.pKey]; o != nil {
			// Two names of one inode: one task, zones merged.
			o.zones = append(o.zones, t.zones...)
			if t.how == howWhole {
				o.how = howWhole
			}
			delete(files, p)
			continue
		}
		keys[t.pKey] = t
	}
	// The progress total: the zones to compare, merged (both nodes'
	// records may name the same ones), within the files' sizes.
	for _, t := range files {
		size, ok := sizes[t]
		if !ok {
			continue
		}
		for _, z := range alignZones(t.zones, r.e.opt.BlockSize) {
			total += max(min(z.Off+z.Len, size)-z.Off, 0)
		}
	}
	r.e.prog.total.Add(total)
	// A file of one name whose directory is not listed: no listing meets
	// it (unless it moves, or a listing finds its directory replaced, and
	// then the listing sees its scope taken), so it need not wait for the
	// listings to end. Those with the most zones go first: one file's
	// zones are sent in order, and a big one would end the run last.
	dirs := slices.Compact(slices.Sorted(slices.Values(r.scope.Dirs)))
	if r.scope.Full {
		// Resuming: the walk lists the directories from From on, and
		// compares their files whole.
		walk := &task{recurse: true, from: r.scope.From}
		dirs = slices.DeleteFunc(dirs, func(d string) bool { return fullAt(walk, d) })
		for p, t := range files {
			if fullAt(walk, p) {
				singles[t] = false
			}
		}
	}
	r.scopeDirs = dirs
	var early []*task
	for _, t := range files {
		if _, listed := slices.BinarySearch(dirs, parent(t.path)); singles[t] && !listed {
			early = append(early, t)
		}
	}
	zoneBytes := func(t *task) (n int64) {
		for _, z := range t.zones {
			n += z.Len
		}
		return n
	}
	slices.SortFunc(early, func(a, b *task) int {
		if c := cmp.Compare(zoneBytes(b), zoneBytes(a)); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	order := scopeOrder(files, early)
	if !r.scope.Full && scopeAhead > 0 {
		ahead := make([]aheadFile, 0, len(order))
		for _, t := range order {
			if len(t.zones) > 0 {
				ahead = append(ahead, aheadFile{t.path, slices.Clone(t.zones)})
			}
		}
		r.ahead.Go(func() {
			n := readAheadScope(r.ctx, r.root, ahead, scopeAhead, r.st.examined.Load)
			r.st.readAhead.Store(n)
		})
	}
	r.preProbes(order, sizes, singles)
	r.mu.Lock()
	for _, t := range early {
		delete(files, t.path)
		delete(keys, t.pKey)
		r.scopeDone[t.pKey] = true
	}
	r.scopeFiles, r.scopeKeys = files, keys
	r.mu.Unlock()
	for _, t := range early {
		r.push(t)
	}
	// Both nodes' records may name a directory: listed once.
	for _, d := range dirs {
		r.push(&task{dir: true, path: d})
	}
	return nil
}

// scopeOrder is the order in which the workers take the scope's files:
// the early ones first, as queued, then the others, which the listings
// meet in the order of their paths.
func scopeOrder(files map[string]*task, early []*task) []*task {
	ts := slices.Clone(early)
	isEarly := make(map[*task]bool, len(early))
	for _, t := range early {
		isEarly[t] = true
	}
	for _, p := range slices.Sorted(maps.Keys(files)) {
		if t := files[p]; !isEarly[t] {
			ts = append(ts, t)
		}
	}
	return ts
}

// nextPhase queues the work that waits for the walk to end: scope files
// no listing covered, data of hard-linked files, the search of other
// names of hard-linked inodes (incremental). False when there is none.
func (r *run) nextPhase() bool {
	r.mu.Lock()
	files := r.scopeFiles
	r.scopeFiles = map[string]*task{}
	clear(r.scopeKeys)
	for _, t := range files {
		if t.pKey != (inoKey{}) {
			r.scopeDone[t.pKey] = true
		}
	}
	lost := r.lostKeys
	r.lostKeys = nil
	r.mu.Unlock()
	found := len(lost) > 0 && r.findNames(lost)
	if len(files) > 0 || found {
		for _, p := range slices.Sorted(maps.Keys(files)) {
			r.e.log.Debug("resync compare: scope file not met in a listing", "path", p)
			r.push(files[p])
		}
		return true
	}
	if r.linkScan() {
		return true
	}
	r.mu.Lock()
	def := r.deferred
	r.deferred = nil
	var data []*task
	if len(def) == 0 {
		data = r.deferData
		r.deferData = nil
	}
	r.mu.Unlock()
	for _, t := range def {
		r.push(t)
	}
	for _, t := range data {
		r.push(t)
	}
	return len(def)+len(data) > 0
}

// finish makes the final check with mutations frozen: no work queued, no
// op skipped by the secondary; then the SyncAll that ends the resync.
func (r *run) finish() (bool, error) {
	var done bool
	var ferr error
	r.frozen(func() {
		r.mu.Lock()
		busy := r.running > 0 || r.dirQ.Len() > 0 || r.fileQ.Len() > 0 || len(r.deferred) > 0 || len(r.deferData) > 0 || len(r.scopeFiles) > 0 || len(r.lostKeys) > 0
		r.mu.Unlock()
		if busy {
			return
		}
		ctx, cancel := context.WithTimeout(r.ctx, r.e.opt.FinalWait)
		defer cancel()
		n, err := r.pollSkipped(ctx)
		if err != nil {
			if r.ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				r.e.log.Info("resync compare: the secondary did not answer the final check in time; checking again", "wait", r.e.opt.FinalWait)
				return
			}
			ferr = err
			return
		}
		if n > 0 {
			return
		}
		if r.e.opt.BeforeDone != nil {
			r.e.opt.BeforeDone()
		}
		r.st.doneSeq.Store(r.submit(&op.Op{Kind: op.SyncAll, Flags: op.ResyncDone}, 0))
		done = true
	})
	return done, ferr
}

// poller asks the secondary for skipped ops every PollInterval.
func (r *run) poller() {
	t := time.NewTicker(r.e.opt.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		if _, err := r.pollSkipped(r.ctx); err != nil && r.ctx.Err() == nil {
			r.fail(err)
			return
		}
	}
}

// pollSkipped asks for the paths of ops the secondary skipped and queues
// their comparison; it returns how many.
func (r *run) pollSkipped(ctx context.Context) (int, error) {
	b, err := r.query(ctx, SkippedQuery())
	if err != nil {
		return 0, err
	}
	paths, overflow, err := ParseSkippedAnswer(b)
	if err != nil {
		return 0, fmt.Errorf("compare: %w", err)
	}
	for _, p := range paths {
		r.recheck(p)
	}
	keys, all := r.e.linkedTouches(paths)
	if overflow || all {
		r.e.log.Warn("resync compare: the secondary skipped more ops than the engine can follow; comparing everything again")
		r.scope.Full = true
		r.push(&task{dir: true, path: "", recurse: true})
		return len(paths) + 1, nil
	}
	if len(keys) > 0 {
		for _, k := range keys {
			r.e.log.Debug("resync compare: skipped op changed a hard-linked inode; its names are compared again", "ino", k.ino)
		}
		r.mu.Lock()
		r.lostKeys = append(r.lostKeys, keys...)
		r.mu.Unlock()
	}
	return len(paths) + len(keys), nil
}

// recheck queues the comparison of entry p (and below it) after whatever
// was submitted so far.
func (r *run) recheck(p string) {
	if p == "" {
		r.push(&task{dir: true, path: "", only: "", recurse: false})
		return
	}
	r.mu.Lock()
	if r.queued[p] {
		r.mu.Unlock()
		return
	}
	r.queued[p] = true
	r.mu.Unlock()
	r.st.rechecks.Add(1)
	r.push(&task{dir: true, path: parent(p), only: base(p), recurse: true})
}

func (r *run) push(t *task) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	t.id = r.nextID
	if t.dir {
		heap.Push(&r.dirQ, t)
	} else {
		heap.Push(&r.fileQ, t)
	}
	r.cond.Broadcast()
}

func (r *run) isRunning(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runningIDs[id] != nil
}

func (r *run) deferTask(t *task) {
	r.mu.Lock()
	r.deferred = append(r.deferred, t)
	r.mu.Unlock()
}

func (r *run) deferDataTask(t *task) {
	r.mu.Lock()
	r.deferData = append(r.deferData, t)
	r.mu.Unlock()
}

func (r *run) fail(err error) {
	r.mu.Lock()
	if r.failed == nil {
		r.failed = err
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	r.cancel(err)
}

func (r *run) take() *task {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if r.ctx.Err() != nil {
			return nil
		}
		if r.fileQ.Len() > 0 && r.fileRunning < r.e.opt.Parallel {
			t := heap.Pop(&r.fileQ).(*task)
			r.running++
			r.fileRunning++
			r.runningIDs[t.id] = t
			return t
		}
		if r.dirQ.Len() > 0 {
			t := heap.Pop(&r.dirQ).(*task)
			if t.only != "" {
				delete(r.queued, join(t.path, t.only))
			}
			r.running++
			r.runningIDs[t.id] = t
			return t
		}
		r.cond.Wait()
	}
}

func (r *run) worker() {
	for {
		t := r.take()
		if t == nil {
			return
		}
		var err error
		if t.findIno != 0 {
			err = r.findTask(t)
		} else if t.dir {
			err = r.dirTask(t)
		} else {
			err = r.fileTask(t)
		}
		if err != nil && r.ctx.Err() == nil {
			r.fail(err)
		}
		r.mu.Lock()
		r.running--
		delete(r.runningIDs, t.id)
		if !t.dir {
			r.fileRunning--
		}
		r.cond.Broadcast()
		r.mu.Unlock()
	}
}

// waitIdle waits until no task is queued or running.
func (r *run) waitIdle() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.running > 0 || r.dirQ.Len() > 0 || r.fileQ.Len() > 0 {
		if r.failed != nil {
			return r.failed
		}
		if err := r.ctx.Err(); err != nil {
			return context.Cause(r.ctx)
		}
		r.cond.Wait()
	}
	if r.failed != nil {
		return r.failed
	}
	return context.Cause(r.ctx)
}

// findTask asks the secondary for the names of an inode it shared
// between an entry just replaced and names the primary does not link
// with it: ops through the replaced name changed them too, so they are
// compared again.
func (r *run) findTask(t *task) error {
	b, err := r.query(r.ctx, FindInodeQuery(t.findIno))
	if err != nil {
		return err
	}
	paths, _, err := ParseSkippedAnswer(b)
	if err != nil {
		return fmt.Errorf("compare: findinode answer: %w", err)
	}
	for _, p := range paths {
		r.recheck(p)
	}
	return nil
}

// query asks q and waits for its answer.
func (r *run) query(ctx context.Context, q *op.Op) ([]byte, error) {
	r.st.queries.Add(1)
	ch := r.e.st.Query(q)
	select {
	case rep := <-ch:
		if rep.Err != nil {
			return nil, fmt.Errorf("compare: %s: %w", q, rep.Err)
		}
		r.st.answerBytes.Add(int64(len(rep.Data)))
		return rep.Data, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// submit sends o; a namespace change is logged after its submission, as
// a live op's is (see nsLog).
func (r *run) submit(o *op.Op, owner uint64) uint64 {
	seq := r.e.st.Submit(o)
	if r.e.log.Enabled(r.ctx, slog.LevelDebug) {
		r.e.log.Debug("resync compare: fix", "seq", seq, "op", o.String(), "mode", fmt.Sprintf("%#o", o.Mode), "uid", o.Uid, "gid", o.Gid, "task", owner)
	}
	r.st.ops.Add(1)
	if ev, ok := event(o); ok {
		ev.owner = owner
		r.e.ns.add(ev)
	}
	return seq
}

// maxFileFreezes is how many file freezes may be held at once. A whole
// Freeze, pending, waits for every one of them, and the application's
// changes wait behind it: with more, each lasts longer too (the holders
// share the CPUs). Measured with an application writing every
// millisecond during case (a) in-process (BenchmarkIncrementalTree,
// TANDEM_COMPARE_BENCH_LIVE=1, 2 vCPUs), its write latency p50 / p99 was
// 100 µs / 24-35 ms under whole freezes, 24-37 µs / 7-12 ms with 1 file
// freeze at a time, 24-40 µs / 31 ms with 2, 29-58 µs / 55-57 ms with 16;
// the compare took the same time in all four. They run through a
// freezeQueue: the holder of a place runs the freezes queued meanwhile.
var maxFileFreezes = 1

// frozen runs fn with mutations frozen.
func (r *run) frozen(fn func()) { r.freeze(-1, fn) }

// frozenFile runs fn with the changes of fs's file (and renames and
// removals) frozen: enough for a fix of its data and attributes, which
// touches no other file (see FreezeFile).
func (r *run) frozenFile(fs *fileState, fn func()) { r.freeze(fs.fd, fn) }

// freeze runs fn under Freeze, or FreezeFile of fd when fd >= 0.
func (r *run) freeze(fd int, fn func()) {
	r.st.freezes.Add(1)
	var t0 time.Time
	wrapped := func() {
		t0 = time.Now()
		fn()
		d := int64(time.Since(t0))
		r.st.frozenT.Add(d)
		for {
			m := r.st.frozenMax.Load()
			if d <= m || r.st.frozenMax.CompareAndSwap(m, d) {
				break
			}
		}
	}
	switch {
	case fd >= 0 && r.e.opt.FreezeFile != nil:
		r.fileFreezes.do(func() { r.e.opt.FreezeFile(fd, wrapped) })
	case r.e.opt.Freeze != nil:
		r.e.opt.Freeze(wrapped)
	default:
		wrapped()
	}
}

// lockDir serialises the tasks that change one directory's entries.
func (r *run) lockDir(d string) func() {
	r.dlMu.Lock()
	l := r.dirLocks[d]
	if l == nil {
		l = &dirLock{ch: make(chan struct{}, 1)}
		r.dirLocks[d] = l
	}
	l.refs++
	r.dlMu.Unlock()
	l.ch <- struct{}{}
	return func() {
		<-l.ch
		r.dlMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(r.dirLocks, d)
		}
		r.dlMu.Unlock()
	}
}

// taskHeap orders directory tasks depth-first by path (component by
// component), so the walk advances like a sorted depth-first traversal.
type taskHeap []*task

func (h taskHeap) Len() int { return len(h) }
func (h taskHeap) Less(i, j int) bool {
	return pathLess(h[i].path, h[j].path) || h[i].path == h[j].path && h[i].id < h[j].id
}
func (h taskHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *taskHeap) Push(x any)   { *h = append(*h, x.(*task)) }
func (h *taskHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return t
}

// fullAt says whether t compares entry p as a full compare does (the
// subtree, files whole): t recurses, and p is not before t.from, or
// leads to it.
func fullAt(t *task, p string) bool {
	return t.recurse && (t.from == "" || !pathLess(p, t.from) || p == "" || strings.HasPrefix(t.from, p+"/"))
}

// Checkpoint returns where a later Run could resume the current full
// compare (Scope.From): every entry before it, in depth-first path order,
// was compared and its fixes submitted (a caller that waits until those
// are durable on the secondary can persist it). False when no full Run is
// in progress, or none of it finished.
func (e *Engine) Checkpoint() (string, bool) {
	r := e.cur.Load()
	if r == nil || !r.scope.Full {
		return "", false
	}
	return r.checkpoint()
}

// checkpoint: the lowest position of the work queued, running or put
// off (a directory task stands for its entries, which come after it),
// and never before the position this run resumed from.
func (r *run) checkpoint() (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	low, found := "", false
	note := func(t *task) {
		if !found || pathLess(t.path, low) {
			low, found = t.path, true
		}
	}
	// The heaps' lowest comes first (a fresh secondary's million files
	// would be a million comparisons under the run's lock).
	if len(r.dirQ) > 0 {
		note(r.dirQ[0])
	}
	files := r.fileQ.ts
	if r.fileQ.byPath && len(files) > 0 {
		files = files[:1]
	}
	for _, q := range [][]*task{files, r.deferred, r.deferData} {
		for _, t := range q {
			note(t)
		}
	}
	for _, t := range r.runningIDs {
		note(t)
	}
	if !found {
		return "", false // nothing left: the run is ending
	}
	if pathLess(low, r.scope.From) {
		low = r.scope.From
	}
	return low, low != ""
}

// fileHeap orders file tasks: in a full compare depth-first by path, like
// the walk, so that a resumable position (Checkpoint) follows the work
// done; otherwise in the order they were queued (an incremental scope
// queues its biggest files first).
type fileHeap struct {
	ts     []*task
	byPath bool
}

func (h fileHeap) Len() int { return len(h.ts) }
func (h fileHeap) Less(i, j int) bool {
	a, b := h.ts[i], h.ts[j]
	if h.byPath && a.path != b.path {
		return pathLess(a.path, b.path)
	}
	return a.id < b.id
}
func (h fileHeap) Swap(i, j int) { h.ts[i], h.ts[j] = h.ts[j], h.ts[i] }
func (h *fileHeap) Push(x any)   { h.ts = append(h.ts, x.(*task)) }
func (h *fileHeap) Pop() any {
	old := h.ts
	t := old[len(old)-1]
	old[len(old)-1] = nil
	h.ts = old[:len(old)-1]
	return t
}

func pathLess(a, b string) bool {
	for a != "" && b != "" {
		ia, ib := strings.IndexByte(a, '/'), strings.IndexByte(b, '/')
		ca, cb := a, b
		if ia >= 0 {
			ca = a[:ia]
		}
		if ib >= 0 {
			cb = b[:ib]
		}
		if ca != cb {
			return ca < cb
		}
		if ia < 0 || ib < 0 {
			return ia < 0 && ib >= 0
		}
		a, b = a[ia+1:], b[ib+1:]
	}
	return a == "" && b != ""
}
