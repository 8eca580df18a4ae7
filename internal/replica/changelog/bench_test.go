package changelog

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkTouchFast: Touch + Done of an active zone (the write path's cost
// when the zone is already recorded).
func BenchmarkTouchFast(b *testing.B) {
	l := mustOpen(b, b.TempDir(), testOpts())
	k := Key{1, 1}
	touch(b, l, k, 0, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p, err := l.Touch(k, 0, 4096)
		if err != nil {
			b.Fatal(err)
		}
		l.Done(p, uint64(i))
	}
}

// BenchmarkTouchFastParallel: the same from 8 goroutines, on their own zones.
func BenchmarkTouchFastParallel(b *testing.B) {
	l := mustOpen(b, b.TempDir(), testOpts())
	for i := uint64(0); i < 16; i++ {
		touch(b, l, Key{1, i}, 0, 1)
	}
	var id atomic.Uint64
	b.SetParallelism(4) // x GOMAXPROCS (2 here): 8 goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		k := Key{1, id.Add(1) % 16}
		var s uint64
		for pb.Next() {
			p, err := l.Touch(k, 0, 4096)
			if err != nil {
				b.Error(err)
				return
			}
			s++
			l.Done(p, s)
		}
	})
}

// BenchmarkGroupCommit: 8 writers each touching new zones (every Touch
// needs the journal); reports fdatasyncs per Touch.
func BenchmarkGroupCommit(b *testing.B) {
	o := testOpts()
	o.MaxActive = 1 << 16
	l := mustOpen(b, b.TempDir(), o)
	var next atomic.Uint64
	var seq atomic.Uint64
	s0 := l.Stats().Syncs
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > uint64(b.N) {
					return
				}
				p, err := l.Touch(Key{2, i % 64}, int64(i)*4096, 1)
				if err != nil {
					b.Error(err)
					return
				}
				s := seq.Add(1)
				l.Done(p, s)
				l.Acked(s) // keep room in the active set
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(l.Stats().Syncs-s0)/float64(b.N), "syncs/touch")
}

// TestMemoryBounds measures DIRTY's memory for the documented cases: one
// zone in each of 1,000,000 files, and a 1 TiB sparse file (64 KiB zones)
// with one zone in 64 dirty.
func TestMemoryBounds(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~100 MB")
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	h0 := heap()
	s := newSet()
	const files = 1_000_000
	for i := uint64(0); i < files; i++ {
		s.addZones(Key{1, i}, i%1000, i%1000+1, 1)
	}
	perFile := float64(heap()-h0) / files
	t.Logf("1,000,000 files with one dirty zone: %.0f bytes per file", perFile)
	if perFile > 200 {
		t.Errorf("%.0f bytes per dirty file, bound 200", perFile)
	}
	runtime.KeepAlive(s)
	s = set{}
	h0 = heap()
	big := newSet()
	for z := uint64(0); z < 1<<24; z += 64 {
		big.addZones(Key{1, 1}, z, z+1, 1)
	}
	used := heap() - h0
	t.Logf("1 TiB file, 2^18 of 2^24 zones dirty (scattered): %d KiB", used>>10)
	if used > 3<<20 { // 4096 chunks x 512 bytes + map
		t.Errorf("%d bytes for a 1 TiB file, bound 3 MiB", used)
	}
	runtime.KeepAlive(big)
}

// TestMillionFilesCheckpoint measures a checkpoint and an Open with one
// dirty zone in each of 1,000,000 files.
func TestMillionFilesCheckpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("writes ~20 MB")
	}
	dir := t.TempDir()
	l := mustOpen(t, dir, testOpts())
	l.mu.Lock()
	for i := uint64(0); i < 1_000_000; i++ {
		l.dirty.addZones(Key{1, i}, i%1000, i%1000+1, 1)
	}
	start := time.Now()
	buf := l.encodeState(nil)
	encode := time.Since(start)
	l.flushing = true
	err := l.checkpointLocked(growBytes)
	l.flushing = false
	all := time.Since(start)
	l.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	start = time.Now()
	l2 := mustOpen(t, dir, testOpts())
	open := time.Since(start)
	st := l2.Stats()
	t.Logf("1,000,000 dirty files: checkpoint %d bytes, encoded in %v (under the lock), written in %v; Open %v", len(buf), encode, all, open)
	if st.DirtyFiles != 1_000_000 || st.DirtyZones != 1_000_000 {
		t.Fatalf("after reopen: %+v", st)
	}
}

// BenchmarkSequentialTouch: one writer touching 1 MiB after 1 MiB of a
// file, acks flowing (the replicated sequential write path); reports the
// journal syncs per GiB written.
func BenchmarkSequentialTouch(b *testing.B) {
	for _, zone := range []int64{64 << 10, 4 << 10} {
		b.Run(fmt.Sprintf("zone=%dK", zone>>10), func(b *testing.B) {
			o := Options{ZoneSize: zone, Logger: quiet}
			l := mustOpen(b, b.TempDir(), o)
			k := Key{1, 1}
			s0 := l.Stats().Syncs
			b.SetBytes(1 << 20)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p, err := l.Touch(k, int64(i)<<20, 1<<20)
				if err != nil {
					b.Fatal(err)
				}
				l.Done(p, uint64(i+1))
				l.Acked(uint64(i + 1))
			}
			b.StopTimer()
			b.ReportMetric(float64(l.Stats().Syncs-s0)*1024/float64(b.N), "syncs/GiB")
		})
	}
}
