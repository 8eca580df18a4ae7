package changelog

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testOpts() Options {
	// No read-ahead: the tests count the slots each Touch activates.
	return Options{ZoneSize: 4096, ExtentSize: 4096, MaxActive: 64, ReadAhead: -1, FullWait: 200 * time.Millisecond, Logger: quiet}
}

func mustOpen(t testing.TB, dir string, o Options) *Log {
	t.Helper()
	l, err := Open(dir, o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// crash abandons l as a kill -9 would: records not yet written are lost,
// nothing is checkpointed, the lock is released.
func (l *Log) crash() {
	l.mu.Lock()
	for l.flushing {
		l.cond.Wait()
	}
	l.closed = true
	l.cond.Broadcast()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	l.mu.Unlock()
	l.lock.Close()
}

func touch(t testing.TB, l *Log, k Key, zone uint64, seq uint64) {
	t.Helper()
	zs := l.ZoneSize()
	p, err := l.Touch(k, int64(zone)*zs, 1)
	if err != nil {
		t.Fatalf("touch %v zone %d: %v", k, zone, err)
	}
	l.Done(p, seq)
}

// has says whether zone z of k is in s.
func has(s *Snapshot, k Key, z uint64) bool {
	for _, f := range s.Files {
		if f.Key != k {
			continue
		}
		for _, r := range f.Zones {
			if z >= r.First && z < r.End {
				return true
			}
		}
	}
	return false
}

func hasDir(s *Snapshot, k Key) bool {
	for _, d := range s.Dirs {
		if d.Key == k {
			return true
		}
	}
	return false
}

func TestFastPathNoIO(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOpts())
	k := Key{1, 2}
	touch(t, l, k, 3, 1)
	s0 := l.Stats().Syncs
	for i := 0; i < 100; i++ {
		p, err := l.Touch(k, 3*4096+int64(i), 10)
		if err != nil {
			t.Fatal(err)
		}
		l.Done(p, uint64(i+2))
	}
	if s := l.Stats(); s.Syncs != s0 || s.Active != 1 {
		t.Fatalf("touching an active zone: syncs %d -> %d, active %d", s0, s.Syncs, s.Active)
	}
	// A range over two zones, one new: one sync.
	p, err := l.Touch(k, 4*4096-1, 2)
	if err != nil {
		t.Fatal(err)
	}
	l.Done(p, 200)
	if s := l.Stats(); s.Syncs != s0+1 || s.Active != 2 {
		t.Fatalf("new zone: syncs %d -> %d, active %d", s0, s.Syncs, s.Active)
	}
}

// TestAckEviction: acknowledged zones leave the active set when room is
// needed, unacknowledged ones never do (Touch waits), and an ack lets the
// waiter in.
func TestAckEviction(t *testing.T) {
	o := testOpts()
	o.FullWait = time.Hour
	dir := t.TempDir()
	l := mustOpen(t, dir, o)
	k := Key{1, 1}
	for z := uint64(0); z < 64; z++ {
		touch(t, l, k, z, z+1)
	}
	l.Acked(10)
	for z := uint64(100); z < 110; z++ {
		touch(t, l, k, z, 200)
	}
	if s := l.Stats(); s.Active != 64 {
		t.Fatalf("active %d, want 64", s.Active)
	}
	// Zones 0..9 (acked) left, 10..63 stay.
	done := make(chan error, 1)
	go func() {
		p, err := l.Touch(k, 500*4096, 1)
		l.Done(p, 300)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("touch with a full set of unacknowledged zones returned: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	l.Acked(11)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ack did not let the waiting touch in")
	}
	l.crash()
	l2 := mustOpen(t, dir, o)
	in := l2.InFlight()
	for z := uint64(0); z < 64; z++ {
		if want := z >= 11; has(in, k, z) != want {
			t.Errorf("zone %d in flight = %v, want %v", z, !want, want)
		}
	}
	for _, z := range []uint64{100, 109, 500} {
		if !has(in, k, z) {
			t.Errorf("zone %d not in flight", z)
		}
	}
	if n := in.Zones(); n > 64 {
		t.Errorf("%d zones in flight, more than MaxActive", n)
	}
	if d := l2.Dirty(); len(d.Files) != 0 {
		t.Errorf("not alone, yet DIRTY has %v", d.Files)
	}
}

// TestSeqZeroNotAcked: an op sent to no peer while one is expected is never
// acknowledged by a later ack.
func TestSeqZeroNotAcked(t *testing.T) {
	o := testOpts()
	o.FullWait = time.Hour
	l := mustOpen(t, t.TempDir(), o)
	k := Key{1, 1}
	touch(t, l, k, 0, 0)
	for z := uint64(1); z < 64; z++ {
		touch(t, l, k, z, z)
	}
	l.Acked(1000)
	l.Checkpoint()
	if s := l.Stats(); s.Active != 1 {
		t.Fatalf("active %d after ack of all, want 1 (the zone sent nowhere)", s.Active)
	}
	if err := l.SetAlone(true); err != nil {
		t.Fatal(err)
	}
	l.Checkpoint()
	if !has(l.Dirty(), k, 0) || has(l.Dirty(), k, 1) {
		t.Fatalf("DIRTY = %+v, want zone 0 only", l.Dirty().Files)
	}
}

// TestAloneToDirty: SetAlone(true) sends every unacknowledged zone and every
// zone changed alone to DIRTY, not the acknowledged ones; SetAlone(false)
// flushes them; DIRTY survives Close/Open.
func TestAloneToDirty(t *testing.T) {
	dir := t.TempDir()
	o := testOpts()
	l := mustOpen(t, dir, o)
	a, b, d := Key{1, 1}, Key{1, 2}, Key{1, 3}
	touch(t, l, a, 1, 5)
	touch(t, l, a, 2, 6)
	l.Acked(5)
	if err := l.SetAlone(true); err != nil {
		t.Fatal(err)
	}
	l.Acked(100) // ignored while alone
	touch(t, l, b, 7, 0)
	p, err := l.TouchDir(d)
	if err != nil {
		t.Fatal(err)
	}
	l.Done(p, 0)
	pm, err := l.TouchMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	l.Done(pm, 0)
	if st := l.Stats(); st.PendingZones != 4 || st.DirtyFiles != 0 {
		t.Fatalf("stats while alone: %+v", st)
	}
	if err := l.SetAlone(false); err != nil {
		t.Fatal(err)
	}
	check := func(s *Snapshot) {
		t.Helper()
		if has(s, a, 1) || !has(s, a, 2) || !has(s, b, 7) || !hasDir(s, d) {
			t.Fatalf("DIRTY %+v dirs %+v", s.Files, s.Dirs)
		}
		for _, f := range s.Files {
			if f.Key == b && !f.Meta {
				t.Fatalf("meta of %v not dirty", b)
			}
		}
	}
	check(l.Dirty())
	if st := l.Stats(); st.DirtyZones != 2 || st.DirtyBytes != 2*4096 || st.DirtyFiles != 2 || st.DirtyDirs != 1 {
		t.Fatalf("stats %+v", st)
	}
	l.Close()
	l2 := mustOpen(t, dir, o)
	check(l2.Dirty())
	if len(l2.InFlight().Files) != 0 {
		t.Fatalf("clean close, yet in flight: %+v", l2.InFlight().Files)
	}
}

// TestRecoverAlone: a crash while alone puts the active set into DIRTY and
// InFlight; a crash while connected only into InFlight.
func TestRecoverAlone(t *testing.T) {
	for _, alone := range []bool{false, true} {
		dir := t.TempDir()
		o := testOpts()
		l := mustOpen(t, dir, o)
		k := Key{3, 4}
		if alone {
			if err := l.SetAlone(true); err != nil {
				t.Fatal(err)
			}
		}
		touch(t, l, k, 9, 1)
		l.crash()
		l2 := mustOpen(t, dir, o)
		if !has(l2.InFlight(), k, 9) {
			t.Fatalf("alone=%v: zone not in flight", alone)
		}
		if has(l2.Dirty(), k, 9) != alone || l2.Alone() != alone {
			t.Fatalf("alone=%v: in DIRTY = %v, Alone() = %v", alone, !alone, l2.Alone())
		}
		// Released in flight stays released after a restart.
		if err := l2.ReleaseInFlight(!alone); err != nil {
			t.Fatal(err)
		}
		l2.crash()
		l3 := mustOpen(t, dir, o)
		if len(l3.InFlight().Files) != 0 || !has(l3.Dirty(), k, 9) {
			t.Fatalf("alone=%v: after release: in flight %+v dirty %+v", alone, l3.InFlight().Files, l3.Dirty().Files)
		}
	}
}

// TestClearDirtyGeneration: ClearDirty drops what a snapshot covered, but
// keeps an entry changed after the snapshot.
func TestClearDirtyGeneration(t *testing.T) {
	dir := t.TempDir()
	o := testOpts()
	l := mustOpen(t, dir, o)
	a, b, d := Key{1, 1}, Key{1, 2}, Key{1, 3}
	l.SetAlone(true)
	touch(t, l, a, 1, 0)
	touch(t, l, b, 1, 0)
	p, _ := l.TouchDir(d)
	l.Done(p, 0)
	l.Checkpoint()
	snap := l.Dirty()
	touch(t, l, b, 5, 0) // b changes during the resync
	l.Checkpoint()
	if err := l.ClearDirty(snap.Files, snap.Dirs); err != nil {
		t.Fatal(err)
	}
	after := l.Dirty()
	if has(after, a, 1) || !has(after, b, 1) || !has(after, b, 5) || hasDir(after, d) {
		t.Fatalf("after clear: %+v %+v", after.Files, after.Dirs)
	}
	l.crash()
	l2 := mustOpen(t, dir, o)
	after = l2.Dirty()
	if has(after, a, 1) || !has(after, b, 1) || hasDir(after, d) {
		t.Fatalf("after reopen: %+v %+v", after.Files, after.Dirs)
	}
}

func TestResetAndNeedFull(t *testing.T) {
	dir := t.TempDir()
	o := testOpts()
	l := mustOpen(t, dir, o)
	if !l.NeedFull() {
		t.Fatal("a new record must ask for a full resync")
	}
	l.SetAlone(true)
	touch(t, l, Key{1, 1}, 1, 0)
	l.Checkpoint()
	g := l.Gen()
	touch(t, l, Key{1, 2}, 1, 0) // during the full resync
	l.Checkpoint()
	if err := l.Reset(g); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l2 := mustOpen(t, dir, o)
	d := l2.Dirty()
	if l2.NeedFull() || has(d, Key{1, 1}, 1) || !has(d, Key{1, 2}, 1) {
		t.Fatalf("after reset: needFull %v dirty %+v", l2.NeedFull(), d.Files)
	}
}

// TestSpill: when acks stop coming (and nobody says alone), Touch does not
// block for ever: after FullWait the oldest zones go to DIRTY.
func TestSpill(t *testing.T) {
	o := testOpts()
	o.FullWait = 50 * time.Millisecond
	l := mustOpen(t, t.TempDir(), o)
	k := Key{1, 1}
	for z := uint64(0); z < 70; z++ {
		touch(t, l, k, z, z+1)
	}
	st := l.Stats()
	if st.Spills == 0 || st.Active != 64 {
		t.Fatalf("stats %+v", st)
	}
	for z := uint64(0); z < st.Spills; z++ {
		if !has(l.Dirty(), k, z) {
			t.Fatalf("spilled zone %d not in DIRTY", z)
		}
	}
}

// TestExtentTouch: a huge range is one active slot, recovered whole.
func TestExtentTouch(t *testing.T) {
	dir := t.TempDir()
	o := testOpts()
	l := mustOpen(t, dir, o)
	k := Key{1, 9}
	p, err := l.Touch(k, 4096*10, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	l.Done(p, 1)
	p, err = l.Touch(k, 0, 4096*20) // widens the hull
	if err != nil {
		t.Fatal(err)
	}
	l.Done(p, 2)
	if st := l.Stats(); st.Active != 1 {
		t.Fatalf("active %d", st.Active)
	}
	l.crash()
	l2 := mustOpen(t, dir, o)
	in := l2.InFlight()
	if len(in.Files) != 1 || len(in.Files[0].Zones) != 1 || in.Files[0].Zones[0] != (Range{0, 10 + 1<<28}) {
		t.Fatalf("in flight %+v", in.Files)
	}
	off, n := in.Bytes(in.Files[0].Zones[0])
	if off != 0 || n != 4096*10+1<<40 {
		t.Fatalf("bytes %d+%d", off, n)
	}
}

// TestZoneSizeChange: records written with one zone size are converted,
// rounded outwards, when opened with another.
func TestZoneSizeChange(t *testing.T) {
	dir := t.TempDir()
	o := testOpts()
	l := mustOpen(t, dir, o)
	l.SetAlone(true)
	touch(t, l, Key{1, 1}, 17, 0) // bytes [68K, 72K)
	l.Close()
	o.ZoneSize = 64 << 10
	l2 := mustOpen(t, dir, o)
	if d := l2.Dirty(); !has(d, Key{1, 1}, 1) || d.Zones() != 1 {
		t.Fatalf("64K zones: %+v", d.Files)
	}
	l2.Close()
	o.ZoneSize = 16 << 10
	l3 := mustOpen(t, dir, o)
	if d := l3.Dirty(); d.Zones() != 4 || !has(d, Key{1, 1}, 4) || !has(d, Key{1, 1}, 7) {
		t.Fatalf("16K zones: %+v", d.Files)
	}
}

func TestCompactionBounded(t *testing.T) {
	dir := fastTempDir(t)
	o := testOpts()
	o.JournalBytes = 64 << 10
	l := mustOpen(t, dir, o)
	k := Key{5, 5}
	var seq uint64
	for i := 0; i < 6000; i++ {
		seq++
		touch(t, l, k, uint64(i%2000), seq)
		l.Acked(seq)
		if i == 3000 {
			l.SetAlone(true)
		}
	}
	st := l.Stats()
	if st.JournalBytes > 2*o.JournalBytes {
		t.Fatalf("journal %d bytes, bound %d", st.JournalBytes, o.JournalBytes)
	}
	l.Close()
	l2 := mustOpen(t, dir, o)
	d := l2.Dirty()
	for z := uint64(0); z < 2000; z++ {
		if !has(d, k, z) { // every zone was touched alone (i > 3000)
			t.Fatalf("zone %d lost across compactions", z)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	o := testOpts()
	l := mustOpen(t, dir, o)
	if _, err := Open(dir, o); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: %v", err)
	}
	l.Close()
	for _, bad := range []Options{{ZoneSize: 3000}, {ZoneSize: 1024}, {MaxActive: 3}} {
		if _, err := Open(dir, bad); err == nil {
			t.Fatalf("options %+v accepted", bad)
		}
	}
}

// TestDamageIsLost: damage anywhere but a torn tail makes Open fail with
// ErrLost; Recreate starts empty, marked NeedFull, and keeps the damaged
// file aside.
func TestDamageIsLost(t *testing.T) {
	old := maxBatch
	maxBatch = 4096
	t.Cleanup(func() { maxBatch = old })
	base := fastTempDir(t)
	build := func(name string) (string, []byte) {
		dir := filepath.Join(base, name)
		o := testOpts()
		o.MaxActive = 1024
		l := mustOpen(t, dir, o)
		l.SetAlone(true)
		for z := uint64(0); z < 400; z++ { // checkpointed into DIRTY below
			touch(t, l, Key{1, z}, z, 0)
		}
		l.Close()
		l = mustOpen(t, dir, o)
		for z := uint64(0); z < 900; z++ { // appended records, > maxBatch
			touch(t, l, Key{2, z}, z, 0)
		}
		l.crash()
		data, err := os.ReadFile(filepath.Join(dir, "journal"))
		if err != nil {
			t.Fatal(err)
		}
		return dir, data
	}
	_, data := build("probe")
	// Find the checkpoint's end: offset of the first record after it.
	r, err := decode(data)
	if err != nil {
		t.Fatal(err)
	}
	_ = r
	cases := map[string]int{
		"header":     12,
		"checkpoint": headerSize + 100,
		"middle":     len(strings.TrimRight(string(data), "\x00")) - 3*maxBatch,
	}
	for name, off := range cases {
		dir, data := build(name)
		data[off] ^= 0x40
		if err := os.WriteFile(filepath.Join(dir, "journal"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir, testOpts())
		if !errors.Is(err, ErrLost) {
			t.Fatalf("%s: damaged journal opened: %v", name, err)
		}
		t.Logf("%s: %v", name, err)
		l, err := Recreate(dir, testOpts())
		if err != nil {
			t.Fatal(err)
		}
		if !l.NeedFull() || len(l.Dirty().Files) != 0 {
			t.Fatalf("%s: recreated record not empty / NeedFull", name)
		}
		if _, err := os.Stat(filepath.Join(dir, "journal.lost")); err != nil {
			t.Fatalf("%s: damaged journal not kept: %v", name, err)
		}
		l.Close()
	}
}

// TestTouchWaitsForDurable: a Touch of a zone whose activation is still
// being written returns only once it is durable, like the first one.
func TestTouchWaitsForDurable(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOpts())
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	flushHook = func() {
		entered <- struct{}{}
		<-release
	}
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(func() { free(); flushHook = nil })
	k := Key{1, 1}
	done := make(chan int, 2)
	for i := 0; i < 2; i++ {
		go func() {
			p, err := l.Touch(k, 0, 1)
			if err != nil {
				t.Error(err)
			}
			l.Done(p, 1)
			done <- i
		}()
		if i == 0 {
			<-entered // the first Touch is writing its record
		}
	}
	select {
	case <-done:
		t.Fatal("a Touch returned before the zone's record was durable")
	case <-time.After(100 * time.Millisecond):
	}
	free()
	for i := 0; i < 2; i++ {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("touch did not return after the write")
		}
	}
}

// TestGroupCommit: concurrent Touches of new zones share fdatasyncs.
func TestGroupCommit(t *testing.T) {
	o := testOpts()
	o.MaxActive = 4096
	l := mustOpen(t, t.TempDir(), o)
	s0 := l.Stats().Syncs
	var wg sync.WaitGroup
	const writers, each = 8, 200
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				p, err := l.Touch(Key{1, uint64(w)}, int64(i)*4096, 1)
				if err != nil {
					t.Error(err)
					return
				}
				l.Done(p, 1)
			}
		}()
	}
	wg.Wait()
	syncs := l.Stats().Syncs - s0
	t.Logf("%d touches of new zones, %d fdatasyncs", writers*each, syncs)
	if syncs >= writers*each*3/4 {
		t.Fatalf("%d syncs for %d concurrent touches: no group commit", syncs, writers*each)
	}
}

// TestSetAloneFalseWaitsForAloneOps: an op started alone is moved to DIRTY
// by SetAlone(false), which waits for its Done.
func TestSetAloneFalseWaitsForAloneOps(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOpts())
	k := Key{1, 1}
	l.SetAlone(true)
	p, err := l.Touch(k, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.SetAlone(false) }()
	select {
	case err := <-done:
		t.Fatalf("SetAlone(false) returned (%v) while an op started alone was running", err)
	case <-time.After(100 * time.Millisecond):
	}
	l.Done(p, 0)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SetAlone(false) did not return after Done")
	}
	if !has(l.Dirty(), k, 0) || l.Stats().Active != 0 {
		t.Fatalf("zone changed alone not moved to DIRTY: %+v", l.Stats())
	}
}

// TestSetAloneFalseUnderSteadyWrites: ops that start after SetAlone(false)
// began do not hold it up, even when one is always under way (a writer
// hand over hand, as a busy database's backends are at the end of a
// resync); it waits only for the ops started before. A slot changed alone
// and pinned again meanwhile still reaches DIRTY once unpinned; a slot
// changed only by the stream's ops does not.
func TestSetAloneFalseUnderSteadyWrites(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOpts())
	old, hot, busy, after := Key{1, 1}, Key{1, 2}, Key{1, 3}, Key{1, 4}
	if err := l.SetAlone(true); err != nil {
		t.Fatal(err)
	}
	pOld, err := l.Touch(old, 0, 1) // started alone, ends during the wait
	if err != nil {
		t.Fatal(err)
	}
	touch(t, l, hot, 0, 1) // changed alone, pinned again below

	stop := make(chan struct{})
	writer := make(chan error, 1)
	var seq atomic.Uint64
	seq.Store(100)
	go func() {
		// Hand over hand: the next op starts before the previous one ends.
		held, err := l.Touch(busy, 0, 1)
		for err == nil {
			select {
			case <-stop:
				l.Done(held, seq.Add(1))
				writer <- nil
				return
			default:
			}
			var next Pin
			if next, err = l.Touch(busy, int64(seq.Load()%8)*l.ZoneSize(), 1); err == nil {
				l.Done(held, seq.Add(1))
				held = next
			}
		}
		writer <- err
	}()
	done := make(chan error, 1)
	go func() { done <- l.SetAlone(false) }()
	select {
	case err := <-done:
		t.Fatalf("SetAlone(false) returned (%v) while an op started alone was running", err)
	case <-time.After(100 * time.Millisecond):
	}
	pHot, err := l.Touch(hot, 0, 1) // the stream's, held past the return
	if err != nil {
		t.Fatal(err)
	}
	l.Done(pOld, 2)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("SetAlone(false) under a steady flow of new ops: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SetAlone(false) did not return while new ops kept starting: it waits for ops that started after it")
	}
	if l.Alone() {
		t.Fatal("still alone")
	}
	touch(t, l, after, 0, seq.Add(1))
	l.Done(pHot, seq.Add(1))
	close(stop)
	if err := <-writer; err != nil {
		t.Fatalf("writer: %v", err)
	}
	l.Acked(seq.Load())
	if err := l.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	d := l.Dirty()
	if !has(d, old, 0) || !has(d, hot, 0) {
		t.Fatalf("zones changed alone not in DIRTY: %+v", d)
	}
	if has(d, after, 0) {
		t.Fatalf("a zone changed only by the stream's acknowledged ops is in DIRTY: %+v", d)
	}
}

// TestNewStreamNumbering: slots acknowledged by an old stream leave the
// active set even when the next stream numbers from 1; slots it did not
// acknowledge go to DIRTY, not acknowledged by the new stream's acks.
func TestNewStreamNumbering(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOpts())
	a, b := Key{1, 1}, Key{1, 2}
	touch(t, l, a, 0, 1000)
	touch(t, l, b, 0, 2000)
	l.Acked(1500)
	l.SetAlone(true)
	l.SetAlone(false)
	touch(t, l, a, 5, 1) // new stream from 1
	l.Acked(5000)
	l.Checkpoint()
	d := l.Dirty()
	if st := l.Stats(); st.Active != 0 || !has(d, b, 0) || has(d, a, 0) || has(d, a, 5) {
		t.Fatalf("active %d, DIRTY %+v", st.Active, d.Files)
	}
}

func TestCancelAndClosed(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOpts())
	k := Key{1, 1}
	p, err := l.Touch(k, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	l.Cancel(p)
	l.Checkpoint()
	if st := l.Stats(); st.Active != 0 {
		t.Fatalf("a cancelled touch left %d active slots", st.Active)
	}
	l.Close()
	if _, err := l.Touch(k, 0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("touch after close: %v", err)
	}
	l.Done(p, 1) // harmless
}

// TestWriteFailureIsSticky: once the journal cannot be written, Touch of a
// new slot fails (the change must not be made), and so do later ones.
func TestWriteFailureIsSticky(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOpts())
	touch(t, l, Key{1, 1}, 0, 1)
	l.mu.Lock()
	l.f.Close() // the next write fails
	l.mu.Unlock()
	_, err := l.Touch(Key{1, 1}, 8192, 1)
	if err == nil || !strings.Contains(err.Error(), "journal") {
		t.Fatalf("touch with a failing journal: %v", err)
	}
	t.Log(err)
	if _, err2 := l.Touch(Key{1, 2}, 0, 1); err2 == nil {
		t.Fatal("second touch succeeded after a write failure")
	}
	if _, err := l.Touch(Key{1, 1}, 0, 1); err == nil {
		t.Fatal("an active zone must not be touched once records fail either")
	}
}

// TestOpenWritesShortTail: Open's checkpoint carries a short zero tail (a
// returning SECOND opens its records on the way and appends nearly
// nothing), and appends past it extend the journal as usual.
func TestOpenWritesShortTail(t *testing.T) {
	base := t.TempDir()
	l := mustOpen(t, base, testOpts())
	st, err := os.Stat(filepath.Join(base, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > l.Stats().JournalBytes+openTail {
		t.Fatalf("journal after Open: %d bytes, want at most the checkpoint (%d) + %d", st.Size(), l.Stats().JournalBytes, openTail)
	}
	// Records past the tail: each new file touched and acknowledged
	// writes a few dozen bytes.
	var seq uint64
	for l.Stats().JournalBytes <= openTail+4096 && seq < 20000 {
		seq++
		touch(t, l, Key{1, seq}, 0, seq)
		l.Acked(seq)
	}
	if got := l.Stats().JournalBytes; got <= openTail {
		t.Fatalf("journal holds %d bytes after %d records: the test did not pass the tail", got, seq)
	}
	seq++
	touch(t, l, Key{2, 2}, 0, seq) // not acknowledged: in flight after the crash
	l.crash()
	l2 := mustOpen(t, base, testOpts())
	if !has(l2.InFlight(), Key{2, 2}, 0) {
		t.Fatalf("after a crash past the tail (%d records): the last zone is not in flight", seq)
	}
}

// TestDirtyHoldsPinnedAloneSlots: a slot changed alone that an op under
// way pins cannot leave the active set at a Checkpoint, yet a resync's
// snapshot must name it (a steady writer keeps the extent at a file's end
// pinned; the fault loop once ended a resync with such zones missing).
func TestDirtyHoldsPinnedAloneSlots(t *testing.T) {
	for _, extent := range []int64{4096, 64 << 10} {
		t.Run(fmt.Sprint("extent=", extent), func(t *testing.T) {
			o := testOpts()
			o.ExtentSize = extent
			l := mustOpen(t, t.TempDir(), o)
			file, meta, dir, acked := Key{1, 1}, Key{1, 2}, Key{1, 3}, Key{1, 4}
			touch(t, l, acked, 0, 1)
			l.Acked(1)
			if err := l.SetAlone(true); err != nil {
				t.Fatal(err)
			}
			touch(t, l, file, 5, 0)
			if err := l.Checkpoint(); err != nil { // zone 5 into DIRTY
				t.Fatal(err)
			}
			touch(t, l, file, 0, 0)
			var pins []Pin
			for _, f := range []func() (Pin, error){
				func() (Pin, error) { return l.Touch(file, 3*l.ZoneSize(), 1) },
				func() (Pin, error) { return l.TouchMeta(meta) },
				func() (Pin, error) { return l.TouchDir(dir) },
			} {
				p, err := f()
				if err != nil {
					t.Fatal(err)
				}
				pins = append(pins, p)
			}
			if err := l.Checkpoint(); err != nil {
				t.Fatal(err)
			}
			check := func(when string) {
				t.Helper()
				d := l.Dirty()
				for _, z := range []uint64{0, 3, 5} {
					if !has(d, file, z) {
						t.Errorf("%s: zone %d changed alone is not in the snapshot: %+v", when, z, d)
					}
				}
				if has(d, file, 1) || has(d, file, 4) || has(d, acked, 0) {
					t.Errorf("%s: zones never changed alone are in the snapshot: %+v", when, d)
				}
				var metaIn bool
				for _, f := range d.Files {
					metaIn = metaIn || (f.Key == meta && f.Meta)
				}
				if !metaIn || !hasDir(d, dir) {
					t.Errorf("%s: attributes or entries changed alone are missing: %+v", when, d)
				}
				if !slices.IsSortedFunc(d.Files, func(a, b File) int { return cmpKey(a.Key, b.Key) }) {
					t.Errorf("%s: files not sorted: %+v", when, d.Files)
				}
			}
			check("pinned")
			l.mu.Lock()
			dirtyGen := l.dirty.files[file].gen
			l.mu.Unlock()
			if f := l.Dirty().Files[0]; f.Key != file || f.Gen != dirtyGen {
				t.Errorf("a file in DIRTY and in the active set keeps DIRTY's generation %d: %+v", dirtyGen, f)
			}
			for _, p := range pins {
				l.Done(p, 0)
			}
			if err := l.Checkpoint(); err != nil {
				t.Fatal(err)
			}
			check("after Done and Checkpoint")
		})
	}
}
