package compare

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/apply"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"golang.org/x/sys/unix"
)

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func isRoot() bool { return os.Geteuid() == 0 }

// envInt reads a test knob.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestConvergeLive: random trees that diverged on both sides (files,
// directories, hard links, symlinks, fifos and devices, xattrs, sparse
// files, modes, owners, times), a full compare while three live writers
// keep changing the primary through the shim, then identical trees.
// TANDEM_COMPARE_SEEDS=n runs more seeds, TANDEM_COMPARE_SEED=s starts
// at seed s. A file's fixes freeze that file only, as the agent's do.
func TestConvergeLive(t *testing.T) { convergeSeeds(t, 30, 1, false) }

// TestConvergeLiveWholeFreezes is TestConvergeLive with every fix
// freezing every change: the agent's way when it cannot freeze one file.
func TestConvergeLiveWholeFreezes(t *testing.T) { convergeSeeds(t, 10, 1001, true) }

// convergeSeeds runs converge with live writers on n seeds from first
// (TANDEM_COMPARE_SEEDS and TANDEM_COMPARE_SEED change them).
func convergeSeeds(t *testing.T, n, first int, whole bool) {
	n = envInt("TANDEM_COMPARE_SEEDS", n)
	first = envInt("TANDEM_COMPARE_SEED", first)
	for i := range n {
		seed := uint64(first + i)
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			converge(t, seed, true, Scope{Full: true}, whole)
		})
	}
}

// TestConvergeQuiet is the same without live writes: the engine alone
// makes the trees identical, and a second run sends nothing.
func TestConvergeQuiet(t *testing.T) {
	for seed := uint64(100); seed < 105; seed++ {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			pr := converge(t, seed, false, Scope{Full: true}, false)
			st := pr.run(t, context.Background(), Scope{Full: true})
			if st.BytesSent != 0 || st.Created != 0 || st.Removed != 0 || st.MetaFixed != 0 || st.Linked != 0 {
				t.Fatalf("second run on identical trees sent something: %+v", st)
			}
		})
	}
}

// convergeWriters is how many live writers TestConvergeLive runs by
// default.
const convergeWriters = 3

// converge runs one seed; whole: every fix freezes every change.
func converge(t *testing.T, seed uint64, live bool, scope Scope, whole bool) *pair {
	t.Logf("seed %d (rerun: TANDEM_COMPARE_SEED=%d TANDEM_COMPARE_SEEDS=1)", seed, seed)
	pr := newPair(t, seed, 500*time.Microsecond, Options{BlockSize: 16 << 10, Parallel: 3})
	if whole {
		pr.e.opt.FreezeFile = nil
	}
	g := &gen{rng: rand.New(rand.NewPCG(seed, 1)), root: isRoot(), big: true}
	g.mutate(t, pr.p, 150, true)
	copyTree(t, pr.p, pr.s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if pr.sSums != nil {
		// A compare of the identical copies first fills both sides'
		// caches of hashes: the changes below must be seen through them.
		time.Sleep(60 * time.Millisecond) // past the test caches' margin
		if st := pr.run(t, ctx, Scope{Full: true}); st.BytesSent != 0 || st.MetaFixed != 0 || st.Created != 0 || st.Removed != 0 {
			t.Fatalf("compare of copies just made sent something: %+v", st)
		}
		pr.f.lenient() // a new resync begins
	}
	g.mutate(t, pr.p, 40, false)
	(&gen{rng: rand.New(rand.NewPCG(seed, 2)), root: isRoot(), big: true}).mutate(t, pr.s, 40, false)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	stopWriters := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	// A failed run (t.Fatal) must not leave the writers running into the
	// next seeds, and must still leave its trace.
	defer func() {
		if t.Failed() {
			stopWriters()
			pr.dumpIfFailed(t, strconv.FormatUint(seed, 10))
		}
	}()
	// Several writers (TANDEM_COMPARE_WRITERS): changes of different files
	// and of one directory at the same moment, as a real application makes.
	for w := range envInt("TANDEM_COMPARE_WRITERS", convergeWriters) {
		if !live {
			break
		}
		wg.Go(func() {
			lg := &gen{rng: rand.New(rand.NewPCG(seed, 3+uint64(w))), root: isRoot()}
			ents := walkTree(pr.p)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if pr.sh.do(lg.op(ents, false)) && i%4 == 0 {
					ents = walkTree(pr.p)
				}
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
	st := pr.run(t, ctx, scope)
	// Live writes go on a little after the end: they apply on equal
	// trees, strictly (the fake's applier is strict after ResyncDone).
	time.Sleep(5 * time.Millisecond)
	stopWriters()
	pr.f.drain()
	pr.f.checkErrs(t)
	t.Logf("live ops %d, skipped by the secondary %d; %+v; hashes remembered: primary %+v, secondary %+v",
		pr.sh.ops.Load(), pr.f.skipped.Load(), st, pr.e.opt.Sums.Stats(), pr.sSums.Stats())
	sameTrees(t, pr.p, pr.s, treecmp.Options{})
	return pr
}

func (pr *pair) dumpIfFailed(t *testing.T, name string) {
	if !t.Failed() {
		return
	}
	dumpLinks(t, pr.p)
	if pr.tr != nil {
		for _, e := range walkTree(pr.p) {
			var st unix.Stat_t
			if unix.Lstat(filepath.Join(pr.p, e.path), &st) == nil {
				pr.tr.printf("final primary: %s ino %d nlink %d mode %o mtime %d.%09d", e.path, st.Ino, st.Nlink, st.Mode, st.Mtim.Sec, st.Mtim.Nsec)
			}
		}
		for _, e := range walkTree(pr.s) {
			var st unix.Stat_t
			if unix.Lstat(filepath.Join(pr.s, e.path), &st) == nil {
				pr.tr.printf("final secondary: %s ino %d nlink %d mode %o mtime %d.%09d", e.path, st.Ino, st.Nlink, st.Mode, st.Mtim.Sec, st.Mtim.Nsec)
			}
		}
		name := filepath.Join(os.TempDir(), "compare-trace-"+name+".txt")
		pr.tr.mu.Lock()
		_ = os.WriteFile(name, pr.tr.b.Bytes(), 0o644)
		pr.tr.mu.Unlock()
		t.Logf("trace in %s", name)
	}
}

// dumpLinks logs the hard-link groups of the tree (debugging).
func dumpLinks(t *testing.T, root string) {
	groups := map[uint64][]string{}
	for _, e := range walkTree(root) {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(root, e.path), &st) == nil && st.Nlink > 1 && e.typ != unix.S_IFDIR {
			groups[st.Ino] = append(groups[st.Ino], e.path)
		}
	}
	for ino, g := range groups {
		t.Logf("primary inode %d: %q", ino, g)
	}
}

// recorder notes, by inode as the change records do, what ops change on
// the primary while the secondary is away; scope turns that into paths.
type recorder struct {
	root  string
	dirs  map[uint64]bool
	files map[uint64][]Zone
	moved map[uint64]bool // renamed or linked into place: content there unknown
}

func (rc *recorder) ino(p string) (uint64, bool) {
	var st unix.Stat_t
	if unix.Lstat(filepath.Join(rc.root, p), &st) != nil {
		return 0, false
	}
	return st.Ino, true
}

func (rc *recorder) noteDir(p string) {
	if i, ok := rc.ino(p); ok {
		rc.dirs[i] = true
	}
}

func (rc *recorder) noteFile(p string, z Zone) {
	var st unix.Stat_t
	if unix.Lstat(filepath.Join(rc.root, p), &st) != nil {
		return
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		rc.dirs[st.Ino] = true
		return
	}
	zs := rc.files[st.Ino]
	if z.Len > 0 {
		zs = append(zs, z)
	}
	rc.files[st.Ino] = zs
}

// before and after an op on the primary.
func (rc *recorder) note(o *op.Op, sizeBefore int64) {
	switch o.Kind {
	case op.Write:
		rc.noteFile(o.Path, Zone{o.Off, int64(len(o.Data))})
		if o.Off > sizeBefore { // the gap of zeros
			rc.noteFile(o.Path, Zone{sizeBefore, o.Off - sizeBefore})
		}
	case op.Truncate:
		rc.noteFile(o.Path, Zone{min(o.Off, sizeBefore), max(o.Off, sizeBefore) - min(o.Off, sizeBefore)})
	case op.Fallocate:
		rc.noteFile(o.Path, Zone{o.Off, o.Len})
		if o.Off > sizeBefore { // the hole before it, as a write's
			rc.noteFile(o.Path, Zone{sizeBefore, o.Off - sizeBefore})
		}
	case op.Create, op.Mkdir, op.Mknod, op.Symlink, op.Unlink, op.Rmdir, op.RemoveTree:
		rc.noteDir(parent(o.Path))
	case op.Rename:
		rc.noteDir(parent(o.Path))
		rc.noteDir(parent(o.Path2))
		if i, ok := rc.ino(o.Path2); ok {
			rc.moved[i] = true
		}
		if i, ok := rc.ino(o.Path); ok && o.Flags&unix.RENAME_EXCHANGE != 0 {
			rc.moved[i] = true
		}
	case op.Link:
		rc.noteDir(parent(o.Path2))
		rc.noteFile(o.Path, Zone{})
		if i, ok := rc.ino(o.Path2); ok {
			rc.moved[i] = true
		}
	default:
		rc.noteFile(o.Path, Zone{})
	}
}

func (rc *recorder) scope() Scope {
	paths := map[uint64]string{0: ""}
	var st unix.Stat_t
	if unix.Lstat(rc.root, &st) == nil {
		paths[st.Ino] = ""
	}
	for _, e := range walkTree(rc.root) {
		if unix.Lstat(filepath.Join(rc.root, e.path), &st) == nil {
			if _, ok := paths[st.Ino]; !ok {
				paths[st.Ino] = e.path
			}
		}
	}
	sc := Scope{Files: map[string][]Zone{}, Ino: map[string]uint64{}}
	for i := range rc.dirs {
		if p, ok := paths[i]; ok {
			sc.Dirs = append(sc.Dirs, p)
		}
	}
	for i, z := range rc.files {
		if p, ok := paths[i]; ok && p != "" && !rc.moved[i] {
			sc.Files[p] = z
			sc.Ino[p] = i
		}
	}
	for i := range rc.moved {
		if p, ok := paths[i]; ok && p != "" {
			sc.Whole = append(sc.Whole, p)
			sc.Ino[p] = i
		}
	}
	return sc
}

// TestConvergeIncremental: the secondary was a copy; the primary changed
// alone (recorded by inode, as the change records do); then an
// incremental compare with live writes makes the trees identical.
func TestConvergeIncremental(t *testing.T) {
	seeds := envInt("TANDEM_COMPARE_SEEDS", 20)
	first := envInt("TANDEM_COMPARE_SEED", 1)
	for i := range seeds {
		seed := uint64(first + i)
		for _, trust := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d/trust=%v", seed, trust), func(t *testing.T) {
				t.Logf("seed %d", seed)
				pr := newPair(t, seed, 300*time.Microsecond, Options{BlockSize: 8 << 10, TrustZones: trust})
				g := &gen{rng: rand.New(rand.NewPCG(seed, 11)), root: isRoot(), big: true}
				g.mutate(t, pr.p, 150, true)
				copyTree(t, pr.p, pr.s)
				rc := &recorder{root: pr.p, dirs: map[uint64]bool{}, files: map[uint64][]Zone{}, moved: map[uint64]bool{}}
				a, err := apply.New(pr.p)
				must(t, err)
				ents := walkTree(pr.p)
				// First a file removed and created again where it was,
				// then written past its end: the hole left covers the old
				// file's bytes, which must not survive on the secondary.
				var fixed []op.Op
				for _, e := range ents {
					if e.typ == unix.S_IFREG && e.size >= 32<<10 {
						fixed = append(fixed, op.Op{Kind: op.Unlink, Path: e.path},
							op.Op{Kind: op.Create, Path: e.path, Mode: unix.S_IFREG | 0o644, Uid: -1, Gid: -1},
							op.Op{Kind: op.Write, Path: e.path, Off: e.size / 2 / (4 << 10) * (4 << 10), Data: g.data(100)})
						break
					}
				}
				for i := range 60 + len(fixed) {
					o := op.Op{}
					if i < len(fixed) {
						o = fixed[i]
					} else {
						o = g.op(ents, false)
					}
					var st unix.Stat_t
					_ = unix.Lstat(filepath.Join(pr.p, o.Path), &st)
					// The inode an unlink or a rename over drops a name of:
					// if it has others, its link group changed.
					var victim unix.Stat_t
					switch o.Kind {
					case op.Unlink:
						victim = st
					case op.Rename:
						_ = unix.Lstat(filepath.Join(pr.p, o.Path2), &victim)
					}
					if a.Apply(&o) == nil {
						if pr.tr != nil {
							var after unix.Stat_t
							_ = unix.Lstat(filepath.Join(pr.p, o.Path), &after)
							pr.tr.printf("alone: %s (ino %d -> %d, size %d)", &o, st.Ino, after.Ino, after.Size)
						}
						rc.note(&o, st.Size)
						if victim.Nlink > 1 && victim.Mode&unix.S_IFMT != unix.S_IFDIR {
							rc.moved[victim.Ino] = true
						}
						ents = walkTree(pr.p)
					}
				}
				a.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				stop := make(chan struct{})
				var wg sync.WaitGroup
				wg.Go(func() {
					lg := &gen{rng: rand.New(rand.NewPCG(seed, 12)), root: isRoot()}
					ents := walkTree(pr.p)
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						if pr.sh.do(lg.op(ents, false)) && i%4 == 0 {
							ents = walkTree(pr.p)
						}
						time.Sleep(100 * time.Microsecond)
					}
				})
				sc := rc.scope()
				if pr.tr != nil {
					pr.tr.printf("scope: %+v", sc)
					pr.tr.printf("recorded: files %v moved %v", rc.files, rc.moved)

				}
				st := pr.run(t, ctx, sc)
				time.Sleep(5 * time.Millisecond)
				close(stop)
				wg.Wait()
				pr.f.drain()
				pr.f.checkErrs(t)
				t.Logf("%+v; scope %d dirs, %d files", st, len(sc.Dirs), len(sc.Files))
				sameTrees(t, pr.p, pr.s, treecmp.Options{})
				pr.dumpIfFailed(t, fmt.Sprintf("inc-%d-%v", seed, trust))
			})
		}
	}
}
