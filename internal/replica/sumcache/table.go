package sumcache

import (
	"math/bits"
	"math/rand/v2"
	"unsafe"

	"golang.org/x/sys/unix"
)

// table is an open-addressing hash table (linear probing) of entries by
// inode number, in anonymous memory mapped outside the Go heap. A Go map
// of a million entries takes 37-73 MiB, and the garbage collector then
// lets the heap grow by as much again; here a million entries take 40
// MiB, and only that.
type table struct {
	mem   []byte // the mapping (nil: empty)
	slots []slot // mem, as slots
	n     int    // slots in use
	limit int    // most slots it grows to
}

// slot is an entry; ino 0 marks a free slot (no inode has number 0).
type slot struct {
	ino uint64
	entry
}

const (
	slotSize = int(unsafe.Sizeof(slot{}))
	minSlots = 1024
)

// newTable holds up to max entries, at most 80 % full.
func newTable(max int) *table { return &table{limit: max + max/4 + 1} }

// home is ino's first slot among n: a multiplicative hash scaled to n
// (inode numbers come in runs).
func home(ino uint64, n int) int {
	hi, _ := bits.Mul64(ino*0x9e3779b97f4a7c15, uint64(n))
	return int(hi)
}

func (t *table) find(ino uint64) int {
	n := len(t.slots)
	if n == 0 {
		return -1
	}
	for i := home(ino, n); ; {
		switch t.slots[i].ino {
		case ino:
			return i
		case 0:
			return -1
		}
		if i++; i == n {
			i = 0
		}
	}
}

func (t *table) get(ino uint64) (entry, bool) {
	i := t.find(ino)
	if i < 0 {
		return entry{}, false
	}
	return t.slots[i].entry, true
}

// set inserts or replaces ino's entry; false if there was no room (the
// mapping could not grow).
func (t *table) set(ino uint64, e entry) bool {
	if i := t.find(ino); i >= 0 {
		t.slots[i].entry = e
		return true
	}
	if (t.n+1)*5 > len(t.slots)*4 && !t.grow() {
		return false
	}
	n := len(t.slots)
	i := home(ino, n)
	for t.slots[i].ino != 0 {
		if i++; i == n {
			i = 0
		}
	}
	t.slots[i] = slot{ino: ino, entry: e}
	t.n++
	return true
}

// grow doubles the slots (up to limit) and places every entry again.
func (t *table) grow() bool {
	n := min(max(minSlots, 2*len(t.slots)), t.limit)
	if n <= len(t.slots) {
		return false
	}
	mem, err := unix.Mmap(-1, 0, n*slotSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return false
	}
	old, oldMem := t.slots, t.mem
	t.mem, t.slots, t.n = mem, unsafe.Slice((*slot)(unsafe.Pointer(&mem[0])), n), 0
	for i := range old {
		if old[i].ino != 0 {
			t.set(old[i].ino, old[i].entry)
		}
	}
	if oldMem != nil {
		unix.Munmap(oldMem)
	}
	return true
}

// remove frees slot i, moving back the entries after it that would
// otherwise no longer be found from their home slot.
func (t *table) remove(i int) {
	n := len(t.slots)
	j := i
	for {
		if j++; j == n {
			j = 0
		}
		if t.slots[j].ino == 0 {
			break
		}
		// The entry at j may move to i if its home is not in (i, j].
		k := home(t.slots[j].ino, n)
		if (i < j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = slot{}
	t.n--
}

// evictOne removes an entry chosen at random.
func (t *table) evictOne() {
	if t.n == 0 {
		return
	}
	n := len(t.slots)
	for i := rand.IntN(n); ; {
		if t.slots[i].ino != 0 {
			t.remove(i)
			return
		}
		if i++; i == n {
			i = 0
		}
	}
}

// each calls fn for every entry.
func (t *table) each(fn func(ino uint64, e entry)) {
	for i := range t.slots {
		if t.slots[i].ino != 0 {
			fn(t.slots[i].ino, t.slots[i].entry)
		}
	}
}

// reset forgets every entry and returns the memory.
func (t *table) reset() {
	if t.mem != nil {
		unix.Munmap(t.mem)
	}
	t.mem, t.slots, t.n = nil, nil, 0
}
