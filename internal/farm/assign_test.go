package farm

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func names(n int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{Name: fmt.Sprintf("n%02d", i), Weight: 1}
	}
	return ms
}

func subset(ms []Member, mask int) []string {
	var live []string
	for i, m := range ms {
		if mask&(1<<i) != 0 {
			live = append(live, m.Name)
		}
	}
	return live
}

// Every live set gets every bucket owned, by a live node, evenly.
func TestAssignBalanced(t *testing.T) {
	for n := 1; n <= MaxNodes; n++ {
		ms := names(n)
		tb, err := NewTable(ms)
		if err != nil {
			t.Fatal(err)
		}
		a := tb.Assign(subset(ms, 1<<n-1))
		for _, m := range ms {
			c := a.Counts()[m.Name]
			if c < Buckets/n || c > (Buckets+n-1)/n {
				t.Errorf("%d nodes all live: %s has %d buckets, want %d..%d", n, m.Name, c, Buckets/n, (Buckets+n-1)/n)
			}
		}
	}
	// Every subset of a 8-node farm: within a few buckets of even.
	ms := names(8)
	tb, _ := NewTable(ms)
	worst := 0.0
	for mask := 1; mask < 1<<8; mask++ {
		live := subset(ms, mask)
		a := tb.Assign(live)
		counts := a.Counts()
		for _, n := range live {
			even := float64(Buckets) / float64(len(live))
			dev := (float64(counts[n]) - even) / even
			if dev < 0 {
				dev = -dev
			}
			if dev > worst {
				worst = dev
			}
		}
		for b, o := range a {
			if o == "" {
				t.Fatalf("live %v: bucket %d has no owner", live, b)
			}
		}
	}
	// 256 buckets over up to 8 nodes after any failures: at most a few
	// buckets off (rounding at each level), i.e. within ±8 %.
	if worst > 0.08 {
		t.Errorf("worst deviation from an even split over all subsets of 8 nodes: %.1f %%", worst*100)
	}
	t.Logf("worst deviation over all 255 live sets of 8 nodes: %.2f %%", worst*100)
}

// When a node leaves, only its buckets move; when it returns it gets
// exactly those back.
func TestAssignMinimalMovement(t *testing.T) {
	for _, n := range []int{2, 3, 5, 16} {
		ms := names(n)
		ms[0].Weight = 3
		tb, _ := NewTable(ms)
		r := rand.New(rand.NewPCG(1, uint64(n)))
		for range 300 {
			mask := r.IntN(1<<n-1) + 1
			live := subset(ms, mask)
			before := tb.Assign(live)
			d := live[r.IntN(len(live))]
			var rest []string
			for _, x := range live {
				if x != d {
					rest = append(rest, x)
				}
			}
			after := tb.Assign(rest)
			for b := range Buckets {
				if before[b] != d && before[b] != after[b] {
					t.Fatalf("%d nodes, live %v, %s leaves: bucket %d moved from %s to %s", n, live, d, b, before[b], after[b])
				}
				if before[b] == d && after[b] == d {
					t.Fatalf("bucket %d still owned by departed %s", b, d)
				}
			}
			if back := tb.Assign(live); back != before {
				t.Fatalf("%s returned: assignment differs from before it left", d)
			}
		}
	}
}

func TestAssignWeights(t *testing.T) {
	ms := []Member{{"alpha", 1}, {"beta", 2}, {"gamma", 1}}
	tb, err := NewTable(ms)
	if err != nil {
		t.Fatal(err)
	}
	c := tb.Assign([]string{"alpha", "beta", "gamma"}).Counts()
	if c["beta"] != 128 || c["alpha"] != 64 || c["gamma"] != 64 {
		t.Errorf("weights 1:2:1: got %v", c)
	}
	// beta gone: alpha and gamma split evenly.
	c = tb.Assign([]string{"alpha", "gamma"}).Counts()
	if c["alpha"] != 128 || c["gamma"] != 128 {
		t.Errorf("weights 1:1 after beta left: got %v", c)
	}
	// gamma gone: 1:2 between alpha and beta.
	c = tb.Assign([]string{"alpha", "beta"}).Counts()
	if d := c["beta"] - 2*c["alpha"]; d < -3 || d > 3 {
		t.Errorf("weights 1:2 after gamma left: got %v", c)
	}
}

// The table depends on the configured set, not on the order of nodes:.
func TestAssignOrderIndependent(t *testing.T) {
	a, _ := NewTable([]Member{{"a", 1}, {"b", 2}, {"c", 1}})
	b, _ := NewTable([]Member{{"c", 1}, {"a", 1}, {"b", 2}})
	for mask := 1; mask < 8; mask++ {
		live := subset([]Member{{"a", 1}, {"b", 1}, {"c", 1}}, mask)
		if a.Assign(live) != b.Assign(live) {
			t.Fatalf("live %v: assignment depends on the order of nodes", live)
		}
	}
	if got := a.Assign([]string{"zz"}); got != (Assignment{}) {
		t.Errorf("unknown live node owns buckets")
	}
}

func TestNewTableErrors(t *testing.T) {
	for _, ms := range [][]Member{nil, {{"a", 0}}, {{"a", 1}, {"a", 1}}, {{"", 1}}, {{"a", MaxWeight + 1}}, names(MaxNodes + 1)} {
		if _, err := NewTable(ms); err == nil {
			t.Errorf("NewTable(%v): no error", ms)
		}
	}
}

func TestSplit(t *testing.T) {
	none := func(i, j int) int { return 0 }
	for _, c := range []struct {
		n int
		w []int
	}{{256, []int{1, 1, 1}}, {85, []int{1, 1}}, {1, []int{1, 1, 1}}, {0, []int{5}}, {7, []int{3, 1}}} {
		q := split(c.n, c.w, none)
		sum := 0
		for _, x := range q {
			sum += x
		}
		if sum != c.n {
			t.Errorf("split(%d, %v) = %v: sum %d", c.n, c.w, q, sum)
		}
	}
	if q := split(1, []int{1, 1, 1}, func(i, j int) int { return j - i }); q[2] != 1 {
		t.Errorf("split(1, 3 nodes, last first) = %v: the extra should go to index 2", q)
	}
}
