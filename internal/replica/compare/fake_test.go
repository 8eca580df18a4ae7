package compare

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/apply"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/resync"
	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"golang.org/x/sys/unix"
)

// fake is an in-process Stream: ops are applied in order on the
// secondary's directory by one goroutine (the applier lenient, as during
// a resync); each query is answered by its own goroutine after a random
// delay, so replies come out of order and answers mix states.
type fake struct {
	t        testing.TB
	mu       sync.Mutex
	cond     sync.Cond
	q        []fitem
	next     uint64
	applied  uint64
	stop     bool
	a        *apply.Applier
	ans      *Answerer
	rootFd   int
	rng      *rand.Rand
	maxDelay time.Duration
	errs     []error
	answers  sync.WaitGroup
	done     chan struct{}

	writeBytes atomic.Int64
	kinds      [32]atomic.Int64
	order      []op.Op // kinds and flags of the ops submitted, in order
	skipped    atomic.Int64
	tr         *traceBuf
}

var trace = os.Getenv("TANDEM_COMPARE_LOG") != ""

// traceBuf collects the debug log and the applied ops in memory (cheap
// enough not to hide races); dumped to a file when a test fails.
type traceBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (t *traceBuf) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.b.Write(p)
}

func (t *traceBuf) printf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(&t.b, format+"\n", args...)
}

type fitem struct {
	o     op.Op
	reply chan Reply
}

func newFake(t testing.TB, dir string, seed uint64, maxDelay time.Duration, sums *sumcache.Cache) *fake {
	t.Helper()
	a, err := apply.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{t: t, a: a, rootFd: fd, ans: NewAnswerer(fd, sums), rng: rand.New(rand.NewPCG(seed, 99)), maxDelay: maxDelay, done: make(chan struct{})}
	f.cond.L = &f.mu
	f.lenient()
	go f.loop()
	t.Cleanup(f.close)
	return f
}

// lenient makes the applier skip and record the ops that fail, as the
// agent's does until a resync is done (call it when the stream is idle).
func (f *fake) lenient() {
	f.ans.Reset()
	f.a.SetLenient(func(o *op.Op, err error) {
		f.skipped.Add(1)
		if f.tr != nil {
			f.tr.printf("skipped: %s: %v", o, err)
		}
		f.ans.Skipped(o, err)
	})
}

func (f *fake) Submit(o *op.Op) uint64 {
	c := *o
	c.Data = slices.Clone(o.Data)
	if o.Kind == op.Write {
		f.writeBytes.Add(int64(len(o.Data)))
	}
	f.kinds[o.Kind].Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.order = append(f.order, op.Op{Kind: o.Kind, Flags: o.Flags, Path: o.Path})
	f.q = append(f.q, fitem{o: c})
	f.next++
	f.cond.Broadcast()
	return f.next
}

func (f *fake) Query(q *op.Op) <-chan Reply {
	c := *q
	c.Data = slices.Clone(q.Data)
	ch := make(chan Reply, 1)
	f.kinds[op.Query].Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.order = append(f.order, op.Op{Kind: q.Kind, Flags: q.Flags, Path: q.Path})
	f.q = append(f.q, fitem{o: c, reply: ch})
	f.next++
	f.cond.Broadcast()
	return ch
}

func (f *fake) delay() time.Duration {
	if f.maxDelay == 0 {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return time.Duration(f.rng.Int64N(int64(f.maxDelay)))
}

func (f *fake) loop() {
	defer close(f.done)
	for {
		f.mu.Lock()
		for len(f.q) == 0 && !f.stop {
			f.cond.Wait()
		}
		if len(f.q) == 0 {
			f.mu.Unlock()
			return
		}
		it := f.q[0]
		f.q[0] = fitem{}
		f.q = f.q[1:]
		f.mu.Unlock()
		if it.o.Kind == op.Query {
			if f.tr != nil {
				f.tr.printf("apply %d: %s", f.applied+1, &it.o)
			}
			f.answers.Add(1)
			d := f.delay()
			go func() {
				defer f.answers.Done()
				time.Sleep(d)
				b, err := f.ans.Answer(&it.o)
				it.reply <- Reply{Data: b, Err: err}
			}()
		} else {
			if it.o.Kind == op.SyncAll && it.o.Flags&op.ResyncDone != 0 {
				// As the agent does: the copy is up to date only if no op
				// was skipped since the engine's last check; from here on
				// a diverged op is an error.
				if n := f.ans.Pending(); n > 0 {
					f.mu.Lock()
					f.errs = append(f.errs, fmt.Errorf("resync done with %d skipped paths not fetched", n))
					f.mu.Unlock()
				}
				f.a.SetLenient(nil)
			}
			if f.tr != nil {
				f.tr.printf("apply %d: %s", f.applied+1, &it.o)
			}
			if err := f.a.Apply(&it.o); err != nil {
				f.mu.Lock()
				f.errs = append(f.errs, err)
				f.mu.Unlock()
			}
		}
		f.mu.Lock()
		f.applied++
		f.cond.Broadcast()
		f.mu.Unlock()
	}
}

// drain waits until every op submitted before the call is applied (not
// those submitted meanwhile: a test's churn could outrun the applier) and
// every answer given.
func (f *fake) drain() {
	f.mu.Lock()
	for target := f.next; f.applied < target; {
		f.cond.Wait()
	}
	f.mu.Unlock()
	f.answers.Wait()
}

func (f *fake) close() {
	f.mu.Lock()
	f.stop = true
	f.cond.Broadcast()
	f.mu.Unlock()
	<-f.done
	f.answers.Wait()
	f.a.Close()
	unix.Close(f.rootFd)
}

func (f *fake) checkErrs(t testing.TB) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, err := range f.errs {
		t.Errorf("secondary: %v", err)
	}
}

// shim plays the primary's FUSE layer: a mutation is applied locally and
// submitted (then observed) atomically with respect to Freeze, followed
// by the resulting times of the entries it changed. It locks as the FUSE
// layer does: renames and removals hold the namespace lock alone; creates
// and links share it; data and attribute changes share it and hold their
// inode's lock, which FreezeFile takes too.
type shim struct {
	dir string
	mu  sync.RWMutex
	loc *apply.Applier
	s   Stream
	e   *Engine
	ops atomic.Int64

	inoMu sync.Mutex
	inos  map[uint64]*sync.Mutex
	// createMu plays the kernel's lock of a directory while it adds a
	// name: the new name is visible to no one (a lookup of it waits)
	// until the FUSE layer has replied, so no op through it can be
	// submitted before the op that made it. Ops that add a name hold it;
	// others hold it shared while they find their inode. And a name that
	// exists is opened, with no Create sent; the applier's create opens
	// an existing file and succeeds, so the shim checks first.
	createMu sync.RWMutex
}

func newShim(t testing.TB, dir string, s Stream) *shim {
	a, err := apply.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return &shim{dir: dir, loc: a, s: s, inos: map[uint64]*sync.Mutex{}}
}

func (p *shim) Freeze(fn func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fn()
}

// FreezeFile is the FUSE layer's: the namespace lock shared, the inode's
// lock held.
func (p *shim) FreezeFile(fd int, fn func()) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		panic(fmt.Sprintf("shim: freeze file: fstat fd %d: %v", fd, err))
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	l := p.inoLock(st.Ino)
	l.Lock()
	defer l.Unlock()
	fn()
}

func (p *shim) inoLock(ino uint64) *sync.Mutex {
	p.inoMu.Lock()
	defer p.inoMu.Unlock()
	l := p.inos[ino]
	if l == nil {
		l = &sync.Mutex{}
		p.inos[ino] = l
	}
	return l
}

// lock takes the locks o needs, as the FUSE layer's handler for it would.
func (p *shim) lock(o *op.Op) (unlock func()) {
	switch {
	case nsExclusive(o.Kind):
		p.mu.Lock()
		return p.mu.Unlock
	case nsShared(o.Kind):
		p.mu.RLock()
		return p.mu.RUnlock
	}
	p.mu.RLock()
	p.createMu.RLock()
	defer p.createMu.RUnlock()
	var st unix.Stat_t
	if unix.Lstat(filepath.Join(p.dir, o.Path), &st) != nil {
		return p.mu.RUnlock // the op fails: nothing to order
	}
	l := p.inoLock(st.Ino)
	l.Lock()
	return func() { l.Unlock(); p.mu.RUnlock() }
}

// do applies o on the primary and, if that worked, replicates it.
func (p *shim) do(o op.Op) bool {
	unlock := p.lock(&o)
	defer unlock()
	return p.doLocked(o)
}

func (p *shim) doLocked(o op.Op) bool {
	if nsShared(o.Kind) {
		p.createMu.Lock()
		defer p.createMu.Unlock()
	}
	if o.Kind == op.Create {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(p.dir, o.Path), &st) == nil {
			return false // an open of the existing file: nothing to send
		}
	}
	if err := p.loc.Apply(&o); err != nil {
		return false
	}
	p.send(&o)
	p.ops.Add(1)
	var stamp []string
	switch o.Kind {
	case op.Write, op.Truncate, op.Fallocate, op.Chmod, op.Chown, op.SetXattr, op.RemoveXattr:
		stamp = []string{o.Path}
	case op.Create, op.Mkdir, op.Mknod, op.Symlink:
		stamp = []string{o.Path, parent(o.Path)}
	case op.Unlink, op.Rmdir, op.RemoveTree:
		stamp = []string{parent(o.Path)}
	case op.Rename:
		stamp = []string{parent(o.Path), parent(o.Path2), o.Path2}
		if o.Flags&unix.RENAME_EXCHANGE != 0 {
			stamp = append(stamp, o.Path)
		}
	case op.Link:
		stamp = []string{parent(o.Path2)}
	}
	// A stamp is read and sent under its entry's inode lock, as the FUSE
	// layer's are: otherwise a stamp read before another writer's change
	// could be sent after that writer's, and leave the older time there.
	// Data ops hold their file's lock already; renames and removals hold
	// the namespace alone, so no one else changes anything meanwhile.
	held := dataOp(o.Kind)
	for _, s := range stamp {
		stampOne := func() {
			var st unix.Stat_t
			if unix.Lstat(filepath.Join(p.dir, s), &st) != nil {
				return
			}
			p.send(&op.Op{Kind: op.Utimens, Path: s, Atime: op.Time{Nsec: op.UtimeOmit}, Mtime: op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}})
		}
		var st unix.Stat_t
		if held || nsExclusive(o.Kind) || unix.Lstat(filepath.Join(p.dir, s), &st) != nil {
			stampOne()
			continue
		}
		l := p.inoLock(st.Ino)
		l.Lock()
		stampOne()
		l.Unlock()
	}
	return true
}

// dataOp: o changes one file's data or attributes (its inode lock held).
func dataOp(k op.Kind) bool {
	return !nsExclusive(k) && !nsShared(k)
}

func nsExclusive(k op.Kind) bool {
	return k == op.Rename || k == op.Unlink || k == op.Rmdir || k == op.RemoveTree
}

func nsShared(k op.Kind) bool {
	return k == op.Create || k == op.Mkdir || k == op.Mknod || k == op.Symlink || k == op.Link
}

func (p *shim) send(o *op.Op) {
	if p.e != nil {
		p.e.Touch(o)
	}
	seq := p.s.Submit(o)
	if p.e != nil {
		p.e.log.Debug("live", "seq", seq, "op", o.String(), "mode", fmt.Sprintf("%#o", o.Mode), "uid", o.Uid, "flags", o.Flags)
		p.e.Observe(o)
	}
}

// ent is an entry of a tree, as the random op generator sees it.
type ent struct {
	path string
	typ  uint32
	size int64
}

func walkTree(root string) []ent {
	var out []ent
	var walk func(rel string)
	walk = func(rel string) {
		des, err := os.ReadDir(filepath.Join(root, rel))
		if err != nil {
			return
		}
		for _, de := range des {
			p := join(rel, de.Name())
			var st unix.Stat_t
			if unix.Lstat(filepath.Join(root, p), &st) != nil {
				continue
			}
			out = append(out, ent{p, st.Mode & unix.S_IFMT, st.Size})
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				walk(p)
			}
		}
	}
	walk("")
	return out
}

// gen makes random ops over a tree.
type gen struct {
	rng  *rand.Rand
	root bool // may chown, mknod devices, set trusted attributes
	big  bool // may make sparse files of a few MiB
}

func (g *gen) name() string {
	const letters = "abcdef"
	n := 1 + g.rng.IntN(2)
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[g.rng.IntN(len(letters))]
	}
	return string(b)
}

func (g *gen) data(n int) []byte {
	b := make([]byte, n)
	switch g.rng.IntN(3) {
	case 0:
		for i := range b {
			b[i] = byte(g.rng.IntN(256))
		}
	case 1:
		c := byte(g.rng.IntN(256))
		for i := range b {
			b[i] = c
		}
	default: // zeros
	}
	return b
}

func pick[T any](rng *rand.Rand, xs []T) (T, bool) {
	var zero T
	if len(xs) == 0 {
		return zero, false
	}
	return xs[rng.IntN(len(xs))], true
}

func (g *gen) time() op.Time {
	return op.Time{Sec: 1_500_000_000 + g.rng.Int64N(100_000_000), Nsec: g.rng.Int64N(1_000_000_000)}
}

// op returns a random op over the tree ents (which it may not fit: the
// caller just tries it). creative favours creations.
func (g *gen) op(ents []ent, creative bool) op.Op {
	var dirs, files, all []ent
	dirs = append(dirs, ent{path: "", typ: unix.S_IFDIR})
	for _, e := range ents {
		all = append(all, e)
		switch e.typ {
		case unix.S_IFDIR:
			dirs = append(dirs, e)
		case unix.S_IFREG:
			files = append(files, e)
		}
	}
	d, _ := pick(g.rng, dirs)
	newPath := join(d.path, g.name())
	f, haveFile := pick(g.rng, files)
	a, haveAny := pick(g.rng, all)
	k := g.rng.IntN(100)
	if creative {
		k = g.rng.IntN(40)
	}
	uid := func() int64 {
		if g.root {
			return g.rng.Int64N(3)
		}
		return -1
	}
	switch {
	case k < 10:
		return op.Op{Kind: op.Create, Path: newPath, Mode: unix.S_IFREG | uint32(0o600+g.rng.IntN(0o200)), Uid: uid(), Gid: uid()}
	case k < 16:
		return op.Op{Kind: op.Mkdir, Path: newPath, Mode: unix.S_IFDIR | 0o755, Uid: uid(), Gid: uid()}
	case k < 30 && haveFile:
		n := 1 + g.rng.IntN(100<<10)
		off := g.rng.Int64N(f.size + 64<<10 + 1)
		if g.rng.IntN(3) == 0 {
			off, n = off/(64<<10)*(64<<10), 64<<10
		}
		if g.big && g.rng.IntN(10) == 0 {
			off += g.rng.Int64N(4 << 20) // far: leaves a hole
		}
		return op.Op{Kind: op.Write, Path: f.path, Off: off, Data: g.data(n)}
	case k < 33 && haveFile:
		return op.Op{Kind: op.Link, Path: f.path, Path2: newPath}
	case k < 36:
		targets := []string{"a", "../b", "/etc/passwd", "no/such", g.name()}
		t, _ := pick(g.rng, targets)
		return op.Op{Kind: op.Symlink, Path: newPath, Data: []byte(t), Uid: uid(), Gid: uid()}
	case k < 38:
		if g.root && g.rng.IntN(2) == 0 {
			return op.Op{Kind: op.Mknod, Path: newPath, Mode: unix.S_IFCHR | 0o600, Rdev: unix.Mkdev(1, uint32(3+2*g.rng.IntN(2))), Uid: uid(), Gid: uid()}
		}
		return op.Op{Kind: op.Mknod, Path: newPath, Mode: unix.S_IFIFO | 0o640, Uid: uid(), Gid: uid()}
	case k < 40 && haveFile:
		return op.Op{Kind: op.Truncate, Path: f.path, Off: g.rng.Int64N(2*f.size + 2)}
	case k < 48 && haveFile:
		n := 1 + g.rng.IntN(100<<10)
		off := g.rng.Int64N(f.size + 1)
		return op.Op{Kind: op.Write, Path: f.path, Off: off, Data: g.data(n)}
	case k < 52 && haveFile:
		off := g.rng.Int64N(f.size + 1)
		return op.Op{Kind: op.Fallocate, Path: f.path, Flags: unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, Off: off, Len: 1 + g.rng.Int64N(200<<10)}
	case k < 58 && haveAny:
		if a.typ == unix.S_IFDIR {
			return op.Op{Kind: op.Rmdir, Path: a.path}
		}
		return op.Op{Kind: op.Unlink, Path: a.path}
	case k < 66 && haveAny:
		to := newPath
		if b, ok := pick(g.rng, all); ok && g.rng.IntN(2) == 0 && b.typ == a.typ && a.typ != unix.S_IFDIR {
			to = b.path // over another file
		}
		if within(to, a.path) {
			return op.Op{Kind: op.Chmod, Path: a.path, Mode: 0o755}
		}
		var flags uint32
		if b, ok := pick(g.rng, all); ok && g.rng.IntN(8) == 0 && !within(b.path, a.path) && !within(a.path, b.path) {
			to, flags = b.path, unix.RENAME_EXCHANGE
		}
		return op.Op{Kind: op.Rename, Path: a.path, Path2: to, Flags: flags}
	case k < 74 && haveAny:
		return op.Op{Kind: op.Chmod, Path: a.path, Mode: uint32(g.rng.IntN(0o1000)) | uint32(g.rng.IntN(2))*0o4000}
	case k < 78 && haveAny && g.root:
		return op.Op{Kind: op.Chown, Path: a.path, Uid: g.rng.Int64N(3), Gid: g.rng.Int64N(3)}
	case k < 86 && haveAny:
		if a.typ == unix.S_IFLNK || a.typ == unix.S_IFCHR || a.typ == unix.S_IFIFO {
			if !g.root {
				return op.Op{Kind: op.Utimens, Path: a.path, Atime: g.time(), Mtime: g.time()}
			}
			return op.Op{Kind: op.SetXattr, Path: a.path, Name: "trusted.t" + g.name(), Data: g.data(g.rng.IntN(20))}
		}
		if g.rng.IntN(4) == 0 {
			return op.Op{Kind: op.RemoveXattr, Path: a.path, Name: "user.x" + g.name()[:1]}
		}
		return op.Op{Kind: op.SetXattr, Path: a.path, Name: "user.x" + g.name()[:1], Data: g.data(g.rng.IntN(40))}
	case haveAny:
		return op.Op{Kind: op.Utimens, Path: a.path, Atime: g.time(), Mtime: g.time()}
	}
	return op.Op{Kind: op.Mkdir, Path: newPath, Mode: unix.S_IFDIR | 0o700, Uid: -1, Gid: -1}
}

// mutate applies n random ops to the tree at dir (directly, no stream).
func (g *gen) mutate(t testing.TB, dir string, n int, creative bool) {
	t.Helper()
	a, err := apply.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ents := walkTree(dir)
	for i := 0; i < n; i++ {
		o := g.op(ents, creative)
		if a.Apply(&o) == nil && (o.Kind != op.Write && o.Kind != op.SetXattr || g.rng.IntN(4) == 0) {
			ents = walkTree(dir)
		}
	}
}

// copyTree makes dst (empty) a copy of src with the simple resync.
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	a, err := apply.New(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	fd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := resync.Emit(fd, a.Apply); err != nil {
		t.Fatal(err)
	}
}

func sameTrees(t testing.TB, a, b string, opts treecmp.Options) {
	t.Helper()
	opts.MaxDiffs = 20
	diffs, err := treecmp.Compare(a, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Error(d)
	}
}

// pair is a primary and a secondary directory with a fake stream and an
// engine between them.
type pair struct {
	p, s  string
	f     *fake
	sh    *shim
	e     *Engine
	pfd   int
	stats Stats
	tr    *traceBuf
	sSums *sumcache.Cache // the secondary's (the primary's: e.opt.Sums)
}

// testSums is a cache of hashes that records files unchanged for 50 ms
// (five ticks at the slowest kernel clock), not Margin's seconds: a
// test's files are all new.
func testSums() *sumcache.Cache {
	c := sumcache.New(0)
	c.SetMargin(50 * time.Millisecond)
	return c
}

func newPair(t testing.TB, seed uint64, delay time.Duration, opt Options) *pair {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{"primary", "secondary"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return newPairIn(t, base, seed, delay, opt)
}

// newPairIn is newPair on the trees base/primary and base/secondary,
// which exist.
func newPairIn(t testing.TB, base string, seed uint64, delay time.Duration, opt Options) *pair {
	t.Helper()
	pr := &pair{p: filepath.Join(base, "primary"), s: filepath.Join(base, "secondary")}
	// Both sides remember the hashes of unchanged files, as the agent's
	// do (TANDEM_COMPARE_SUMS=0: they read every file every time).
	if os.Getenv("TANDEM_COMPARE_SUMS") != "0" && opt.Sums == nil {
		opt.Sums = testSums()
		pr.sSums = testSums()
	}
	pr.f = newFake(t, pr.s, seed, delay, pr.sSums)
	pr.sh = newShim(t, pr.p, pr.f)
	fd, err := unix.Open(pr.p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	pr.pfd = fd
	opt.RootFd = fd
	opt.Freeze = pr.sh.Freeze
	// A file's fixes freeze only that file, as the agent's do;
	// TANDEM_COMPARE_FREEZE_FILE=0: every fix freezes everything.
	if os.Getenv("TANDEM_COMPARE_FREEZE_FILE") != "0" {
		opt.FreezeFile = pr.sh.FreezeFile
	}
	if opt.PollInterval == 0 {
		opt.PollInterval = 20 * time.Millisecond
	}
	if opt.Logger == nil {
		opt.Logger = quietLogger()
		if trace {
			pr.tr = &traceBuf{}
			pr.f.tr = pr.tr
			opt.Logger = slog.New(slog.NewTextHandler(pr.tr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	}
	pr.e, err = New(pr.f, opt)
	if err != nil {
		t.Fatal(err)
	}
	pr.sh.e = pr.e
	return pr
}

// run runs the engine; the secondary has applied everything when it
// returns.
func (pr *pair) run(t testing.TB, ctx context.Context, scope Scope) Stats {
	t.Helper()
	st, err := pr.e.Run(ctx, scope)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	pr.f.drain()
	pr.f.checkErrs(t)
	pr.stats = st
	return st
}

func (pr *pair) String() string { return fmt.Sprintf("primary %s, secondary %s", pr.p, pr.s) }
