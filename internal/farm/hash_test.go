package farm

import (
	"net/netip"
	"testing"
)

func TestBucketSpread(t *testing.T) {
	seed := Seed(netip.MustParseAddr("192.0.2.100"))
	var counts [Buckets]int
	for i := range 65536 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
		counts[BucketOf(HashAddr, seed, Client{Addr: a})]++
	}
	for b, c := range counts {
		if c < 160 || c > 360 { // mean 256
			t.Errorf("bucket %d got %d of 65536 addresses", b, c)
		}
	}
}

func TestBucketModes(t *testing.T) {
	seed := Seed(netip.MustParseAddr("192.0.2.100"))
	a := netip.MustParseAddr("198.51.100.7")
	if BucketOf(HashAddr, seed, Client{a, 1}) != BucketOf(HashAddr, seed, Client{a, 2}) {
		t.Error("addr mode depends on the port")
	}
	diff := 0
	for p := range uint16(64) {
		if BucketOf(HashAddrPort, seed, Client{a, 1000 + p}) != BucketOf(HashAddrPort, seed, Client{a, 2000 + p}) {
			diff++
		}
	}
	if diff < 50 {
		t.Errorf("addr+port mode: only %d of 64 port pairs land in different buckets", diff)
	}
	// An IPv4-mapped address hashes like the IPv4 one (the packet has 4 bytes).
	if BucketOf(HashAddr, seed, Client{Addr: netip.AddrFrom16(a.As16())}) != BucketOf(HashAddr, seed, Client{Addr: a}) {
		t.Error("IPv4-mapped address hashes differently")
	}
	if Seed(netip.MustParseAddr("192.0.2.100")) == Seed(netip.MustParseAddr("192.0.2.101")) {
		t.Error("two VIPs share a seed")
	}
	if CheckMode("addr") != nil || CheckMode("addr+port") != nil || CheckMode("port") == nil {
		t.Error("CheckMode")
	}
}

// The tail of jhash reads bytes little-endian whatever the CPU; a 12-byte
// key must equal the same words added by hand.
func TestJhashTail(t *testing.T) {
	k := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	a := uint32(jhashInitval + 8 + 42)
	b, c := a, a
	a += 0x04030201
	b += 0x08070605
	_, _, want := jhashFinal(a, b, c)
	if got := jhash(k, 42); got != want {
		t.Errorf("jhash tail = %#x, want %#x", got, want)
	}
	if jhash(nil, 7) != jhashInitval+7 {
		t.Error("jhash of nothing")
	}
}

func TestSet(t *testing.T) {
	var s Set
	for _, b := range []int{0, 1, 63, 64, 200, 255} {
		s.Add(b)
	}
	if s.Count() != 6 || !s.Has(255) || s.Has(2) || s.Has(-1) || s.Has(256) {
		t.Fatalf("set %v", s.List())
	}
	p, err := ParseSet(s.String())
	if err != nil || p != s {
		t.Fatalf("round trip: %v %v", p.List(), err)
	}
	if _, err := ParseSet("zz"); err == nil {
		t.Error("ParseSet accepted garbage")
	}
	b, _ := s.MarshalText()
	var q Set
	if err := q.UnmarshalText(b); err != nil || q != s {
		t.Error("text round trip")
	}
	s.Del(0)
	if s.Has(0) || s.Minus(s).Count() != 0 || s.Union(Set{}) != s || s.Intersect(s) != s || (Set{}).Empty() != true {
		t.Error("set algebra")
	}
}
