package checker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ICMP message types of an echo exchange.
const (
	icmp4EchoRequest = 8
	icmp4EchoReply   = 0
	icmp6EchoRequest = 128
	icmp6EchoReply   = 129
)

type pingChecker struct {
	addr netip.Addr
	id   uint16
	seq  *atomic.Uint32
}

func newPing(s Spec) (Checker, error) {
	a, err := netip.ParseAddr(s.Address)
	if err != nil {
		return nil, fmt.Errorf("address %q: want an IP address (e.g. 192.0.2.1)", s.Address)
	}
	var b [2]byte
	rand.Read(b[:])
	return pingChecker{addr: a.Unmap(), id: binary.BigEndian.Uint16(b[:]), seq: new(atomic.Uint32)}, nil
}

// Check sends one ICMP echo request and waits for its reply until ctx's
// deadline (at most 3s without one). It uses a ping socket (kernel-managed
// identifier) when the system allows it, else a raw socket (root).
func (c pingChecker) Check(ctx context.Context) Result {
	deadline, has := ctx.Deadline()
	if !has {
		deadline = time.Now().Add(3 * time.Second)
	}
	seq := uint16(c.seq.Add(1))
	conn, raw, err := c.listen()
	if err != nil {
		return fail("ping %s: %v", c.addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	conn.SetDeadline(deadline)

	typ, reply := byte(icmp4EchoRequest), byte(icmp4EchoReply)
	if c.addr.Is6() {
		typ, reply = icmp6EchoRequest, icmp6EchoReply
	}
	msg := make([]byte, 8+16)
	msg[0] = typ
	binary.BigEndian.PutUint16(msg[4:], c.id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	binary.BigEndian.PutUint64(msg[8:], uint64(time.Now().UnixNano()))
	copy(msg[16:], "tandem!!")
	if c.addr.Is4() {
		binary.BigEndian.PutUint16(msg[2:], checksum(msg)) // the kernel does it for ICMPv6
	}
	var dst net.Addr = &net.IPAddr{IP: c.addr.AsSlice()}
	if !raw {
		dst = &net.UDPAddr{IP: c.addr.AsSlice()}
	}
	start := time.Now()
	if _, err := conn.WriteTo(msg, dst); err != nil {
		return fail("ping %s: send: %v", c.addr, cause(err))
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fail("ping %s: no reply within %s", c.addr, time.Since(start).Round(time.Millisecond))
			}
			return fail("ping %s: receive: %v", c.addr, cause(err))
		}
		if n < 8 || buf[0] != reply || !sameAddr(from, c.addr) {
			continue
		}
		// A ping socket rewrites the identifier; a raw one sees everyone's.
		if raw && binary.BigEndian.Uint16(buf[4:]) != c.id {
			continue
		}
		if binary.BigEndian.Uint16(buf[6:]) != seq {
			continue
		}
		return ok("%s answered in %s", c.addr, time.Since(start).Round(time.Microsecond))
	}
}

// listen opens an ICMP socket: a ping socket (SOCK_DGRAM) if the system
// allows it, else a raw socket.
func (c pingChecker) listen() (net.PacketConn, bool, error) {
	family, proto, network := unix.AF_INET, unix.IPPROTO_ICMP, "ip4:icmp"
	if c.addr.Is6() {
		family, proto, network = unix.AF_INET6, unix.IPPROTO_ICMPV6, "ip6:ipv6-icmp"
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err == nil {
		f := os.NewFile(uintptr(fd), "ping")
		conn, err := net.FilePacketConn(f)
		f.Close()
		if err == nil {
			return conn, false, nil
		}
	}
	conn, rerr := net.ListenPacket(network, "")
	if rerr != nil {
		return nil, true, fmt.Errorf("open an ICMP socket: %v (ping sockets: %v; the agent runs as root normally)", cause(rerr), err)
	}
	return conn, true, nil
}

func sameAddr(from net.Addr, a netip.Addr) bool {
	var ip net.IP
	switch f := from.(type) {
	case *net.IPAddr:
		ip = f.IP
	case *net.UDPAddr:
		ip = f.IP
	default:
		return false
	}
	got, ok := netip.AddrFromSlice(ip)
	return ok && got.Unmap() == a.WithZone("")
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
