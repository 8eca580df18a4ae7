package sumcache

import (
	"math/rand/v2"
	"testing"
)

// TestTableModel checks the table against a Go map through inserts,
// replacements, growth, random evictions and resets.
func TestTableModel(t *testing.T) {
	for _, max := range []int{10, 1000, 50000} {
		r := rand.New(rand.NewPCG(uint64(max), 1))
		tb := newTable(max)
		model := map[uint64]entry{}
		check := func(step int) {
			t.Helper()
			if tb.n != len(model) {
				t.Fatalf("max %d step %d: %d entries, model %d", max, step, tb.n, len(model))
			}
			for ino, want := range model {
				if got, ok := tb.get(ino); !ok || got != want {
					t.Fatalf("max %d step %d: inode %d = %+v, %v; want %+v", max, step, ino, got, ok, want)
				}
			}
			seen := 0
			tb.each(func(ino uint64, e entry) {
				seen++
				if model[ino] != e {
					t.Fatalf("max %d step %d: each gave inode %d %+v, model %+v", max, step, ino, e, model[ino])
				}
			})
			if seen != len(model) {
				t.Fatalf("max %d step %d: each gave %d entries, model %d", max, step, seen, len(model))
			}
		}
		for step := range 4 * max {
			// Runs of inode numbers, as filesystems give them, and some
			// far ones.
			ino := uint64(r.IntN(2*max) + 1)
			if r.IntN(10) == 0 {
				ino = r.Uint64() | 1
			}
			switch op := r.IntN(20); {
			case op == 0:
				// Evict one; find which by the count.
				if tb.n > 0 {
					tb.evictOne()
					for k := range model {
						if _, ok := tb.get(k); !ok {
							delete(model, k)
							break
						}
					}
				}
			case op == 1 && step%97 == 0:
				tb.reset()
				clear(model)
			default:
				if _, ok := model[ino]; !ok && len(model) >= max {
					continue
				}
				e := entry{stamp: r.Uint64(), sum: r.Uint64(), xdig: r.Uint64()}
				if !tb.set(ino, e) {
					t.Fatalf("max %d: set refused with %d entries", max, tb.n)
				}
				model[ino] = e
			}
			if step%(max/5+1) == 0 {
				check(step)
			}
		}
		check(-1)
		if tb.n > 0 && len(tb.slots) > tb.limit {
			t.Fatalf("max %d: %d slots, limit %d", max, len(tb.slots), tb.limit)
		}
		tb.reset()
	}
}

// TestCacheFullKeepsMax: a cache stays at its bound however many inodes
// pass through it, and still answers for those it holds.
func TestCacheFullKeepsMax(t *testing.T) {
	c := New(1000)
	c.SetMargin(0)
	for ino := uint64(1); ino <= 5000; ino++ {
		c.PutSum(Stamp{Dev: 1, Ino: ino, Ctime: 1}, 10, ino)
	}
	st := c.Stats()
	if st.Entries != 1000 || st.Evicted != 4000 {
		t.Fatalf("%+v", st)
	}
	held := 0
	for ino := uint64(1); ino <= 5000; ino++ {
		if v, ok := c.Sum(Stamp{Dev: 1, Ino: ino, Ctime: 1}); ok {
			if v != ino {
				t.Fatalf("inode %d: %d", ino, v)
			}
			held++
		}
	}
	if held != 1000 {
		t.Fatalf("%d inodes found, want 1000", held)
	}
}

func BenchmarkCacheLookup(b *testing.B) {
	c := New(0)
	c.SetMargin(0)
	const n = 1 << 20
	for ino := uint64(1); ino <= n; ino++ {
		c.PutSum(Stamp{Dev: 1, Ino: ino, Ctime: 1}, 10, ino)
	}
	b.ResetTimer()
	ino := uint64(0)
	for b.Loop() {
		ino = ino%n + 1
		if _, ok := c.Sum(Stamp{Dev: 1, Ino: ino*7919%n + 1, Ctime: 1}); !ok {
			b.Fatal("miss")
		}
	}
}
