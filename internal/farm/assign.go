package farm

import (
	"fmt"
	"slices"
	"strings"
)

// MaxNodes is the largest farm.
const MaxNodes = 16

// MaxWeight bounds a node's weight.
const MaxWeight = 100

// Member is a configured node of a farm and its weight (>= 1).
type Member struct {
	Name   string
	Weight int
}

// Table gives every bucket a preference order over the configured nodes.
// The owner of a bucket for a set of live nodes is the first live node of
// its order. So:
//   - every node computes the same owners from the same live set (the table
//     depends only on the configured names and weights, not on their order);
//   - when a node leaves, only its buckets move; when it comes back it takes
//     exactly those back (nothing else moves, whatever the history);
//   - the orders are built so that the split stays balanced (and
//     proportional to the weights) for every live set: the first choices
//     split the buckets by weight, the buckets first-chosen by each node
//     split by weight among the others for the second choice, and so on.
type Table struct {
	names   []string // sorted
	weights []int
	pref    [Buckets][]uint8 // node indexes, best first
}

// NewTable builds the table of a farm.
func NewTable(members []Member) (*Table, error) {
	if len(members) < 1 || len(members) > MaxNodes {
		return nil, fmt.Errorf("farm table: %d nodes, want 1 to %d", len(members), MaxNodes)
	}
	ms := slices.Clone(members)
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	t := &Table{}
	for i, m := range ms {
		if m.Name == "" {
			return nil, fmt.Errorf("farm table: empty node name")
		}
		if i > 0 && ms[i-1].Name == m.Name {
			return nil, fmt.Errorf("farm table: node %q listed twice", m.Name)
		}
		if m.Weight < 1 || m.Weight > MaxWeight {
			return nil, fmt.Errorf("farm table: node %s: weight %d out of range 1..%d", m.Name, m.Weight, MaxWeight)
		}
		t.names = append(t.names, m.Name)
		t.weights = append(t.weights, m.Weight)
	}
	all := make([]int, Buckets)
	for b := range all {
		all[b] = b
	}
	cand := make([]uint8, len(ms))
	for i := range cand {
		cand[i] = uint8(i)
	}
	t.build(all, cand, 0, map[uint32]*[MaxNodes]int{})
	return t, nil
}

// build appends the next choice to the orders of buckets, splitting them
// among cand by weight, then recurses into each share without its node.
// path is the set of nodes already chosen for these buckets (they are the
// ones that must be down for this choice to matter). extras counts, per
// path set, the rounding extras each node got so far: the next extras of a
// group with the same path set go to the nodes that got fewer, so that
// rounding does not pile up on one node when several nodes are down.
func (t *Table) build(buckets []int, cand []uint8, path uint32, extras map[uint32]*[MaxNodes]int) {
	if len(cand) == 0 || len(buckets) == 0 {
		return
	}
	w := make([]int, len(cand))
	for i, c := range cand {
		w[i] = t.weights[c]
	}
	got := extras[path]
	if got == nil {
		got = &[MaxNodes]int{}
		extras[path] = got
	}
	// Equal tallies: rotate by the first bucket so that no index is favoured.
	rot := buckets[0]
	quota := split(len(buckets), w, func(i, j int) int {
		if d := got[cand[i]] - got[cand[j]]; d != 0 {
			return d
		}
		return (i-rot%len(cand)+len(cand))%len(cand) - (j-rot%len(cand)+len(cand))%len(cand)
	})
	for i, c := range cand {
		if quota[i]*sumInts(w) > len(buckets)*w[i] {
			got[c]++ // rounded up
		}
	}
	pos := 0
	for i, c := range cand {
		share := buckets[pos : pos+quota[i]]
		pos += quota[i]
		for _, b := range share {
			t.pref[b] = append(t.pref[b], c)
		}
		rest := make([]uint8, 0, len(cand)-1)
		rest = append(rest, cand[:i]...)
		rest = append(rest, cand[i+1:]...)
		t.build(share, rest, path|1<<c, extras)
	}
}

func sumInts(w []int) int {
	s := 0
	for _, x := range w {
		s += x
	}
	return s
}

// split divides n items by weight with the largest-remainder method; among
// equal remainders, the extras go first to the indexes tie orders first
// (then the lower index).
func split(n int, w []int, tie func(i, j int) int) []int {
	total := 0
	for _, x := range w {
		total += x
	}
	q := make([]int, len(w))
	rem := make([]int, len(w))
	given := 0
	for i, x := range w {
		q[i] = n * x / total
		rem[i] = n * x % total
		given += q[i]
	}
	order := make([]int, len(w))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		if rem[a] != rem[b] {
			return rem[b] - rem[a]
		}
		return tie(a, b)
	})
	for i := 0; given < n; i++ {
		q[order[i%len(order)]]++
		given++
	}
	return q
}

// Names are the configured nodes, sorted.
func (t *Table) Names() []string { return slices.Clone(t.names) }

// Weight returns a node's weight (0 if unknown).
func (t *Table) Weight(name string) int {
	if i, ok := slices.BinarySearch(t.names, name); ok {
		return t.weights[i]
	}
	return 0
}

// Before reports whether node a comes before node b in bucket k's
// preference order (false when either is unknown).
func (t *Table) Before(k int, a, b string) bool {
	ia, oka := slices.BinarySearch(t.names, a)
	ib, okb := slices.BinarySearch(t.names, b)
	if !oka || !okb || k < 0 || k >= Buckets {
		return false
	}
	for _, c := range t.pref[k] {
		switch int(c) {
		case ia:
			return true
		case ib:
			return false
		}
	}
	return false
}

// Assignment maps each bucket to its owner ("" when no node is live).
type Assignment [Buckets]string

// Assign returns the owner of every bucket when the nodes of live are
// up. Names not in the table are ignored.
func (t *Table) Assign(live []string) Assignment {
	up := make([]bool, len(t.names))
	for _, n := range live {
		if i, ok := slices.BinarySearch(t.names, n); ok {
			up[i] = true
		}
	}
	var a Assignment
	for b := range Buckets {
		for _, c := range t.pref[b] {
			if up[c] {
				a[b] = t.names[c]
				break
			}
		}
	}
	return a
}

// Of returns the buckets owned by node.
func (a Assignment) Of(node string) Set {
	var s Set
	for b, n := range a {
		if n == node {
			s.Add(b)
		}
	}
	return s
}

// Counts returns how many buckets each owner has.
func (a Assignment) Counts() map[string]int {
	m := map[string]int{}
	for _, n := range a {
		if n != "" {
			m[n]++
		}
	}
	return m
}
