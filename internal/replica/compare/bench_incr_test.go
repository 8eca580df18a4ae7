package compare

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"golang.org/x/sys/unix"
)

// BenchmarkIncrementalTree is bench/resync's case (a) in one process: a
// tree of files of 256-768 KiB in 20 directories plus one big file
// (TANDEM_COMPARE_BENCH_INCR_FILES, default 2000; _BIG_MB, default 1024),
// then, before each run, 1 % of its 4 KiB blocks rewritten at random on
// the primary, 20 files created and 20 removed; the run is an incremental
// scope of those zones and directories, zones trusted, 4 KiB blocks, 16
// files at once, as the agent runs it. TANDEM_COMPARE_BENCH_DIR keeps the
// trees between runs; TANDEM_COMPARE_BENCH_COLD=1 (root) drops the page
// cache before each run. The time includes the secondary's final SyncAll.
// Freezes lock as the agent's do: a file's fixes that file (FreezeFile),
// the rest everything. TANDEM_COMPARE_BENCH_FREEZE=all freezes everything
// for every fix, =0 nothing;
// TANDEM_COMPARE_BENCH_FILE_FREEZES=N lets N file freezes be held at once;
// TANDEM_COMPARE_BENCH_YIELD=D sets how long a run of queued file freezes
// goes before it yields (default 500µs).
// TANDEM_COMPARE_BENCH_AHEAD=0 turns the scope's read-ahead off
// (readAheadScope).
// TANDEM_COMPARE_BENCH_LIVE=1 runs an application writing 4 KiB to
// another file every millisecond during each run and reports its write
// latency (p50, p99, max).
func BenchmarkIncrementalTree(b *testing.B) {
	files, bigMB := 2000, 1024
	if v, err := strconv.Atoi(os.Getenv("TANDEM_COMPARE_BENCH_INCR_FILES")); err == nil && v > 0 {
		files = v
	}
	if v, err := strconv.Atoi(os.Getenv("TANDEM_COMPARE_BENCH_BIG_MB")); err == nil && v >= 0 {
		bigMB = v
	}
	const bs = 4 << 10
	par := 16
	if v, err := strconv.Atoi(os.Getenv("TANDEM_COMPARE_BENCH_PARALLEL")); err == nil && v > 0 {
		par = v
	}
	opt := Options{TrustZones: os.Getenv("TANDEM_COMPARE_BENCH_TRUST") != "0", BlockSize: bs, Parallel: par}
	base := os.Getenv("TANDEM_COMPARE_BENCH_DIR")
	var pr *pair
	if base != "" {
		base = filepath.Join(base, fmt.Sprintf("incr-%d-%d", files, bigMB))
		if _, err := os.Stat(filepath.Join(base, "done")); err != nil {
			must(b, os.RemoveAll(base))
			must(b, os.MkdirAll(filepath.Join(base, "primary"), 0o755))
			must(b, os.MkdirAll(filepath.Join(base, "secondary"), 0o755))
			pr = newPairIn(b, base, 9, 0, opt)
			makeIncrTree(b, pr, files, bigMB)
			must(b, os.WriteFile(filepath.Join(base, "done"), nil, 0o644))
		} else {
			pr = newPairIn(b, base, 9, 0, opt)
		}
	} else {
		pr = newPair(b, 9, 0, opt)
		makeIncrTree(b, pr, files, bigMB)
	}
	// newPairIn gives the shim's freezes, which lock as the FUSE layer.
	switch os.Getenv("TANDEM_COMPARE_BENCH_FREEZE") {
	case "all":
		pr.e.opt.FreezeFile = nil
	case "0":
		pr.e.opt.Freeze, pr.e.opt.FreezeFile = nil, nil
	}
	if v, err := strconv.Atoi(os.Getenv("TANDEM_COMPARE_BENCH_FILE_FREEZES")); err == nil && v > 0 {
		maxFileFreezes = v
	}
	if v, err := time.ParseDuration(os.Getenv("TANDEM_COMPARE_BENCH_YIELD")); err == nil {
		yieldAfter = v
	}
	if os.Getenv("TANDEM_COMPARE_BENCH_AHEAD") == "0" {
		scopeAhead = 0
	}
	live := os.Getenv("TANDEM_COMPARE_BENCH_LIVE") == "1"
	if live {
		for _, root := range []string{pr.p, pr.s} {
			write(b, filepath.Join(root, "live", "f"), make([]byte, 1<<20))
		}
	}
	var lat []time.Duration
	cold := os.Getenv("TANDEM_COMPARE_BENCH_COLD") == "1"
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var sent, nfiles int64
	var runT, drainT, frozenT time.Duration
	var freezes, queries int64
	var disk [11]int64
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		scope := incrChange(b, pr, r, bs)
		unix.Sync()
		if cold {
			must(b, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0))
		}
		b.StartTimer()
		d0 := diskStat()
		stopLive := make(chan struct{})
		var liveWG sync.WaitGroup
		if live {
			liveWG.Go(func() {
				data := make([]byte, 4096)
				for i := 0; ; i++ {
					select {
					case <-stopLive:
						return
					case <-time.After(time.Millisecond):
					}
					w0 := time.Now()
					pr.sh.do(op.Op{Kind: op.Write, Path: "live/f", Off: int64(i%256) * 4096, Data: data})
					lat = append(lat, time.Since(w0))
				}
			})
		}
		t0 := time.Now()
		st, err := pr.e.Run(b.Context(), scope)
		close(stopLive)
		liveWG.Wait()
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		pr.f.drain()
		d1 := diskStat()
		for i := range d1 {
			disk[i] += d1[i] - d0[i]
		}
		runT += t1.Sub(t0)
		drainT += time.Since(t1)
		sent += st.BytesSent
		frozenT += st.FrozenTotal
		freezes += st.Freezes
		queries += st.Queries
		nfiles += st.Files
	}
	b.StopTimer()
	pr.f.checkErrs(b)
	b.ReportMetric(float64(sent)/float64(b.N)/(1<<20), "MiB-sent/op")
	b.ReportMetric(float64(nfiles)/float64(b.N), "files/op")
	b.ReportMetric(float64(runT.Milliseconds())/float64(b.N), "run-ms")
	b.ReportMetric(float64(drainT.Milliseconds())/float64(b.N), "drain-ms")
	b.ReportMetric(float64(frozenT.Milliseconds())/float64(b.N), "frozen-ms")
	b.ReportMetric(float64(freezes)/float64(b.N), "freezes/op")
	b.ReportMetric(float64(queries)/float64(b.N), "queries/op")
	b.ReportMetric(float64(disk[0])/float64(b.N), "disk-reads/op")
	b.ReportMetric(float64(disk[2])/2048/float64(b.N), "disk-read-MiB/op")
	b.ReportMetric(float64(disk[4])/float64(b.N), "disk-writes/op")
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "live-p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "live-p99-µs")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "live-max-µs")
	}
	if os.Getenv("TANDEM_COMPARE_BENCH_VERIFY") == "1" {
		assertSame(b, pr)
	}
}

func makeIncrTree(b *testing.B, pr *pair, files, bigMB int) {
	r := rand.New(rand.NewPCG(11, 12))
	buf := randBytes(13, 1<<20)
	for i := range files {
		n := (256 + r.IntN(512)) << 10
		data := buf[:n]
		data[0], data[1] = byte(i), byte(i>>8)
		for _, root := range []string{pr.p, pr.s} {
			p := filepath.Join(root, fmt.Sprintf("d%02d/f%05d", i%20, i))
			if i < 20 {
				must(b, os.MkdirAll(filepath.Dir(p), 0o755))
			}
			must(b, os.WriteFile(p, data, 0o644))
		}
	}
	if bigMB > 0 {
		writeBig(b, filepath.Join(pr.p, "big"), int64(bigMB)<<20, 1)
		writeBig(b, filepath.Join(pr.s, "big"), int64(bigMB)<<20, 1)
	}
	sameTimes(b, pr)
}

// incrChange changes the primary's tree as case (a) does and returns the
// scope its records would give.
func incrChange(b *testing.B, pr *pair, r *rand.Rand, bs int64) Scope {
	type file struct {
		path string
		size int64
	}
	var all []file
	var blocks int64
	for _, e := range walkTree(pr.p) {
		if e.typ == unix.S_IFREG {
			all = append(all, file{e.path, e.size})
			blocks += (e.size + bs - 1) / bs
		}
	}
	sc := Scope{Files: map[string][]Zone{}}
	dirs := map[string]bool{}
	// 20 removed.
	for range 20 {
		i := r.IntN(len(all))
		if all[i].path == "big" {
			continue
		}
		must(b, os.Remove(filepath.Join(pr.p, all[i].path)))
		dirs[parent(all[i].path)] = true
		all[i] = all[len(all)-1]
		all = all[:len(all)-1]
	}
	// 1 % of the blocks rewritten, uniform over the tree.
	blk := make([]byte, bs)
	for range blocks / 100 {
		k := r.Int64N(blocks)
		var f file
		for _, f = range all {
			n := (f.size + bs - 1) / bs
			if k < n {
				break
			}
			k -= n
		}
		off := min(k*bs, max(f.size-bs, 0))
		for i := range blk {
			blk[i] = byte(r.Uint32())
		}
		fd, err := unix.Open(filepath.Join(pr.p, f.path), unix.O_WRONLY, 0)
		must(b, err)
		n := min(bs, f.size-off)
		_, err = unix.Pwrite(fd, blk[:n], off)
		unix.Close(fd)
		must(b, err)
		sc.Files[f.path] = append(sc.Files[f.path], Zone{off, n})
	}
	// 20 created.
	for i := range 20 {
		p := fmt.Sprintf("d%02d/n%d-%d", r.IntN(20), time.Now().UnixNano(), i)
		data := make([]byte, (256+r.IntN(512))<<10)
		for j := 0; j < len(data); j += 4096 {
			data[j] = byte(r.Uint32())
		}
		must(b, os.WriteFile(filepath.Join(pr.p, p), data, 0o644))
		dirs[parent(p)] = true
		sc.Files[p] = []Zone{{0, int64(len(data))}}
	}
	for d := range dirs {
		sc.Dirs = append(sc.Dirs, d)
	}
	return sc
}

func assertSame(b *testing.B, pr *pair) {
	b.Helper()
	pe, se := walkTree(pr.p), walkTree(pr.s)
	if len(pe) != len(se) {
		b.Fatalf("trees differ: %d entries against %d", len(pe), len(se))
	}
	for i := range pe {
		if pe[i] != se[i] {
			b.Fatalf("trees differ: %+v against %+v", pe[i], se[i])
		}
		if pe[i].typ == unix.S_IFREG {
			x, err := os.ReadFile(filepath.Join(pr.p, pe[i].path))
			must(b, err)
			y, err := os.ReadFile(filepath.Join(pr.s, se[i].path))
			must(b, err)
			if string(x) != string(y) {
				b.Fatalf("%s: contents differ", pe[i].path)
			}
		}
	}
}

// diskStat reads the counters of the disk that holds the trees
// (TANDEM_COMPARE_BENCH_DISK, default vda: the benchmark machine's; the
// whole disk's, so others' I/O counts too): zeros when unknown.
func diskStat() (v [11]int64) {
	dev := os.Getenv("TANDEM_COMPARE_BENCH_DISK")
	if dev == "" {
		dev = "vda"
	}
	raw, err := os.ReadFile(filepath.Join("/sys/block", dev, "stat"))
	if err != nil {
		return v
	}
	for i, f := range strings.Fields(string(raw)) {
		if i < len(v) {
			v[i], _ = strconv.ParseInt(f, 10, 64)
		}
	}
	return v
}
