package compare

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"golang.org/x/sys/unix"
)

// rewriteSameStat changes p's content in place, keeping its size and
// putting its mtime back: only the inode's ctime tells the change.
func rewriteSameStat(t *testing.T, p string) {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Stat(p, &st))
	b, err := os.ReadFile(p)
	must(t, err)
	if len(b) == 0 {
		t.Fatalf("%s: empty", p)
	}
	b[len(b)/2] ^= 0xff
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(b, 0)
	must(t, err)
	must(t, f.Close())
	must(t, unix.UtimesNano(p, []unix.Timespec{st.Atim, st.Mtim}))
}

// TestSumsSpareReads: a second full compare of identical trees takes
// every small file's hash and attribute digest from the caches, on both
// sides; a file changed on either side since (same size, mtime put back,
// or a new attribute) is read again, and sent.
func TestSumsSpareReads(t *testing.T) {
	pr := newPair(t, 1, 0, Options{})
	if pr.sSums == nil {
		t.Skip("TANDEM_COMPARE_SUMS=0")
	}
	if !sumcache.Trusted(pr.pfd) {
		t.Skipf("%s: a filesystem whose ctimes the cache does not trust", pr.p)
	}
	pSums := pr.e.opt.Sums
	r := rand.New(rand.NewPCG(9, 9))
	const files = 300
	for i := range files {
		p := filepath.Join(pr.p, "d"+string(rune('a'+i%5)), "f"+string(rune('a'+i/26%26))+string(rune('a'+i%26)))
		if i < 5 {
			must(t, os.Mkdir(filepath.Dir(p), 0o755))
		}
		write(t, p, randBytes(uint64(i), 1+r.IntN(4000)))
	}
	copyTree(t, pr.p, pr.s)
	time.Sleep(100 * time.Millisecond) // past the test caches' margin
	if st := fullRun(t, pr); st.BytesSent != 0 || st.MetaFixed != 0 {
		t.Fatalf("identical trees: %+v", st)
	}
	p0, s0 := pSums.Stats(), pr.sSums.Stats()
	if p0.Entries < files || s0.Entries < files {
		t.Fatalf("after the first compare: primary %+v, secondary %+v: every file should be recorded", p0, s0)
	}
	st := fullRun(t, pr)
	if st.BytesSent != 0 || st.MetaFixed != 0 {
		t.Fatalf("identical trees, second compare: %+v", st)
	}
	p1, s1 := pSums.Stats(), pr.sSums.Stats()
	// Each file: its hash and its attribute digest, on each side.
	if p1.Hits()-p0.Hits() < 2*files || s1.Hits()-s0.Hits() < 2*files {
		t.Fatalf("second compare: %d hits on the primary, %d on the secondary; want ≥ %d each",
			p1.Hits()-p0.Hits(), s1.Hits()-s0.Hits(), 2*files)
	}
	if p1.Misses != p0.Misses || s1.Misses != s0.Misses {
		t.Fatalf("second compare: misses primary %d→%d, secondary %d→%d", p0.Misses, p1.Misses, s0.Misses, s1.Misses)
	}

	// Changes the caches must see: content with the same size and mtime
	// (rsync's quick check would miss them) on either side, and an
	// attribute.
	rewriteSameStat(t, filepath.Join(pr.s, "da", "faa"))
	rewriteSameStat(t, filepath.Join(pr.p, "db", "fab"))
	xattrs := unix.Lsetxattr(filepath.Join(pr.s, "dc", "fac"), "user.tandem", []byte("x"), 0) == nil
	time.Sleep(100 * time.Millisecond)
	st = fullRun(t, pr)
	sameTrees(t, pr.p, pr.s, treecmp.Options{})
	want := int64(2)
	if xattrs {
		want++
	}
	if st.Files < 2 || st.MetaFixed+st.Files < want {
		t.Fatalf("changes since the cached hashes: %+v", st)
	}
	for _, name := range []string{"da/faa", "db/fab"} {
		a, err := os.ReadFile(filepath.Join(pr.p, name))
		must(t, err)
		b, err := os.ReadFile(filepath.Join(pr.s, name))
		must(t, err)
		if !bytes.Equal(a, b) {
			t.Fatalf("%s differs after the compare", name)
		}
	}
	onlyKinds(t, pr.f, op.SyncAll, op.Write, op.Truncate, op.Utimens, op.XattrSet, op.Chmod, op.Chown)
}
