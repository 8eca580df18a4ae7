// Command replwork is the measured workload of bench/replication. It runs
// inside a test host (so that it sees the host's mounts) and prints one JSON
// result on stdout.
//
// With one -dir it does the workload once. With two it is "the same data
// written twice": two threads run the workload at once, one per directory,
// and the figures count one copy (the time is until both finish). For
// dsync the two writes of a record are issued together and the latency is
// until both returned.
//
//	replwork -w seq   -dir D [-dir D2] -mb 1024     1 MiB writes, then fsync, close
//	replwork -w dsync -dir D [-dir D2] -n 2000      4 KiB appends on an O_DSYNC file
//	replwork -w buf   -dir D [-dir D2] -mb 256      4 KiB writes, then close (no fsync)
//	replwork -w files -dir D [-dir D2] -n 10000 -kb 4   create+write+close
//	replwork -w storm -dir D [-dir D2] -n 2000      mkdir/create/rename/rename/unlink/rmdir rounds
//	replwork -w clean -dir D [-dir D2] [-purge]     empty D (subdirectories to D/../trash), fsync it, sync(2)
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Result is what one workload run measured; the benchmark decodes it.
type Result struct {
	Workload string  `json:"workload"`
	Copies   int     `json:"copies"`
	Seconds  float64 `json:"seconds"` // wall time of the timed part
	Bytes    int64   `json:"bytes"`   // per copy
	Ops      int64   `json:"ops"`     // per copy
	// P50us and P99us are per-write latencies (dsync only), microseconds.
	P50us float64 `json:"p50_us,omitempty"`
	P99us float64 `json:"p99_us,omitempty"`
}

type dirList []string

func (d *dirList) String() string     { return strings.Join(*d, ",") }
func (d *dirList) Set(s string) error { *d = append(*d, s); return nil }

func main() {
	var dirs dirList
	w := flag.String("w", "", "workload: seq, dsync, buf, files, storm or clean")
	flag.Var(&dirs, "dir", "directory to work in (give it twice for two copies)")
	mb := flag.Int64("mb", 1024, "seq, buf: MiB written per copy")
	n := flag.Int("n", 0, "dsync: writes; files: files; storm: rounds (default 2000, 10000, 2000)")
	kb := flag.Int("kb", 4, "files: KiB per file")
	purge := flag.Bool("purge", false, "clean: also delete what earlier cleans put in the trash")
	flag.Parse()
	if len(dirs) < 1 || len(dirs) > 2 {
		fail(fmt.Errorf("give -dir once or twice (got %d)", len(dirs)))
	}
	for _, d := range dirs {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			fail(fmt.Errorf("-dir %s: not a directory (%v)", d, err))
		}
	}
	if *mb < 1 || *kb < 0 || *n < 0 {
		fail(errors.New("-mb must be ≥ 1, -kb and -n ≥ 0"))
	}
	res := Result{Workload: *w, Copies: len(dirs)}
	var err error
	switch *w {
	case "seq":
		err = seq(dirs, *mb<<20, &res)
	case "dsync":
		err = dsync(dirs, def(*n, 2000), &res)
	case "buf":
		err = buffered(dirs, *mb<<20, &res)
	case "files":
		err = files(dirs, def(*n, 10000), *kb<<10, &res)
	case "storm":
		err = storm(dirs, def(*n, 2000), &res)
	case "clean":
		err = clean(dirs, *purge)
	default:
		err = fmt.Errorf("-w %q: want seq, dsync, buf, files, storm or clean", *w)
	}
	if err != nil {
		fail(err)
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

func def(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "replwork:", err)
	os.Exit(1)
}

// pattern is incompressible data, so no layer can shortcut it.
func pattern(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

// each runs fn on every dir at once and returns the wall time until all
// finished, and the first error.
func each(dirs []string, fn func(dir string) error) (time.Duration, error) {
	errs := make([]error, len(dirs))
	var wg sync.WaitGroup
	start := time.Now()
	for i, d := range dirs {
		wg.Go(func() { errs[i] = fn(d) })
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

func writeAll(f *os.File, buf []byte, total int64) error {
	for done := int64(0); done < total; {
		b := buf
		if rest := total - done; rest < int64(len(b)) {
			b = b[:rest]
		}
		if _, err := f.Write(b); err != nil {
			return err
		}
		done += int64(len(b))
	}
	return nil
}

// seq: one file, 1 MiB write(2)s, fsync, close; all of it timed.
func seq(dirs []string, size int64, r *Result) error {
	buf := pattern(1 << 20)
	took, err := each(dirs, func(d string) error {
		f, err := os.OpenFile(filepath.Join(d, "seq.dat"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if err := writeAll(f, buf, size); err != nil {
			f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	r.Seconds, r.Bytes, r.Ops = took.Seconds(), size, size>>20
	return err
}

// buffered: 4 KiB write(2)s, close; no fsync (the per-call cost is what
// this measures; seq covers durability).
func buffered(dirs []string, size int64, r *Result) error {
	buf := pattern(4096)
	took, err := each(dirs, func(d string) error {
		f, err := os.OpenFile(filepath.Join(d, "buf.dat"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if err := writeAll(f, buf, size); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	r.Seconds, r.Bytes, r.Ops = took.Seconds(), size, size/4096
	return err
}

// dsync: n appends of 4 KiB to a file opened O_DSYNC, each timed. With two
// dirs both writes of a record are issued at once (two threads) and the
// record's latency is until both returned.
func dsync(dirs []string, n int, r *Result) error {
	buf := pattern(4096)
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, d := range dirs {
		fd, err := unix.Open(filepath.Join(d, "dsync.dat"), unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC|unix.O_DSYNC|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return fmt.Errorf("open %s: %w", d, err)
		}
		fds = append(fds, fd)
	}
	write := func(fd int) error {
		if _, err := unix.Write(fd, buf); err != nil {
			return err
		}
		return nil
	}
	// The second copy's writer is a goroutine kept busy-free on a channel,
	// so a record costs two parallel syscalls plus a hand-off.
	var req chan struct{}
	var resp chan error
	if len(fds) == 2 {
		req, resp = make(chan struct{}), make(chan error)
		go func() {
			for range req {
				resp <- write(fds[1])
			}
		}()
		defer close(req)
	}
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for range n {
		t0 := time.Now()
		if req != nil {
			req <- struct{}{}
		}
		err := write(fds[0])
		if req != nil {
			err = errors.Join(err, <-resp)
		}
		if err != nil {
			return err
		}
		lat = append(lat, time.Since(t0))
	}
	r.Seconds, r.Bytes, r.Ops = time.Since(start).Seconds(), int64(n)*4096, int64(n)
	slices.Sort(lat)
	r.P50us = us(pct(lat, 50))
	r.P99us = us(pct(lat, 99))
	return nil
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999)
	return sorted[max(1, min(rank, len(sorted)))-1]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// files: n files of size bytes in a fresh directory: open(O_CREAT|O_EXCL),
// write, close each; the directory's creation is not timed.
func files(dirs []string, n, size int, r *Result) error {
	buf := pattern(max(size, 1))[:size]
	for _, d := range dirs {
		if err := os.Mkdir(filepath.Join(d, "files"), 0o755); err != nil {
			return err
		}
	}
	took, err := each(dirs, func(d string) error {
		base := filepath.Join(d, "files")
		for i := range n {
			f, err := os.OpenFile(filepath.Join(base, fmt.Sprintf("f%06d", i)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			if size > 0 {
				if _, err := f.Write(buf); err != nil {
					f.Close()
					return err
				}
			}
			if err := f.Close(); err != nil {
				return err
			}
		}
		return nil
	})
	r.Seconds, r.Bytes, r.Ops = took.Seconds(), int64(n)*int64(size), int64(n)
	return err
}

// stormOps is the number of namespace operations in one storm round.
const stormOps = 6

// storm: n rounds of mkdir d; create+close d/f; rename d/f d/g; rename d e;
// unlink e/g; rmdir e. Each round counts stormOps operations.
func storm(dirs []string, n int, r *Result) error {
	for _, d := range dirs {
		if err := os.Mkdir(filepath.Join(d, "storm"), 0o755); err != nil {
			return err
		}
	}
	took, err := each(dirs, func(d string) error {
		base := filepath.Join(d, "storm")
		for i := range n {
			a := filepath.Join(base, fmt.Sprintf("d%06d", i))
			b := filepath.Join(base, fmt.Sprintf("e%06d", i))
			if err := os.Mkdir(a, 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(filepath.Join(a, "f"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			if err := os.Rename(filepath.Join(a, "f"), filepath.Join(a, "g")); err != nil {
				return err
			}
			if err := os.Rename(a, b); err != nil {
				return err
			}
			if err := os.Remove(filepath.Join(b, "g")); err != nil {
				return err
			}
			if err := os.Remove(b); err != nil {
				return err
			}
		}
		return nil
	})
	r.Seconds, r.Ops = took.Seconds(), int64(n)*stormOps
	return err
}

// clean empties the dirs (through whatever is mounted there, so a
// replicated directory replicates it), fsyncs them (on Tandem a durable
// wait: the peer has caught up) and flushes every disk cache, so a run
// does not pay for the previous run's writeback.
//
// Subdirectories are moved to a "trash" directory beside dir instead of
// being deleted: on an ext4 without a journal (this machine's root
// filesystem) the inode allocator skips, by reading each one, every inode
// freed in the last 30 seconds (recently_deleted), so creating 10,000 files
// right after deleting 10,000 is several times slower than on a fresh
// directory. The benchmark purges the trash at the start of a round, long
// before the round's small files. (Kept for good, the files would also
// pile up in the kernel's inode cache, and each cached inode holds an fd
// in Tandem's agent.)
func clean(dirs []string, purge bool) error {
	stamp := time.Now().UnixNano()
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		trash := filepath.Join(filepath.Dir(d), "trash")
		if purge {
			if err := os.RemoveAll(trash); err != nil {
				return err
			}
		}
		for _, e := range ents {
			p := filepath.Join(d, e.Name())
			if !e.IsDir() {
				if err := os.Remove(p); err != nil {
					return err
				}
				continue
			}
			if err := os.MkdirAll(trash, 0o755); err != nil {
				return err
			}
			if err := os.Rename(p, filepath.Join(trash, fmt.Sprintf("%s-%d", e.Name(), stamp))); err != nil {
				return err
			}
		}
		f, err := os.Open(d)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("fsync %s: %w", d, err)
		}
	}
	unix.Sync()
	return nil
}
