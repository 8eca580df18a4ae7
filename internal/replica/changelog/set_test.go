package changelog

import (
	"math/rand/v2"
	"testing"
)

// TestZoneSetModel checks zoneSet (both representations) against a map on
// random adds of small, chunk-crossing and whole-chunk ranges.
func TestZoneSetModel(t *testing.T) {
	for seed := uint64(1); seed <= 40; seed++ {
		r := rand.New(rand.NewPCG(seed, 0))
		var s zoneSet
		ref := map[uint64]bool{}
		span := uint64(3 * chunkZones)
		if seed%4 == 0 {
			span = 200
		}
		for i := 0; i < 400; i++ {
			lo := r.Uint64N(span)
			n := 1 + r.Uint64N(8)
			switch r.IntN(10) {
			case 0:
				n = 1 + r.Uint64N(2*chunkZones)
			case 1:
				lo = lo &^ (chunkZones - 1)
				n = chunkZones * (1 + r.Uint64N(2))
			}
			hi := lo + n
			var want uint64
			for z := lo; z < hi; z++ {
				if !ref[z] {
					want++
					ref[z] = true
				}
			}
			if got := s.add(lo, hi); got != want {
				t.Fatalf("seed %d step %d: add [%d,%d) = %d, want %d", seed, i, lo, hi, got, want)
			}
			if s.n != uint64(len(ref)) {
				t.Fatalf("seed %d step %d: n = %d, want %d", seed, i, s.n, len(ref))
			}
		}
		// ranges must list exactly ref, sorted and merged.
		var got uint64
		var prev *run
		for _, x := range s.ranges() {
			if x.lo >= x.hi || (prev != nil && x.lo <= prev.hi) {
				t.Fatalf("seed %d: ranges not sorted/merged: %v after %v", seed, x, prev)
			}
			for z := x.lo; z < x.hi; z++ {
				if !ref[z] {
					t.Fatalf("seed %d: zone %d listed, not in set", seed, z)
				}
				if !s.contains(z) {
					t.Fatalf("seed %d: contains(%d) false", seed, z)
				}
			}
			got += x.hi - x.lo
			xx := x
			prev = &xx
		}
		if got != uint64(len(ref)) {
			t.Fatalf("seed %d: ranges cover %d zones, want %d", seed, got, len(ref))
		}
	}
}

// TestZoneSetHuge: a range over 2^40 zones is one run, in both modes, and a
// 1 TiB file with one dirty zone in 64 every 64 zones stays within a bitmap
// bound.
func TestZoneSetHuge(t *testing.T) {
	var s zoneSet
	if n := s.add(5, 1<<40); n != 1<<40-5 {
		t.Fatalf("add huge = %d", n)
	}
	for i := uint64(0); i < 100; i++ {
		s.add(1<<41+i*2, 1<<41+i*2+1) // force the chunked mode
	}
	if s.big == nil {
		t.Fatal("expected chunked mode after 100 runs")
	}
	if len(s.big.partial) > 3 || len(s.big.full) > 2 {
		t.Fatalf("huge range took %d partial chunks and %d full runs", len(s.big.partial), len(s.big.full))
	}
	if !s.contains(1<<39) || s.contains(4) || !s.contains(1<<41+2) || s.contains(1<<41+3) {
		t.Fatal("contains wrong")
	}
	if got := s.ranges(); len(got) != 101 || got[0] != (run{5, 1 << 40}) {
		t.Fatalf("ranges: %d runs, first %v", len(got), got[0])
	}
	// 1 TiB at 64 KiB zones = 2^24 zones; one in every 64 dirty.
	var b zoneSet
	for z := uint64(0); z < 1<<24; z += 64 {
		b.add(z, z+1)
	}
	if b.n != 1<<18 {
		t.Fatalf("n = %d", b.n)
	}
	// Bound: 4096 chunks of 512 bytes.
	if len(b.big.partial) != 1<<24/chunkZones {
		t.Fatalf("%d partial chunks", len(b.big.partial))
	}
}

func TestRunsAdd(t *testing.T) {
	var rs []run
	rs, n := runsAdd(rs, 10, 20)
	rs, m := runsAdd(rs, 20, 30) // adjacent: merged
	rs, o := runsAdd(rs, 40, 50)
	rs, p := runsAdd(rs, 5, 45) // bridges both
	if n != 10 || m != 10 || o != 10 || p != 15 || len(rs) != 1 || rs[0] != (run{5, 50}) {
		t.Fatalf("runs %v n=%d m=%d o=%d p=%d", rs, n, m, o, p)
	}
}

// TestFileSetInline: one run stays inline, a second one moves to a zoneSet.
func TestFileSetInline(t *testing.T) {
	var f fileSet
	if f.add(3, 5) != 2 || f.add(5, 7) != 2 || f.add(4, 6) != 0 || f.zones != nil || f.first != (run{3, 7}) {
		t.Fatalf("inline: %+v", f)
	}
	if f.add(10, 11) != 1 || f.zones == nil || f.count() != 5 {
		t.Fatalf("two runs: %+v", f)
	}
	var tmp [1]run
	if rs := f.ranges(&tmp); len(rs) != 2 || rs[0] != (run{3, 7}) || rs[1] != (run{10, 11}) {
		t.Fatalf("ranges %v", rs)
	}
}
