package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Exit codes of `writer run` (documented in the package comment).
const (
	exitOK       = 0
	exitFail     = 1 // setup failed, resume refused, or verify found loss
	exitUsage    = 2
	exitDataIO   = 3 // the data directory failed (EIO, ENOTCONN, EROFS...)
	exitAckLog   = 4 // the ack log failed: the test's own side is broken
	exitDiskFull = 5 // ENOSPC or EDQUOT in the data directory
)

// exitError carries the process exit code with the message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func fail(code int, format string, args ...any) *exitError {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

type runConfig struct {
	dir, ackLog string
	records     uint64        // 0: until stopped
	duration    time.Duration // 0: no limit
	rate        float64       // records per second, 0: as fast as possible
	size        int           // payload bytes
	mode        string        // fsync, fdatasync, odsync, osync
	files       int
	ckEvery     int // a checkpoint after every ckEvery records, 0: none
	keep        int // checkpoints kept
	retry       time.Duration
	ackSync     bool
	slow        time.Duration // report each new maximum latency at least this long
	out         io.Writer
}

// modes maps --mode to extra open flags. "none" acknowledges a record once
// write() returned, for a module whose every write is replicated before it
// returns (sync: write): nothing is durable locally, yet the peer holds it.
var modes = map[string]int{"fsync": 0, "fdatasync": 0, "odsync": unix.O_DSYNC, "osync": unix.O_SYNC, "none": 0}

func (c *runConfig) check() error {
	switch {
	case c.dir == "" || c.ackLog == "":
		return fail(exitUsage, "--dir and --ack-log are required")
	case c.size < 0 || c.size > maxPayload:
		return fail(exitUsage, "--size %d: want 0 to %d bytes", c.size, maxPayload)
	case c.files < 1 || c.files > 1024:
		return fail(exitUsage, "--files %d: want 1 to 1024", c.files)
	case c.ckEvery < 0 || c.keep < 1:
		return fail(exitUsage, "--checkpoint-every %d / --keep-checkpoints %d: want >= 0 / >= 1", c.ckEvery, c.keep)
	case c.rate < 0:
		return fail(exitUsage, "--rate %v: want >= 0", c.rate)
	}
	if _, ok := modes[c.mode]; !ok {
		return fail(exitUsage, "--mode %q: want fsync, fdatasync, odsync, osync or none", c.mode)
	}
	return nil
}

// runSummary is what a run did.
type runSummary struct {
	first, last uint64 // ids written and acknowledged (0, 0: none)
	records     uint64
	checkpoints int
	// maxLatency is the longest a record took from its first write to
	// its acknowledgement (retries included), and maxID that record.
	maxLatency time.Duration
	maxID      uint64
}

type writer struct {
	cfg     runConfig
	dirFd   int
	data    []*os.File
	offs    []int64
	ack     *os.File
	buf     []byte
	live    map[uint64]bool // checkpoints acknowledged and not removed
	begun   map[uint64]bool // removals an earlier run began (may be gone)
	nextCk  uint64
	lastAck uint64
	sum     runSummary
}

// run appends records until cfg.records are written, cfg.duration passed
// or ctx ends (a clean stop: exit 0). Every record is durable before its id
// goes to the ack log.
func run(ctx context.Context, cfg runConfig) (runSummary, error) {
	if err := cfg.check(); err != nil {
		return runSummary{}, err
	}
	if cfg.out == nil {
		cfg.out = io.Discard
	}
	fi, err := os.Stat(cfg.dir)
	if err != nil || !fi.IsDir() {
		return runSummary{}, fail(exitFail, "data directory %s: not a directory (%v): create it (the replicated directory) first", cfg.dir, err)
	}
	st, err := readAckLog(cfg.ackLog)
	if err != nil {
		return runSummary{}, fail(exitFail, "%v", err)
	}
	if st != nil && (st.files != cfg.files || st.ckEvery != cfg.ckEvery || st.keep != cfg.keep) {
		return runSummary{}, fail(exitFail, "ack log %s was written with files=%d checkpoint-every=%d keep-checkpoints=%d; run with the same values or a new ack log",
			cfg.ackLog, st.files, st.ckEvery, st.keep)
	}
	w := &writer{cfg: cfg, dirFd: -1, live: map[uint64]bool{}, begun: map[uint64]bool{}, nextCk: 1}
	defer w.close()
	if st != nil {
		w.lastAck = st.lastAcked()
		w.nextCk = st.lastCheckpoint + 1
		for n := range st.checkpoints {
			if !st.removed[n] {
				w.live[n] = true // removals begun (D) are redone
			}
			if st.removing[n] {
				w.begun[n] = true
			}
		}
	}
	next, err := w.open(st)
	if err != nil {
		return runSummary{}, err
	}
	if err := w.ackLine(fmt.Sprintf("start next=%d pid=%d mode=%s size=%d", next, os.Getpid(), cfg.mode, cfg.size)); err != nil {
		return w.sum, err
	}
	fmt.Fprintf(cfg.out, "writer: writing from id %d into %s (%d files, mode %s, %d-byte payloads)\n", next, cfg.dir, cfg.files, cfg.mode, cfg.size)

	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}
	start := time.Now()
	for id := next; cfg.records == 0 || id < next+cfg.records; id++ {
		if cfg.rate > 0 {
			due := start.Add(time.Duration(float64(id-next) / cfg.rate * float64(time.Second)))
			if !sleepUntil(ctx, due) {
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
		if err := w.record(ctx, id); err != nil {
			return w.sum, err
		}
		if cfg.ckEvery > 0 && id%uint64(cfg.ckEvery) == 0 {
			if err := w.checkpoint(ctx, id); err != nil {
				return w.sum, err
			}
		}
	}
	return w.sum, nil
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// open prepares the ack log and the data files and returns the next id.
// Resuming, it cuts a torn tail (never an acknowledged record) off every
// data file and continues after the highest intact id.
func (w *writer) open(st *ackState) (uint64, error) {
	cfg := w.cfg
	ack, err := os.OpenFile(cfg.ackLog, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return 0, fail(exitAckLog, "open ack log: %v", err)
	}
	w.ack = ack
	var keepLen int64
	if st != nil {
		keepLen = st.validLen
	}
	if fi, err := ack.Stat(); err != nil || fi.Size() > keepLen {
		if err := ack.Truncate(keepLen); err != nil {
			return 0, fail(exitAckLog, "ack log %s: cut a torn last line: %v", cfg.ackLog, err)
		}
	}
	if _, err := ack.Seek(keepLen, io.SeekStart); err != nil {
		return 0, fail(exitAckLog, "ack log %s: %v", cfg.ackLog, err)
	}
	if st == nil {
		if err := w.ackLine(fmt.Sprintf("%s files=%d checkpoint-every=%d keep-checkpoints=%d", ackHeader, cfg.files, cfg.ckEvery, cfg.keep)); err != nil {
			return 0, err
		}
	}

	w.dirFd, err = unix.Open(cfg.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, dataFail(err, "open data directory %s", cfg.dir)
	}
	lastAckedIn := make([]uint64, cfg.files)
	if st != nil {
		for _, id := range st.acked {
			lastAckedIn[fileOf(id, cfg.files)] = id
		}
	}
	var maxIntact uint64
	for k := range cfg.files {
		path := filepath.Join(cfg.dir, dataName(k))
		var end, size int64
		if s, err := scanFile(path); err == nil {
			end, size = s.validEnd(), s.size
			var lastIntact uint64
			for _, r := range s.records {
				if r.end > end {
					break
				}
				lastIntact = r.id
			}
			if lastAckedIn[k] > lastIntact {
				return 0, fail(exitFail, "%s: acknowledged record %d is not in the intact part of the file (ends at byte %d): data was lost; run `writer verify` and start with a new ack log and directory",
					path, lastAckedIn[k], end)
			}
			maxIntact = max(maxIntact, lastIntact)
		} else if !errors.Is(err, os.ErrNotExist) {
			return 0, dataFail(err, "scan %s", path)
		} else if lastAckedIn[k] > 0 {
			return 0, fail(exitFail, "%s is missing but holds acknowledged records up to %d: data was lost; run `writer verify` and start with a new ack log and directory",
				path, lastAckedIn[k])
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|modes[cfg.mode], 0o644)
		if err != nil {
			return 0, dataFail(err, "open %s", path)
		}
		w.data = append(w.data, f)
		if size > end {
			if err := f.Truncate(end); err != nil {
				return 0, dataFail(err, "cut the torn tail of %s at byte %d", path, end)
			}
			if err := f.Sync(); err != nil {
				return 0, dataFail(err, "fsync %s", path)
			}
			fmt.Fprintf(cfg.out, "writer: cut %d bytes of unacknowledged torn tail off %s\n", size-end, path)
		}
		w.offs = append(w.offs, end)
	}
	if err := unix.Fsync(w.dirFd); err != nil {
		return 0, dataFail(err, "fsync directory %s", cfg.dir)
	}
	return max(w.lastAck, maxIntact) + 1, nil
}

func (w *writer) close() {
	for _, f := range w.data {
		f.Close()
	}
	if w.ack != nil {
		w.ack.Close()
	}
	if w.dirFd >= 0 {
		unix.Close(w.dirFd)
	}
}

// dataFail maps an error of the data directory to its exit code.
func dataFail(err error, format string, args ...any) *exitError {
	code := exitDataIO
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		code = exitDiskFull
	}
	return &exitError{code: code, err: fmt.Errorf(format+": %w", append(args, err)...)}
}

func (w *writer) ackLine(line string) error {
	if _, err := w.ack.WriteString(line + "\n"); err != nil {
		return fail(exitAckLog, "append to ack log %s: %v", w.cfg.ackLog, err)
	}
	if w.cfg.ackSync {
		if err := unix.Fdatasync(int(w.ack.Fd())); err != nil {
			return fail(exitAckLog, "fdatasync ack log %s: %v", w.cfg.ackLog, err)
		}
	}
	return nil
}

// retry runs op until it succeeds or cfg.retry has passed since the first
// failure; it never spins: 50 ms between attempts, and none when retry is 0.
func (w *writer) retry(ctx context.Context, what string, op func() error) error {
	err := op()
	var final *exitError
	if err == nil || w.cfg.retry <= 0 || errors.As(err, &final) {
		return err
	}
	first := time.Now()
	fmt.Fprintf(w.cfg.out, "writer: %s failed: %v; retrying for %v\n", what, err, w.cfg.retry)
	for time.Since(first) < w.cfg.retry {
		if !sleepUntil(ctx, time.Now().Add(50*time.Millisecond)) {
			return err
		}
		if err = op(); err == nil {
			fmt.Fprintf(w.cfg.out, "writer: %s succeeded after %v\n", what, time.Since(first).Round(time.Millisecond))
			return nil
		}
		if errors.As(err, &final) {
			return err
		}
	}
	return err
}

func (w *writer) record(ctx context.Context, id uint64) error {
	k := fileOf(id, w.cfg.files)
	f, off := w.data[k], w.offs[k]
	w.buf = encodeRecord(w.buf, id, w.cfg.size)
	begin := time.Now()
	// A failed sync may have dropped the dirty pages: every attempt writes
	// the whole record again before syncing.
	err := w.retry(ctx, fmt.Sprintf("record %d", id), func() error {
		if err := pwriteFull(f, w.buf, off); err != nil {
			return err
		}
		switch w.cfg.mode {
		case "fsync":
			return f.Sync()
		case "fdatasync":
			return unix.Fdatasync(int(f.Fd()))
		}
		return nil // O_DSYNC / O_SYNC: the write itself was durable; none: not asked
	})
	if err != nil {
		return dataFail(err, "write record %d to %s at byte %d (mode %s; last acknowledged id %d)", id, f.Name(), off, w.cfg.mode, w.lastAck)
	}
	w.offs[k] = off + int64(len(w.buf))
	if err := w.ackLine("r " + strconv.FormatUint(id, 10)); err != nil {
		return err
	}
	if d := time.Since(begin); d > w.sum.maxLatency {
		w.sum.maxLatency, w.sum.maxID = d, id
		if w.cfg.slow > 0 && d >= w.cfg.slow {
			fmt.Fprintf(w.cfg.out, "writer: slow record %d: %v from write to acknowledgement\n", id, d.Round(time.Microsecond))
		}
	}
	w.lastAck = id
	if w.sum.first == 0 {
		w.sum.first = id
	}
	w.sum.last = id
	w.sum.records++
	return nil
}

func pwriteFull(f *os.File, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := f.WriteAt(b, off)
		if err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// checkpoint exercises the namespace: a temporary file made durable,
// renamed into place, the directory synced; then old checkpoints go.
func (w *writer) checkpoint(ctx context.Context, last uint64) error {
	n := w.nextCk
	name := checkpointName(n)
	tmp := name + ".tmp"
	content := checkpointContent(n, last)
	err := w.retry(ctx, "checkpoint "+name, func() error {
		fd, err := unix.Openat(w.dirFd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return fmt.Errorf("create %s: %w", tmp, err)
		}
		f := os.NewFile(uintptr(fd), tmp)
		defer f.Close()
		if err := pwriteFull(f, content, 0); err != nil {
			return fmt.Errorf("write %s: %w", tmp, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", tmp, err)
		}
		if err := unix.Renameat(w.dirFd, tmp, w.dirFd, name); err != nil {
			return fmt.Errorf("rename %s to %s: %w", tmp, name, err)
		}
		if err := unix.Fsync(w.dirFd); err != nil {
			return fmt.Errorf("fsync directory: %w", err)
		}
		return nil
	})
	if err != nil {
		return dataFail(err, "checkpoint in %s after record %d", w.cfg.dir, last)
	}
	if err := w.ackLine(fmt.Sprintf("c %d %d", n, last)); err != nil {
		return err
	}
	w.live[n] = true
	w.nextCk++
	w.sum.checkpoints++
	for old := range w.live {
		if old+uint64(w.cfg.keep) > n {
			continue
		}
		if err := w.removeCheckpoint(ctx, old); err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) removeCheckpoint(ctx context.Context, n uint64) error {
	name := checkpointName(n)
	if err := w.ackLine(fmt.Sprintf("D %d", n)); err != nil {
		return err
	}
	// ENOENT is fine on a retry or when an earlier run began the removal;
	// otherwise an acknowledged checkpoint vanished.
	mayBeGone := w.begun[n]
	err := w.retry(ctx, "remove "+name, func() error {
		err := unix.Unlinkat(w.dirFd, name, 0)
		if errors.Is(err, unix.ENOENT) && !mayBeGone {
			return &exitError{code: exitFail, err: fmt.Errorf("%s was acknowledged but is missing when about to be removed: data lost (run `writer verify`)", name)}
		}
		mayBeGone = true
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unlink %s: %w", name, err)
		}
		if err := unix.Fsync(w.dirFd); err != nil {
			return fmt.Errorf("fsync directory: %w", err)
		}
		return nil
	})
	var ee *exitError
	if errors.As(err, &ee) {
		return ee
	}
	if err != nil {
		return dataFail(err, "remove checkpoint in %s", w.cfg.dir)
	}
	if err := w.ackLine(fmt.Sprintf("d %d", n)); err != nil {
		return err
	}
	delete(w.live, n)
	delete(w.begun, n)
	return nil
}
