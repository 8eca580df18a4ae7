package farm

import (
	"encoding/hex"
	"fmt"
	"math/bits"
)

// Set is a set of buckets.
type Set [Buckets / 64]uint64

// Has reports whether bucket b is in the set.
func (s Set) Has(b int) bool { return b >= 0 && b < Buckets && s[b/64]&(1<<(b%64)) != 0 }

// Add puts bucket b in the set.
func (s *Set) Add(b int) { s[b/64] |= 1 << (b % 64) }

// Del removes bucket b.
func (s *Set) Del(b int) { s[b/64] &^= 1 << (b % 64) }

// Count is the number of buckets in the set.
func (s Set) Count() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

// Empty reports whether the set holds no bucket.
func (s Set) Empty() bool { return s == Set{} }

// Union returns s ∪ o.
func (s Set) Union(o Set) Set {
	for i := range s {
		s[i] |= o[i]
	}
	return s
}

// Minus returns s \ o.
func (s Set) Minus(o Set) Set {
	for i := range s {
		s[i] &^= o[i]
	}
	return s
}

// Intersect returns s ∩ o.
func (s Set) Intersect(o Set) Set {
	for i := range s {
		s[i] &= o[i]
	}
	return s
}

// List returns the buckets in increasing order.
func (s Set) List() []int {
	var out []int
	for b := range Buckets {
		if s.Has(b) {
			out = append(out, b)
		}
	}
	return out
}

// String is the set as hex (bucket 0 is the lowest bit of the first byte),
// the form it travels in heartbeats.
func (s Set) String() string {
	var b [Buckets / 8]byte
	for i := range b {
		b[i] = byte(s[i/8] >> (8 * (i % 8)))
	}
	return hex.EncodeToString(b[:])
}

// ParseSet reads a set written by String; "" is the empty set.
func ParseSet(text string) (Set, error) {
	var s Set
	if text == "" {
		return s, nil
	}
	b, err := hex.DecodeString(text)
	if err != nil || len(b) != Buckets/8 {
		return s, fmt.Errorf("invalid bucket set %q: want %d hex digits", text, Buckets/4)
	}
	for i, v := range b {
		s[i/8] |= uint64(v) << (8 * (i % 8))
	}
	return s, nil
}

// MarshalText makes a Set a JSON string.
func (s Set) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (s *Set) UnmarshalText(b []byte) error {
	v, err := ParseSet(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
