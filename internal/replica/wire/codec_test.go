package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

var sampleOps = []op.Op{
	{Kind: op.Write, Path: "db/x", Data: []byte("hello"), Off: 1 << 40},
	{Kind: op.Write, Path: "db/x", Data: bytes.Repeat([]byte{7}, 4096), Off: 4096},
	{Kind: op.Truncate, Path: "a", Off: 0},
	{Kind: op.Create, Path: "a/b", Mode: 0o100644, Uid: -1, Gid: 1000, Flags: 0o300},
	{Kind: op.Mknod, Path: "n", Mode: 0o20666, Rdev: 1<<32 | 3, Uid: 0, Gid: 0},
	{Kind: op.Rename, Path: "a", Path2: "b", Flags: 2},
	{Kind: op.Symlink, Path: "l", Data: []byte("../t")},
	{Kind: op.Utimens, Path: "f", Atime: op.Time{Sec: -5, Nsec: op.UtimeNow}, Mtime: op.Time{Sec: 1 << 40, Nsec: 999999999}},
	{Kind: op.SetXattr, Path: "f", Name: "user.x", Data: []byte{0, 1, 2}, Flags: 1},
	{Kind: op.Fallocate, Path: "f", Off: 10, Len: 1 << 33, Flags: 3},
	{Kind: op.SyncAll},
	{Kind: op.Chown, Uid: 1<<32 - 1, Gid: -1},
}

func TestCodecRoundTrip(t *testing.T) {
	var b []byte
	for i := range sampleOps {
		b = AppendOp(b, &sampleOps[i])
	}
	var o op.Op
	for i := range sampleOps {
		n, err := DecodeOp(b, &o)
		if err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
		b = b[n:]
		want := sampleOps[i]
		if !reflect.DeepEqual(o, want) {
			t.Fatalf("op %d: got %+v, want %+v", i, o, want)
		}
	}
	if len(b) != 0 {
		t.Fatalf("%d bytes left", len(b))
	}
}

func TestDecodeReusesEqualStrings(t *testing.T) {
	w := op.Op{Kind: op.Write, Path: "some/long/path/to/a/file", Data: make([]byte, 4096)}
	b := AppendOp(nil, &w)
	var o op.Op
	DecodeOp(b, &o)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := DecodeOp(b, &o); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per decode of a write to the same file", allocs)
	}
	buf := make([]byte, 0, 8192)
	allocs = testing.AllocsPerRun(100, func() { buf = AppendOp(buf[:0], &w) })
	if allocs != 0 {
		t.Fatalf("%v allocations per encode", allocs)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	full := AppendOp(nil, &sampleOps[0])
	var o op.Op
	for i := range len(full) {
		if _, err := DecodeOp(full[:i], &o); err == nil {
			t.Fatalf("truncated to %d bytes: no error", i)
		}
	}
	if _, err := DecodeOp([]byte{1, 0xff, 0xff, 0x7f}, &o); err == nil {
		t.Fatal("unknown field mask accepted")
	}
}

func FuzzDecodeOp(f *testing.F) {
	for i := range sampleOps {
		f.Add(AppendOp(nil, &sampleOps[i]))
	}
	f.Add([]byte{})
	f.Add([]byte{1, 4, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var o op.Op
		n, err := DecodeOp(b, &o)
		if err != nil {
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("consumed %d of %d bytes", n, len(b))
		}
		_ = o.Validate()
		_ = o.String()
		// What decodes re-encodes to something that decodes the same.
		var o2 op.Op
		enc := AppendOp(nil, &o)
		if _, err := DecodeOp(enc, &o2); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(o.Data) == 0 {
			o.Data = nil
		}
		if !reflect.DeepEqual(o, o2) {
			t.Fatalf("%+v != %+v", o, o2)
		}
	})
}

func TestResponseMACChecked(t *testing.T) {
	n := randomNonce()
	ch := challengeBody(&n)
	helloMsg := []byte("hello")
	other := []byte("a different key, long enough")
	for _, body := range [][]byte{acceptBody(&accept{Epoch: 1, Node: "n"}), refuseBody(RefusedStaleEpoch, "stale")} {
		msg := responseMAC(other, ch, helloMsg, body)
		acc, err := parseResponse(msg, testKey, ch, helloMsg, "x")
		var re *RefusedError
		if acc != nil || err == nil || (errors.As(err, &re) && (re.Authentic || re.Code != RefusedAuth)) {
			t.Fatalf("answer under another key: %v %v", acc, err)
		}
		msg = responseMAC(testKey, ch, helloMsg, body)
		msg[len(msg)-1] ^= 1
		if acc, err := parseResponse(msg, testKey, ch, helloMsg, "x"); acc != nil || (errors.As(err, &re) && re.Authentic) {
			t.Fatalf("altered answer: %v %v", acc, err)
		}
		msg[len(msg)-1] ^= 1
		if _, err := parseResponse(msg, testKey, ch, helloMsg, "x"); err != nil && !errors.As(err, &re) {
			t.Fatalf("valid answer: %v", err)
		}
	}
}
