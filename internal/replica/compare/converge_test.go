package compare

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

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
// files, modes, owners, times), a full compare while a live writer keeps
// changing the primary through the shim, then identical trees.
// TANDEM_COMPARE_SEEDS=n runs more seeds, TANDEM_COMPARE_SEED=s starts
// at seed s.
func TestConvergeLive(t *testing.T) {
	seeds := envInt("TANDEM_COMPARE_SEEDS", 30)
	first := envInt("TANDEM_COMPARE_SEED", 1)
	for i := range seeds {
		seed := uint64(first + i)
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			converge(t, seed, true, Scope{Full: true})
		})
	}
}

// TestConvergeQuiet is the same without live writes: the engine alone
// makes the trees identical, and a second run sends nothing.
func TestConvergeQuiet(t *testing.T) {
	for seed := uint64(100); seed < 105; seed++ {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			pr := converge(t, seed, false, Scope{Full: true})
			st := pr.run(t, context.Background(), Scope{Full: true})
			if st.BytesSent != 0 || st.Created != 0 || st.Removed != 0 || st.MetaFixed != 0 || st.Linked != 0 {
				t.Fatalf("second run on identical trees sent something: %+v", st)
			}
		})
	}
}

func converge(t *testing.T, seed uint64, live bool, scope Scope) *pair {
	t.Logf("seed %d (rerun: TANDEM_COMPARE_SEED=%d TANDEM_COMPARE_SEEDS=1)", seed, seed)
	pr := newPair(t, seed, 500*time.Microsecond, Options{BlockSize: 16 << 10, Parallel: 3})
	g := &gen{rng: rand.New(rand.NewPCG(seed, 1)), root: isRoot(), big: true}
	g.mutate(t, pr.p, 150, true)
	copyTree(t, pr.p, pr.s)
	g.mutate(t, pr.p, 40, false)
	(&gen{rng: rand.New(rand.NewPCG(seed, 2)), root: isRoot(), big: true}).mutate(t, pr.s, 40, false)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if live {
		wg.Go(func() {
			lg := &gen{rng: rand.New(rand.NewPCG(seed, 3)), root: isRoot()}
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
	close(stop)
	wg.Wait()
	pr.f.drain()
	pr.f.checkErrs(t)
	t.Logf("live ops %d, skipped by the secondary %d; %+v", pr.sh.ops.Load(), pr.f.skipped.Load(), st)
	sameTrees(t, pr.p, pr.s, treecmp.Options{})
	if t.Failed() {
		dumpLinks(t, pr.p)
		if pr.tr != nil {
			name := filepath.Join(os.TempDir(), "compare-trace-"+strconv.FormatUint(seed, 10)+".txt")
			pr.tr.mu.Lock()
			_ = os.WriteFile(name, pr.tr.b.Bytes(), 0o644)
			pr.tr.mu.Unlock()
			t.Logf("trace in %s", name)
		}
	}
	return pr
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
