package changelog

import (
	"math/bits"
	"slices"
	"sort"
)

// run is a half-open range of zone indices [lo, hi).
type run struct{ lo, hi uint64 }

// runsAdd merges [lo, hi) into the sorted, disjoint, non-adjacent runs rs
// and returns the new slice and how many indices were not in rs before.
func runsAdd(rs []run, lo, hi uint64) ([]run, uint64) {
	if lo >= hi {
		return rs, 0
	}
	i := sort.Search(len(rs), func(i int) bool { return rs[i].hi >= lo })
	j := i
	nlo, nhi := lo, hi
	var covered uint64
	for j < len(rs) && rs[j].lo <= hi {
		r := rs[j]
		covered += overlap(r, lo, hi)
		nlo, nhi = min(nlo, r.lo), max(nhi, r.hi)
		j++
	}
	added := hi - lo - covered
	switch {
	case i == j:
		rs = slices.Insert(rs, i, run{nlo, nhi})
	default:
		rs[i] = run{nlo, nhi}
		rs = slices.Delete(rs, i+1, j)
	}
	return rs, added
}

func runsContain(rs []run, x uint64) bool {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].hi > x })
	return i < len(rs) && rs[i].lo <= x
}

func overlap(r run, lo, hi uint64) uint64 {
	a, b := max(r.lo, lo), min(r.hi, hi)
	if a >= b {
		return 0
	}
	return b - a
}

// A zoneSet keeps a set of zone indices of one file. Small sets are a sorted
// list of runs (16 bytes each); past smallRuns runs the set switches to
// chunks of 4096 zones: a bitmap (512 bytes) per partly set chunk, and runs
// of whole chunks. So memory stays below one bit per zone of the chunks in
// use, whatever the pattern, and a huge range costs one run.
type zoneSet struct {
	runs []run
	big  *bigSet
	n    uint64
}

const (
	smallRuns  = 32
	chunkShift = 12
	chunkZones = 1 << chunkShift
	chunkWords = chunkZones / 64
)

type bigSet struct {
	full    []run // runs of chunk indices that are wholly set
	partial map[uint64]*chunk
}

type chunk struct {
	bits [chunkWords]uint64
	n    uint32
}

// add sets [lo, hi) and returns how many zones were newly set.
func (s *zoneSet) add(lo, hi uint64) uint64 {
	if lo >= hi {
		return 0
	}
	var added uint64
	if s.big == nil {
		s.runs, added = runsAdd(s.runs, lo, hi)
		s.n += added
		if len(s.runs) > smallRuns {
			s.grow()
		}
		return added
	}
	added = s.big.add(lo, hi)
	s.n += added
	return added
}

func (s *zoneSet) grow() {
	b := &bigSet{partial: map[uint64]*chunk{}}
	for _, r := range s.runs {
		b.add(r.lo, r.hi)
	}
	s.runs, s.big = nil, b
}

func (s *zoneSet) contains(z uint64) bool {
	if s.big == nil {
		return runsContain(s.runs, z)
	}
	c := z >> chunkShift
	if runsContain(s.big.full, c) {
		return true
	}
	p := s.big.partial[c]
	return p != nil && p.bits[(z&(chunkZones-1))/64]&(1<<(z%64)) != 0
}

// ranges returns the set as sorted, merged runs.
func (s *zoneSet) ranges() []run {
	if s.big == nil {
		return slices.Clone(s.runs)
	}
	out := make([]run, 0, len(s.big.full)+len(s.big.partial))
	for _, r := range s.big.full {
		out = append(out, run{r.lo << chunkShift, r.hi << chunkShift})
	}
	for c, p := range s.big.partial {
		out = p.appendRuns(out, c<<chunkShift)
	}
	slices.SortFunc(out, func(a, b run) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	return coalesce(out)
}

// coalesce merges adjacent runs of a sorted, disjoint list.
func coalesce(rs []run) []run {
	if len(rs) < 2 {
		return rs
	}
	w := 0
	for _, r := range rs[1:] {
		if r.lo == rs[w].hi {
			rs[w].hi = r.hi
			continue
		}
		w++
		rs[w] = r
	}
	return rs[:w+1]
}

// appendRuns appends the runs of set bits, offset by base.
func (p *chunk) appendRuns(out []run, base uint64) []run {
	z := 0
	for z < chunkZones {
		w := z / 64
		x := p.bits[w] >> (z % 64)
		if x == 0 {
			z = (w + 1) * 64
			continue
		}
		z += bits.TrailingZeros64(x)
		start := z
		for z < chunkZones {
			w := z / 64
			y := ^p.bits[w] >> (z % 64)
			if y == 0 {
				z = (w + 1) * 64
				continue
			}
			z += bits.TrailingZeros64(y)
			break
		}
		out = append(out, run{base + uint64(start), base + uint64(z)})
	}
	return out
}

// setBits sets bits [a, b) and returns how many were newly set.
func (p *chunk) setBits(a, b uint64) uint64 {
	var n uint64
	for a < b {
		w := a / 64
		end := min(b, (w+1)*64)
		m := mask(a%64, end-w*64)
		n += uint64(bits.OnesCount64(m &^ p.bits[w]))
		p.bits[w] |= m
		a = end
	}
	p.n += uint32(n)
	return n
}

// mask has bits [a, b) set, 0 <= a < b <= 64.
func mask(a, b uint64) uint64 {
	var hi uint64 = ^uint64(0)
	if b < 64 {
		hi = 1<<b - 1
	}
	return hi &^ (1<<a - 1)
}

// partialIn calls f for every partial chunk index in [clo, chi), choosing
// the cheaper of walking the range or the map.
func (b *bigSet) partialIn(clo, chi uint64, f func(c uint64, p *chunk)) {
	if chi-clo <= uint64(len(b.partial)) {
		for c := clo; c < chi; c++ {
			if p := b.partial[c]; p != nil {
				f(c, p)
			}
		}
		return
	}
	for c, p := range b.partial {
		if c >= clo && c < chi {
			f(c, p)
		}
	}
}

func (b *bigSet) add(lo, hi uint64) uint64 {
	var added uint64
	for lo < hi {
		c := lo >> chunkShift
		cs := c << chunkShift
		if lo == cs && hi-lo >= chunkZones {
			chi := hi >> chunkShift
			var newChunks uint64
			b.full, newChunks = runsAdd(b.full, c, chi)
			added += newChunks << chunkShift
			// Partial chunks are never inside full runs, so every partial
			// chunk in the range was among the new ones.
			var drop []uint64
			b.partialIn(c, chi, func(c uint64, p *chunk) {
				added -= uint64(p.n)
				drop = append(drop, c)
			})
			for _, c := range drop {
				delete(b.partial, c)
			}
			lo = chi << chunkShift
			continue
		}
		end := min(hi, cs+chunkZones)
		if !runsContain(b.full, c) {
			p := b.partial[c]
			if p == nil {
				p = &chunk{}
				b.partial[c] = p
			}
			added += p.setBits(lo-cs, end-cs)
			if p.n == chunkZones {
				delete(b.partial, c)
				b.full, _ = runsAdd(b.full, c, c+1)
			}
		}
		lo = end
	}
	return added
}

// fileSet is what a set holds for one file: zones, and whether its
// attributes (size, mode, owner, times, xattrs) changed. It is stored by
// value in the set's map, with a single run inline (the usual case), so a
// million dirty files cost one map slot each and no other allocation.
type fileSet struct {
	gen   uint64
	first run      // the only run, while zones is nil
	zones *zoneSet // two runs or more
	meta  bool
}

func (f *fileSet) count() uint64 {
	if f.zones != nil {
		return f.zones.n
	}
	return f.first.hi - f.first.lo
}

// add sets [lo, hi) and returns how many zones were newly set.
func (f *fileSet) add(lo, hi uint64) uint64 {
	switch {
	case lo >= hi:
		return 0
	case f.zones != nil:
		return f.zones.add(lo, hi)
	case f.first.lo == f.first.hi:
		f.first = run{lo, hi}
		return hi - lo
	case lo <= f.first.hi && hi >= f.first.lo: // overlapping or adjacent
		added := hi - lo - overlap(f.first, lo, hi)
		f.first = run{min(lo, f.first.lo), max(hi, f.first.hi)}
		return added
	}
	f.zones = &zoneSet{}
	f.zones.add(f.first.lo, f.first.hi)
	f.first = run{}
	return f.zones.add(lo, hi)
}

// ranges returns the zones as sorted, merged runs (tmp may back the result).
func (f *fileSet) ranges(tmp *[1]run) []run {
	switch {
	case f.zones != nil:
		return f.zones.ranges()
	case f.first.lo < f.first.hi:
		tmp[0] = f.first
		return tmp[:]
	}
	return nil
}

// set is a set of changed files (zones, attributes) and directories
// (entries), each stamped with the generation of its last addition.
type set struct {
	files map[Key]fileSet
	dirs  map[Key]uint64
	zones uint64
}

func newSet() set { return set{files: map[Key]fileSet{}, dirs: map[Key]uint64{}} }

func (s *set) addZones(k Key, lo, hi, gen uint64) {
	if lo >= hi {
		return
	}
	f := s.files[k]
	s.zones += f.add(lo, hi)
	f.gen = gen
	s.files[k] = f
}

func (s *set) addMeta(k Key, gen uint64) {
	f := s.files[k]
	f.meta = true
	f.gen = gen
	s.files[k] = f
}

func (s *set) addDir(k Key, gen uint64) { s.dirs[k] = gen }

// addSlot adds what an active slot stands for.
func (s *set) addSlot(k Key, slot, lo, hi, gen uint64) {
	switch slot {
	case slotDir:
		s.addDir(k, gen)
	case slotMeta:
		s.addMeta(k, gen)
	case slotExtent:
		s.addZones(k, lo, hi, gen)
	default:
		s.addZones(k, slot, slot+1, gen)
	}
}

func (s *set) dropFile(k Key) {
	if f, ok := s.files[k]; ok {
		s.zones -= f.count()
		delete(s.files, k)
	}
}

func (s *set) len() int { return len(s.files) + len(s.dirs) }
