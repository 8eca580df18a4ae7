package compare

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writeBig writes n random-looking bytes to p in 4 MiB chunks.
func writeBig(b testing.TB, p string, n int64, seed uint64) {
	f, err := os.Create(p)
	must(b, err)
	defer f.Close()
	chunk := randBytes(seed, 4<<20)
	for off := int64(0); off < n; off += int64(len(chunk)) {
		chunk[0]++ // no two chunks alike
		_, err := f.Write(chunk[:min(int64(len(chunk)), n-off)])
		must(b, err)
	}
}

func benchRun(b *testing.B, pr *pair, scope Scope) Stats {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	st, err := pr.e.Run(ctx, scope)
	if err != nil {
		b.Fatal(err)
	}
	pr.f.drain()
	return st
}

// BenchmarkFullCompare1GiB: a full compare of a 1 GiB file identical on
// both sides (both hash it; nothing is sent). MB/s is hashing throughput
// of the pair, page cache warm.
func BenchmarkFullCompare1GiB(b *testing.B) {
	pr := newPair(b, 1, 0, Options{})
	const size = 1 << 30
	writeBig(b, filepath.Join(pr.p, "big"), size, 1)
	writeBig(b, filepath.Join(pr.s, "big"), size, 1)
	sameTimes(b, pr)
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		st := benchRun(b, pr, Scope{Full: true})
		if st.BytesSent != 0 {
			b.Fatalf("sent %d bytes", st.BytesSent)
		}
	}
}

// sameTimes gives the secondary's entries the primary's attributes.
func sameTimes(b testing.TB, pr *pair) {
	for _, e := range walkTree(pr.p) {
		var st unix.Stat_t
		must(b, unix.Lstat(filepath.Join(pr.p, e.path), &st))
		must(b, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(pr.s, e.path), []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW))
		must(b, os.Chmod(filepath.Join(pr.s, e.path), os.FileMode(st.Mode&0o777)))
	}
	var st unix.Stat_t
	must(b, unix.Stat(pr.p, &st))
	must(b, unix.UtimesNanoAt(unix.AT_FDCWD, pr.s, []unix.Timespec{st.Atim, st.Mtim}, 0))
}

// BenchmarkFullCompareSmallFiles: 10,000 files of 1-8 KiB in 100
// directories, identical: the per-file cost (their hashes come with the
// listings).
func BenchmarkFullCompareSmallFiles(b *testing.B) {
	pr := newPair(b, 2, 0, Options{})
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 10000 {
		data := randBytes(uint64(i), 1024+r.IntN(7*1024))
		for _, root := range []string{pr.p, pr.s} {
			p := filepath.Join(root, fmt.Sprintf("d%02d/f%05d", i%100, i))
			if i < 100 {
				must(b, os.MkdirAll(filepath.Dir(p), 0o755))
			}
			must(b, os.WriteFile(p, data, 0o644))
		}
	}
	sameTimes(b, pr)
	b.ResetTimer()
	for b.Loop() {
		st := benchRun(b, pr, Scope{Full: true})
		if st.BytesSent != 0 || st.MetaFixed != 0 {
			b.Fatalf("identical trees: %+v", st)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/10000, "µs/file")
}

// BenchmarkZones: an incremental compare of a 256 MiB file whose 1 % of
// 64 KiB zones changed: hashed on both sides, or sent as they are
// (Options.TrustZones).
func BenchmarkZones(b *testing.B) {
	for _, trust := range []bool{false, true} {
		b.Run(fmt.Sprintf("trust=%v", trust), func(b *testing.B) {
			pr := newPair(b, 3, 0, Options{TrustZones: trust})
			const size = 256 << 20
			writeBig(b, filepath.Join(pr.p, "f"), size, 3)
			writeBig(b, filepath.Join(pr.s, "f"), size, 3)
			sameTimes(b, pr)
			r := rand.New(rand.NewPCG(4, 4))
			var zones []Zone
			for range size / DefaultBlockSize / 100 {
				zones = append(zones, Zone{r.Int64N(size/DefaultBlockSize) * DefaultBlockSize, DefaultBlockSize})
			}
			f, err := os.OpenFile(filepath.Join(pr.p, "f"), os.O_WRONLY, 0)
			must(b, err)
			b.ResetTimer()
			var sent int64
			for b.Loop() {
				b.StopTimer()
				for _, z := range zones {
					_, err := f.WriteAt([]byte{byte(r.IntN(256))}, z.Off+1)
					must(b, err)
				}
				b.StartTimer()
				st := benchRun(b, pr, Scope{Files: map[string][]Zone{"f": zones}})
				sent += st.BytesSent
			}
			f.Close()
			b.ReportMetric(float64(sent)/float64(b.N), "sent-bytes/op")
		})
	}
}

// BenchmarkFullCompareManyFiles: many identical small files (512-1535
// bytes, 1000 per directory; TANDEM_COMPARE_BENCH_FILES, default 100,000),
// the shape of bench/resync's case (c). Reports files/s.
func BenchmarkFullCompareManyFiles(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("TANDEM_COMPARE_BENCH_FILES")); err == nil && v > 0 {
		n = v
	}
	// TANDEM_COMPARE_BENCH_DIR keeps the trees there between runs.
	base := os.Getenv("TANDEM_COMPARE_BENCH_DIR")
	if base != "" {
		base = filepath.Join(base, strconv.Itoa(n))
	}
	var pr *pair
	if _, err := os.Stat(filepath.Join(base, "done")); base != "" && err == nil {
		pr = newPairIn(b, base, 5, 0, Options{})
	} else {
		if base == "" {
			pr = newPair(b, 5, 0, Options{})
		} else {
			must(b, os.RemoveAll(base))
			must(b, os.MkdirAll(filepath.Join(base, "primary"), 0o755))
			must(b, os.MkdirAll(filepath.Join(base, "secondary"), 0o755))
			pr = newPairIn(b, base, 5, 0, Options{})
		}
		r := rand.New(rand.NewPCG(5, 6))
		buf := randBytes(7, 2048)
		for i := range n {
			data := buf[i%512 : i%512+512+r.IntN(1024)]
			for _, root := range []string{pr.p, pr.s} {
				p := filepath.Join(root, fmt.Sprintf("d%04d/f%06d", i/1000, i))
				if i%1000 == 0 {
					must(b, os.MkdirAll(filepath.Dir(p), 0o755))
				}
				must(b, os.WriteFile(p, data, 0o644))
			}
		}
		sameTimes(b, pr)
		if base != "" {
			must(b, os.WriteFile(filepath.Join(base, "done"), nil, 0o644))
		}
	}
	// TANDEM_COMPARE_BENCH_COLD=1 (root) drops the page cache before
	// each run, as bench/resync does.
	cold := os.Getenv("TANDEM_COMPARE_BENCH_COLD") == "1"
	// TANDEM_COMPARE_BENCH_FILL=1: every run starts with empty caches of
	// hashes and fills them (the cost of the first compare).
	fill := pr.sSums != nil && os.Getenv("TANDEM_COMPARE_BENCH_FILL") == "1"
	if pr.sSums != nil && !fill {
		// The caches of hashes are on (TANDEM_COMPARE_SUMS=0: off): a
		// first compare, not measured, fills them, as the agents' first
		// compare does in bench/resync (c).
		time.Sleep(100 * time.Millisecond) // past the test caches' margin
		benchRun(b, pr, Scope{Full: true})
	}
	var cpu time.Duration // both sides' CPU time (user and system)
	b.ResetTimer()
	for b.Loop() {
		if fill {
			pr.e.opt.Sums.Reset()
			pr.sSums.Reset()
		}
		if cold {
			b.StopTimer()
			unix.Sync()
			must(b, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0))
			b.StartTimer()
		}
		c0 := cpuTime(b)
		st := benchRun(b, pr, Scope{Full: true})
		cpu += cpuTime(b) - c0
		if st.BytesSent != 0 || st.MetaFixed != 0 {
			b.Fatalf("identical trees: %+v", st)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "files/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n*b.N), "cpu-µs/file")
	if os.Getenv("TANDEM_COMPARE_BENCH_RSYNC") == "1" {
		// The reference of bench/resync (c), on the same trees.
		b.StopTimer()
		if cold {
			unix.Sync()
			must(b, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0))
		}
		t0 := time.Now()
		out, err := exec.Command("rsync", "-a", "-n", "-i", pr.p+"/", pr.s+"/").CombinedOutput()
		if err != nil {
			b.Fatalf("rsync: %v\n%s", err, out)
		}
		b.ReportMetric(float64(n)/time.Since(t0).Seconds(), "rsync-files/s")
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	must(b, unix.Getrusage(unix.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
