package membership

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"testing"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func sampleDatagram() datagram {
	return datagram{
		Flags: 0, NetIndex: 1, Incarnation: 1700000000, Seq: 42, Echo: 1700000001,
		Timestamp: 1700000000123456789,
		Sender:    []byte("alpha"), Cluster: []byte("prod"), Dest: []byte("beta"),
		Payload: []byte(`{"modules":{"db":"PRIM"}}`),
	}
}

func TestMaxDatagramFitsUDP(t *testing.T) {
	if n := headerLen + 3*255 + MaxPayload + macLen; n > 65507 {
		t.Fatalf("largest datagram %d bytes does not fit in UDP over IPv4 (65507)", n)
	}
	if readBufSize < headerLen+3*255+MaxPayload+macLen {
		t.Fatal("read buffer smaller than the largest datagram")
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	mac := newMAC(testKey)
	for _, pl := range []int{0, 1, 100, 4000, MaxPayload} {
		d := sampleDatagram()
		d.Payload = bytes.Repeat([]byte{0xa5}, pl)
		d.Flags = flagLeaving
		b := appendDatagram(nil, &d, mac)
		if len(b) != headerLen+len(d.Sender)+len(d.Cluster)+len(d.Dest)+pl+macLen {
			t.Fatalf("payload %d: encoded length %d", pl, len(b))
		}
		got, err := decodeDatagram(b)
		if err != nil {
			t.Fatalf("payload %d: decode: %v", pl, err)
		}
		if got.Version != wireVersion || got.Flags != d.Flags || got.NetIndex != d.NetIndex ||
			got.Incarnation != d.Incarnation || got.Seq != d.Seq || got.Echo != d.Echo ||
			got.Timestamp != d.Timestamp || !got.leaving() ||
			!bytes.Equal(got.Sender, d.Sender) || !bytes.Equal(got.Cluster, d.Cluster) ||
			!bytes.Equal(got.Dest, d.Dest) || !bytes.Equal(got.Payload, d.Payload) {
			t.Fatalf("payload %d: round trip mismatch: %+v", pl, got)
		}
		if !verifyMAC(b, newMAC(testKey), nil) {
			t.Fatalf("payload %d: MAC does not verify", pl)
		}
		if verifyMAC(b, newMAC([]byte("another key of 16+ bytes")), nil) {
			t.Fatalf("payload %d: MAC verifies with another key", pl)
		}
	}
}

func TestAppendKeepsPrefix(t *testing.T) {
	d := sampleDatagram()
	b := appendDatagram([]byte("prefix"), &d, newMAC(testKey))
	if string(b[:6]) != "prefix" || !verifyMAC(b[6:], newMAC(testKey), nil) {
		t.Fatal("appendDatagram must MAC only what it appended")
	}
}

func TestDecodeRejects(t *testing.T) {
	d := sampleDatagram()
	good := appendDatagram(nil, &d, newMAC(testKey))
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"empty":           {},
		"short":           good[:headerLen],
		"truncated":       good[:len(good)-1],
		"extra byte":      append(bytes.Clone(good), 0),
		"bad magic":       mod(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version 2":       mod(func(b []byte) []byte { b[4] = 2; return b }),
		"empty sender":    mod(func(b []byte) []byte { b[7] = 0; return b }),
		"empty cluster":   mod(func(b []byte) []byte { b[8] = 0; return b }),
		"empty dest":      mod(func(b []byte) []byte { b[9] = 0; return b }),
		"sender too long": mod(func(b []byte) []byte { b[7] = 255; return b }),
		"huge payload":    mod(func(b []byte) []byte { b[10] = 0xff; return b }),
	}
	for name, b := range cases {
		if _, err := decodeDatagram(b); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	flipped := mod(func(b []byte) []byte { b[len(b)-macLen-1] ^= 1; return b })
	if _, err := decodeDatagram(flipped); err != nil {
		t.Fatalf("a flipped payload bit is structurally fine: %v", err)
	}
	if verifyMAC(flipped, newMAC(testKey), nil) {
		t.Fatal("a flipped payload bit must fail the MAC")
	}
}

func TestDecodeRandomBytes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	d := sampleDatagram()
	good := appendDatagram(nil, &d, newMAC(testKey))
	for i := 0; i < 20000; i++ {
		var b []byte
		if i%2 == 0 {
			b = make([]byte, r.IntN(200))
			for j := range b {
				b[j] = byte(r.Uint32())
			}
		} else { // valid header, random corruption
			b = bytes.Clone(good)
			for k := 0; k < 1+r.IntN(4); k++ {
				b[r.IntN(len(b))] = byte(r.Uint32())
			}
			b = b[:r.IntN(len(b)+1)]
		}
		if dd, err := decodeDatagram(b); err == nil {
			_ = verifyMAC(b, newMAC(testKey), nil)
			_ = dd.leaving()
		}
	}
}

func FuzzDecode(f *testing.F) {
	mac := newMAC(testKey)
	d := sampleDatagram()
	f.Add(appendDatagram(nil, &d, mac))
	d.Payload = nil
	d.Flags = flagLeaving
	f.Add(appendDatagram(nil, &d, mac))
	d.Payload = bytes.Repeat([]byte("x"), 3000)
	f.Add(appendDatagram(nil, &d, mac))
	f.Add([]byte{})
	f.Add([]byte("TDM1"))
	f.Add(bytes.Repeat([]byte{0xff}, headerLen+macLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeDatagram(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes (the MAC aside).
		again := appendDatagram(nil, &d, newMAC(testKey))
		body := len(b) - macLen
		if len(again) != len(b) || !bytes.Equal(again[:body], b[:body]) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, again)
		}
		verifyMAC(b, mac, nil)
	})
}

func TestReplayWindow(t *testing.T) {
	var w replayWindow
	ok := func(inc, seq uint64) bool {
		if !w.check(inc, seq) {
			return false
		}
		w.accept(inc, seq)
		return true
	}
	steps := []struct {
		inc, seq uint64
		want     bool
	}{
		{5, 1, true}, {5, 1, false}, {5, 3, true}, {5, 2, true}, {5, 2, false},
		{5, 100, true}, {5, 37, true}, {5, 36, false}, // 100-64 = 36 is out of the window
		{5, 99, true}, {5, 99, false}, {5, 100, false},
		{4, 1000, false}, // older incarnation
		{6, 1, true}, {6, 1, false}, {5, 101, false},
		{6, 1 << 40, true}, {6, 1<<40 - 63, true}, {6, 1<<40 - 64, false},
	}
	for i, s := range steps {
		if got := ok(s.inc, s.seq); got != s.want {
			t.Fatalf("step %d (inc %d seq %d): accepted=%v, want %v", i, s.inc, s.seq, got, s.want)
		}
	}
}

func TestReplayWindowFromDisk(t *testing.T) {
	// After a restart only the incarnation is known: the first sequence of
	// that incarnation is accepted (the echo check covers the rest), older
	// incarnations are not.
	w := replayWindow{inc: 7}
	if w.check(6, 500) {
		t.Fatal("older incarnation accepted")
	}
	if !w.check(7, 1) || w.accept(7, 1) {
		t.Fatal("same incarnation refused, or reported as new")
	}
	if !w.check(8, 1) || !w.accept(8, 1) {
		t.Fatal("newer incarnation refused, or not reported as new")
	}
}

func BenchmarkEncodeMAC(b *testing.B) {
	for _, size := range []int{64, 1024, 4096} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			mac := newMAC(testKey)
			d := sampleDatagram()
			d.Payload = make([]byte, size)
			buf := make([]byte, 0, 8192)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				d.Seq++
				buf = appendDatagram(buf[:0], &d, mac)
			}
		})
	}
}

func BenchmarkDecodeVerify(b *testing.B) {
	mac := newMAC(testKey)
	d := sampleDatagram()
	d.Payload = make([]byte, 1024)
	pkt := appendDatagram(nil, &d, mac)
	sum := make([]byte, 0, macLen)
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeDatagram(pkt); err != nil || !verifyMAC(pkt, mac, sum) {
			b.Fatal("rejected")
		}
	}
}
