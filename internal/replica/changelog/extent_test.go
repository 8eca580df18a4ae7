package changelog

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestSequentialExtentSyncs: a sequential writer touching 1 GiB in 1 MiB
// Touches, acks flowing, makes about one journal sync per extent (4 MiB),
// not one per zone, whatever the zone size, and with a small active set
// (acknowledged extents leave on the way).
func TestSequentialExtentSyncs(t *testing.T) {
	for _, c := range []struct {
		zone   int64
		active int
	}{{64 << 10, 0}, {4 << 10, 0}, {4 << 10, 64}} {
		t.Run(fmt.Sprintf("zone=%dK,active=%d", c.zone>>10, c.active), func(t *testing.T) {
			l := mustOpen(t, t.TempDir(), Options{ZoneSize: c.zone, MaxActive: c.active, Logger: quiet})
			k := Key{1, 1}
			s0 := l.Stats().Syncs
			const total, step = 1 << 30, 1 << 20
			for i := int64(0); i < total/step; i++ {
				p, err := l.Touch(k, i*step, step)
				if err != nil {
					t.Fatal(err)
				}
				l.Done(p, uint64(i+1))
				l.Acked(uint64(i + 1))
			}
			syncs := l.Stats().Syncs - s0
			extents := uint64(total / l.ExtentSize())
			t.Logf("%d syncs for 1 GiB (%d extents, %d zones)", syncs, extents, total/c.zone)
			if syncs > extents+extents/16 {
				t.Fatalf("%d journal syncs for 1 GiB written sequentially, want about %d (one per extent)", syncs, extents)
			}
			if st := l.Stats(); c.active > 0 && st.Active > c.active {
				t.Fatalf("active %d > %d", st.Active, c.active)
			}
		})
	}
}

// zmodel is the set of zones a test expects, per file.
type zmodel map[Key]map[uint64]bool

func (m zmodel) add(k Key, off, n, zone int64) {
	if m[k] == nil {
		m[k] = map[uint64]bool{}
	}
	for z := off / zone; z < (off+n+zone-1)/zone; z++ {
		m[k][uint64(z)] = true
	}
}

// sameZones reports how s differs from m (zones only).
func sameZones(s *Snapshot, m zmodel) error {
	got := zmodel{}
	for _, f := range s.Files {
		for _, r := range f.Zones {
			for z := r.First; z < r.End; z++ {
				if !m[f.Key][z] {
					return fmt.Errorf("zone %d of %v recorded, never touched", z, f.Key)
				}
				if got[f.Key] == nil {
					got[f.Key] = map[uint64]bool{}
				}
				got[f.Key][z] = true
			}
		}
	}
	for k, zs := range m {
		for z := range zs {
			if !got[k][z] {
				return fmt.Errorf("zone %d of %v touched, not recorded", z, k)
			}
		}
	}
	return nil
}

// aloneWorkload: a few zones acknowledged and one not before running
// alone, then random 4 KiB writes (and some unaligned ones) over 3 files
// spanning many more extents than the active set holds, with checkpoints.
// It returns the zones that must be in DIRTY.
func aloneWorkload(t *testing.T, l *Log, r *rand.Rand) zmodel {
	t.Helper()
	zs := l.ZoneSize()
	want := zmodel{}
	a, b := Key{1, 1}, Key{1, 2}
	touch(t, l, a, 0, 1) // acknowledged: not in DIRTY
	touch(t, l, b, 300, 2)
	want.add(b, 300*zs, 1, zs) // not acknowledged: DIRTY
	l.Acked(1)
	if err := l.SetAlone(true); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3000; i++ {
		k := Key{1, uint64(1 + r.IntN(3))}
		off, n := int64(r.IntN(256<<20))&^(zs-1), zs // random 4 KiB rewrite
		if i%10 == 0 {
			off, n = int64(r.IntN(256<<20)), int64(1+r.IntN(20000))
		}
		p, err := l.Touch(k, off, n)
		if err != nil {
			t.Fatal(err)
		}
		l.Done(p, 0)
		want.add(k, off, n, zs)
		if i%500 == 250 {
			if err := l.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
	}
	return want
}

// TestAloneFineZones: after running alone with random 4 KiB writes and a
// clean SetAlone(false), DIRTY holds exactly the zones written (4 KiB
// each), though the active set works in 1 MiB extents and spilled many of
// them on the way; it survives Close and Open.
func TestAloneFineZones(t *testing.T) {
	dir := t.TempDir()
	o := Options{ZoneSize: 4096, ExtentSize: 1 << 20, MaxActive: 64, Logger: quiet}
	l := mustOpen(t, dir, o)
	want := aloneWorkload(t, l, rand.New(rand.NewPCG(1, 2)))
	if st := l.Stats(); st.PendingZones == 0 || st.Active > 64 {
		t.Fatalf("while alone: %+v", st)
	}
	if err := l.SetAlone(false); err != nil {
		t.Fatal(err)
	}
	if err := sameZones(l.Dirty(), want); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, zs := range want {
		n += len(zs)
	}
	// Slots read ahead and never touched may stay active: they hold no
	// zone.
	if st := l.Stats(); st.DirtyZones != uint64(n) || st.DirtyBytes != uint64(n)*4096 {
		t.Fatalf("stats %+v, want %d zones of 4 KiB", st, n)
	}
	l.Close()
	l2 := mustOpen(t, dir, o)
	if err := sameZones(l2.Dirty(), want); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
}

// TestAckedExtentDropsFineZones: zones of an extent the peer acknowledged
// do not follow it into DIRTY when it is touched again and then left
// unacknowledged.
func TestAckedExtentDropsFineZones(t *testing.T) {
	l := mustOpen(t, t.TempDir(), Options{ZoneSize: 4096, ExtentSize: 1 << 20, Logger: quiet})
	k := Key{1, 1}
	touch(t, l, k, 1, 1)
	l.Acked(1)
	touch(t, l, k, 2, 2) // same extent, not acknowledged
	if err := l.SetAlone(true); err != nil {
		t.Fatal(err)
	}
	if err := l.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	d := l.Dirty()
	if has(d, k, 1) || !has(d, k, 2) || d.Zones() != 1 {
		t.Fatalf("DIRTY %+v, want zone 2 only", d.Files)
	}
}

// TestCrashAloneCoarse: a crash while alone loses the zones kept in
// memory; every touched byte is then in InFlight or DIRTY (whole extents
// for those still active), and what the active set adds is bounded by
// MaxActive extents.
func TestCrashAloneCoarse(t *testing.T) {
	dir := t.TempDir()
	o := Options{ZoneSize: 4096, ExtentSize: 1 << 20, MaxActive: 64, Logger: quiet}
	l := mustOpen(t, dir, o)
	want := aloneWorkload(t, l, rand.New(rand.NewPCG(3, 4)))
	fine := l.Stats().DirtyZones
	l.crash()
	l2 := mustOpen(t, dir, o)
	in, d := l2.InFlight(), l2.Dirty()
	for k, zs := range want {
		for z := range zs {
			if !has(d, k, z) {
				t.Fatalf("zone %d of %v touched alone, not in DIRTY after the crash", z, k)
			}
		}
	}
	if !l2.Alone() {
		t.Fatal("alone not persisted")
	}
	if max := uint64(64 * 256); in.Zones() > max || d.Zones() > fine+max {
		t.Fatalf("in flight %d zones, DIRTY %d (%d before the crash): more than 64 extents of 256 zones", in.Zones(), d.Zones(), fine)
	}
	t.Logf("DIRTY %d zones before the crash, %d after; %d in flight", fine, d.Zones(), in.Zones())
}

// TestExtentTouchSpansExtents: a Touch over several extents pins them all
// in one record; its zones are fine inside each.
func TestExtentTouchSpansExtents(t *testing.T) {
	l := mustOpen(t, t.TempDir(), Options{ZoneSize: 4096, ExtentSize: 64 << 10, FullWait: time.Second, Logger: quiet})
	k := Key{1, 1}
	if err := l.SetAlone(true); err != nil {
		t.Fatal(err)
	}
	s0 := l.Stats().Syncs
	p, err := l.Touch(k, 60<<10, 200<<10) // zones 15..64, extents 0..4
	if err != nil {
		t.Fatal(err)
	}
	l.Done(p, 0)
	if st := l.Stats(); st.Active != 5 || st.Syncs != s0+1 || st.PendingZones != 50 {
		t.Fatalf("stats %+v (syncs before %d)", st, s0)
	}
	if err := l.SetAlone(false); err != nil {
		t.Fatal(err)
	}
	d := l.Dirty()
	if d.Zones() != 50 || !has(d, k, 15) || !has(d, k, 64) || has(d, k, 14) || has(d, k, 65) {
		t.Fatalf("DIRTY %+v", d.Files)
	}
}

// TestReadAhead: a sequential stream activates extents ahead, so 1 GiB in
// 1 MiB Touches costs one journal sync per 16 extents; random writes and
// a first touch of a file get no read-ahead; after a crash the extents
// activated ahead are in flight with the touched ones, and those never
// touched hold no zones once evicted.
func TestReadAhead(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{ZoneSize: 4 << 10, Logger: quiet})
	seq, rnd := Key{1, 1}, Key{1, 2}
	s0 := l.Stats().Syncs
	const total, step = 1 << 30, 1 << 20
	for i := int64(0); i < total/step; i++ {
		p, err := l.Touch(seq, i*step, step)
		if err != nil {
			t.Fatal(err)
		}
		l.Done(p, uint64(i+1))
		l.Acked(uint64(i + 1))
	}
	extents := uint64(total / l.ExtentSize())
	if syncs := l.Stats().Syncs - s0; syncs > extents/(defaultReadAhead+1)+2 {
		t.Fatalf("%d journal syncs for 1 GiB written sequentially, want about %d (one per %d extents)", syncs, extents/(defaultReadAhead+1), defaultReadAhead+1)
	}
	// Random 4 KiB writes two extents apart or more: one sync each. The
	// stream's last read-ahead may still be syncing in the background:
	// its sync is not one of theirs.
	waitReadAhead(t, l)
	s1, a1 := l.Stats().Syncs, l.Stats().Active
	rng := rand.New(rand.NewPCG(7, 7))
	seen := map[int64]bool{}
	for i := 0; i < 50; i++ {
		x := int64(rng.IntN(1<<14)) * 4
		if seen[x] || seen[x-4] || seen[x+4] {
			continue
		}
		seen[x] = true
		p, err := l.Touch(rnd, x*l.ExtentSize(), 4096)
		if err != nil {
			t.Fatal(err)
		}
		l.Done(p, 0) // sent nowhere: stays recorded
	}
	st := l.Stats()
	if st.Syncs-s1 != uint64(len(seen)) || st.Active-a1 > len(seen) {
		t.Fatalf("%d random writes: %d syncs, %d more active slots; want one each, no read-ahead", len(seen), st.Syncs-s1, st.Active-a1)
	}
	l.Close()

	// A crash: the extents read ahead of a stream are in flight.
	dir = t.TempDir()
	l = mustOpen(t, dir, Options{ZoneSize: 4 << 10, Logger: quiet})
	for _, x := range []int64{0, 1} {
		if _, err := l.Touch(seq, x*l.ExtentSize(), step); err != nil {
			t.Fatal(err)
		}
	}
	got := inFlightAfterCrash(t, l, dir, seq)
	want := []Range{{0, uint64(2+defaultReadAhead) * uint64(l.ExtentSize()/l.ZoneSize())}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("in flight after the crash for the stream: %v, want %v (the two extents touched and %d ahead)", got, want, defaultReadAhead)
	}
}

// TestPrefetch: a sequential writer that has used half of the extents
// activated ahead of it gets the next ones activated and synced by a
// goroutine, so after its first two extents no Touch of the stream waits
// for the journal; the prefetched extents are in flight after a crash.
func TestPrefetch(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, Options{ZoneSize: 4 << 10, Logger: quiet})
	k := Key{1, 1}
	const step = 1 << 20
	n := 64 * l.ExtentSize() / step
	for i := int64(0); i < n; i++ {
		p, err := l.Touch(k, i*step, step)
		if err != nil {
			t.Fatal(err)
		}
		l.Done(p, uint64(i+1))
	}
	l.mu.Lock()
	touchActs, aheadActs := l.touchActs, l.aheadActs
	l.mu.Unlock()
	// The first extent (no read-ahead: nothing before it is active) and
	// the second (read-ahead of 15): every later one was prefetched.
	if touchActs != 2 || aheadActs < 64/(defaultReadAhead+1) {
		t.Fatalf("64 extents written in order: %d activations by the writer, %d ahead; want 2 and at least %d", touchActs, aheadActs, 64/(defaultReadAhead+1))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		idle, synced, lsn := l.aheadLSN == 0, l.synced, l.lsn
		l.mu.Unlock()
		if idle && synced == lsn {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch not durable after 10s: synced %d of %d records, goroutine idle %v", synced, lsn, idle)
		}
		time.Sleep(time.Millisecond)
	}
	got := inFlightAfterCrash(t, l, dir, k)
	end := uint64(n*step) / uint64(l.ZoneSize())
	if len(got) != 1 || got[0].First != 0 || got[0].End <= end {
		t.Fatalf("in flight after the crash: %v, want one range from 0 past the stream's end (zone %d): the extents written and those prefetched", got, end)
	}
}

// inFlightAfterCrash crashes l, opens its record again (4 KiB zones) and
// returns the zones of k it reports in flight.
func inFlightAfterCrash(t *testing.T, l *Log, dir string, k Key) []Range {
	t.Helper()
	l.crash()
	l2 := mustOpen(t, dir, Options{ZoneSize: 4 << 10, Logger: quiet})
	defer l2.Close()
	for _, f := range l2.InFlight().Files {
		if f.Key == k {
			return f.Zones
		}
	}
	return nil
}

// waitReadAhead waits (5 s at most) until no read-ahead record is being
// synced in the background.
func waitReadAhead(t *testing.T, l *Log) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		l.mu.Lock()
		busy := l.aheadLSN != 0
		l.mu.Unlock()
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a read-ahead still syncing after 5s")
		}
	}
}
