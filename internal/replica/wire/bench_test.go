package wire

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"golang.org/x/sys/unix"
)

// Run: go test -run XXX -bench . -benchtime 1024x ./internal/replica/wire
// (1024 x 1 MiB = 1 GiB for the throughput benchmarks).

func benchRig(b *testing.B) (*rig, *Sender) {
	r := newRig(b, "", nil)
	cfg := r.senderConfig()
	cfg.Timeout = 30 * time.Second
	cfg.Logger = quietLogger(b)
	s, err := Dial(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return r, s
}

// BenchmarkStream1MiB: 1 MiB writes to one file, replicated over loopback
// (encrypted) into a temp dir, against the same writes done locally.
// "flush" ends with syncfs/fsync and waits for it; "window" lets writes
// pipeline (as the FUSE layer does with many requests in flight);
// "each" waits for every write before the next.
func BenchmarkStream1MiB(b *testing.B) {
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i)
	}
	for _, flush := range []bool{false, true} {
		name := "cache"
		if flush {
			name = "flush"
		}
		b.Run("replicated-window-"+name, func(b *testing.B) {
			_, s := benchRig(b)
			s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
			b.SetBytes(int64(len(data)))
			unix.Sync() // start clean: no writeback of an earlier run
			b.ResetTimer()
			var seq uint64
			for i := range b.N {
				seq = s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: data, Off: int64(i) << 20})
			}
			durable := false
			if flush {
				seq = s.Submit(&op.Op{Kind: op.SyncAll})
				durable = true
			}
			s.Wait(seq, durable)
			b.StopTimer()
			if err := s.Failed(); err != nil {
				b.Fatal(err)
			}
		})
		b.Run("replicated-each-"+name, func(b *testing.B) {
			_, s := benchRig(b)
			s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
			b.SetBytes(int64(len(data)))
			unix.Sync() // start clean: no writeback of an earlier run
			b.ResetTimer()
			var seq uint64
			for i := range b.N {
				seq = s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: data, Off: int64(i) << 20})
				s.Wait(seq, false)
			}
			if flush {
				s.Wait(s.Submit(&op.Op{Kind: op.SyncAll}), true)
			}
			b.StopTimer()
			if err := s.Failed(); err != nil {
				b.Fatal(err)
			}
		})
		b.Run("local-"+name, func(b *testing.B) {
			fd, err := unix.Open(filepath.Join(b.TempDir(), "f"), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			b.SetBytes(int64(len(data)))
			unix.Sync() // start clean: no writeback of an earlier run
			b.ResetTimer()
			for i := range b.N {
				if _, err := unix.Pwrite(fd, data, int64(i)<<20); err != nil {
					b.Fatal(err)
				}
			}
			if flush {
				unix.Syncfs(fd)
			}
		})
	}
}

// BenchmarkWriteFsync4K: a 4 KiB write then an fsync of the file, waiting
// until the secondary made it durable (what an O_DSYNC write or a write +
// fsync costs the application on top of its local write), against the
// same locally.
func BenchmarkWriteFsync4K(b *testing.B) {
	data := make([]byte, 4096)
	const ring = 1024 // blocks rewritten in turn
	b.Run("replicated", func(b *testing.B) {
		_, s := benchRig(b)
		s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: data, Off: int64(i%ring) * 4096})
			s.Wait(s.Submit(&op.Op{Kind: op.Fsync, Path: "f", Flags: op.DataOnly}), true)
			lat = append(lat, time.Since(t0))
		}
		b.StopTimer()
		if err := s.Failed(); err != nil {
			b.Fatal(err)
		}
		reportLatency(b, lat)
	})
	b.Run("local", func(b *testing.B) {
		fd, err := unix.Open(filepath.Join(b.TempDir(), "f"), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			unix.Pwrite(fd, data, int64(i%ring)*4096)
			unix.Fdatasync(fd)
			lat = append(lat, time.Since(t0))
		}
		b.StopTimer()
		reportLatency(b, lat)
	})
}

func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	if len(lat) == 0 {
		return
	}
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
