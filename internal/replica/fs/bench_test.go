package fs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// countingReplicator accepts everything at once: the benchmarks measure the
// FUSE front alone.
type countingReplicator struct{ seq atomic.Uint64 }

func (r *countingReplicator) Submit(*op.Op) uint64    { return r.seq.Add(1) }
func (r *countingReplicator) Wait(uint64, bool) error { return nil }

type benchResult struct {
	Seconds float64 `json:"seconds"`
	Ops     int     `json:"ops"`
	Bytes   int64   `json:"bytes"`
	P50us   float64 `json:"p50_us,omitempty"`
	P99us   float64 `json:"p99_us,omitempty"`
}

// The workloads run in a child process (the application), the filesystem
// in the test process (the agent), as in production.
func runWorkload(name, dir string) (benchResult, error) {
	switch name {
	case "seq":
		return workSeq(dir)
	case "dsync":
		return workDsync(dir)
	case "small":
		return workSmall(dir)
	case "rtt":
		return workRTT(dir)
	}
	return benchResult{}, fmt.Errorf("unknown workload %q", name)
}

// workSeq writes 256 MiB in 1 MiB writes, then fsyncs.
func workSeq(dir string) (benchResult, error) {
	p := filepath.Join(dir, "seq")
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return benchResult{}, err
	}
	const n = 256
	for range n {
		if _, err := f.Write(buf); err != nil {
			return benchResult{}, err
		}
	}
	if err := f.Sync(); err != nil {
		return benchResult{}, err
	}
	if err := f.Close(); err != nil {
		return benchResult{}, err
	}
	r := benchResult{Seconds: time.Since(start).Seconds(), Ops: n, Bytes: n << 20}
	return r, os.Remove(p)
}

// workDsync does 2,000 sequential 4 KiB O_DSYNC writes.
func workDsync(dir string) (benchResult, error) {
	p := filepath.Join(dir, "dsync")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|unix.O_DSYNC, 0o644)
	if err != nil {
		return benchResult{}, err
	}
	defer os.Remove(p)
	defer f.Close()
	buf := make([]byte, 4096)
	const n = 2000
	lat := make([]time.Duration, n)
	start := time.Now()
	for i := range n {
		t0 := time.Now()
		if _, err := f.WriteAt(buf, int64(i)*4096); err != nil {
			return benchResult{}, err
		}
		lat[i] = time.Since(t0)
	}
	r := benchResult{Seconds: time.Since(start).Seconds(), Ops: n, Bytes: n * 4096}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r.P50us = float64(lat[n/2].Nanoseconds()) / 1e3
	r.P99us = float64(lat[n*99/100].Nanoseconds()) / 1e3
	return r, nil
}

// workRTT times 20,000 getxattr calls of an absent attribute: through the
// mount each is one FUSE round trip (the kernel caches no xattr), so the
// difference with the plain directory is the cost of a request.
func workRTT(dir string) (benchResult, error) {
	p := filepath.Join(dir, "rtt")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		return benchResult{}, err
	}
	defer os.Remove(p)
	const n = 20000
	lat := make([]time.Duration, n)
	buf := make([]byte, 64)
	start := time.Now()
	for i := range n {
		t0 := time.Now()
		if _, err := unix.Getxattr(p, "user.absent", buf); !errors.Is(err, unix.ENODATA) {
			return benchResult{}, fmt.Errorf("getxattr: %v, want ENODATA", err)
		}
		lat[i] = time.Since(t0)
	}
	r := benchResult{Seconds: time.Since(start).Seconds(), Ops: n}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r.P50us = float64(lat[n/2].Nanoseconds()) / 1e3
	r.P99us = float64(lat[n*99/100].Nanoseconds()) / 1e3
	return r, nil
}

// workSmall creates, writes (4 KiB) and closes 2,000 files.
func workSmall(dir string) (benchResult, error) {
	d, err := os.MkdirTemp(dir, "small")
	if err != nil {
		return benchResult{}, err
	}
	defer os.RemoveAll(d)
	buf := make([]byte, 4096)
	const n = 2000
	start := time.Now()
	for i := range n {
		f, err := os.OpenFile(filepath.Join(d, "f"+strconv.Itoa(i)), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
		if err != nil {
			return benchResult{}, err
		}
		if _, err := f.Write(buf); err != nil {
			return benchResult{}, err
		}
		if err := f.Close(); err != nil {
			return benchResult{}, err
		}
	}
	return benchResult{Seconds: time.Since(start).Seconds(), Ops: n, Bytes: n * 4096}, nil
}

func childWorkload(t testing.TB, name, dir string) benchResult {
	t.Helper()
	out, err := helperCmd("bench-"+name, dir).Output()
	if err != nil {
		t.Fatalf("workload %s on %s: %v", name, dir, err)
	}
	var r benchResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("workload %s: %v (%q)", name, err, out)
	}
	return r
}

func median(rs []benchResult, key func(benchResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = key(r)
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

// TestBenchReport (opt-in: TANDEM_FS_BENCH=1) runs each workload against the
// plain directory and through the mount (a Replicator that accepts at once)
// and prints medians and ratios. TANDEM_FS_PROFILE=file writes a CPU
// profile of the filesystem process during the mount runs of the seq and
// small workloads. TANDEM_FS_BENCH_TMPFS=1 runs on a tmpfs.
func TestBenchReport(t *testing.T) {
	if os.Getenv("TANDEM_FS_BENCH") == "" {
		t.Skip("opt-in: TANDEM_FS_BENCH=1")
	}
	requireRoot(t)
	runs := 3
	if s := os.Getenv("TANDEM_FS_BENCH_RUNS"); s != "" {
		runs, _ = strconv.Atoi(s)
	}
	base := t.TempDir()
	if os.Getenv("TANDEM_FS_BENCH_TMPFS") != "" {
		// The FUSE overhead alone, without the disk (and its neighbours).
		if err := unix.Mount("tmpfs", base, "tmpfs", 0, "size=2g"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(base, unix.MNT_DETACH) })
		t.Log("on tmpfs")
	}
	direct := filepath.Join(base, "direct")
	os.Mkdir(direct, 0o755)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	mount := func(wb bool) (string, func()) {
		dir, err := os.MkdirTemp(base, "mnt")
		if err != nil {
			t.Fatal(err)
		}
		m, err := Mount(dir, Options{Replicator: &countingReplicator{}, Logger: quiet, writeback: wb})
		if err != nil {
			t.Fatal(err)
		}
		unwatch := watchMount(dir)
		return dir, func() {
			if err := m.Unmount(); err != nil {
				t.Error(err)
			}
			<-m.Done()
			unwatch()
		}
	}
	type row struct {
		name   string
		metric string
		key    func(benchResult) float64
		higher bool // higher is better
	}
	rows := []row{
		{"seq", "MB/s (256 x 1 MiB writes + fsync)", func(r benchResult) float64 { return float64(r.Bytes) / 1e6 / r.Seconds }, true},
		{"dsync", "4 KiB O_DSYNC write p50 us", func(r benchResult) float64 { return r.P50us }, false},
		{"small", "files/s (create+write 4 KiB+close)", func(r benchResult) float64 { return float64(r.Ops) / r.Seconds }, true},
		{"rtt", "getxattr p50 us (one FUSE round trip)", func(r benchResult) float64 { return r.P50us }, false},
	}
	t.Logf("%-38s %12s %12s %8s %14s %8s", "workload", "direct", "tandem", "ratio", "tandem+wback", "ratio")
	for _, rw := range rows {
		var d, m, w []benchResult
		mdir, unmount := mount(false)
		wdir, unmountWB := mount(true)
		for i := range runs {
			d = append(d, childWorkload(t, rw.name, direct))
			var prof *os.File
			if p := os.Getenv("TANDEM_FS_PROFILE"); p != "" && i == 0 {
				var err error
				if prof, err = os.Create(p + "." + rw.name); err != nil {
					t.Fatal(err)
				}
				pprof.StartCPUProfile(prof)
			}
			m = append(m, childWorkload(t, rw.name, mdir))
			if prof != nil {
				pprof.StopCPUProfile()
				prof.Close()
			}
			if rw.name != "dsync" && rw.name != "rtt" { // writeback hides O_DSYNC: not a valid mode
				w = append(w, childWorkload(t, rw.name, wdir))
			}
		}
		unmount()
		unmountWB()
		dv, mv := median(d, rw.key), median(m, rw.key)
		ratio := mv / dv
		wcol, wratio := "-", "-"
		if len(w) > 0 {
			wv := median(w, rw.key)
			wcol, wratio = fmt.Sprintf("%.1f", wv), fmt.Sprintf("%.2f", wv/dv)
		}
		if rw.name == "dsync" {
			t.Logf("  (dsync p99 us: direct %.0f, tandem %.0f)", median(d, func(r benchResult) float64 { return r.P99us }),
				median(m, func(r benchResult) float64 { return r.P99us }))
		}
		t.Logf("%-38s %12.1f %12.1f %8.2f %14s %8s", rw.metric, dv, mv, ratio, wcol, wratio)
	}
}

// BenchmarkWrite: pwrite through the mount (a Replicator that accepts at
// once) against the plain directory, in process; use it with -cpuprofile
// to look at the hot path. TestBenchReport is the end-to-end comparison.
func BenchmarkWrite(b *testing.B) {
	requireRoot(b)
	base := b.TempDir()
	direct := filepath.Join(base, "direct")
	mnt := filepath.Join(base, "mnt")
	os.Mkdir(direct, 0o755)
	os.Mkdir(mnt, 0o755)
	m, err := Mount(mnt, Options{Replicator: &countingReplicator{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	unwatch := watchMount(mnt)
	defer func() {
		m.Unmount()
		<-m.Done()
		unwatch()
	}()
	for _, size := range []int{4 << 10, 1 << 20} {
		for _, target := range []string{"direct", "tandem"} {
			dir := direct
			if target == "tandem" {
				dir = mnt
			}
			b.Run(fmt.Sprintf("%s/%dKiB", target, size>>10), func(b *testing.B) {
				f, err := os.Create(filepath.Join(dir, "w"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				span := int64(256<<20) / int64(size)
				var i int64
				for b.Loop() {
					if _, err := f.WriteAt(buf, (i%span)*int64(size)); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}
