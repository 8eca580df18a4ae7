package compare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"golang.org/x/sys/unix"
)

// TestTrustedRenamedOver: a file renamed over another while the copies
// were apart, then written, recorded as the FUSE layer records it (the
// moved content whole, then the write's zone), is sent whole with trusted
// zones, whether a listing meets it or not; nothing else is read.
func TestTrustedRenamedOver(t *testing.T) {
	for _, dirs := range [][]string{nil, {"d"}} {
		t.Run(fmt.Sprintf("dirs=%q", dirs), func(t *testing.T) {
			pr := newPair(t, 10, 0, Options{BlockSize: 4096, TrustZones: true})
			write(t, filepath.Join(pr.p, "d/f"), randBytes(20, 200000))
			copyTree(t, pr.p, pr.s)
			write(t, filepath.Join(pr.p, "d/tmp"), randBytes(21, 200000))
			must(t, os.Rename(filepath.Join(pr.p, "d/tmp"), filepath.Join(pr.p, "d/f")))
			f, err := os.OpenFile(filepath.Join(pr.p, "d/f"), os.O_WRONLY, 0)
			must(t, err)
			_, err = f.WriteAt([]byte("zone"), 50000)
			must(t, err)
			f.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st := pr.run(t, ctx, Scope{Dirs: dirs, Files: map[string][]Zone{"d/f": {{0, 200000}, {50000, 4}}}})
			sameTrees(t, pr.p, pr.s, treecmp.Options{IgnoreDirMtime: true})
			if st.Examined != 200000 {
				t.Errorf("examined %d bytes, want the file's 200000", st.Examined)
			}
		})
	}
}

// TestCreatedScopeFileSentOnce: a file created while the copies were
// apart has its zones recorded too; the listing that creates it there
// sends it whole, and its zones are not sent again.
func TestCreatedScopeFileSentOnce(t *testing.T) {
	for _, trust := range []bool{false, true} {
		t.Run(fmt.Sprintf("trust=%v", trust), func(t *testing.T) {
			pr := newPair(t, 13, 0, Options{BlockSize: 4096, TrustZones: trust})
			write(t, filepath.Join(pr.p, "d/old"), []byte("old"))
			copyTree(t, pr.p, pr.s)
			const size = 300 << 10
			write(t, filepath.Join(pr.p, "d/new"), randBytes(22, size))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st := pr.run(t, ctx, Scope{Dirs: []string{"d"}, Files: map[string][]Zone{"d/new": {{0, size}}}})
			sameTrees(t, pr.p, pr.s, treecmp.Options{})
			if st.BytesSent != size {
				t.Errorf("sent %d bytes, want %d (the new file once)", st.BytesSent, size)
			}
		})
	}
}

// TestTrustedZonesOneFreeze: a file's trusted zones (under 1 MiB) and its
// size and attributes go out under one freeze; the question of its
// attributes is one query.
func TestTrustedZonesOneFreeze(t *testing.T) {
	pr := newPair(t, 14, 0, Options{BlockSize: 4096, TrustZones: true, PollInterval: time.Hour})
	const size = 1 << 20
	write(t, filepath.Join(pr.p, "d/f"), randBytes(23, size))
	copyTree(t, pr.p, pr.s)
	f, err := os.OpenFile(filepath.Join(pr.p, "d/f"), os.O_WRONLY, 0)
	must(t, err)
	var zones []Zone
	for i := range 10 {
		off := int64(i*65536 + 8192)
		_, err = f.WriteAt(randBytes(uint64(100+i), 4096), off)
		must(t, err)
		zones = append(zones, Zone{off, 4096})
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := pr.run(t, ctx, Scope{Files: map[string][]Zone{"d/f": zones}})
	sameTrees(t, pr.p, pr.s, treecmp.Options{IgnoreDirMtime: true})
	if st.BytesSent != 10*4096 {
		t.Errorf("sent %d bytes, want %d", st.BytesSent, 10*4096)
	}
	// The file's freeze, and the final check's.
	if st.Freezes != 2 {
		t.Errorf("%d freezes, want 2 (the zones with the attributes, the final check)", st.Freezes)
	}
	// Its attributes, and the two questions for skipped ops at the end
	// (the last one frozen).
	if st.Queries != 3 {
		t.Errorf("%d queries, want 3", st.Queries)
	}
	t.Logf("%+v", st)
}

// TestHashBatchAnswer: a HashBatch answer holds, item by item, what the
// HashBlocks queries would have answered one by one.
func TestHashBatchAnswer(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a"), randBytes(1, 100000))
	write(t, filepath.Join(dir, "d/b"), randBytes(2, 5000))
	must(t, os.Symlink("a", filepath.Join(dir, "l")))
	fd := rootFd(t, dir)
	qs := []*op.Op{
		HashBlocksQuery("a", 0, 4096, 4096, 100000),
		HashBlocksQuery("a", 98304, 4096, 4096, 100000),
		HashBlocksQuery("d/b", 0, 0, 4096, 0),
		HashBlocksQuery("missing", 0, 4096, 4096, 0),
		HashBlocksQuery("l", 0, 4096, 4096, 0),
		HashBlocksQuery("d", 0, 4096, 4096, 0),
	}
	b, err := Answer(fd, HashBatchQuery(qs))
	must(t, err)
	reps, err := parseHashBatchAnswer(b, len(qs))
	must(t, err)
	for i, q := range qs {
		want, err := Answer(fd, q)
		must(t, err)
		if reps[i].Err != nil || string(reps[i].Data) != string(want) {
			t.Errorf("item %d (%s): %q, %v; want %q", i, q, reps[i].Data, reps[i].Err, want)
		}
	}
	if _, err := parseHashBatchAnswer(b, len(qs)-1); err == nil {
		t.Error("an answer of 6 items parsed as 5")
	}
	// Bounded: too many items, or a range longer than a probe.
	many := make([]*op.Op, maxBatchItems+1)
	for i := range many {
		many[i] = qs[0]
	}
	if _, err := Answer(fd, HashBatchQuery(many)); err == nil {
		t.Errorf("a batch of %d items answered", len(many))
	}
	if _, err := Answer(fd, HashBatchQuery([]*op.Op{HashBlocksQuery("a", 0, 1<<20, 4096, 0)})); err == nil {
		t.Error("an item of 1 MiB answered")
	}
	if _, err := Answer(fd, HashBatchQuery([]*op.Op{HashBlocksQuery("../x", 0, 4096, 4096, 0)})); err == nil {
		t.Error("an item outside the tree answered")
	}
}

// noBatch is a secondary of an older release: it does not know HashBatch.
type noBatch struct{ *fake }

func (n noBatch) Query(q *op.Op) <-chan Reply {
	if q.Flags == op.QueryHashBatch {
		ch := make(chan Reply, 1)
		ch <- Reply{Err: errors.New("compare: query type(6): not answered here")}
		return ch
	}
	return n.fake.Query(q)
}

// TestHashBatchFallback: a secondary that refuses batches gets the
// queries one by one, and the copies converge.
func TestHashBatchFallback(t *testing.T) {
	pr := newPair(t, 15, 0, Options{})
	for i := range 40 {
		write(t, filepath.Join(pr.p, fmt.Sprintf("d/f%02d", i)), randBytes(uint64(200+i), 100000))
	}
	copyTree(t, pr.p, pr.s)
	sc := Scope{Files: map[string][]Zone{}}
	for i := range 40 {
		p := fmt.Sprintf("d/f%02d", i)
		f, err := os.OpenFile(filepath.Join(pr.p, p), os.O_WRONLY, 0)
		must(t, err)
		_, err = f.WriteAt([]byte("changed"), 40000)
		must(t, err)
		f.Close()
		sc.Files[p] = []Zone{{40000, 7}}
	}
	e, err := New(noBatch{pr.f}, Options{RootFd: pr.pfd, Freeze: pr.sh.Freeze, BlockSize: 4096, TrustZones: true,
		Parallel: 8, PollInterval: 20 * time.Millisecond, Logger: quietLogger()})
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.Run(ctx, sc); err != nil {
		t.Fatal(err)
	}
	pr.f.drain()
	pr.f.checkErrs(t)
	sameTrees(t, pr.p, pr.s, treecmp.Options{IgnoreDirMtime: true})
}

// TestHashBatchGathers: while batches are being answered, the questions
// of the files that wait meanwhile go out together (here 64 files, 16 at
// once, slow answers: far fewer queries than files).
func TestHashBatchGathers(t *testing.T) {
	pr := newPair(t, 16, 5*time.Millisecond, Options{BlockSize: 4096, TrustZones: true, Parallel: 16, PollInterval: time.Hour})
	const files = 64
	for i := range files {
		write(t, filepath.Join(pr.p, fmt.Sprintf("d/f%02d", i)), randBytes(uint64(300+i), 50000))
	}
	copyTree(t, pr.p, pr.s)
	sc := Scope{Files: map[string][]Zone{}}
	for i := range files {
		p := fmt.Sprintf("d/f%02d", i)
		f, err := os.OpenFile(filepath.Join(pr.p, p), os.O_WRONLY, 0)
		must(t, err)
		_, err = f.WriteAt([]byte("changed"), 20000)
		must(t, err)
		f.Close()
		sc.Files[p] = []Zone{{20000, 7}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := pr.run(t, ctx, sc)
	sameTrees(t, pr.p, pr.s, treecmp.Options{IgnoreDirMtime: true})
	if st.Queries > files/2 {
		t.Errorf("%d queries for the attributes of %d files: not gathered", st.Queries, files)
	}
	t.Logf("%+v", st)
}

// TestPreProbes: with trusted zones the questions for the attributes of
// every scope file are asked when the run begins, in a few batches, before
// any fix: a question then waits neither for its task nor behind data queued for the
// secondary's applier.
func TestPreProbes(t *testing.T) {
	for _, dirs := range [][]string{nil, {"d0", "d1", "d2"}} {
		t.Run(fmt.Sprintf("dirs=%q", dirs), func(t *testing.T) {
			pr := newPair(t, 14, 0, Options{BlockSize: 4096, TrustZones: true, Parallel: 4})
			const files = 300
			for i := range files {
				write(t, filepath.Join(pr.p, fmt.Sprintf("d%d/f%03d", i%3, i)), randBytes(uint64(100+i), 64<<10))
			}
			copyTree(t, pr.p, pr.s)
			scope := Scope{Dirs: dirs, Files: map[string][]Zone{}}
			for i := range files {
				p := fmt.Sprintf("d%d/f%03d", i%3, i)
				f, err := os.OpenFile(filepath.Join(pr.p, p), os.O_WRONLY, 0)
				must(t, err)
				_, err = f.WriteAt([]byte("changed"), 20000)
				must(t, err)
				f.Close()
				scope.Files[p] = []Zone{{20000, 7}}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st := pr.run(t, ctx, scope)
			sameTrees(t, pr.p, pr.s, treecmp.Options{IgnoreDirMtime: true})
			pr.f.mu.Lock()
			order := slices.Clone(pr.f.order)
			pr.f.mu.Unlock()
			firstWrite := slices.IndexFunc(order, func(o op.Op) bool { return o.Kind == op.Write })
			if firstWrite < 0 {
				t.Fatal("no write sent")
			}
			probes := 0
			for i, o := range order {
				if o.Kind == op.Query && (o.Flags == op.QueryHashBatch || o.Flags == op.QueryHashBlocks) {
					probes++
					// The first batches go at once, the others as those
					// come back.
					if probes <= maxInFlight && i > firstWrite {
						t.Errorf("attributes query %d (%s) after the first write (%d)", i, &o, firstWrite)
					}
				}
			}
			// 300 questions: 32, 64, 128 and the rest.
			if probes > 6 {
				t.Errorf("%d queries for the attributes of %d files, want at most 6 batches", probes, files)
			}
			if st.BytesSent != files*4096 {
				t.Errorf("sent %d bytes, want %d (one block per file)", st.BytesSent, files*4096)
			}
		})
	}
}

// TestTrustedZonesSparse: zones of one batch fall in data, in holes and
// across their edges; the data segment kept between zones of one freeze
// must not turn a hole into data or skip data after a hole.
func TestTrustedZonesSparse(t *testing.T) {
	pr := newPair(t, 15, 0, Options{BlockSize: 4096, TrustZones: true, PollInterval: time.Hour})
	const size = 1 << 20
	p := filepath.Join(pr.p, "f")
	write(t, p, randBytes(31, size))
	copyTree(t, pr.p, pr.s)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	must(t, err)
	// Holes at [128K, 256K) and [512K, 576K), new data around them.
	must(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 128<<10, 128<<10))
	must(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 512<<10, 64<<10))
	for _, off := range []int64{4 << 10, 124 << 10, 260 << 10, 508 << 10, 580 << 10, 1012 << 10} {
		_, err = f.WriteAt(randBytes(uint64(off), 4096), off)
		must(t, err)
	}
	f.Close()
	var zones []Zone
	for off := int64(0); off < size; off += 4 << 10 {
		if off%(16<<10) == 4<<10 || off >= 120<<10 && off < 264<<10 || off >= 504<<10 && off < 584<<10 {
			zones = append(zones, Zone{off, 4096})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := pr.run(t, ctx, Scope{Files: map[string][]Zone{"f": mergeZones(zones)}})
	t.Logf("%d zones: %+v", len(mergeZones(zones)), st)
	sameTrees(t, pr.p, pr.s, treecmp.Options{IgnoreDirMtime: true, Holes: true})
}

func mergeZones(zs []Zone) []Zone {
	var out []Zone
	for _, z := range zs {
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == z.Off {
			out[n-1].Len += z.Len
			continue
		}
		out = append(out, z)
	}
	return out
}

// TestFileFixesFreezeOnlyTheFile: a file's fixes hold FreezeFile of that
// file, not the whole Freeze: the application's write to another file goes
// on meanwhile (it would wait for the thaw under Freeze), and Freeze is
// left to the final check.
func TestFileFixesFreezeOnlyTheFile(t *testing.T) {
	pr := newPair(t, 15, 0, Options{BlockSize: 4096, TrustZones: true, PollInterval: time.Hour})
	write(t, filepath.Join(pr.p, "d/f"), randBytes(31, 256<<10))
	write(t, filepath.Join(pr.p, "d/g"), randBytes(32, 4096))
	copyTree(t, pr.p, pr.s)
	f, err := os.OpenFile(filepath.Join(pr.p, "d/f"), os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(randBytes(33, 4096), 65536)
	must(t, err)
	f.Close()
	var fileFreezes, otherWrites int
	var fst unix.Stat_t
	must(t, unix.Stat(filepath.Join(pr.p, "d/f"), &fst))
	pr.e.opt.FreezeFile = func(fd int, fn func()) {
		pr.sh.FreezeFile(fd, func() {
			var st unix.Stat_t
			must(t, unix.Fstat(fd, &st))
			if st.Ino != fst.Ino {
				t.Errorf("FreezeFile of inode %d, want d/f's %d", st.Ino, fst.Ino)
			}
			fileFreezes++
			done := make(chan bool, 1)
			go func() {
				done <- pr.sh.do(op.Op{Kind: op.Write, Path: "d/g", Off: 0, Data: []byte("live")})
			}()
			select {
			case ok := <-done:
				if ok {
					otherWrites++
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a write to another file waited for a file's fix")
			}
			fn()
		})
	}
	var freezes int
	pr.e.opt.Freeze = func(fn func()) { freezes++; pr.sh.Freeze(fn) }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := pr.run(t, ctx, Scope{Files: map[string][]Zone{"d/f": {{65536, 4096}}}})
	sameTrees(t, pr.p, pr.s, treecmp.Options{IgnoreDirMtime: true})
	if fileFreezes != 1 || otherWrites != 1 {
		t.Errorf("%d file freezes with %d writes to another file during them, want 1 and 1", fileFreezes, otherWrites)
	}
	if freezes != 1 {
		t.Errorf("%d whole freezes, want 1 (the final check)", freezes)
	}
	t.Logf("%+v", st)
}
