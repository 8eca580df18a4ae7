package apply

import (
	"slices"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// BenchmarkWriteFsync4K: the secondary's share of a replicated O_DSYNC
// write: apply a 4 KiB write and an fdatasync.
func BenchmarkWriteFsync4K(b *testing.B) {
	a, err := New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	if err := a.Apply(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1}); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 4096)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := a.Apply(&op.Op{Kind: op.Write, Path: "f", Data: data, Off: int64(i%1024) * 4096}); err != nil {
			b.Fatal(err)
		}
		if err := a.Apply(&op.Op{Kind: op.Fsync, Path: "f", Flags: op.DataOnly}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}

// BenchmarkWrite4K: the cost of applying a stream of small writes to one
// file (the fd cache makes it one pwrite each).
func BenchmarkWrite4K(b *testing.B) {
	a, err := New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	if err := a.Apply(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1}); err != nil {
		b.Fatal(err)
	}
	o := op.Op{Kind: op.Write, Path: "f", Data: make([]byte, 4096)}
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := range b.N {
		o.Off = int64(i%4096) * 4096
		if err := a.Apply(&o); err != nil {
			b.Fatal(err)
		}
	}
}
