package changelog

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The child of TestCrashKill9 (re-exec of the test binary) uses these.
const (
	envCrashDir  = "CHANGELOG_CRASH_DIR"
	envCrashSeed = "CHANGELOG_CRASH_SEED"
	// envCrashExtent: the extent size (zones are 4 KiB).
	envCrashExtent = "CHANGELOG_CRASH_EXTENT"
)

func crashOpts(extent int64) Options {
	return Options{ZoneSize: 4096, ExtentSize: extent, MaxActive: 64, FullWait: 20 * time.Millisecond,
		JournalBytes: 32 << 10, Logger: quiet}
}

// crashExtent alternates the extent size between kills: zone-sized
// extents, and 32 KiB ones (eight zones kept in memory per extent).
func crashExtent(it int) int64 {
	if it%2 == 0 {
		return 4096
	}
	return 32 << 10
}

// TestCrashChild is the child: three goroutines Touch and Done, one acks,
// one switches between alone and a new stream (whose numbers restart
// anywhere) and checkpoints, until killed. A touch is reported on stdout
// only after Done returned; an ack or a new stream before the call.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(envCrashDir)
	if dir == "" {
		t.Skip("run by TestCrashKill9")
	}
	seed, _ := strconv.ParseUint(os.Getenv(envCrashSeed), 10, 64)
	extent, _ := strconv.ParseInt(os.Getenv(envCrashExtent), 10, 64)
	l, err := Open(dir, crashOpts(extent))
	if err != nil {
		fmt.Printf("E open: %v\n", err)
		os.Exit(2)
	}
	say := func(format string, a ...any) {
		// One write per line (< PIPE_BUF: lines never interleave); a kill
		// leaves at most a partial last line.
		if _, err := os.Stdout.WriteString(fmt.Sprintf(format, a...) + "\n"); err != nil {
			os.Exit(3)
		}
	}
	fail := func(what string, err error) {
		say("E %s: %v", what, err)
		os.Exit(2)
	}
	var (
		mu      sync.Mutex // child state
		ackMu   sync.RWMutex
		alone   = l.Alone()
		seq     uint64
		acked   uint64
		session int
	)
	say("R %v", alone)
	toucher := func(r *rand.Rand) {
		for {
			k := Key{1, uint64(r.IntN(4))}
			var p Pin
			var err error
			what := ""
			switch y := r.IntN(20); {
			case y == 0:
				p, err = l.TouchDir(k)
				what = "D"
			case y == 1:
				p, err = l.TouchMeta(k)
				what = "M"
			case y == 2:
				off := int64(r.IntN(200)) * 4096
				n := int64(2000+r.IntN(3000)) * 4096 // an extent
				p, err = l.Touch(k, off, n)
				what = fmt.Sprintf("X %d %d", off, n)
			default:
				off := int64(r.IntN(200*4096 - 10000))
				n := int64(1 + r.IntN(10000))
				p, err = l.Touch(k, off, n)
				what = fmt.Sprintf("X %d %d", off, n)
			}
			if err != nil {
				fail("touch", err)
			}
			mu.Lock() // the replicator's Submit
			s, sess := uint64(0), session
			if !alone {
				seq++
				s = seq
			}
			mu.Unlock()
			l.Done(p, s)
			say("T %d %s %d %d", k.Ino, what, sess, s)
		}
	}
	for i := 0; i < 3; i++ {
		go toucher(rand.New(rand.NewPCG(seed, uint64(i))))
	}
	go func() { // acks of the current stream only
		r := rand.New(rand.NewPCG(seed, 10))
		for {
			time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
			ackMu.RLock()
			mu.Lock()
			a, sess := acked, session
			if !alone && seq > acked {
				a = acked + 1 + r.Uint64N(seq-acked)
				acked = a
			}
			mu.Unlock()
			if a > 0 {
				say("A %d %d", sess, a)
				l.Acked(a)
			}
			ackMu.RUnlock()
		}
	}()
	r := rand.New(rand.NewPCG(seed, 11))
	for {
		time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
		if r.IntN(4) == 0 {
			if err := l.Checkpoint(); err != nil {
				fail("checkpoint", err)
			}
			continue
		}
		ackMu.Lock()
		mu.Lock()
		wasAlone := alone
		mu.Unlock()
		if wasAlone {
			mu.Lock()
			session++
			alone, seq, acked = false, r.Uint64N(1000), 0 // a new stream numbers from anywhere
			sess := session
			mu.Unlock()
			say("S 0 %d", sess)
			if err := l.SetAlone(false); err != nil {
				fail("set alone false", err)
			}
		} else {
			if err := l.SetAlone(true); err != nil {
				fail("set alone true", err)
			}
			mu.Lock()
			alone = true
			mu.Unlock()
			say("S 1")
		}
		ackMu.Unlock()
	}
}

type touchRec struct {
	ino     uint64
	kind    string // D, M, X
	off, n  int64
	seq     uint64
	session int
}

// TestCrashKill9 kills the child at random moments and checks that every
// change it reported as recorded, and that no ack covered, is in InFlight
// or DIRTY after recovery (opened with the other extent size: the journal
// does not depend on it).
func TestCrashKill9(t *testing.T) {
	if os.Getenv(envCrashDir) != "" {
		t.Skip("child")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CHANGELOG_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (rerun with CHANGELOG_SEED=%d)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 1))
	const iterations, atLeast = 60, 50
	dir := t.TempDir()
	deadline := time.Now().Add(150 * time.Second)
	var totalTouches, totalChecked, it int
	for ; it < iterations; it++ {
		if time.Now().After(deadline) {
			if it < atLeast {
				t.Fatalf("only %d kills within %v (machine overloaded?)", it, 150*time.Second)
			}
			break
		}
		childSeed := r.Uint64()
		delay := time.Duration(r.IntN(60_000)) * time.Microsecond
		lines := runChild(t, dir, childSeed, delay, crashExtent(it))
		recs, err := parseChild(lines)
		if err != nil {
			t.Fatalf("iteration %d (child seed %d): %v", it, childSeed, err)
		}
		totalTouches += len(recs.touches)
		l, err := Open(dir, crashOpts(crashExtent(it+1)))
		if err != nil {
			t.Fatalf("iteration %d (child seed %d): recovery: %v", it, childSeed, err)
		}
		in, dirty := l.InFlight(), l.Dirty()
		for _, tr := range recs.touches {
			if recs.covered(tr) {
				continue
			}
			totalChecked++
			k := Key{1, tr.ino}
			var ok bool
			switch tr.kind {
			case "D":
				ok = hasDir(in, k) || hasDir(dirty, k)
			case "M":
				ok = hasMeta(in, k) || hasMeta(dirty, k)
			default:
				ok = true
				for z := uint64(tr.off / 4096); z < uint64((tr.off+tr.n+4095)/4096); z++ {
					if !has(in, k, z) && !has(dirty, k, z) {
						ok = false
						break
					}
				}
			}
			if !ok {
				t.Fatalf("iteration %d (child seed %d, kill after %v): lost %+v (acks %v)", it, childSeed, delay, tr, recs.acks)
			}
		}
		if recs.wasAlone && l.Alone() != true {
			t.Fatalf("iteration %d: alone not persisted", it)
		}
		// Start the next round from an empty record.
		if err := l.ClearDirty(dirty.Files, dirty.Dirs); err != nil {
			t.Fatal(err)
		}
		if err := l.ReleaseInFlight(false); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d iterations, %d touches reported, %d checked (not acknowledged)", it, totalTouches, totalChecked)
	if totalChecked < it {
		t.Fatalf("only %d unacknowledged touches checked: the kills came too early", totalChecked)
	}
}

func hasMeta(s *Snapshot, k Key) bool {
	for _, f := range s.Files {
		if f.Key == k && f.Meta {
			return true
		}
	}
	return false
}

func runChild(t *testing.T, dir string, seed uint64, delay time.Duration, extent int64) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashDir+"="+dir, envCrashSeed+"="+strconv.FormatUint(seed, 10),
		envCrashExtent+"="+strconv.FormatInt(extent, 10))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	ch := make(chan []string, 1)
	ready := make(chan struct{})
	go func() {
		var lines []string
		br := bufio.NewReader(out)
		for {
			s, err := br.ReadString('\n')
			if err != nil { // a partial last line was cut by the kill
				break
			}
			if len(lines) == 0 {
				close(ready)
			}
			lines = append(lines, strings.TrimSuffix(s, "\n"))
		}
		if len(lines) == 0 {
			close(ready)
		}
		ch <- lines
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("child did not start within 20s")
	}
	time.Sleep(delay)
	cmd.Process.Signal(syscall.SIGKILL)
	var lines []string
	select {
	case lines = <-ch:
	case <-time.After(20 * time.Second):
		t.Fatal("child output did not end within 20s of the kill")
	}
	cmd.Wait()
	io.Copy(io.Discard, out)
	return lines
}

type childRecs struct {
	touches  []touchRec
	acks     map[int]uint64 // highest ack reported per session
	wasAlone bool
}

// covered says whether an ack of the touch's own stream covered it.
func (c *childRecs) covered(tr touchRec) bool {
	return tr.seq != 0 && c.acks[tr.session] >= tr.seq
}

func parseChild(lines []string) (*childRecs, error) {
	c := &childRecs{acks: map[int]uint64{}}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "R ") {
		return nil, fmt.Errorf("child output %q", lines)
	}
	c.wasAlone = lines[0] == "R true"
	for _, ln := range lines[1:] {
		f := strings.Fields(ln)
		switch f[0] {
		case "E":
			return nil, fmt.Errorf("child failed: %s", ln)
		case "A":
			sess, _ := strconv.Atoi(f[1])
			a, _ := strconv.ParseUint(f[2], 10, 64)
			c.acks[sess] = max(c.acks[sess], a)
		case "S":
			c.wasAlone = f[1] == "1"
		case "T":
			ino, _ := strconv.ParseUint(f[1], 10, 64)
			tr := touchRec{ino: ino, kind: f[2]}
			if f[2] == "X" {
				tr.off, _ = strconv.ParseInt(f[3], 10, 64)
				tr.n, _ = strconv.ParseInt(f[4], 10, 64)
			}
			tr.session, _ = strconv.Atoi(f[len(f)-2])
			tr.seq, _ = strconv.ParseUint(f[len(f)-1], 10, 64)
			c.touches = append(c.touches, tr)
		default:
			return nil, fmt.Errorf("child line %q", ln)
		}
	}
	return c, nil
}
