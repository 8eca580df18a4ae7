package farm

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/bits"
	"net/netip"
)

// Buckets is the number of buckets clients are hashed into.
const Buckets = 256

// Hash modes: what identifies a client.
const (
	// HashAddr hashes the client's address only: every connection of one
	// client goes to the same node (sessions kept in the node's memory work).
	HashAddr = "addr"
	// HashAddrPort hashes address and source port (TCP and UDP): one client
	// behind a NAT spreads over the nodes. Other protocols (ICMP) and IP
	// fragments after the first hash with port 0.
	HashAddrPort = "addr+port"
)

// Seed is the jhash seed of a farm VIP. It is derived from the VIP so that
// every node computes the same one, and two farms split clients differently.
// Never zero: the kernel replaces a zero seed by a random one.
func Seed(vip netip.Addr) uint32 {
	h := fnv.New32a()
	h.Write([]byte("tandem-farm/"))
	h.Write(vip.AsSlice())
	if s := h.Sum32(); s != 0 {
		return s
	}
	return 1
}

// Client is what the filter hashes: the packet's source address, and for
// HashAddrPort its source port (0 for protocols without ports).
type Client struct {
	Addr netip.Addr
	Port uint16
}

// key lays out the bytes the nftables rule hashes: the source address as it
// is in the packet, then (HashAddrPort) one 32-bit register holding the
// 2-byte port in network order followed by two zero bytes.
func key(mode string, c Client) []byte {
	a := c.Addr.Unmap().AsSlice()
	if mode != HashAddrPort {
		return a
	}
	var p [4]byte
	binary.BigEndian.PutUint16(p[:], c.Port)
	return append(a, p[:]...)
}

// BucketOf returns the bucket of client c, computed exactly as the kernel
// rule does: reciprocal_scale(jhash(key, len, seed), 256).
func BucketOf(mode string, seed uint32, c Client) int {
	h := jhash(key(mode, c), seed)
	return int((uint64(h) * Buckets) >> 32)
}

// CheckMode validates a hash mode name.
func CheckMode(mode string) error {
	if mode != HashAddr && mode != HashAddrPort {
		return fmt.Errorf("unknown hash mode %q (addr or addr+port)", mode)
	}
	return nil
}

const jhashInitval = 0xdeadbeef

// jhash is the Linux kernel's jhash() (include/linux/jhash.h, Bob Jenkins'
// lookup3). Whole 12-byte blocks are read in the CPU's byte order, like the
// kernel does; keys of up to 12 bytes (IPv4, with or without port) only go
// through the byte-wise tail and do not depend on it.
func jhash(k []byte, initval uint32) uint32 {
	length := uint32(len(k))
	a := jhashInitval + length + initval
	b, c := a, a
	for len(k) > 12 {
		a += binary.NativeEndian.Uint32(k[0:])
		b += binary.NativeEndian.Uint32(k[4:])
		c += binary.NativeEndian.Uint32(k[8:])
		a, b, c = jhashMix(a, b, c)
		k = k[12:]
	}
	if len(k) == 0 {
		return c
	}
	var t [12]byte
	copy(t[:], k)
	// The tail's switch adds k[i] << (8*(i%4)) to a, b, c: little-endian words.
	a += binary.LittleEndian.Uint32(t[0:])
	b += binary.LittleEndian.Uint32(t[4:])
	c += binary.LittleEndian.Uint32(t[8:])
	_, _, c = jhashFinal(a, b, c)
	return c
}

func rol(x uint32, n int) uint32 { return bits.RotateLeft32(x, n) }

func jhashMix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= rol(c, 4)
	c += b
	b -= a
	b ^= rol(a, 6)
	a += c
	c -= b
	c ^= rol(b, 8)
	b += a
	a -= c
	a ^= rol(c, 16)
	c += b
	b -= a
	b ^= rol(a, 19)
	a += c
	c -= b
	c ^= rol(b, 4)
	b += a
	return a, b, c
}

func jhashFinal(a, b, c uint32) (uint32, uint32, uint32) {
	c ^= b
	c -= rol(b, 14)
	a ^= c
	a -= rol(c, 11)
	b ^= a
	b -= rol(a, 25)
	c ^= b
	c -= rol(b, 16)
	a ^= c
	a -= rol(c, 4)
	b ^= a
	b -= rol(a, 14)
	c ^= b
	c -= rol(b, 24)
	return a, b, c
}
